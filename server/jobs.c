/* jobs.c - the job table (by id), its visibility rules, the users' queues
 * (one FIFO per user, served round-robin by sched.c), and the JSON the API
 * shows of a job. Every function here is called with S.mu held. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "srv.h"

static const char *const state_names[J_NSTATES] = {"queued", "running", "done", "failed",
                                                   "cancelled"};

double job_time_limit(double own, const char **who)
{
    int mine = own > 0 && (S.max_job_seconds <= 0 || own < S.max_job_seconds);
    if (who)
        *who = mine ? "its limits.max_seconds" : "this server's --max-job-seconds";
    return mine ? own : S.max_job_seconds > 0 ? S.max_job_seconds : 0;
}

const char *jstate_name(jstate s)
{
    return s < J_NSTATES ? state_names[s] : "unknown";
}

int jstate_parse(const char *name)
{
    for (int s = 0; name && s < J_NSTATES; s++)
        if (!strcmp(state_names[s], name))
            return s;
    return -1;
}

/* The latency histogram's bucket bounds, seconds (metrics.c prints them). */
const double srv_lat_bounds[SRV_LAT_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                1,     2.5,  5,     10,   30,  60,   300};

/* ---- the table ----------------------------------------------------------------- */

static unsigned bucket(const char *id)
{
    unsigned h = 2166136261u;
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 16777619u;
    return h % (sizeof S.table / sizeof S.table[0]);
}

sjob *job_find(const char *id)
{
    for (sjob *j = S.table[bucket(id)]; j; j = j->next)
        if (!strcmp(j->id, id))
            return j;
    return NULL;
}

void job_ref(sjob *j)
{
    j->refs++;
}

void job_unref(sjob *j)
{
    if (--j->refs > 0)
        return;
    free(j);
}

void job_insert(sjob *j)
{
    unsigned b = bucket(j->id);
    j->refs++; /* the table's */
    j->next = S.table[b];
    S.table[b] = j;
}

void job_remove(sjob *j)
{
    sjob **pp = &S.table[bucket(j->id)];
    while (*pp && *pp != j)
        pp = &(*pp)->next;
    if (!*pp)
        return;
    *pp = j->next;
    job_unref(j);
}

int job_visible(const sjob *j, const char *user, int admin)
{
    /* without a token file nothing is private: users are client addresses */
    return !S.ntokens || admin || !strcmp(j->owner, user);
}

void job_new_id(char out[SRV_ID_MAX])
{
    unsigned char b[16];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) { /* never in practice */
        uint64_t t = (uint64_t)(srv_now() * 1e9), w = (uint64_t)(srv_wall() * 1e6);
        memcpy(b, &t, 8);
        memcpy(b + 8, &w, 8);
    }
    /* with --replica, the id names the replica that owns it (nginx routes
     * on it: docs/deploy.md) */
    int n = S.replica ? snprintf(out, SRV_ID_MAX, "%s-", S.replica) : 0;
    for (int i = 0; i < 16; i++)
        snprintf(out + n + 2 * i, 3, "%02x", b[i]);
}

/* ---- users and their queues -------------------------------------------------------- */

int sched_user(const char *name)
{
    for (int i = 0; i < S.nusers; i++)
        if (!strcmp(S.users[i].name, name))
            return i;
    int n = (int)(sizeof S.users / sizeof S.users[0]);
    if (S.nusers == n) /* too many distinct anonymous addresses: share the last slot */
        return n - 1;
    snprintf(S.users[S.nusers].name, sizeof S.users[0].name, "%s", name);
    return S.nusers++;
}

void job_enqueue(sjob *j)
{
    srv_user *u = &S.users[j->user];
    j->qnext = NULL;
    if (u->qtail)
        u->qtail->qnext = j;
    else
        u->qhead = j;
    u->qtail = j;
    u->queued++;
    S.nqueued++;
}

