/* planner.c - planner threads: everything that plans, off the HTTP thread.
 * A submitted job is parsed, planned and estimated here (run_prepare),
 * refused with 422 when its estimated peak memory or result is over the
 * server's limits, else recorded in the store and queued; graph.svg plans
 * the stored document again and renders it. Tasks wait in per-user FIFOs
 * served round-robin, so one user's costly plans delay another's by at
 * most the plan in progress. Planning is bounded in nodes, bytes and time
 * (--plan-seconds) and stops when the server shuts down. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/tok.h"
#include "output/svg.h"
#include "srv.h"

#define SVG_MAX_NODES 50000 /* path-tree boxes we agree to lay out */

static int64_t next_seq = 1;

static run_opts plan_opts(srv_model *m)
{
    size_t job = (size_t)S.max_job_mb << 20;
    return (run_opts){.cache = m->cache,
                      .cancel = &S.plan_cancel,
                      .max_values = (size_t)S.max_values,
                      .model_name = m->name,
                      .chunk_bytes = (size_t)S.chunk_mb << 20,
                      .max_plan_bytes = job < PLAN_MAX_BYTES ? job : PLAN_MAX_BYTES,
                      .plan_seconds = S.plan_seconds};
}

/* The answer to a refused job (caller holds S.mu). */
static void refuse(req *r, const npp_err *e, int rc)
{
    if (rc == NPP_ECANCELED) {
        http_answer(
            r, 503,
            http_error_body("draining", NULL, "the server is shutting down and takes no new jobs"),
            "Retry-After", "30");
        return;
    }
    unsigned status = rc == NPP_ENOMEM ? 503 : rc == NPP_ETORCH || rc == NPP_EIO ? 500 : 422;
    http_answer(r, status,
                http_error_body(rc == NPP_ELIMIT ? "plan_too_large" : "invalid_job", e->field, "%s",
                                e->message),
                NULL, NULL);
}

static double mib(size_t b)
{
    return (double)b / (1 << 20);
}

