/* base64.c - see base64.h. */
#include "base/base64.h"

#include <stdlib.h>

static int digit(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

unsigned char *base64_decode(const char *s, size_t n, size_t *out_n)
{
    if (n % 4)
        return NULL;
    size_t pad = n && s[n - 1] == '=' ? (n > 1 && s[n - 2] == '=' ? 2 : 1) : 0;
    unsigned char *out = malloc(n / 4 * 3 + 1);
    if (!out)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i += 4) {
        int d[4];
        for (int j = 0; j < 4; j++) {
            int last = i + 4 == n;
            d[j] = last && (size_t)j >= 4 - pad ? 0 : digit((unsigned char)s[i + j]);
            if (d[j] < 0) {
                free(out);
                return NULL;
            }
        }
        unsigned v =
            (unsigned)d[0] << 18 | (unsigned)d[1] << 12 | (unsigned)d[2] << 6 | (unsigned)d[3];
        out[k++] = (unsigned char)(v >> 16);
        out[k++] = (unsigned char)(v >> 8);
        out[k++] = (unsigned char)v;
    }
    *out_n = k - pad;
    return out;
}
