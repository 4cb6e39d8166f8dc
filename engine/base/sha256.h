/* sha256.h - SHA-256 (FIPS 180-4), used for content keys: equal keys
 * must mean equal computations, also against a client who tries to make
 * two different computations collide. */
#ifndef NPP_SHA256_H
#define NPP_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];
    uint64_t len; /* bytes hashed so far */
    unsigned char buf[64];
    size_t nbuf;
} sha256_ctx;

void sha256_init(sha256_ctx *c);
void sha256_update(sha256_ctx *c, const void *data, size_t n);
void sha256_final(sha256_ctx *c, unsigned char out[32]);
/* Convenience: out = SHA-256(data). */
void sha256(const void *data, size_t n, unsigned char out[32]);

#endif
