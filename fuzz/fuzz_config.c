/* fuzz_config.c - config.json as the loader reads it, on any bytes. */
#include "common.h"
#include "model/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    int fd = fuzz_memfile(data, size, path, sizeof path);
    if (fd < 0)
        return 0;
    model_config c;
    npp_err e = {0};
    if (!model_config_load(path, &c, &e) &&
        (c.n_layer < 1 || c.n_head < 1 || c.n_embd % c.n_head || c.vocab_size < 1 ||
         c.n_positions < 1 || c.n_inner < 1))
        abort(); /* an accepted config must be one a model can be built from */
    close(fd);
    return 0;
}
