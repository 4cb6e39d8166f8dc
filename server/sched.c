/* sched.c - the compute workers, admission by memory, and the libuv loop
 * (dispatch, result expiry, the disk bound on results, ?wait deadlines,
 * slow connections, signals, draining), and recovery of the store's
 * unfinished jobs at start-up. Locking and thread roles: see srv.h.
 *
 * Admission: a queued job starts only when a worker is idle and the
 * estimates of the running jobs plus its own plus every model's cache
 * budget fit --memory-mb. Users are served round-robin; the job whose turn
 * it is waits for memory rather than being overtaken, so a big job is
 * never starved by small ones. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "srv.h"

double srv_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

double srv_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

void srv_kick(void)
{
    uv_async_send(&S.kick);
}

static size_t cache_budget(void)
{
    return (size_t)S.nmodels * ((size_t)S.cache_mb << 20);
}

/* ---- ids of jobs whose store rows change after S.mu is released ------------- */

typedef struct {
    sjob **v;
    int n, cap;
} joblist;

/* Keeps a reference to j (caller holds S.mu). */
static void joblist_add(joblist *l, sjob *j)
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
static void joblist_store(joblist *l, int (*write)(const sjob *))
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

int sched_cancel(sjob *j)
{
    if (j->state == J_QUEUED) {
        job_unqueue(j);
        npp_fail(&j->err, NPP_ECANCELED, "", "the job was cancelled before it ran");
        job_finish(j, J_CANCELLED);
        return 1;
    }
    if (j->state == J_RUNNING) {
        __atomic_store_n(&j->cancel, 1, __ATOMIC_RELAXED); /* the worker stops at its next chunk */
        return 1;
    }
    return 0;
}

/* ---- results on disk ------------------------------------------------------------ */

/* Removes the oldest results until the stored ones fit --results-disk-mb
 * (caller holds S.mu); the jobs whose files go are added to gone. */
static void bound_results(joblist *gone)
{
    size_t limit = (size_t)S.results_disk_mb << 20;
    while (S.results_disk > limit) {
        sjob *old = NULL;
        for (size_t b = 0; b < sizeof S.table / sizeof S.table[0]; b++)
            for (sjob *j = S.table[b]; j; j = j->next)
                if (j->state == J_DONE && !j->result_gone && (!old || j->ended < old->ended))
                    old = j;
        if (!old)
            break;
        old->result_gone = 1;
        S.results_disk -= old->result_bytes;
        S.results_evicted++;
        joblist_add(gone, old);
    }
}

static int write_gone(const sjob *j)
{
    return store_result_gone(j->id);
}

/* Writes r's result to its file (a temporary name, then renamed, so a
 * crash never leaves half a result under the real one). */
