/* test_cache.c - the value cache: LRU order and the byte budget, hits and
 * misses counted, single flight (a second claimant waits), abandon waking
 * a waiter who then holds the claim, and a cancelled wait giving up. */
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "compute/cache.h"

static shim_tensor *tensor(int floats)
{
    shim_status st = {0};
    static float zeros[1 << 16];
    int64_t shape[1] = {floats};
    shim_device cpu = {SHIM_CPU, 0};
    return shim_from_host(zeros, SHIM_F32, shape, 1, cpu, SHIM_F32, &st);
}

static void key(uint8_t k[32], int i)
{
    memset(k, 0, 32);
    k[0] = (uint8_t)i, k[9] = (uint8_t)(i >> 8), k[31] = 0x5a;
}

/* Claims, computes (a tensor of 1,024 floats: 4 KiB) and fulfils key i. */
static void put(cache *c, int i)
{
    uint8_t k[32];
    shim_tensor *t;
    key(k, i);
    if (cache_get_or_claim(c, k, &t) == CACHE_CLAIMED) {
        t = tensor(1024);
        cache_fulfil(c, k, t);
    }
    shim_free(t);
}

static int has(cache *c, int i)
{
    uint8_t k[32];
    shim_tensor *t;
    key(k, i);
    cache_result r = cache_get_or_claim(c, k, &t);
    if (r == CACHE_CLAIMED)
        cache_abandon(c, k);
    shim_free(t);
    return r == CACHE_HIT;
}

typedef struct {
    cache *c;
    int key;
    volatile int cancel;
    int result;
    shim_tensor *t;
} waiter;

static void *wait_for(void *arg)
{
    waiter *w = arg;
    uint8_t k[32];
    key(k, w->key);
    w->result = cache_wait(w->c, k, &w->t, &w->cancel);
    return NULL;
}

int main(void)
{
    /* LRU within a budget of three 4 KiB entries */
    cache *c = cache_new(3 * 4096);
    cache_stats s;
    put(c, 1), put(c, 2), put(c, 3);
    CHECK(has(c, 1), "1 is cached"); /* 1 is now the most recent */
    put(c, 4);                       /* over budget: evicts the least recent, 2 */
    CHECK(!has(c, 2) && has(c, 1) && has(c, 3) && has(c, 4), "LRU evicted 2 only");
    cache_get_stats(c, &s);
    CHECK(s.bytes <= s.max_bytes && s.entries == 3 && s.evictions >= 1,
          "bytes %zu of %zu, %zu entries, %llu evictions", s.bytes, s.max_bytes, s.entries,
          (unsigned long long)s.evictions);
    CHECK(s.hits >= 4 && s.misses >= 5, "hits %llu misses %llu", (unsigned long long)s.hits,
          (unsigned long long)s.misses);
    cache_free(c);

    /* a budget of 0 keeps nothing, but claims still work */
    c = cache_new(0);
    put(c, 7);
    CHECK(!has(c, 7), "nothing kept at 0 bytes");
    cache_get_stats(c, &s);
    CHECK(s.bytes == 0 && s.entries == 0, "%zu bytes", s.bytes);
    cache_free(c);

    /* single flight: a second claimant finds it in flight and waits */
    c = cache_new(1 << 20);
    uint8_t k[32];
    shim_tensor *t = NULL;
    key(k, 9);
    CHECK(cache_get_or_claim(c, k, &t) == CACHE_CLAIMED, "first claims");
    CHECK(cache_get_or_claim(c, k, &t) == CACHE_INFLIGHT, "second finds it in flight");
    waiter w = {c, 9, 0, -2, NULL};
    pthread_t th;
    pthread_create(&th, NULL, wait_for, &w);
    usleep(100 * 1000);
    shim_tensor *v = tensor(256);
    cache_fulfil(c, k, v);
    pthread_join(th, NULL);
    CHECK(w.result == CACHE_HIT && w.t != NULL, "the waiter gets the value (%d)", w.result);
    shim_free(w.t);
    shim_free(v);

    /* abandon wakes the waiter, who then holds the claim */
    key(k, 10);
    CHECK(cache_get_or_claim(c, k, &t) == CACHE_CLAIMED, "claimed");
    waiter w2 = {c, 10, 0, -2, NULL};
    pthread_create(&th, NULL, wait_for, &w2);
    usleep(100 * 1000);
    cache_abandon(c, k);
    pthread_join(th, NULL);
    CHECK(w2.result == CACHE_CLAIMED, "after abandon the waiter holds the claim (%d)", w2.result);
    cache_abandon(c, k);

    /* a cancelled wait gives up within its poll */
    key(k, 11);
    CHECK(cache_get_or_claim(c, k, &t) == CACHE_CLAIMED, "claimed");
    waiter w3 = {c, 11, 0, -2, NULL};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pthread_create(&th, NULL, wait_for, &w3);
    usleep(100 * 1000);
    __atomic_store_n(&w3.cancel, 1, __ATOMIC_RELAXED);
    pthread_join(th, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
    CHECK(w3.result == -1 && ms < 1000, "cancelled wait: %d after %.0f ms", w3.result, ms);
    cache_abandon(c, k);
    cache_get_stats(c, &s);
    CHECK(s.inflight == 0, "no claim left (%zu)", s.inflight);
    cache_free(c);
    return check_done("cache");
}
