/* cache.h - the value cache shared by every job on one model: keyed by
 * content key (plan.h), bounded in bytes with LRU eviction, thread-safe,
 * and single-flight: a value one job is computing is waited for by the
 * others, never computed twice.
 *
 * Protocol for a value with key k:
 *     shim_tensor *t;
 *     switch (cache_get_or_claim(c, k, &t)) {
 *     case CACHE_HIT:      use t (a new handle, shim_free it);
 *     case CACHE_CLAIMED:  compute it, then cache_fulfil(c, k, t) -- or
 *                          cache_abandon(c, k) on error or cancellation;
 *     case CACHE_INFLIGHT: another job computes it: cache_wait(c, k, &t, ...)
 *     }
 * A claimant must fulfil or abandon every claim. Deadlock freedom is the
 * executor's side of the contract: it never waits while it holds a claim
 * on a value of lower or equal rank to the one it waits for (exec.c).
 *
 * Locking: one mutex per cache guards everything; no callback runs under
 * it. Handles returned are new (the caller frees them); the cache keeps its
 * own handle, so eviction never frees a tensor a job still uses. */
#ifndef NPP_CACHE_H
#define NPP_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "shim.h"

typedef struct cache cache;

typedef enum { CACHE_HIT, CACHE_CLAIMED, CACHE_INFLIGHT } cache_result;

typedef struct {
    size_t bytes, max_bytes, entries, inflight;
    uint64_t hits, misses, evictions, waits;
} cache_stats;

/* max_bytes 0 means nothing is kept (single-flight still works). */
cache *cache_new(size_t max_bytes);
void cache_free(cache *c); /* no job may be using it */

cache_result cache_get_or_claim(cache *c, const uint8_t key[32], shim_tensor **out);
/* Stores a new handle of t (t stays the caller's) and wakes waiters. */
void cache_fulfil(cache *c, const uint8_t key[32], const shim_tensor *t);
/* Drops the claim; waiters wake and one of them claims it. */
void cache_abandon(cache *c, const uint8_t key[32]);
/* Waits for an in-flight value. Returns CACHE_HIT with *out set, or
 * CACHE_CLAIMED if the claimant gave up and the caller now holds the claim.
 * Gives up (returns -1) when *cancel becomes non-zero (polled). */
int cache_wait(cache *c, const uint8_t key[32], shim_tensor **out, const volatile int *cancel);
void cache_get_stats(cache *c, cache_stats *s);

#endif
