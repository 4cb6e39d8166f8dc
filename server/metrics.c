/* metrics.c - /metrics in Prometheus text format (version 0.0.4). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "srv.h"

typedef struct {
    char *s;
    size_t len, cap;
} buf;

static void put(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(buf *b, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if (b->s && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t c = b->cap ? b->cap * 2 : 8192;
        while (c < b->len + (size_t)n + 1)
            c *= 2;
        char *s = realloc(b->s, c);
        if (!s)
            return;
        b->s = s, b->cap = c;
    }
}

char *metrics_render(void)
{
    buf b = {0};
    int now[J_NSTATES] = {0};
    long pending, open;
    uint64_t shut;
    conn_stats(&pending, &open, &shut);
    pthread_mutex_lock(&S.mu);
    for (size_t k = 0; k < sizeof S.table / sizeof S.table[0]; k++)
        for (sjob *j = S.table[k]; j; j = j->next)
            now[j->state]++;
    put(&b, "# HELP npp_queue_depth Jobs waiting for a worker.\n# TYPE npp_queue_depth gauge\n");
    put(&b, "npp_queue_depth %d\n", S.nqueued);
    int waiting[W_NREASONS] = {0};
    for (int u = 0; u < S.nusers; u++)
        for (const sjob *j = S.users[u].qhead; j; j = j->qnext) {
            int why = sched_waiting(j);
            if (why >= 0)
                waiting[why]++;
        }
    put(&b, "# HELP npp_jobs_waiting Queued jobs by what they wait for (waiting_for).\n"
            "# TYPE npp_jobs_waiting gauge\n");
    for (int r = 0; r < W_NREASONS; r++)
        put(&b, "npp_jobs_waiting{reason=\"%s\"} %d\n", sched_wait_names[r], waiting[r]);
    put(&b,
        "# HELP npp_plans_waiting Jobs waiting for a planner.\n"
        "# TYPE npp_plans_waiting gauge\nnpp_plans_waiting %d\n",
        S.nplanning);
    put(&b,
        "# HELP npp_plans_refused_total Jobs refused at planning (invalid or too large).\n"
        "# TYPE npp_plans_refused_total counter\nnpp_plans_refused_total %llu\n",
        (unsigned long long)S.plans_refused);
    put(&b, "# HELP npp_jobs Jobs held by the server, by state.\n# TYPE npp_jobs gauge\n");
    for (int s = 0; s < J_NSTATES; s++)
        put(&b, "npp_jobs{state=\"%s\"} %d\n", jstate_name((jstate)s), now[s]);
    put(&b, "# HELP npp_jobs_finished_total Jobs that ended, by final state.\n"
            "# TYPE npp_jobs_finished_total counter\n");
    for (int s = J_DONE; s < J_NSTATES; s++)
        put(&b, "npp_jobs_finished_total{state=\"%s\"} %llu\n", jstate_name((jstate)s),
            (unsigned long long)S.jobs_total[s]);
    put(&b, "# HELP npp_job_duration_seconds Submission to end of each job.\n"
            "# TYPE npp_job_duration_seconds histogram\n");
    for (int i = 0; i < SRV_LAT_BUCKETS; i++)
        put(&b, "npp_job_duration_seconds_bucket{le=\"%g\"} %llu\n", srv_lat_bounds[i],
            (unsigned long long)S.lat_bucket[i]);
    put(&b, "npp_job_duration_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)S.lat_count);
    put(&b, "npp_job_duration_seconds_sum %.6f\nnpp_job_duration_seconds_count %llu\n", S.lat_sum,
        (unsigned long long)S.lat_count);
    put(&b, "# HELP npp_http_responses_total HTTP responses by status class.\n"
            "# TYPE npp_http_responses_total counter\n");
    for (int c = 1; c <= 5; c++)
        put(&b, "npp_http_responses_total{class=\"%dxx\"} %llu\n", c,
            (unsigned long long)S.http_total[c]);
    put(&b, "# HELP npp_workers_busy Workers running a job.\n# TYPE npp_workers_busy gauge\n");
    put(&b, "npp_workers_busy %d\nnpp_workers %d\n", S.nrunning, S.workers);
    put(&b,
        "# HELP npp_user_workers Workers one user's running jobs hold at most.\n"
        "# TYPE npp_user_workers gauge\nnpp_user_workers %d\n",
        S.user_workers);
    put(&b,
        "# HELP npp_memory_admitted_bytes Estimated peak memory of the running jobs.\n"
        "# TYPE npp_memory_admitted_bytes gauge\nnpp_memory_admitted_bytes %zu\n"
        "npp_memory_budget_bytes %zu\n",
        S.mem_running, (size_t)S.memory_mb << 20);
    put(&b,
        "# HELP npp_results_disk_bytes Bytes of stored results.\n"
        "# TYPE npp_results_disk_bytes gauge\nnpp_results_disk_bytes %zu\n"
        "npp_results_evicted_total %llu\n",
        S.results_disk, (unsigned long long)S.results_evicted);
    put(&b,
        "# HELP npp_connections Open connections, and those waiting for a request head or body.\n"
        "# TYPE npp_connections gauge\nnpp_connections %ld\nnpp_connections_waiting %ld\n"
        "npp_connections_shut_total %llu\n",
        open, pending, (unsigned long long)shut);
    static const char *cache_metrics[][2] = {
        {"npp_cache_bytes", "gauge"},          {"npp_cache_max_bytes", "gauge"},
        {"npp_cache_entries", "gauge"},        {"npp_cache_hits_total", "counter"},
        {"npp_cache_misses_total", "counter"}, {"npp_cache_evictions_total", "counter"},
        {"npp_model_bytes", "gauge"}};
    for (size_t k = 0; k < sizeof cache_metrics / sizeof cache_metrics[0]; k++) {
        put(&b, "# TYPE %s %s\n", cache_metrics[k][0], cache_metrics[k][1]);
        for (int i = 0; i < S.nmodels; i++) {
            srv_model *m = &S.models[i];
            if (!m->m)
                continue;
            cache_stats cs;
            cache_get_stats(m->cache, &cs);
            unsigned long long v[] = {cs.bytes,  cs.max_bytes, cs.entries,       cs.hits,
                                      cs.misses, cs.evictions, m->m->param_bytes};
            put(&b, "%s{model=\"%s\"} %llu\n", cache_metrics[k][0], m->name, v[k]);
        }
    }
    pthread_mutex_unlock(&S.mu);
    return b.s;
}
