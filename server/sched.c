/* sched.c - the job table, per-user queues served round-robin, the compute
 * workers, and the libuv loop (dispatch, timers, signals, draining).
 * Locking and thread roles: see srv.h. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "srv.h"

double srv_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- the job table --------------------------------------------------------- */

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
    run_output_free(j->run);
    free(j);
}

static void table_remove(sjob *j)
{
    sjob **pp = &S.table[bucket(j->id)];
    while (*pp && *pp != j)
        pp = &(*pp)->next;
    if (*pp)
        *pp = j->next;
    job_unref(j);
}

void job_notify(sjob *j)
{
    j->version++;
    http_wake_job(j);
}

void srv_kick(void)
{
    uv_async_send(&S.kick);
}

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

static void new_id(char out[33])
{
    unsigned char b[16];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) { /* never in practice */
        uint64_t t = (uint64_t)(srv_now() * 1e9);
        memcpy(b, &t, 8);
        memcpy(b + 8, &out, 8);
    }
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

sjob *sched_submit(srv_model *m, run_output *run, int user)
{
    sjob *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    new_id(j->id);
    j->refs = 1; /* the table's */
    j->state = J_QUEUED;
    j->model = m;
    j->run = run;
    j->user = user;
    j->t_submit = srv_now();
    j->created = time(NULL);
    j->total = run->plan.nv;
    unsigned b = bucket(j->id);
    j->next = S.table[b];
    S.table[b] = j;
    srv_user *u = &S.users[user];
    if (u->qtail)
        u->qtail->qnext = j;
    else
        u->qhead = j;
    u->qtail = j;
    u->queued++;
    S.nqueued++;
    srv_kick();
    return j;
}

static void unqueue(sjob *j)
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

static void finish(sjob *j, jstate st)
{
    j->state = st;
    j->t_end = srv_now();
    j->expires = j->t_end + S.result_ttl;
    S.jobs_total[st]++;
    double lat = j->t_end - j->t_submit;
    static const double bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                    1,     2.5,  5,     10,   30,  60,   300};
    for (size_t i = 0; i < sizeof bounds / sizeof bounds[0]; i++)
        if (lat <= bounds[i])
            S.lat_bucket[i]++;
    S.lat_count++;
    S.lat_sum += lat;
    job_notify(j);
}

int sched_cancel(sjob *j)
{
    if (j->state == J_QUEUED) {
        unqueue(j);
        npp_fail(&j->err, NPP_ECANCELED, "", "the job was cancelled before it ran");
        finish(j, J_CANCELLED);
        return 1;
    }
    if (j->state == J_RUNNING) {
        __atomic_store_n(&j->cancel, 1, __ATOMIC_RELAXED); /* the worker stops at the next batch */
        return 1;
    }
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
        npp_err e = {0};
        run_opts o = {.cache = j->model->cache,
                      .cancel = &j->cancel,
                      .progress = on_progress,
                      .ud = j,
                      .max_values = (size_t)S.max_values,
                      .model_name = j->model->name};
        int rc = run_execute(j->model->m, j->run, &o, &e);
        pthread_mutex_lock(&S.mu);
        S.nrunning--;
        S.users[j->user].running--;
        if (rc == 0) {
            j->done = j->total;
            finish(j, J_DONE);
        } else {
            j->err = e;
            finish(j, rc == NPP_ECANCELED ? J_CANCELLED : J_FAILED);
        }
        w->job = NULL;
        job_unref(j); /* the worker's */
        srv_kick();
    }
    pthread_mutex_unlock(&S.mu);
    return NULL;
}

/* Next job, round-robin over users with queued work and running below
 * their in-flight cap (caller holds S.mu). */
static sjob *pick(void)
{
    for (int k = 0; k < S.nusers; k++) {
        int i = (S.rr + k) % S.nusers;
        srv_user *u = &S.users[i];
        if (u->qhead) {
            sjob *j = u->qhead;
            unqueue(j);
            S.rr = (i + 1) % S.nusers;
            return j;
        }
    }
    return NULL;
}

static void dispatch(void)
{
    for (int i = 0; i < S.workers; i++) {
        srv_worker *w = &S.wk[i];
        if (w->job || w->stop)
            continue;
        sjob *j = pick();
        if (!j)
            return;
        j->state = J_RUNNING;
        j->t_start = srv_now();
        job_ref(j); /* the worker's */
        S.nrunning++;
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
    if (!S.draining)
        dispatch();
    pthread_mutex_unlock(&S.mu);
}

static void on_resume(uv_async_t *h)
{
    (void)h;
    http_flush_resumes();
}

static void stop_loop(void)
{
    uv_stop(&S.loop);
}

/* Every 100 ms: expire results, fire ?wait deadlines, drive draining. */
static void on_tick(uv_timer_t *h)
{
    (void)h;
    double now = srv_now();
    pthread_mutex_lock(&S.mu);
    for (size_t b = 0; b < sizeof S.table / sizeof S.table[0]; b++) {
        for (sjob *j = S.table[b], *n; j; j = n) {
            n = j->next;
            if (j->state >= J_DONE && now >= j->expires)
                table_remove(j);
        }
    }
    http_tick(now);
    int done = 0;
    if (S.draining) {
        if (now >= S.drain_deadline) { /* past the grace: cancel what still runs */
            for (int i = 0; i < S.workers; i++)
                if (S.wk[i].job)
                    __atomic_store_n(&S.wk[i].job->cancel, 1, __ATOMIC_RELAXED);
        }
        done = S.nrunning == 0;
    }
    pthread_mutex_unlock(&S.mu);
    if (done)
        stop_loop();
}

static void begin_drain(int signum)
{
    pthread_mutex_lock(&S.mu);
    if (!S.draining) {
        S.draining = 1;
        S.drain_deadline = srv_now() + S.drain_seconds;
        fprintf(stderr,
                "{\"event\": \"drain\", \"signal\": %d, \"running\": %d, \"queued\": %d, "
                "\"grace_s\": %.1f}\n",
                signum, S.nrunning, S.nqueued, S.drain_seconds);
        /* Queued jobs will not start: cancel them now, so waiters get an answer. */
        for (int u = 0; u < S.nusers; u++) {
            while (S.users[u].qhead) {
                sjob *j = S.users[u].qhead;
                unqueue(j);
                npp_fail(&j->err, NPP_ECANCELED, "", "the server is shutting down");
                finish(j, J_CANCELLED);
            }
        }
    }
    pthread_mutex_unlock(&S.mu);
    if (S.httpd)
        MHD_quiesce_daemon(S.httpd); /* stop accepting new connections */
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
    /* Free every job left in the table. */
    pthread_mutex_lock(&S.mu);
    for (size_t b = 0; b < sizeof S.table / sizeof S.table[0]; b++)
        while (S.table[b])
            table_remove(S.table[b]);
    pthread_mutex_unlock(&S.mu);
}
