/* fuzz_tokens.c - nppd's token file parser on any bytes. */
#include "../server/srv.h"
#include "common.h"

/* tokens.c refers to nothing else of nppd's, but srv.h declares S. */
srv S;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static srv_token toks[SRV_MAX_TOKENS];
    char err[256];
    int n = 0;
    if (!tokens_parse((const char *)data, size, toks, SRV_MAX_TOKENS, &n, err, sizeof err) &&
        (n < 1 || n > SRV_MAX_TOKENS))
        abort(); /* success must mean 1..max tokens */
    return 0;
}