/* Plans t's job; records and queues it, or answers why not. */
static void submit(plan_task *t)
{
    npp_err e = {0};
    run_output *run = NULL;
    run_opts o = plan_opts(t->model);
    int rc = run_prepare(t->model->m, t->doc, &o, &run, &e);
    char *doc = rc ? NULL : json_dumps(t->doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
    sjob *j = NULL;
    pthread_mutex_lock(&S.mu);
    if (rc) {
        S.plans_refused++;
        refuse(t->r, &e, rc);
        goto done;
    }
    const run_estimate *est = &run->est;
    int per_user = S.user_memory_mb && S.user_memory_mb < S.max_job_mb;
    long max_mb = per_user ? S.user_memory_mb : S.max_job_mb;
    if (est->peak_bytes > (size_t)max_mb << 20) {
        S.plans_refused++;
        http_answer(t->r, 422,
                    http_error_body("job_too_large", est->peak_field,
                                    "%s: the job needs about %.1f MiB at its peak (estimated "
                                    "from its plan), over this server's %s of %ld "
                                    "MiB; use fewer examples, tokens or variants, or ask for "
                                    "smaller outputs",
                                    est->peak_field, mib(est->peak_bytes),
                                    per_user ? "--user-memory-mb" : "--max-job-mb", max_mb),
                    NULL, NULL);
        goto done;
    }
    if (est->result_bytes > (size_t)S.max_result_mb << 20) {
        S.plans_refused++;
        http_answer(t->r, 422,
                    http_error_body("result_too_large", est->result_field,
                                    "%s: the result would be about %.1f MiB, over this server's "
                                    "--max-result-mb of %ld MiB; ask for fewer positions, "
                                    "layers or tokens",
                                    est->result_field, mib(est->result_bytes), S.max_result_mb),
                    NULL, NULL);
        goto done;
    }
    const char *who, *field;
    double secs = run_seconds(est, t->model->rate, &field), own = run->job->max_seconds,
           limit = job_time_limit(own, &who);
    if (limit > 0 && secs > limit) {
        S.plans_refused++;
        http_answer(t->r, 422,
                    http_error_body("job_too_long", field,
                                    "%s: the job needs about %.3g s (%.4g GFLOP of compute "
                                    "estimated from its plan, at this server's %.4g GFLOP/s for "
                                    "model %s, and %.3g s to write its %.1f MiB result), over %s "
                                    "of %g s; use fewer examples, tokens, variants, steps or "
                                    "outputs, or split the job",
                                    field, secs, 2e-9 * est->work, 2e-9 * t->model->rate,
                                    t->model->name,
                                    (double)est->result_bytes * RUN_TEXT_SECONDS_PER_BYTE,
                                    mib(est->result_bytes), who, limit),
                    NULL, NULL);
        goto done;
    }
    if (!doc || !(j = calloc(1, sizeof *j))) {
        http_answer(t->r, 503, http_error_body("nomem", NULL, "out of memory"), NULL, NULL);
        goto done;
    }
    job_new_id(j->id);
    j->state = J_QUEUED;
    j->model = t->model;
    snprintf(j->owner, sizeof j->owner, "%s", t->owner);
    j->user = t->user;
    j->seq = next_seq++;
    j->est_peak = est->peak_bytes, j->est_result = est->result_bytes;
    j->est_seconds = secs, j->work_field = field;
    j->own_seconds = own;
    j->total = run->plan.nv, j->nvar = run->job->nvar;
    j->created = srv_wall(), j->t_submit = srv_now();
    pthread_mutex_unlock(&S.mu);
    /* recorded before it is answered: an accepted job survives a crash */
    char msg[512];
    int stored = store_insert(j, doc, msg, sizeof msg);
    pthread_mutex_lock(&S.mu);
    if (stored) {
        http_answer(t->r, 503, http_error_body("store", NULL, "%s", msg), NULL, NULL);
        free(j);
        goto done;
    }
    job_insert(j);
    job_enqueue(j);
    srv_kick();
    if (S.draining && S.drain_cancel) { /* planned as SIGTERM came, and nothing may wait */
        sched_cancel(j);
        job_ref(j);
        pthread_mutex_unlock(&S.mu);
        store_finished(j);
        pthread_mutex_lock(&S.mu);
        job_unref(j);
    }
    if (t->wait > 0) {
        http_wait_on(t->r, j, t->wait);
    } else {
        char loc[96];
        snprintf(loc, sizeof loc, "/v1/jobs/%s", j->id);
        http_answer(t->r, 202, job_json(j), "Location", loc);
    }
done:
    S.users[t->user].planning--;
    pthread_mutex_unlock(&S.mu);
    free(doc);
    run_output_free(run);
}

/* Plans t's stored job again and draws the variant's path tree. */
static void draw(plan_task *t)
{
    npp_err e = {0};
    run_output *run = NULL;
    char *svg = NULL, *text = store_doc(t->job->id);
    size_t len = 0;
    json_t *doc = text ? json_loads(text, 0, NULL) : NULL;
    int rc = -1;
    if (doc && t->model->m) {
        run_opts o = plan_opts(t->model);
        o.max_values = 100000000; /* it was accepted: draw what it planned */
        rc = run_prepare(t->model->m, doc, &o, &run, &e);
    }
    if (!rc) {
        const plan *p = run_tree(run, (int)t->variant);
        if (p->nn > SVG_MAX_NODES)
            rc = npp_fail(&e, NPP_ELIMIT, "graph",
                          "the path tree has %d boxes; drawing is limited to %d", p->nn,
                          SVG_MAX_NODES);
        else
            rc = svg_render(p, run->job, &svg, &len, &e);
    }
    pthread_mutex_lock(&S.mu);
    if (!rc)
        http_answer_svg(t->r, svg, len);
    else if (rc == NPP_ELIMIT)
        http_answer(t->r, 422, http_error_body("graph_too_large", "graph", "%s", e.message), NULL,
                    NULL);
    else if (rc == NPP_ECANCELED)
        http_answer(t->r, 503, http_error_body("draining", NULL, "the server is shutting down"),
                    "Retry-After", "30");
    else
        http_answer(t->r, 500,
                    http_error_body("internal", NULL, "cannot draw job %s: %s", t->job->id,
                                    e.code ? e.message : "its document is not in the store"),
                    NULL, NULL);
    S.users[t->user].planning--;
    job_unref(t->job);
    pthread_mutex_unlock(&S.mu);
    json_decref(doc);
    free(text);
    run_output_free(run);
}

static void tokenize(plan_task *t)
{
    json_t *text = json_object_get(t->doc, "text"), *out;
    const tok *tk = t->model->m->tok;
    int32_t *ids = NULL;
    size_t n = 0;
    npp_err e = {0};
    if (tok_encode(tk, json_string_value(text), json_string_length(text), &ids, &n, &e)) {
        out = http_error_body("invalid_request", "text", "text: %s", e.message);
    } else {
        json_t *a = json_array(), *toks = json_array();
        for (size_t i = 0; i < n; i++) {
            char *s;
            size_t len;
            json_array_append_new(a, json_integer(ids[i]));
            if (!tok_decode(tk, &ids[i], 1, &s, &len, NULL)) {
                json_array_append_new(toks, json_stringn(s, len));
                free(s);
            }
        }
        out = json_pack("{s:s,s:o,s:o}", "model", t->model->name, "ids", a, "tokens", toks);
    }
    free(ids);
    pthread_mutex_lock(&S.mu);
    http_answer(t->r, e.code ? 422 : 200, out, NULL, NULL);
    S.users[t->user].planning--;
    pthread_mutex_unlock(&S.mu);
}

/* The next task, round-robin over users (caller holds S.mu). */
static plan_task *pick(void)
{
    for (int k = 0; k < S.nusers; k++) {
        int i = (S.prr + k) % S.nusers;
        srv_user *u = &S.users[i];
        if (u->phead) {
            plan_task *t = u->phead;
            if (!(u->phead = t->next))
                u->ptail = NULL;
            S.prr = (i + 1) % S.nusers;
            S.nplanning--;
            return t;
        }
    }
    return NULL;
}

static void *planner_main(void *arg)
{
    (void)arg;
    shim_set_threads(1);
    pthread_mutex_lock(&S.mu);
    for (;;) {
        plan_task *t;
        while (!(t = pick()) && !S.plan_stop)
            pthread_cond_wait(&S.plan_cv, &S.mu);
        if (!t)
            break;
        S.nplans_running++;
        pthread_mutex_unlock(&S.mu);
        if (t->kind == PT_SUBMIT)
            submit(t);
        else if (t->kind == PT_SVG)
            draw(t);
        else
            tokenize(t);
        json_decref(t->doc);
        free(t);
        pthread_mutex_lock(&S.mu);
        S.nplans_running--;
    }
    pthread_mutex_unlock(&S.mu);
    return NULL;
}

int planner_start(void)
{
    pthread_cond_init(&S.plan_cv, NULL);
    for (int i = 0; i < S.planners; i++)
        if (pthread_create(&S.planner[i], NULL, planner_main, NULL))
            return -1;
    return 0;
}

void planner_set_seq(int64_t after)
{
    if (after >= next_seq)
        next_seq = after + 1;
}

int planner_submit(plan_task *t)
{
    srv_user *u = &S.users[t->user];
    if (S.nplanning >= S.queue_max)
        return -1;
    t->next = NULL;
    if (u->ptail)
        u->ptail->next = t;
    else
        u->phead = t;
    u->ptail = t;
    u->planning++;
    S.nplanning++;
    pthread_cond_signal(&S.plan_cv);
    return 0;
}

void planner_stop(void)
{
    pthread_mutex_lock(&S.mu);
    S.plan_stop = 1;
    __atomic_store_n(&S.plan_cancel, 1, __ATOMIC_RELAXED);
    /* tasks not started: answered now */
    for (plan_task *t; (t = pick());) {
        http_answer(
            t->r, 503,
            http_error_body("draining", NULL, "the server is shutting down and takes no new jobs"),
            "Retry-After", "30");
        S.users[t->user].planning--;
        if (t->job)
            job_unref(t->job);
        json_decref(t->doc);
        free(t);
    }
    pthread_cond_broadcast(&S.plan_cv);
    pthread_mutex_unlock(&S.mu);
    for (int i = 0; i < S.planners; i++)
        pthread_join(S.planner[i], NULL);
    pthread_cond_destroy(&S.plan_cv);
}
