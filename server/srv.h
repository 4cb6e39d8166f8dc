/* srv.h - nppd's shared state and the contracts between its modules:
 * options (main.c), the token file (tokens.c), the durable store
 * (store.c), the job table (jobs.c), admission (queue.c), planners
 * (planner.c), workers (worker.c), the loop and signals (loop.c),
 * connections (conn.c), HTTP (http.c, api.c, sse.c, auth.c:
 * http_internal.h), metrics.
 * Private to server/; the engine knows nothing of it.
 *
 * Threads and what they may touch:
 *   - the HTTP thread (libmicrohttpd's internal polling thread) checks,
 *     parses the body as JSON, and hands new jobs to the planners; it
 *     answers from the job table and streams stored results. It never
 *     plans, computes or renders;
 *   - planner threads validate and plan submitted jobs (run_prepare),
 *     estimate their memory and result size, record them in the store and
 *     queue them; they also render graph.svg (planning again from the
 *     stored document) and tokenize /v1/tokenize texts;
 *   - the loop thread (libuv) admits queued jobs to idle workers while
 *     their memory estimates fit, runs the timers (expiry, ?wait deadlines,
 *     slow connections, drain) and the signals;
 *   - worker threads run one job each (plan again, execute, write the
 *     result file) with no lock held.
 * Lock order: srv.mu, then an engine cache's own lock (inside the engine);
 * conn.mu (conn.c) is taken alone. The store (SQLite, serialised) is never
 * called with srv.mu held. libmicrohttpd's suspend is called only from its
 * own callbacks; resume only from the loop thread with srv.mu released
 * (http_flush_resumes). Everything in `srv` and in every sjob below
 * `srv.mu` is guarded by it. A job is freed when its last reference goes
 * (table, worker, requests), always under srv.mu. */
#ifndef NPP_SRV_H
#define NPP_SRV_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>

#include "compute/cache.h"
#include "model/model.h"
#include "run/run.h"

#define SRV_MAX_MODELS   16
#define SRV_MAX_TOKENS   256
#define SRV_MAX_WORKERS  64
#define SRV_MAX_PLANNERS 16
#define SRV_NAME_MAX     64 /* a user name (token name or client address), NUL included */
#define SRV_TOKEN_MIN    16 /* a token's characters at least: not guessable */
#define SRV_LAT_BUCKETS  14 /* the job latency histogram (bounds in jobs.c) */
#define SRV_ID_MAX       52 /* a job id: an optional replica name (16), '-', 32 hex, NUL */

typedef enum { J_QUEUED, J_RUNNING, J_DONE, J_FAILED, J_CANCELLED, J_NSTATES } jstate;

/* "queued", "running", ... (static). */
const char *jstate_name(jstate s);
/* A job's time limit in seconds (0: none): the server's --max-job-seconds,
 * or the job's own limits.max_seconds (own; 0: none) where it is lower;
 * *who (if not NULL) gets "its limits.max_seconds" or "this server's
 * --max-job-seconds". */
double job_time_limit(double own, const char **who);

/* The state of a name, or -1. */
int jstate_parse(const char *name);

typedef struct {
    char *name, *dir;
    model *m;     /* NULL until loaded */
    cache *cache; /* one per model, shared by every job on it */
    double rate;  /* a job's estimated work (run_estimate.work) per second: --gflops, or
                   * run_measure_rate at load */
} srv_model;

typedef struct req req;

