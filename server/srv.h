/* srv.h - nppd's shared state: models, jobs, queues, workers, counters.
 * Private to server/; the engine knows nothing of it.
 *
 * Threads and what they may touch:
 *   - the HTTP thread (libmicrohttpd's internal polling thread) parses
 *     requests, validates and plans jobs (run_prepare), queues them, and
 *     answers from the job table;
 *   - the loop thread (libuv) dispatches queued jobs to idle workers, runs
 *     the timers (result expiry, ?wait deadlines, drain) and the signals;
 *   - worker threads run one job each (run_execute) with no lock held.
 * Lock order: srv.mu, then an engine cache's own lock (inside the engine).
 * libmicrohttpd's suspend is called only from its own callbacks; resume only
 * from the loop thread with srv.mu released (http_flush_resumes).
 * Everything in `srv` and in every sjob below `srv.mu` is guarded by it. A
 * job is freed when its last reference goes (table, worker, requests),
 * always under srv.mu and never while a worker runs it (the worker holds a
 * reference). */
#ifndef NPP_SRV_H
#define NPP_SRV_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>

#include "../engine/cache.h"
#include "../engine/model.h"
#include "../engine/run.h"

#define SRV_MAX_MODELS  16
#define SRV_MAX_TOKENS  256
#define SRV_MAX_WORKERS 64

typedef enum { J_QUEUED, J_RUNNING, J_DONE, J_FAILED, J_CANCELLED, J_NSTATES } jstate;

typedef struct {
    char *name, *dir;
    model *m;     /* NULL until loaded */
    cache *cache; /* one per model, shared by every job on it */
} srv_model;

typedef struct req req;

typedef struct sjob {
    char id[33];
    int refs;
    jstate state;
    srv_model *model;
    run_output *run; /* the prepared plan; ->result once done */
    npp_err err;     /* why it failed or was cancelled */
    volatile int cancel;
    long done, total;                         /* progress: values computed / to compute */
    int user;                                 /* index into srv.users */
    double t_submit, t_start, t_end, expires; /* monotonic seconds */
    uint64_t version;                         /* bumped on every change watchers care about */
    struct sjob *next;                        /* job table chain */
    struct sjob *qnext;                       /* its user's queue */
    time_t created;                           /* wall clock, for the API */
} sjob;

typedef struct {
    char name[64]; /* token name, or the client's address without auth */
    sjob *qhead, *qtail;
    int queued, running;
} srv_user;

typedef struct {
    pthread_t th;
    pthread_cond_t cv;
    sjob *job; /* assigned by the loop thread; NULL when idle */
    int stop;
} srv_worker;

typedef struct {
    /* configuration (read-only after start) */
    srv_model models[SRV_MAX_MODELS];
    int nmodels;
    const char *device, *dtype, *listen, *token_file;
    int threads, workers, queue_max, max_inflight, max_conn_per_ip, conn_timeout;
    long cache_mb, max_body_kb, max_values;
    double result_ttl, drain_seconds;
    unsigned char token_hash[SRV_MAX_TOKENS][32];
    char token_name[SRV_MAX_TOKENS][64];
    int ntokens;
    /* state under mu */
    pthread_mutex_t mu;
    sjob *table[1024];
    srv_user users[SRV_MAX_TOKENS + 256];
    int nusers, rr;
    int ready, draining, stopping;
    double drain_deadline;
    srv_worker wk[SRV_MAX_WORKERS];
    int nqueued, nrunning;
    /* counters for /metrics */
    uint64_t jobs_total[J_NSTATES]; /* jobs that reached each terminal state, submitted */
    uint64_t http_total[6];         /* by status class 1xx..5xx */
    uint64_t lat_bucket[16], lat_count;
    double lat_sum;
    /* loop */
    uv_loop_t loop;
    uv_async_t kick;
    uv_async_t resume; /* resumes woken connections (http_flush_resumes) */
    uv_timer_t tick;
    uv_signal_t sigterm, sigint;
    struct MHD_Daemon *httpd;
} srv;

extern srv S;

/* Files embedded at build time (cmake/embed.cmake), NUL-terminated. */
extern const char npp_openapi_yaml[], npp_web_index[], npp_web_app[], npp_web_style[];

double srv_now(void);
/* Reference counting (caller holds S.mu). */
void job_ref(sjob *j);
void job_unref(sjob *j);
sjob *job_find(const char *id);
/* Records a change of j and wakes the requests suspended on it (caller
 * holds S.mu). */
void job_notify(sjob *j);
/* Asks the loop thread to dispatch (any thread, any lock state). */
void srv_kick(void);

/* http.c */
int http_start(void);
void http_resume_all(void);
void http_stop(void);
/* Resumes every request suspended on j (caller holds S.mu). */
void http_wake_job(sjob *j);
/* Resumes requests whose ?wait deadline passed (caller holds S.mu). */
void http_tick(double now);
/* Resumes the woken connections (loop thread, S.mu not held). */
void http_flush_resumes(void);

/* sched.c */
int sched_start(void);
sjob *sched_submit(srv_model *m, run_output *run, int user);
int sched_cancel(sjob *j);
int sched_user(const char *name);
void sched_stop_workers(void);

/* metrics.c */
char *metrics_render(void);

#endif
