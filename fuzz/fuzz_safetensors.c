/* fuzz_safetensors.c - the strict safetensors reader on any file: every
 * tensor it accepts must lie inside the file. */
#include "common.h"
#include "io/st.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    int fd = fuzz_memfile(data, size, path, sizeof path);
    if (fd < 0)
        return 0;
    st_file *f = NULL;
    npp_err e = {0};
    if (!st_open(path, "fuzz.safetensors", &f, &e)) {
        size_t hlen;
        const uint8_t *base = st_header(f, &hlen);
        for (size_t i = 0; i < st_count(f); i++) {
            const st_tensor *t = st_at(f, i);
            const uint8_t *p = t->data;
            if (p < base + hlen || p + t->nbytes > base + size)
                abort();
            volatile uint8_t sum = 0; /* touch every byte (ASan checks the bounds) */
            for (size_t k = 0; k < t->nbytes; k++)
                sum ^= p[k];
            (void)sum;
        }
        st_close(f);
    }
    close(fd);
    return 0;
}