void job_unqueue(sjob *j)
{
    srv_user *u = &S.users[j->user];
    sjob **pp = &u->qhead, *prev = NULL;
    while (*pp && *pp != j)
        prev = *pp, pp = &(*pp)->qnext;
    if (!*pp)
        return;
    *pp = j->qnext;
    if (u->qtail == j)
        u->qtail = prev;
    j->qnext = NULL;
    u->queued--;
    S.nqueued--;
}

void job_notify(sjob *j)
{
    j->version++;
    http_wake_job(j);
}

void job_finish(sjob *j, jstate st)
{
    j->state = st;
    j->ended = srv_wall();
    j->expires = j->ended + S.result_ttl;
    S.jobs_total[st]++;
    double lat = srv_now() - j->t_submit;
    if (j->t_submit > 0) { /* not for a job recovered at start-up */
        for (int i = 0; i < SRV_LAT_BUCKETS; i++)
            if (lat <= srv_lat_bounds[i])
                S.lat_bucket[i]++;
        S.lat_count++;
        S.lat_sum += lat;
    }
    job_notify(j);
}

/* ---- the JSON of a job ---------------------------------------------------------------- */

static json_t *iso_time(double t)
{
    char buf[32];
    time_t s = (time_t)t;
    struct tm tm;
    gmtime_r(&s, &tm);
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return json_string(buf);
}

/* A queued job's waiting_for (nothing for the others). */
static void put_waiting(json_t *o, const sjob *j)
{
    int why = sched_waiting(j);
    if (why >= 0)
        json_object_set_new(o, "waiting_for", json_string(sched_wait_names[why]));
}

/* What the admission plan estimated (the seconds: not for a job stored by
 * an nppd without them). */
static json_t *estimate_json(const sjob *j)
{
    json_t *est = json_pack("{s:I,s:I}", "peak_bytes", (json_int_t)j->est_peak, "result_bytes",
                            (json_int_t)j->est_result);
    if (j->est_seconds > 0)
        json_object_set_new(est, "seconds", json_real(j->est_seconds));
    return est;
}

json_t *job_json(const sjob *j)
{
    char link[128];
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(j->id));
    json_object_set_new(o, "state", json_string(jstate_name(j->state)));
    json_object_set_new(o, "model", json_string(j->model ? j->model->name : ""));
    json_object_set_new(o, "user", json_string(j->owner));
    json_object_set_new(o, "created", iso_time(j->created));
    json_object_set_new(
        o, "progress",
        json_pack("{s:I,s:I}", "done", (json_int_t)j->done, "total", (json_int_t)j->total));
    json_object_set_new(o, "estimate", estimate_json(j));
    put_waiting(o, j);
    if (j->started > 0)
        json_object_set_new(o, "queue_seconds", json_real(j->started - j->created));
    if (j->ended > 0 && j->started > 0)
        json_object_set_new(o, "run_seconds", json_real(j->ended - j->started));
    if (j->state == J_DONE)
        json_object_set_new(o, "result_bytes", json_integer((json_int_t)j->result_bytes));
    json_t *links = json_object();
    snprintf(link, sizeof link, "/v1/jobs/%s", j->id);
    json_object_set_new(links, "self", json_string(link));
    snprintf(link, sizeof link, "/v1/jobs/%s/graph.svg", j->id);
    json_object_set_new(links, "graph", json_string(link));
    snprintf(link, sizeof link, "/v1/jobs/%s/events", j->id);
    json_object_set_new(links, "events", json_string(link));
    json_object_set_new(o, "links", links);
    if (j->state == J_FAILED || j->state == J_CANCELLED)
        json_object_set_new(
            o, "error",
            json_pack("{s:s,s:s,s:s}", "code",
                      j->state == J_CANCELLED ? "cancelled" : npp_err_name(j->err.code), "message",
                      j->err.message, "field", j->err.field));
    return o;
}

