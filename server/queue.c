/* queue.c - admission: the users' queues served round-robin while the
 * running jobs' memory estimates, the next one's and every model's cache
 * budget fit --memory-mb (the job whose turn it is waits for memory rather
 * than being overtaken, so a big job is never starved by small ones);
 * cancelling; and, at start-up, the store's unfinished jobs queued again.
 * Called with S.mu held unless a function says otherwise. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "srv.h"

/* What --memory-mb holds besides the running jobs: every model's value
 * cache and the memory each worker keeps between jobs (--keep-mb; a
 * running job's kept blocks count in its own estimate too). */
static size_t reserved(void)
{
    return (size_t)S.nmodels * ((size_t)S.cache_mb << 20) +
           (size_t)S.workers * ((size_t)S.keep_mb << 20);
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
        j->deleted = 1;
        __atomic_store_n(&j->cancel, 1, __ATOMIC_RELAXED); /* the worker stops at its next chunk */
        return 1;
    }
    return 0;
}

/* Whether j fits beside its user's running jobs within --user-memory-mb
 * (alone it always does: admission refuses bigger jobs, and a job kept
 * from before a restart with a lower bound runs alone). */
static int fits_user(const srv_user *u, const sjob *j)
{
    return !S.user_memory_mb || !u->running ||
           u->mem_running + j->est_peak <= (size_t)S.user_memory_mb << 20;
}

/* The job whose turn it is, round-robin over the users whose running jobs
 * hold fewer than --user-workers workers and leave room in --user-memory-mb
 * for their next job, left in its queue (caller holds S.mu); *user gets
 * its user's index. */
static sjob *next_job(int *user)
{
    for (int k = 0; k < S.nusers; k++) {
        int i = (S.rr + k) % S.nusers;
        if (S.users[i].qhead && S.users[i].running < S.user_workers &&
            fits_user(&S.users[i], S.users[i].qhead)) {
            *user = i;
            return S.users[i].qhead;
        }
    }
    return NULL;
}

/* Whether j fits beside the running jobs' memory estimates. */
static int fits(const sjob *j, size_t budget, size_t cache)
{
    return S.nrunning == 0 || S.mem_running + j->est_peak + cache <= budget;
}

const char *const sched_wait_names[W_NREASONS] = {"server",      "user_workers", "earlier_jobs",
                                                  "user_memory", "worker",       "memory"};

int sched_waiting(const sjob *j)
{
    if (j->state != J_QUEUED)
        return -1;
    const srv_user *u = &S.users[j->user];
    if (!S.ready || S.draining)
        return W_SERVER;
    if (u->running >= S.user_workers && S.user_workers < S.workers)
        return W_USER_WORKERS;
    if (u->qhead != j)
        return W_EARLIER_JOBS;
    if (!fits_user(u, j))
        return W_USER_MEMORY;
    int idle = 0, v;
    for (int i = 0; i < S.workers; i++)
        idle += !S.wk[i].job && !S.wk[i].stop;
    const sjob *turn = idle ? next_job(&v) : NULL;
    if (turn && !fits(turn, (size_t)S.memory_mb << 20, reserved()))
        return W_MEMORY; /* as sched_dispatch decides: the job whose turn it is does not fit */
    return W_WORKER;     /* every worker busy, or one about to be handed this job */
}

void sched_dispatch(void)
{
    size_t budget = (size_t)S.memory_mb << 20, cache = reserved();
    for (int i = 0; i < S.workers; i++) {
        srv_worker *w = &S.wk[i];
        if (w->job || w->stop)
            continue;
        int u;
        sjob *j = next_job(&u);
        if (!j)
            return;
        if (!fits(j, budget, cache)) {
            S.rr = u; /* its turn: it waits for memory, and stays first (nobody overtakes it) */
            return;
        }
        job_unqueue(j);
        S.rr = (u + 1) % S.nusers;
        j->state = J_RUNNING;
        j->started = srv_wall();
        j->t_run = srv_now();
        job_ref(j); /* the worker's */
        S.nrunning++;
        S.mem_running += j->est_peak;
        S.users[j->user].running++;
        S.users[j->user].mem_running += j->est_peak;
        w->job = j;
        job_notify(j);
        pthread_cond_signal(&w->cv);
    }
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
        const char *who;
        double limit = job_time_limit(j->own_seconds, &who);
        if (j->state == J_RUNNING) /* its start is forgotten: it runs again, or fails unrun */
            joblist_add(&rc->requeue, j);
        j->state = J_QUEUED;
        j->started = 0;
        if (!j->model) {
            npp_fail(&j->err, NPP_EINVAL, "model",
                     "the job's model is not served by this server any more");
            job_finish(j, J_FAILED);
            joblist_add(&rc->fail, j);
        } else if (limit > 0 && j->est_seconds > limit) { /* --max-job-seconds was lowered */
            npp_fail(&j->err, NPP_ELIMIT, "",
                     "the job is estimated at %.3g s of compute (at the rate of the server that "
                     "accepted it), over %s of %g s (lowered since then), so it was not run "
                     "again after the restart; use fewer examples, tokens, variants or steps, "
                     "or split the job",
                     j->est_seconds, who, limit);
            job_finish(j, J_FAILED);
            joblist_add(&rc->fail, j);
        } else {
            job_enqueue(j);
        }
    } else if (wall >= j->expires) {
        joblist_add(&rc->forget, j);
        job_remove(j);
    } else if (j->state == J_DONE && !j->result_gone) {
        S.results_disk += j->result_bytes;
    }
    if (j->state == J_DONE) /* its progress is not stored: a finished job's is complete */
        j->done = j->total;
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
    int n = rc.requeue.n, failed = rc.fail.n;
    joblist_store(&rc.requeue, requeue);
    joblist_store(&rc.fail, store_finished);
    joblist_store(&rc.forget, job_store_forget);
    joblist gone = {0};
    pthread_mutex_lock(&S.mu);
    bound_results(&gone, NULL);
    fprintf(stderr,
            "{\"event\": \"recovered\", \"queued\": %d, \"were_running\": %d, "
            "\"failed\": %d, \"results_bytes\": %zu}\n",
            S.nqueued, n, failed, S.results_disk);
    pthread_mutex_unlock(&S.mu);
    joblist_store(&gone, job_store_gone);
    return 0;
}