static int write_result(const sjob *j, const run_output *run, size_t *bytes, npp_err *e)
{
    char path[4200], tmp[4300];
    struct stat sb;
    store_result_path(j->id, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (json_dump_file(run->result, tmp, JSON_COMPACT | JSON_PRESERVE_ORDER) || rename(tmp, path) ||
        stat(path, &sb)) {
        unlink(tmp);
        return npp_fail(e, NPP_EIO, "", "could not store the result in %s", path);
    }
    *bytes = (size_t)sb.st_size;
    return 0;
}

/* ---- workers ------------------------------------------------------------------ */

static void on_progress(void *ud, long done, long total)
{
    sjob *j = ud;
    pthread_mutex_lock(&S.mu);
    j->done = done;
    j->total = total;
    job_notify(j);
    pthread_mutex_unlock(&S.mu);
}

/* Plans the stored document again (deterministic: the admission plan),
 * executes it and stores the result. */
static int run_job_now(sjob *j, size_t *bytes, npp_err *e)
{
    char *text = store_doc(j->id);
    json_t *doc = text ? json_loads(text, 0, NULL) : NULL;
    free(text);
    if (!doc)
        return npp_fail(e, NPP_EIO, "", "the job's document is missing from the store");
    size_t job = (size_t)S.max_job_mb << 20;
    run_opts o = {.cache = j->model->cache,
                  .cancel = &j->cancel,
                  .progress = on_progress,
                  .ud = j,
                  .max_values = (size_t)S.max_values,
                  .model_name = j->model->name,
                  .chunk_bytes = (size_t)S.chunk_mb << 20,
                  .max_plan_bytes = job < PLAN_MAX_BYTES ? job : PLAN_MAX_BYTES,
                  /* it was planned in time once; a busy machine may be slower */
                  .plan_seconds = S.plan_seconds > 0 ? 2 * S.plan_seconds : 0};
    run_output *run = NULL;
    int rc = run_prepare(j->model->m, doc, &o, &run, e);
    json_decref(doc);
    if (!rc)
        rc = run_execute(j->model->m, run, &o, e);
    if (!rc)
        rc = write_result(j, run, bytes, e);
    run_output_free(run);
    return rc;
}

static void *worker_main(void *arg)
{
    srv_worker *w = arg;
    shim_set_threads(S.threads);
    pthread_mutex_lock(&S.mu);
    for (;;) {
        while (!w->job && !w->stop)
            pthread_cond_wait(&w->cv, &S.mu);
        if (!w->job)
            break;
        sjob *j = w->job;
        pthread_mutex_unlock(&S.mu);
        store_started(j);
        npp_err e = {0};
        size_t bytes = 0;
        int rc = run_job_now(j, &bytes, &e);
        joblist gone = {0};
        int requeued = 0;
        pthread_mutex_lock(&S.mu);
        S.nrunning--;
        S.mem_running -= j->est_peak;
        S.users[j->user].running--;
        if (rc == NPP_ECANCELED && j->interrupted) { /* shutdown: run it at the next start */
            j->state = J_QUEUED;
            j->started = 0;
            j->done = 0;
            requeued = 1;
            job_notify(j);
        } else if (rc == 0) {
            j->result_bytes = bytes;
            j->done = j->total;
            S.results_disk += bytes;
            job_finish(j, J_DONE);
            bound_results(&gone);
        } else {
            j->err = e;
            job_finish(j, rc == NPP_ECANCELED ? J_CANCELLED : J_FAILED);
        }
        pthread_mutex_unlock(&S.mu);
        if (requeued)
            store_requeue(j);
        else
            store_finished(j);
        joblist_store(&gone, write_gone);
        pthread_mutex_lock(&S.mu);
        w->job = NULL;
        job_unref(j); /* the worker's */
        srv_kick();
    }
    pthread_mutex_unlock(&S.mu);
    return NULL;
}

/* The job whose turn it is, round-robin over users, left in its queue
 * (caller holds S.mu); *user gets its user's index. */
static sjob *next_job(int *user)
{
    for (int k = 0; k < S.nusers; k++) {
        int i = (S.rr + k) % S.nusers;
        if (S.users[i].qhead) {
            *user = i;
            return S.users[i].qhead;
        }
    }
    return NULL;
}

static void dispatch(void)
{
    size_t budget = (size_t)S.memory_mb << 20, cache = cache_budget();
    for (int i = 0; i < S.workers; i++) {
        srv_worker *w = &S.wk[i];
        if (w->job || w->stop)
            continue;
        int u;
        sjob *j = next_job(&u);
        if (!j)
            return;
        if (S.nrunning > 0 && S.mem_running + j->est_peak + cache > budget)
            return; /* its turn: it waits for memory, nobody overtakes it */
        job_unqueue(j);
        S.rr = (u + 1) % S.nusers;
        j->state = J_RUNNING;
        j->started = srv_wall();
        job_ref(j); /* the worker's */
        S.nrunning++;
        S.mem_running += j->est_peak;
        S.users[j->user].running++;
        w->job = j;
        job_notify(j);
        pthread_cond_signal(&w->cv);
    }
}

/* ---- the loop ------------------------------------------------------------------- */

static void on_kick(uv_async_t *h)
{
    (void)h;
    pthread_mutex_lock(&S.mu);
    if (!S.draining && S.ready)
        dispatch();
    pthread_mutex_unlock(&S.mu);
}

static void on_resume(uv_async_t *h)
{
    (void)h;
    http_flush_resumes();
}

static int forget(const sjob *j)
{
    return store_forget(j->id);
}

/* Every 100 ms: expire results, fire ?wait deadlines, shut slow
 * connections, drive draining. */
static void on_tick(uv_timer_t *h)
{
    (void)h;
    double now = srv_now(), wall = srv_wall();
    joblist expired = {0};
    pthread_mutex_lock(&S.mu);
    {
        for (size_t b = 0; b < sizeof S.table / sizeof S.table[0]; b++) {
            for (sjob *j = S.table[b], *n; j; j = n) {
                n = j->next;
                if (j->state >= J_DONE && wall >= j->expires) {
                    if (j->state == J_DONE && !j->result_gone)
                        S.results_disk -= j->result_bytes;
                    joblist_add(&expired, j);
                    job_remove(j);
                }
            }
        }
    }
    http_tick(now);
    int done = 0;
    if (S.draining) {
        if (now >= S.drain_deadline) { /* past the grace: stop what still runs */
            for (int i = 0; i < S.workers; i++) {
                sjob *j = S.wk[i].job;
                if (j && !j->cancel) {
                    j->interrupted = !S.drain_cancel;
                    if (S.drain_cancel)
                        npp_fail(&j->err, NPP_ECANCELED, "", "the server shut down");
                    __atomic_store_n(&j->cancel, 1, __ATOMIC_RELAXED);
                }
            }
        }
        done = S.nrunning == 0;
    }
    pthread_mutex_unlock(&S.mu);
    joblist_store(&expired, forget);
    conn_tick(now);
    if (done)
        uv_stop(&S.loop);
}

static void begin_drain(int signum)
{
    joblist cancelled = {0};
    pthread_mutex_lock(&S.mu);
    if (!S.draining) {
        S.draining = 1;
        S.drain_deadline = srv_now() + S.drain_seconds;
        fprintf(stderr,
                "{\"event\": \"drain\", \"signal\": %d, \"running\": %d, \"queued\": %d, "
                "\"grace_s\": %.1f, \"queued_jobs\": \"%s\"}\n",
                signum, S.nrunning, S.nqueued, S.drain_seconds,
                S.drain_cancel ? "cancelled" : "kept for the next start");
        for (int u = 0; S.drain_cancel && u < S.nusers; u++) {
            while (S.users[u].qhead) {
                sjob *j = S.users[u].qhead;
                job_unqueue(j);
                npp_fail(&j->err, NPP_ECANCELED, "", "the server is shutting down");
                job_finish(j, J_CANCELLED);
                joblist_add(&cancelled, j);
            }
        }
    }
    pthread_mutex_unlock(&S.mu);
    joblist_store(&cancelled, store_finished);
}

static void on_signal(uv_signal_t *h, int signum)
{
    (void)h;
    begin_drain(signum);
}

int sched_start(void)
{
    if (uv_loop_init(&S.loop) || uv_async_init(&S.loop, &S.kick, on_kick) ||
        uv_async_init(&S.loop, &S.resume, on_resume) || uv_timer_init(&S.loop, &S.tick) ||
        uv_signal_init(&S.loop, &S.sigterm) || uv_signal_init(&S.loop, &S.sigint))
        return -1;
    uv_timer_start(&S.tick, on_tick, 100, 100);
    uv_signal_start(&S.sigterm, on_signal, SIGTERM);
    uv_signal_start(&S.sigint, on_signal, SIGINT);
    for (int i = 0; i < S.workers; i++) {
        pthread_cond_init(&S.wk[i].cv, NULL);
        if (pthread_create(&S.wk[i].th, NULL, worker_main, &S.wk[i]))
            return -1;
    }
    return 0;
}

void sched_stop_workers(void)
{
    pthread_mutex_lock(&S.mu);
    for (int i = 0; i < S.workers; i++) {
        S.wk[i].stop = 1;
        pthread_cond_signal(&S.wk[i].cv);
    }
    pthread_mutex_unlock(&S.mu);
    for (int i = 0; i < S.workers; i++) {
        pthread_join(S.wk[i].th, NULL);
        pthread_cond_destroy(&S.wk[i].cv);
    }
    /* Free every job left in the table (the store keeps them). */
    pthread_mutex_lock(&S.mu);
    for (size_t b = 0; b < sizeof S.table / sizeof S.table[0]; b++)
        while (S.table[b]) {
            sjob *j = S.table[b];
            if (j->state == J_QUEUED)
                job_unqueue(j);
            job_remove(j);
        }
    pthread_mutex_unlock(&S.mu);
}

/* ---- recovery --------------------------------------------------------------------- */

typedef struct {
    joblist requeue, fail, forget;
} recovery;

static void recover_one(void *ud, sjob *j)
{
    recovery *rc = ud;
    double wall = srv_wall();
    planner_set_seq(j->seq);
    pthread_mutex_lock(&S.mu);
    j->user = sched_user(j->owner);
    job_insert(j); /* the table's reference is its only one */
    if (j->state == J_QUEUED || j->state == J_RUNNING) {
        if (!j->model) {
            npp_fail(&j->err, NPP_EINVAL, "model",
                     "the job's model is not served by this server any more");
            job_finish(j, J_FAILED);
            joblist_add(&rc->fail, j);
        } else {
            if (j->state == J_RUNNING)
                joblist_add(&rc->requeue, j);
            j->state = J_QUEUED;
            j->started = 0;
            job_enqueue(j);
        }
    } else if (wall >= j->expires) {
        joblist_add(&rc->forget, j);
        job_remove(j);
    } else if (j->state == J_DONE && !j->result_gone) {
        S.results_disk += j->result_bytes;
    }
    pthread_mutex_unlock(&S.mu);
}

static int requeue(const sjob *j)
{
    return store_requeue(j);
}

int sched_recover(void)
{
    recovery rc = {{0}, {0}, {0}};
    if (store_load(recover_one, &rc))
        return -1;
    int n = rc.requeue.n;
    joblist_store(&rc.requeue, requeue);
    joblist_store(&rc.fail, store_finished);
    joblist_store(&rc.forget, forget);
    joblist gone = {0};
    pthread_mutex_lock(&S.mu);
    bound_results(&gone);
    fprintf(stderr,
            "{\"event\": \"recovered\", \"queued\": %d, \"were_running\": %d, "
            "\"results_bytes\": %zu}\n",
            S.nqueued, n, S.results_disk);
    pthread_mutex_unlock(&S.mu);
    joblist_store(&gone, write_gone);
    return 0;
}
