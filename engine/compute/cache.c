/* cache.c - see cache.h. Entries live in an open hash table (by key
 * prefix) plus a doubly linked LRU list of ready entries. */
#include "compute/cache.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct entry {
    uint8_t key[32];
    shim_tensor *t; /* NULL while in flight */
    size_t bytes;
    struct entry *prev, *next; /* LRU, most recent at head; ready entries only */
    struct entry *hnext;       /* hash chain */
} entry;

struct cache {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    entry **buckets;
    size_t nbuckets;
    entry *head, *tail;
    cache_stats st;
};

static size_t bucket(const cache *c, const uint8_t *key)
{
    uint64_t h;
    memcpy(&h, key, 8);
    return (size_t)(h % c->nbuckets);
}

cache *cache_new(size_t max_bytes)
{
    cache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->nbuckets = 4099;
    c->buckets = calloc(c->nbuckets, sizeof *c->buckets);
    if (!c->buckets) {
        free(c);
        return NULL;
    }
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    c->st.max_bytes = max_bytes;
    return c;
}

static entry *find(cache *c, const uint8_t *key)
{
    for (entry *e = c->buckets[bucket(c, key)]; e; e = e->hnext)
        if (!memcmp(e->key, key, 32))
            return e;
    return NULL;
}

static void unlink_hash(cache *c, entry *e)
{
    entry **pp = &c->buckets[bucket(c, e->key)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
}

static void lru_remove(cache *c, entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push(cache *c, entry *e)
{
    e->prev = NULL;
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (!c->tail)
        c->tail = e;
}

static void drop(cache *c, entry *e)
{
    lru_remove(c, e);
    unlink_hash(c, e);
    c->st.bytes -= e->bytes;
    c->st.entries--;
    shim_free(e->t);
    free(e);
}

static void evict(cache *c)
{
    while (c->st.bytes > c->st.max_bytes && c->tail) {
        drop(c, c->tail);
        c->st.evictions++;
    }
}

void cache_free(cache *c)
{
    if (!c)
        return;
    for (size_t b = 0; b < c->nbuckets; b++) {
        for (entry *e = c->buckets[b], *n; e; e = n) {
            n = e->hnext;
            shim_free(e->t);
            free(e);
        }
    }
    free(c->buckets);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}

/* A new handle on a ready entry's tensor (shares its storage). */
static shim_tensor *share(const shim_tensor *t)
{
    shim_status st = {0};
    int64_t shape[SHIM_MAX_DIMS];
    int nd = shim_ndim(t);
    for (int i = 0; i < nd; i++)
        shape[i] = shim_dim(t, i);
    return shim_reshape(t, shape, nd, &st); /* a view: no copy */
}

/* Adds an in-flight entry (caller holds the lock). Out of memory: no
 * entry, but the caller still computes the value; fulfil and abandon of an
 * unknown key are no-ops. */
static void claim(cache *c, const uint8_t *key)
{
    entry *e = calloc(1, sizeof *e);
    if (e) {
        memcpy(e->key, key, 32);
        size_t b = bucket(c, key);
        e->hnext = c->buckets[b];
        c->buckets[b] = e;
        c->st.inflight++;
    }
    c->st.misses++;
}

cache_result cache_get_or_claim(cache *c, const uint8_t key[32], shim_tensor **out)
{
    *out = NULL;
    pthread_mutex_lock(&c->mu);
    entry *e = find(c, key);
    cache_result r;
    if (e && e->t) {
        lru_remove(c, e);
        lru_push(c, e);
        *out = share(e->t);
        c->st.hits++;
        r = CACHE_HIT;
    } else if (e) {
        r = CACHE_INFLIGHT;
    } else {
        claim(c, key);
        r = CACHE_CLAIMED;
    }
    pthread_mutex_unlock(&c->mu);
    return r;
}

void cache_fulfil(cache *c, const uint8_t key[32], const shim_tensor *t)
{
    shim_tensor *mine = share(t);
    pthread_mutex_lock(&c->mu);
    entry *e = find(c, key);
    if (e && !e->t && mine) {
        e->t = mine;
        e->bytes = shim_nbytes(mine);
        c->st.inflight--;
        c->st.entries++;
        c->st.bytes += e->bytes;
        lru_push(c, e);
        mine = NULL;
        evict(c);
        if ((e = find(c, key)) && e->t) /* kept: the cache's bytes, not the job's */
            shim_block_disown(e->t);
    } else if (e && !e->t) { /* could not make a handle: behave as abandon */
        unlink_hash(c, e);
        c->st.inflight--;
        free(e);
    }
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    shim_free(mine);
}

void cache_abandon(cache *c, const uint8_t key[32])
{
    pthread_mutex_lock(&c->mu);
    entry *e = find(c, key);
    if (e && !e->t) {
        unlink_hash(c, e);
        c->st.inflight--;
        free(e);
    }
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

int cache_wait(cache *c, const uint8_t key[32], shim_tensor **out, const volatile int *cancel)
{
    *out = NULL;
    pthread_mutex_lock(&c->mu);
    c->st.waits++;
    for (;;) {
        entry *e = find(c, key);
        if (e && e->t) {
            lru_remove(c, e);
            lru_push(c, e);
            *out = share(e->t);
            c->st.hits++;
            pthread_mutex_unlock(&c->mu);
            return CACHE_HIT;
        }
        if (!e) { /* abandoned (or evicted right after fulfil): claim it */
            claim(c, key);
            pthread_mutex_unlock(&c->mu);
            return CACHE_CLAIMED;
        }
        if (cancel && __atomic_load_n(cancel, __ATOMIC_RELAXED)) {
            pthread_mutex_unlock(&c->mu);
            return -1;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L)
            ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&c->cv, &c->mu, &ts);
    }
}

void cache_get_stats(cache *c, cache_stats *s)
{
    pthread_mutex_lock(&c->mu);
    *s = c->st;
    pthread_mutex_unlock(&c->mu);
}
