/* npy.c - the .npy writer; see npy.h. Assumes a little-endian host (the
 * build refuses others). */
#include "io/npy.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int npy_write_f32(const char *path, const float *data, const int64_t *shape, int ndim, npp_err *e)
{
    char dict[256];
    int n = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%lld,%s", (long long)shape[i],
                      i + 1 < ndim ? " " : "");
        count *= (size_t)shape[i];
    }
    n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
    /* magic(6) + version(2) + length(2) + dict + padding + '\n' = k * 64 */
    size_t total = 10 + (size_t)n + 1;
    size_t pad = (64 - total % 64) % 64;
    unsigned short hl = (unsigned short)((size_t)n + pad + 1);
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return npp_fail(e, NPP_EIO, path, "%s: cannot create: %s", path, strerror(errno));
    unsigned char head[10] = {
        0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hl & 0xff), (unsigned char)(hl >> 8)};
    int bad = fwrite(head, 1, 10, fp) != 10 || fwrite(dict, 1, (size_t)n, fp) != (size_t)n;
    for (size_t i = 0; i < pad && !bad; i++)
        bad = fputc(' ', fp) == EOF;
    bad = bad || fputc('\n', fp) == EOF || fwrite(data, sizeof(float), count, fp) != count;
    if (fclose(fp) || bad)
        return npp_fail(e, NPP_EIO, path, "%s: write failed: %s", path, strerror(errno));
    return 0;
}
