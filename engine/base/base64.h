/* base64.h - decoding standard base64 (RFC 4648, with padding), for
 * tensors a job sends (a steering vector). */
#ifndef NPP_BASE64_H
#define NPP_BASE64_H

#include <stddef.h>

/* The bytes s[0..n) encode (new buffer, *out_n bytes), or NULL when s is
 * not base64 (a bad character, a wrong length or padding) or memory is
 * short. */
unsigned char *base64_decode(const char *s, size_t n, size_t *out_n);

#endif
