/* loop.c - the libuv loop: dispatch when a job or a worker frees up, a
 * tick every 100 ms (result expiry, ?wait deadlines, slow connections,
 * draining), SIGTERM/SIGINT. Runs on its own thread (main's). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

static void on_kick(uv_async_t *h)
{
    (void)h;
    pthread_mutex_lock(&S.mu);
    if (!S.draining && S.ready)
        sched_dispatch();
    http_wake_queued(); /* what queued jobs wait for may have changed */
    pthread_mutex_unlock(&S.mu);
}

static void on_resume(uv_async_t *h)
{
    (void)h;
    http_flush_resumes();
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
    for (int i = 0; i < S.workers; i++) {
        sjob *j = S.wk[i].job; /* stopped as a DELETE stops it, within a chunk */
        double limit = j ? job_time_limit(j->own_seconds, NULL) : 0;
        if (j && j->state == J_RUNNING && !j->cancel && limit > 0 && now - j->t_run > limit) {
            j->timed_out = 1;
            __atomic_store_n(&j->cancel, 1, __ATOMIC_RELAXED);
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
    joblist_store(&expired, job_store_forget);
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
        http_wake_queued(); /* the kept ones wait for the server now */
    }
    int idle = S.nrunning == 0;
    pthread_mutex_unlock(&S.mu);
    joblist_store(&cancelled, store_finished);
    if (idle) /* nothing to wait for: not even the next tick */
        uv_stop(&S.loop);
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
    return sched_start_workers();
}
