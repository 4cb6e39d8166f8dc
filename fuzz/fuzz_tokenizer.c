/* fuzz_tokenizer.c - GPT-2's BPE tokenizer on any bytes: encoding valid
 * UTF-8 and decoding the ids gives the text back. NPP_FUZZ_VOCAB names a
 * folder with encoder.json and vocab.bpe. */
#include <string.h>

#include "common.h"
#include "model/model.h"
#include "model/tok.h"

static tok *T;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    npp_err e = {0};
    if (model_tok_load(fuzz_env("NPP_FUZZ_VOCAB"), &T, &e)) {
        fprintf(stderr, "fuzz: %s\n", e.message);
        exit(2);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int32_t *ids = NULL;
    size_t n = 0;
    npp_err e = {0};
    if (tok_encode(T, (const char *)data, size, &ids, &n, &e))
        return 0;
    char *text = NULL, *clean = NULL;
    size_t len = 0, clen = 0;
    if (!tok_decode_bytes(T, ids, n, &text, &len, NULL) &&
        !tok_utf8_sanitize((const char *)data, size, &clean, &clen) && clen == size &&
        !memcmp(clean, data, size) && (len != size || memcmp(text, data, size)))
        abort(); /* valid UTF-8 must round-trip */
    free(text);
    free(clean);
    free(ids);
    return 0;
}
