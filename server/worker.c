/* worker.c - the compute workers: each runs one job at a time with no
 * lock held: plan the stored document again (deterministic: the plan it
 * was admitted by), execute, write the result file, record the outcome. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/sha256.h"
#include "output/circuit.h"
#include "output/heatmap.h"
#include "srv.h"

/* A picture of the job beside its result (consumes svg); *bytes grows by
 * its size. */
static int write_picture(const sjob *j, const char *kind, char *svg, size_t n, size_t *bytes,
                         npp_err *e)
{
    char path[4200], tmp[4300];
    store_picture_path(j->id, kind, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    int ok = f && fwrite(svg, 1, n, f) == n;
    ok = f && !fclose(f) && ok && !rename(tmp, path);
    free(svg);
    if (!ok) {
        unlink(tmp);
        return npp_fail(e, NPP_EIO, "", "could not store the %s in %s", kind, path);
    }
    *bytes += n;
    return 0;
}

/* A grid job's heatmap (a grid of three axes has none: GET heatmap.svg
 * says why), an attribution, discover or circuit job's circuit. */
static int write_pictures(const sjob *j, const run_output *run, size_t *bytes, npp_err *e)
{
    char *svg = NULL;
    size_t n = 0;
    json_t *grid = json_object_get(run->result, "grid");
    const model_config *c = &j->model->m->cfg;
    if (grid && !heatmap_svg(grid, &svg, &n, NULL) && write_picture(j, "heatmap", svg, n, bytes, e))
        return -1;
    if (!circuit_svg(run->result, c->n_layer, c->n_head, &svg, &n, NULL))
        return write_picture(j, "circuit", svg, n, bytes, e);
    return 0;
}

/* json_dump_callback's sink: the file, until the job is cancelled (a
 * result of hundreds of MB takes seconds to write). */
typedef struct {
    FILE *f;
    const sjob *j;
    int cancelled;
} sink;

static int to_file(const char *buf, size_t n, void *ud)
{
    sink *s = ud;
    if (__atomic_load_n(&s->j->cancel, __ATOMIC_RELAXED)) {
        s->cancelled = 1;
        return -1;
    }
    return fwrite(buf, 1, n, s->f) == n ? 0 : -1;
}

/* Writes r's result to its file (a temporary name, then renamed, so a
 * crash never leaves half a result under the real one). */
static int write_result(const sjob *j, const run_output *run, size_t *bytes, npp_err *e)
{
    char path[4200], tmp[4300];
    struct stat sb;
    store_result_path(j->id, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    sink s = {fopen(tmp, "w"), j, 0};
    int bad =
        !s.f || json_dump_callback(run->result, to_file, &s, JSON_COMPACT | JSON_PRESERVE_ORDER);
    bad |= s.f && fclose(s.f);
    if (bad || rename(tmp, path) || stat(path, &sb)) {
        unlink(tmp);
        if (s.cancelled)
            return npp_fail(e, NPP_ECANCELED, "", "the job was cancelled");
        return npp_fail(e, NPP_EIO, "", "could not store the result in %s", path);
    }
    *bytes = (size_t)sb.st_size;
    return write_pictures(j, run, bytes, e);
}

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
    uint8_t salt[32]; /* --private-cache: values shared only among the owner's jobs */
    sha256(j->owner, strlen(j->owner), salt);
    run_opts o = {.cache = j->model->cache,
                  .cache_salt = S.private_cache ? salt : NULL,
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
    if (!rc) { /* set at admission, but not for a job recovered from the store */
        pthread_mutex_lock(&S.mu);
        j->own_seconds = run->job->max_seconds;
        pthread_mutex_unlock(&S.mu);
        rc = run_execute(j->model->m, run, &o, e);
    }
    if (!rc)
        rc = write_result(j, run, bytes, e);
    run_output_free(run);
    return rc;
}

static void *worker_main(void *arg)
{
    srv_worker *w = arg;
    shim_set_threads(S.threads);
    shim_block_keep((size_t)S.keep_mb << 20); /* for its next job */
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
        int requeued = 0, dropped = 0;
        pthread_mutex_lock(&S.mu);
        S.nrunning--;
        S.mem_running -= j->est_peak;
        S.users[j->user].running--;
        S.users[j->user].mem_running -= j->est_peak;
        if (rc == NPP_ECANCELED && j->interrupted) { /* shutdown: run it at the next start */
            j->state = J_QUEUED;
            j->started = 0;
            j->done = 0;
            requeued = 1;
            job_notify(j);
        } else if (rc == 0 && j->deleted) {
            /* a DELETE came as its result was committed, after the last
             * check of the flag: it answered "running", so the job ends
             * cancelled, as the DELETE said it would, its result removed */
            npp_fail(&j->err, NPP_ECANCELED, "", "the job was cancelled");
            job_finish(j, J_CANCELLED);
            dropped = 1;
        } else if (rc == 0) {
            j->result_bytes = bytes;
            j->done = j->total;
            S.results_disk += bytes;
            job_finish(j, J_DONE);
            bound_results(&gone, j);
        } else if (rc == NPP_ECANCELED && j->timed_out) {
            char est[64] = "";
            const char *who;
            double limit = job_time_limit(j->own_seconds, &who);
            if (j->est_seconds > 0)
                snprintf(est, sizeof est, " (estimated at %.3g s)", j->est_seconds);
            npp_fail(&j->err, NPP_ELIMIT, j->work_field ? j->work_field : "",
                     "the job ran for longer than %s of %g s%s and was stopped; the values it "
                     "computed stay in the shared cache while they fit; use fewer examples, "
                     "tokens, variants or steps, or split the job",
                     who, limit, est);
            job_finish(j, J_FAILED);
        } else {
            j->err = e;
            job_finish(j, rc == NPP_ECANCELED ? J_CANCELLED : J_FAILED);
        }
        pthread_mutex_unlock(&S.mu);
        if (dropped)
            store_result_gone(j->id);
        if (requeued)
            store_requeue(j);
        else
            store_finished(j);
        joblist_store(&gone, job_store_gone);
        pthread_mutex_lock(&S.mu);
        w->job = NULL;
        job_unref(j); /* the worker's */
        srv_kick();
    }
    pthread_mutex_unlock(&S.mu);
    shim_block_keep(0);
    return NULL;
}

int sched_start_workers(void)
{
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