static int by_seq(const void *a, const void *b)
{
    const sjob *x = *(sjob *const *)a, *y = *(sjob *const *)b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

json_t *jobs_list(const char *user, int admin)
{
    size_t n = 0, cap = 64;
    sjob **v = malloc(cap * sizeof *v);
    json_t *arr = json_array();
    for (size_t b = 0; v && b < sizeof S.table / sizeof S.table[0]; b++)
        for (sjob *j = S.table[b]; j; j = j->next) {
            if (!job_visible(j, user, admin))
                continue;
            if (n == cap) {
                sjob **g = realloc(v, (cap *= 2) * sizeof *g);
                if (!g)
                    break;
                v = g;
            }
            v[n++] = j;
        }
    if (v)
        qsort(v, n, sizeof *v, by_seq);
    for (size_t i = 0; i < n; i++) {
        const sjob *j = v[i];
        json_t *o = json_object();
        json_object_set_new(o, "id", json_string(j->id));
        json_object_set_new(o, "user", json_string(j->owner));
        json_object_set_new(o, "state", json_string(jstate_name(j->state)));
        json_object_set_new(o, "model", json_string(j->model ? j->model->name : ""));
        json_object_set_new(o, "created", iso_time(j->created));
        json_object_set_new(o, "estimate", estimate_json(j));
        put_waiting(o, j);
        if (j->state == J_DONE)
            json_object_set_new(o, "result_bytes", json_integer((json_int_t)j->result_bytes));
        json_array_append_new(arr, o);
    }
    free(v);
    return arr;
}

/* ---- jobs whose store rows change after S.mu is released ----------------------- */

/* Keeps a reference to j (caller holds S.mu). */
void joblist_add(joblist *l, sjob *j)
{
    if (l->n == l->cap) {
        int c = l->cap ? 2 * l->cap : 16;
        sjob **v = realloc(l->v, (size_t)c * sizeof *v);
        if (!v)
            return; /* the store keeps the old state; recovery sorts it out */
        l->v = v, l->cap = c;
    }
    job_ref(j);
    l->v[l->n++] = j;
}

/* Writes each job's final state to the store (S.mu not held), then drops
 * the references. */
void joblist_store(joblist *l, int (*write)(const sjob *))
{
    for (int i = 0; i < l->n; i++)
        write(l->v[i]);
    pthread_mutex_lock(&S.mu);
    for (int i = 0; i < l->n; i++)
        job_unref(l->v[i]);
    pthread_mutex_unlock(&S.mu);
    free(l->v);
    *l = (joblist){0};
}

/* ---- results on disk ------------------------------------------------------------ */

/* As srv.h says (caller holds S.mu). */
void bound_results(joblist *gone, const sjob *keep)
{
    size_t limit = (size_t)S.results_disk_mb << 20, held[sizeof S.users / sizeof S.users[0]];
    while (S.results_disk > limit) {
        /* the user whose stored results take the most room loses its oldest:
         * one user's many results never push out another's few */
        memset(held, 0, sizeof held);
        int most = -1;
        for (size_t b = 0; b < sizeof S.table / sizeof S.table[0]; b++)
            for (sjob *j = S.table[b]; j; j = j->next)
                if (j->state == J_DONE && !j->result_gone && j != keep)
                    held[j->user] += j->result_bytes;
        for (int u = 0; u < S.nusers; u++)
            if (held[u] && (most < 0 || held[u] > held[most]))
                most = u;
        sjob *old = NULL;
        for (size_t b = 0; most >= 0 && b < sizeof S.table / sizeof S.table[0]; b++)
            for (sjob *j = S.table[b]; j; j = j->next)
                if (j->state == J_DONE && !j->result_gone && j->user == most && j != keep &&
                    (!old || j->ended < old->ended))
                    old = j;
        if (!old)
            break;
        old->result_gone = 1;
        S.results_disk -= old->result_bytes;
        S.results_evicted++;
        joblist_add(gone, old);
    }
}

int job_store_gone(const sjob *j)
{
    return store_result_gone(j->id);
}

int job_store_forget(const sjob *j)
{
    return store_forget(j->id);
}