typedef struct sjob {
    char id[SRV_ID_MAX]; /* [REPLICA-]32 hex digits */
    int refs;
    jstate state;
    srv_model *model;
    char owner[SRV_NAME_MAX]; /* the token name (or client address) that submitted it */
    int user;                 /* index into srv.users */
    int64_t seq;              /* submission order (the store's) */
    /* from the admission plan */
    size_t est_peak, est_result;
    double est_seconds;     /* 0 for a job stored by a version without it */
    const char *work_field; /* the field behind most of its compute (static) */
    long total, done;       /* progress: values computed / to compute */
    int nvar;               /* sweep variants (0: not a sweep) */
    /* outcome */
    npp_err err;         /* why it failed or was cancelled */
    size_t result_bytes; /* the stored result's size */
    int result_gone;     /* the result file was removed to bound the disk */
    volatile int cancel; /* set by DELETE or drain; read by the worker (atomics) */
    int interrupted;     /* cancelled by shutdown: queue it again at the next start */
    int timed_out;       /* cancelled as it ran past its time limit */
    int deleted;         /* a DELETE asked it to stop while it ran */
    double own_seconds;  /* its limits.max_seconds (0: none; job_time_limit gives the limit) */
    double t_run;        /* monotonic, when a worker took it */
    double created, started, ended, expires; /* wall clock (seconds since the epoch) */
    double t_submit;                         /* monotonic, for the latency histogram */
    uint64_t version;                        /* bumped on every change watchers care about */
    struct sjob *next;                       /* job table chain */
    struct sjob *qnext;                      /* its user's queue */
} sjob;

/* A job being planned (not yet in the table): what a planner needs. */
typedef struct plan_task {
    int kind; /* PT_SUBMIT, PT_SVG, PT_TOKENIZE */
    req *r;   /* the suspended request to answer */
    srv_model *model;
    json_t *doc; /* PT_SUBMIT: the job document; PT_TOKENIZE: {"text"} (taken) */
    int user;
    char owner[SRV_NAME_MAX];
    double wait;  /* ?wait seconds */
    sjob *job;    /* PT_SVG: the job to draw (a reference) */
    long variant; /* PT_SVG */
    struct plan_task *next;
} plan_task;

enum { PT_SUBMIT, PT_SVG, PT_TOKENIZE };

typedef struct {
    char name[SRV_NAME_MAX]; /* token name, or the client's address without auth */
    sjob *qhead, *qtail;
    plan_task *phead, *ptail;
    int queued, running, planning;
    size_t mem_running; /* the estimates of its running jobs, bytes */
} srv_user;

typedef struct {
    pthread_t th;
    pthread_cond_t cv;
    sjob *job; /* assigned by the loop thread; NULL when idle */
    int stop;
} srv_worker;

typedef struct {
    unsigned char hash[32]; /* SHA-256 of the token */
    char name[SRV_NAME_MAX];
    int admin;
} srv_token;

typedef struct {
    /* configuration (read-only after start) */
    srv_model models[SRV_MAX_MODELS];
    int nmodels;
    const char *device, *dtype, *listen, *token_file, *state_dir, *replica;
    int threads, workers, user_workers, planners, queue_max, max_inflight, max_conn_per_ip,
        conn_timeout;
    int max_connections, header_timeout, body_timeout, drain_cancel, private_cache;
    long cache_mb, max_body_kb, max_values, memory_mb, max_job_mb, max_result_mb;
    long results_disk_mb, chunk_mb, keep_mb, user_memory_mb;
    double result_ttl, drain_seconds, plan_seconds, max_job_seconds, gflops;
    srv_token tokens[SRV_MAX_TOKENS];
    int ntokens;
    /* state under mu */
    pthread_mutex_t mu;
    sjob *table[4096];
    srv_user users[SRV_MAX_TOKENS + 256];
    int nusers, rr, prr;
    int ready, draining, stopping;
    double drain_deadline;
    srv_worker wk[SRV_MAX_WORKERS];
    int nqueued, nrunning, nplanning, nplans_running;
    size_t mem_running;  /* estimates of the running jobs, bytes */
    size_t results_disk; /* bytes of stored result files */
    pthread_cond_t plan_cv;
    pthread_t planner[SRV_MAX_PLANNERS];
    int plan_stop;
    volatile int plan_cancel; /* set at shutdown: plans in progress stop */
    /* counters for /metrics */
    uint64_t jobs_total[J_NSTATES]; /* jobs that reached each terminal state */
    uint64_t http_total[6];         /* by status class 1xx..5xx */
    uint64_t lat_bucket[SRV_LAT_BUCKETS], lat_count;
    double lat_sum;
    uint64_t results_evicted, plans_refused;
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

double srv_now(void);  /* monotonic seconds */
double srv_wall(void); /* wall-clock seconds since the epoch */

/* ---- tokens.c ---------------------------------------------------------------
 * The token file: one "NAME TOKEN" or "NAME TOKEN admin" per line, '#'
 * comments and blank lines ignored. Every other line is an error naming
 * its number: wrong field counts, an unknown third field, a duplicate
 * name or token, a name longer than SRV_NAME_MAX - 1. */
int tokens_parse(const char *text, size_t len, srv_token *out, int max, int *n, char *err,
                 size_t errn);

/* ---- store.c: the durable job store (SQLite in --state-dir) -----------------
 * A job row is written before the job is answered; results are files in
 * STATE_DIR/results. Every call is safe from any thread (the connection is
 * serialised); none may be made with S.mu held. Returns 0 or -1 (the
 * message in err, or logged). */
int store_open(const char *dir, char *err, size_t errn);
void store_close(void);
/* Records a new queued job with its document (compact JSON text). */
int store_insert(const sjob *j, const char *doc, char *err, size_t errn);
/* Its document (new string, free()), or NULL. */
char *store_doc(const char *id);
/* State changes: running (started), or final (state, error, result size). */
int store_started(const sjob *j);
int store_finished(const sjob *j);
/* Back to queued (interrupted by shutdown; run at the next start). */
int store_requeue(const sjob *j);
int store_forget(const char *id); /* the row and its result file */
int store_result_gone(const char *id);
/* Where job id's result file is (writes into buf). */
void store_result_path(const char *id, char *buf, size_t n);
/* Where a job's picture (SVG) lies beside its result: kind "heatmap" (a
 * grid job) or "circuit" (an attribution, discover or circuit job). */
void store_picture_path(const char *id, const char *kind, char *buf, size_t n);
/* Calls fn for every stored job, in submission order (start-up). */
int store_load(void (*fn)(void *ud, sjob *j), void *ud);

/* ---- jobs.c: the job table and the users' queues (callers hold S.mu) -------- */
void job_ref(sjob *j);
void job_unref(sjob *j);
sjob *job_find(const char *id);
/* Whether user (with admin rights or not) may see and cancel j. */
int job_visible(const sjob *j, const char *user, int admin);
void job_insert(sjob *j);
void job_remove(sjob *j); /* from the table (drops its reference) */
void job_enqueue(sjob *j);
void job_unqueue(sjob *j);
/* Records a change of j and wakes the requests suspended on it. */
void job_notify(sjob *j);
/* Ends j in state st (terminal), updates the counters and wakes watchers;
 * the caller writes the store afterwards (without S.mu). */
void job_finish(sjob *j, jstate st);
/* A new random id: 32 hex digits, after "REPLICA-" with --replica. */
void job_new_id(char out[SRV_ID_MAX]);
extern const double srv_lat_bounds[SRV_LAT_BUCKETS];
/* The index of a user's slot (created if new). */
int sched_user(const char *name);
/* The job as the API shows it (without its result). */
json_t *job_json(const sjob *j);
/* The list GET /v1/jobs shows user (all jobs for admins and without auth). */
json_t *jobs_list(const char *user, int admin);

/* Jobs whose store rows change once S.mu is released: collected under it
 * (each holds a reference), written and dropped without it. */
typedef struct {
    sjob **v;
    int n, cap;
} joblist;
void joblist_add(joblist *l, sjob *j); /* S.mu held */
/* Calls write on each (S.mu not held), then drops the references. */
void joblist_store(joblist *l, int (*write)(const sjob *));
int job_store_gone(const sjob *j);   /* store_result_gone of j */
int job_store_forget(const sjob *j); /* store_forget of j */
/* Removes results until the stored ones fit --results-disk-mb, each time
 * the oldest of the user whose results take the most room, keep (the job
 * just finished) counted for nobody and never removed; the jobs whose files
 * go are added to gone (for job_store_gone). */
void bound_results(joblist *gone, const sjob *keep);

/* ---- planner.c --------------------------------------------------------------- */
int planner_start(void);
/* Queues t for a planner (caller holds S.mu); 0, or -1 when the planners'
 * queue is full. */
int planner_submit(plan_task *t);
void planner_stop(void); /* cancels plans in progress, joins the threads */
/* New jobs get submission numbers after this one (start-up, recovery). */
void planner_set_seq(int64_t after);

/* ---- queue.c: admission (S.mu held unless said) ------------------------------------ */
/* Cancels j: 1 if it was queued or running. */
int sched_cancel(sjob *j);
/* Starts queued jobs on idle workers while their estimates fit. */
void sched_dispatch(void);
/* Why a queued job has not started (waiting_for): the models are loading
 * or the server is draining; its user's jobs hold --user-workers workers,
 * fewer than all; its user's earlier jobs wait ahead of it; its user's
 * running jobs leave too little of --user-memory-mb for it; every worker
 * is busy (or one is about to take it); or a worker is free, but the job
 * whose turn it is (this one or another user's) does not fit --memory-mb
 * beside the running jobs. */
enum { W_SERVER, W_USER_WORKERS, W_EARLIER_JOBS, W_USER_MEMORY, W_WORKER, W_MEMORY, W_NREASONS };
extern const char *const sched_wait_names[W_NREASONS]; /* "server", "user_workers", ... */
/* j's reason (caller holds S.mu); -1 when j is not queued. */
int sched_waiting(const sjob *j);
/* Re-queues the jobs the store holds as queued or running (start-up, no lock). */
int sched_recover(void);

/* ---- worker.c ---------------------------------------------------------------------- */
int sched_start_workers(void);
void sched_stop_workers(void); /* joins them, then frees the job table */

/* ---- loop.c ---------------------------------------------------------------------------- */
int sched_start(void); /* the loop's handles, then the workers */
/* Asks the loop thread to dispatch (any thread, any lock state). */
void srv_kick(void);

/* ---- conn.c: connections ------------------------------------------------------
 * A deadline for every request head (--header-timeout, counted from the
 * connection's start or the end of its previous request) and a budget of
 * connections waiting for a head: past it, the oldest waiting one is shut,
 * so slow senders can never hold every slot. */
void conn_notify(void *cls, struct MHD_Connection *c, void **socket_context,
                 enum MHD_ConnectionNotificationCode code);
void conn_head_done(struct MHD_Connection *c);    /* on_request's first call: a body next */
void conn_body_done(struct MHD_Connection *c);    /* on_request's call after the body */
void conn_request_done(struct MHD_Connection *c); /* on_completed: waits for a head again */
void conn_tick(double now);                       /* loop thread: shuts the late ones */
void conn_stats(long *pending, long *open, uint64_t *shut);
/* Connections in the middle of a request (open, not waiting for a head). */
long conn_busy(void);

/* ---- http.c ---------------------------------------------------------------------- */
int http_start(void);
void http_resume_all(void);
void http_stop(void);
/* Resumes every request suspended on j (caller holds S.mu). */
void http_wake_job(sjob *j);
/* Resumes the event streams of queued jobs whose waiting_for changed since
 * they sent it (caller holds S.mu). */
void http_wake_queued(void);
/* Resumes requests whose ?wait deadline passed (caller holds S.mu). */
void http_tick(double now);
/* Resumes the woken connections (loop thread, S.mu not held). */
void http_flush_resumes(void);
/* A planner's answer to a suspended request: status, JSON body (taken),
 * one optional header; then wakes it (caller holds S.mu). */
void http_answer(req *r, unsigned status, json_t *body, const char *hname, const char *hval);
/* The same with an SVG body (taken). */
void http_answer_svg(req *r, char *svg, size_t len);
/* The submitted job of a waiting POST ?wait=S: the request now waits on j
 * (caller holds S.mu). */
void http_wait_on(req *r, sjob *j, double wait);
/* {"error": {"code", "message", "field"}} (new); the message is made valid UTF-8. */
json_t *http_error_body(const char *code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- metrics.c ------------------------------------------------------------------- */
char *metrics_render(void);

#endif
