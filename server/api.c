/* api.c - the endpoints of api/openapi.yaml and the route table that
 * maps them; results streamed from their files; jobs handed to the
 * planners. Another user's job answers exactly as an unknown one. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "http_internal.h"

/* ---- results streamed from their files ---------------------------------------------- */

/* The job's JSON with "result": the file's contents, read as it is sent. */
typedef struct {
    char *head; /* the job JSON up to ,"result": */
    size_t hlen;
    int fd;
    size_t flen;
} stream;

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    stream *s = cls;
    if (pos < s->hlen) {
        size_t n = s->hlen - (size_t)pos < max ? s->hlen - (size_t)pos : max;
        memcpy(buf, s->head + pos, n);
        return (ssize_t)n;
    }
    pos -= s->hlen;
    if (pos < s->flen) {
        size_t want = s->flen - (size_t)pos < max ? s->flen - (size_t)pos : max;
        ssize_t n = pread(s->fd, buf, want, (off_t)pos);
        return n > 0 ? n : MHD_CONTENT_READER_END_WITH_ERROR;
    }
    if (pos == s->flen && max >= 2) {
        memcpy(buf, "}\n", 2);
        return 2;
    }
    return MHD_CONTENT_READER_END_OF_STREAM;
}

static void stream_free(void *cls)
{
    stream *s = cls;
    if (s->fd >= 0)
        close(s->fd);
    free(s->head);
    free(s);
}

/* The answer with j and its result, prepared while S.mu is held (j is
 * done): the open file and the job's JSON. NULL with *err set when the
 * result is gone. */
static stream *result_stream(const sjob *j, json_t **err)
{
    char path[4200];
    *err = NULL;
    if (j->result_gone) {
        *err = http_error_body("result_removed", "id",
                               "the result of job %s was removed to keep stored results under "
                               "--results-disk-mb (%ld MiB; the oldest of the user whose "
                               "results take the most room go first)",
                               j->id, S.results_disk_mb);
        return NULL;
    }
    store_result_path(j->id, path, sizeof path);
    stream *s = calloc(1, sizeof *s);
    struct stat sb;
    if (!s)
        return NULL;
    s->fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t n = 0;
    char *head = s->fd >= 0 && !fstat(s->fd, &sb) ? http_dump(job_json(j), &n) : NULL;
    if (!head || n < 3 || !(s->head = malloc(n + 12))) {
        free(head);
        stream_free(s);
        *err = http_error_body("result_removed", "id",
                               "the result file of job %s is missing from the store", j->id);
        return NULL;
    }
    /* "{...}\n" -> "{...,"result":" */
    n -= 2;
    memcpy(s->head, head, n);
    memcpy(s->head + n, ",\"result\":", 10);
    s->hlen = n + 10;
    s->flen = (size_t)sb.st_size;
    free(head);
    return s;
}

/* Sends a prepared result (S.mu not held: libmicrohttpd takes its own
 * locks, which the SSE reader holds while it takes S.mu). */
static enum MHD_Result send_stream(req *r, unsigned status, stream *s, json_t *err, const char *id)
{
    if (!s)
        return err ? send_json(r, 404, err) : send_error(r, 503, "nomem", NULL, "out of memory");
    char loc[96];
    snprintf(loc, sizeof loc, "/v1/jobs/%s", id);
    size_t total = s->hlen + s->flen + 2;
    struct MHD_Response *resp =
        MHD_create_response_from_callback(total, 64 * 1024, stream_read, s, stream_free);
    if (!resp) {
        stream_free(s);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/json");
    MHD_add_response_header(resp, "Location", loc);
    return http_queue(r, status, resp, total);
}

/* ---- endpoints ------------------------------------------------------------------- */

static srv_model *find_model(const char *name)
{
    if (!name)
        return S.nmodels ? &S.models[0] : NULL;
    for (int i = 0; i < S.nmodels; i++)
        if (!strcmp(S.models[i].name, name))
            return &S.models[i];
    return NULL;
}

static enum MHD_Result get_models(req *r, const char *id)
{
    (void)id;
    json_t *arr = json_array();
    pthread_mutex_lock(&S.mu);
    for (int i = 0; i < S.nmodels; i++) {
        srv_model *sm = &S.models[i];
        json_t *o = json_pack("{s:s,s:b}", "name", sm->name, "loaded", sm->m != NULL);
        if (r->admin || !S.ntokens) /* the server's folders are the operator's business */
            json_object_set_new(o, "path", json_string(sm->dir));
        if (sm->m) {
            const model_config *c = &sm->m->cfg;
            char dev[16];
            cache_stats cs;
            shim_device_name(sm->m->device, dev, sizeof dev);
            cache_get_stats(sm->cache, &cs);
            json_object_set_new(o, "config",
                                json_pack("{s:i,s:i,s:i,s:i,s:i,s:i}", "n_layer", c->n_layer,
                                          "n_head", c->n_head, "n_embd", c->n_embd, "n_positions",
                                          c->n_positions, "vocab_size", c->vocab_size, "n_inner",
                                          c->n_inner));
            json_object_set_new(o, "device", json_string(dev));
            json_object_set_new(o, "dtype", json_string(shim_dtype_name(sm->m->dtype)));
            json_object_set_new(o, "gflop_per_s", json_real(2e-9 * sm->rate));
            json_object_set_new(o, "memory",
                                json_pack("{s:I,s:I,s:I}", "weights_bytes",
                                          (json_int_t)sm->m->param_bytes, "cache_bytes",
                                          (json_int_t)cs.bytes, "cache_max_bytes",
                                          (json_int_t)cs.max_bytes));
            json_object_set_new(o, "cache",
                                json_pack("{s:I,s:I,s:I,s:I}", "entries", (json_int_t)cs.entries,
                                          "hits", (json_int_t)cs.hits, "misses",
                                          (json_int_t)cs.misses, "evictions",
                                          (json_int_t)cs.evictions));
        }
        json_array_append_new(arr, o);
    }
    json_t *limits = json_pack(
        "{s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:i,s:i,s:i,s:I}", "memory_mb", (json_int_t)S.memory_mb,
        "max_job_mb", (json_int_t)S.max_job_mb, "max_result_mb", (json_int_t)S.max_result_mb,
        "max_body_kb", (json_int_t)S.max_body_kb, "max_values", (json_int_t)S.max_values, "keep_mb",
        (json_int_t)S.keep_mb, "max_job_seconds", S.max_job_seconds, "workers", S.workers,
        "user_workers", S.user_workers, "max_inflight", S.max_inflight, "user_memory_mb",
        (json_int_t)S.user_memory_mb);
    pthread_mutex_unlock(&S.mu);
    return send_json(r, 200, json_pack("{s:o,s:o}", "models", arr, "limits", limits));
}

static json_t *parse_body(req *r, enum MHD_Result *ret)
{
    json_error_t je;
    json_t *doc = json_loadb(r->body ? r->body : "", r->len, JSON_REJECT_DUPLICATES, &je);
    if (!doc) {
        *ret = send_error(r, 400, "invalid_json", "body",
                          "the body is not valid JSON: %s (line %d, column %d)", je.text, je.line,
                          je.column);
        return NULL;
    }
    if (!json_is_object(doc)) {
        json_decref(doc);
        *ret = send_error(r, 400, "invalid_json", "body", "the body must be a JSON object");
        return NULL;
    }
    return doc;
}

/* Picks the model named by doc's "model" (and removes the key). */
static srv_model *doc_model(req *r, json_t *doc, enum MHD_Result *ret)
{
    json_t *mn = json_object_get(doc, "model");
    if (mn && !json_is_string(mn)) {
        *ret = send_error(r, 422, "invalid_job", "model", "model: must be a model name");
        return NULL;
    }
    srv_model *m = find_model(mn ? json_string_value(mn) : NULL);
    if (!m) {
        *ret = send_error(r, 404, "unknown_model", "model",
                          "no model named \"%s\" (see /v1/models)", json_string_value(mn));
        return NULL;
    }
    if (!m->m) {
        *ret = send_error_h(r, 503, "loading", "model", "Retry-After", "5",
                            "model \"%s\" is still loading", m->name);
        return NULL;
    }
    json_object_del(doc, "model");
    return m;
}

/* Tokenizing a large text takes a while: a planner does it. */
static enum MHD_Result post_tokenize(req *r, const char *id)
{
    (void)id;
    enum MHD_Result ret = MHD_NO;
    json_t *doc = parse_body(r, &ret);
    if (!doc)
        return ret;
    srv_model *m = doc_model(r, doc, &ret);
    if (!m) {
        json_decref(doc);
        return ret;
    }
    if (!json_is_string(json_object_get(doc, "text"))) {
        json_decref(doc);
        return send_error(r, 422, "invalid_request", "text", "text: a string to tokenize");
    }
    const char *key;
    json_t *val;
    json_object_foreach(doc, key, val)
    { /* as a job's unknown fields are refused */
        if (strcmp(key, "text") && strcmp(key, "model")) { /* jansson: valid UTF-8, no NUL */
            ret = send_error(r, 422, "invalid_request", key,
                             "%s: unknown field (a tokenize request has text and model)", key);
            json_decref(doc);
            return ret;
        }
    }
    plan_task *t = calloc(1, sizeof *t);
    if (!t) {
        json_decref(doc);
        return send_error(r, 503, "nomem", NULL, "out of memory");
    }
    pthread_mutex_lock(&S.mu);
    r->uid = sched_user(r->user);
    *t = (plan_task){PT_TOKENIZE, r, m, doc, r->uid, "", 0, NULL, 0, NULL};
    if (planner_submit(t)) {
        pthread_mutex_unlock(&S.mu);
        json_decref(doc);
        free(t);
        return send_error_h(r, 429, "queue_full", NULL, "Retry-After", "1",
                            "the planners are busy; retry later");
    }
    r->kind = K_DEFER;
    http_suspend(r);
    pthread_mutex_unlock(&S.mu);
    return MHD_YES;
}

/* Answers a ?wait request: the result if the job ended, else 202. */
enum MHD_Result api_answer_wait(req *r)
{
    pthread_mutex_lock(&S.mu);
    sjob *j = r->job;
    if (j->state < J_DONE && srv_now() < r->deadline && !S.stopping) {
        http_suspend(r);
        pthread_mutex_unlock(&S.mu);
        return MHD_YES;
    }
    char id[SRV_ID_MAX], loc[96];
    memcpy(id, j->id, sizeof id);
    snprintf(loc, sizeof loc, "/v1/jobs/%s", j->id);
    stream *st = NULL;
    json_t *err = NULL, *body = NULL;
    int ended = j->state >= J_DONE;
    if (j->state == J_DONE)
        st = result_stream(j, &err);
    else
        body = job_json(j);
    pthread_mutex_unlock(&S.mu);
    if (body)
        return http_send_json_h(r, ended ? 200 : 202, body, "Location", loc);
    return send_stream(r, 200, st, err, id);
}

static enum MHD_Result post_job(req *r, const char *id)
{
    (void)id;
    enum MHD_Result ret = MHD_NO;
    const char *w = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "wait");
    double wait = 0;
    if (w) {
        char *end;
        wait = strtod(w, &end);
        if (!*w || *end || w[strspn(w, "0123456789.")] || !(wait >= 0 && wait <= 3600))
            return send_error(r, 400, "invalid_request", "wait",
                              "wait: seconds to wait for the result, 0..3600");
    }
    pthread_mutex_lock(&S.mu);
    int ready = S.ready;
    pthread_mutex_unlock(&S.mu);
    if (!ready)
        return send_error_h(r, 503, "loading", NULL, "Retry-After", "5",
                            "the server is still loading its models");
    json_t *doc = parse_body(r, &ret);
    if (!doc)
        return ret;
    srv_model *m = doc_model(r, doc, &ret);
    if (!m) {
        json_decref(doc);
        return ret;
    }
    plan_task *t = calloc(1, sizeof *t);
    if (!t) {
        json_decref(doc);
        return send_error(r, 503, "nomem", NULL, "out of memory");
    }
    *t = (plan_task){PT_SUBMIT, r, m, doc, r->uid, "", wait, NULL, 0, NULL};
    snprintf(t->owner, sizeof t->owner, "%s", r->user);
    pthread_mutex_lock(&S.mu);
    srv_user *u = &S.users[r->uid];
    if (S.nqueued + S.nplanning >= S.queue_max) {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", 1 + S.nqueued / (S.workers ? S.workers : 1));
        pthread_mutex_unlock(&S.mu);
        json_decref(doc);
        free(t);
        return send_error_h(r, 429, "queue_full", NULL, "Retry-After", ra,
                            "the queue is full (%d jobs); retry later", S.queue_max);
    }
    if (u->queued + u->running + u->planning >= S.max_inflight) {
        pthread_mutex_unlock(&S.mu);
        json_decref(doc);
        free(t);
        return send_error_h(r, 429, "too_many_jobs", NULL, "Retry-After", "1",
                            "this token already has %d jobs queued, running or being planned "
                            "(the cap)",
                            S.max_inflight);
    }
    r->kind = K_DEFER;
    planner_submit(t); /* room was checked above */
    http_suspend(r);
    pthread_mutex_unlock(&S.mu);
    return MHD_YES;
}

static enum MHD_Result get_jobs(req *r, const char *id)
{
    (void)id;
    pthread_mutex_lock(&S.mu);
    json_t *list = jobs_list(r->user, r->admin);
    pthread_mutex_unlock(&S.mu);
    return send_json(
        r, 200,
        json_pack("{s:o,s:s,s:b}", "jobs", list, "user", r->user, "all", !S.ntokens || r->admin));
}

enum MHD_Result api_send_prepared(req *r)
{
    if (!r->answered) /* the planners stopped first (shutdown) */
        return http_send_draining(r);
    if (!r->ans_body)
        return send_error(r, 503, "nomem", NULL, "out of memory");
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(r->ans_len, r->ans_body, MHD_RESPMEM_MUST_FREE);
    if (!resp)
        return MHD_NO;
    r->ans_body = NULL; /* the response owns it */
    MHD_add_response_header(resp, "Content-Type", r->ans_ctype);
    if (r->ans_hname[0])
        MHD_add_response_header(resp, r->ans_hname, r->ans_hval);
    return http_queue(r, r->ans_status, resp, r->ans_len);
}

/* Hands the drawing to a planner and suspends r (caller holds S.mu); on a
 * bad request *err gets the 400 body to send once S.mu is released. */
static enum MHD_Result get_graph(req *r, sjob *j, json_t **err, unsigned *status)
{
    *status = 400;
    const char *vs = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "variant");
    int nvar = j->nvar;
    long variant = 0;
    char *end = NULL;
    if (vs)
        variant = strtol(vs, &end, 10);
    if (vs && (!*vs || *end || variant < 0 || variant >= (nvar ? nvar : 1))) {
        *err = nvar ? http_error_body("invalid_request", "variant",
                                      "variant: an index in 0..%d (the job's sweep has %d "
                                      "variants)",
                                      nvar - 1, nvar)
                    : http_error_body("invalid_request", "variant",
                                      "variant: this job is not a sweep; leave variant out (or 0)");
        return MHD_YES;
    }
    plan_task *t = j->model && j->model->m ? calloc(1, sizeof *t) : NULL;
    if (t)
        *t = (plan_task){PT_SVG, r, j->model, NULL, r->uid, "", 0, j, variant, NULL};
    if (!t || planner_submit(t)) {
        free(t);
        *err = http_error_body("queue_full", NULL, "the planners are busy; retry later");
        *status = 429;
        return MHD_YES;
    }
    job_ref(j);
    r->kind = K_DEFER;
    http_suspend(r);
    return MHD_YES;
}

/* The job id names, if this request may see it (caller holds S.mu).
 * Another user's job is NULL, exactly as an unknown one. */
static sjob *visible_job(req *r, const char *id)
{
    sjob *j = job_find(id);
    return j && job_visible(j, r->user, r->admin) ? j : NULL;
}

static enum MHD_Result unknown_job(req *r, const char *id)
{
    return send_error(r, 404, "not_found", "id",
                      "unknown job %s (results are kept %.0f s after a job ends; a job is "
                      "visible only to the token that submitted it)",
                      id, S.result_ttl);
}

static enum MHD_Result get_job(req *r, const char *id)
{
    pthread_mutex_lock(&S.mu);
    sjob *j = visible_job(r, id);
    if (!j) {
        pthread_mutex_unlock(&S.mu);
        return unknown_job(r, id);
    }
    stream *st = NULL;
    json_t *err = NULL, *body = NULL;
    if (j->state == J_DONE)
        st = result_stream(j, &err);
    else
        body = job_json(j);
    pthread_mutex_unlock(&S.mu);
    return body ? send_json(r, 200, body) : send_stream(r, 200, st, err, id);
}

static enum MHD_Result delete_job(req *r, const char *id)
{
    pthread_mutex_lock(&S.mu);
    sjob *j = visible_job(r, id);
    if (!j) {
        pthread_mutex_unlock(&S.mu);
        return unknown_job(r, id);
    }
    int was_queued = j->state == J_QUEUED;
    sched_cancel(j);
    if (was_queued) /* a job behind it, or another user's held for memory, may start */
        srv_kick();
    json_t *body = job_json(j);
    job_ref(j);
    pthread_mutex_unlock(&S.mu);
    if (was_queued) /* final now: record it */
        store_finished(j);
    pthread_mutex_lock(&S.mu);
    job_unref(j);
    pthread_mutex_unlock(&S.mu);
    return send_json(r, 200, body);
}

static enum MHD_Result get_events(req *r, const char *id)
{
    pthread_mutex_lock(&S.mu);
    sjob *j = visible_job(r, id);
    if (!j) {
        pthread_mutex_unlock(&S.mu);
        return unknown_job(r, id);
    }
    r->kind = K_SSE;
    r->job = j;
    job_ref(j);
    pthread_mutex_unlock(&S.mu);
    return sse_start(r);
}

/* graph.svg: a planner plans the job again and draws it */
static enum MHD_Result get_graph_svg(req *r, const char *id)
{
    pthread_mutex_lock(&S.mu);
    sjob *j = visible_job(r, id);
    if (!j) {
        pthread_mutex_unlock(&S.mu);
        return unknown_job(r, id);
    }
    json_t *err = NULL;
    unsigned status;
    enum MHD_Result ret = get_graph(r, j, &err, &status); /* answers or suspends */
    pthread_mutex_unlock(&S.mu);
    return err ? send_json(r, status, err) : ret;
}

/* A picture drawn when the job finished, kept beside its result: kind
 * "heatmap" or "circuit"; none says which jobs have one. */
static enum MHD_Result get_picture(req *r, const char *id, const char *kind, const char *none)
{
    char path[4200], code[32];
    snprintf(code, sizeof code, "no_%s", kind);
    pthread_mutex_lock(&S.mu);
    sjob *j = visible_job(r, id);
    if (!j) {
        pthread_mutex_unlock(&S.mu);
        return unknown_job(r, id);
    }
    jstate st = j->state;
    int gone = j->result_gone;
    store_picture_path(j->id, kind, path, sizeof path);
    pthread_mutex_unlock(&S.mu);
    if (st == J_QUEUED || st == J_RUNNING)
        return send_error(r, 409, "not_done", "id", "job %s is %s; its %s comes with its result",
                          id, jstate_name(st), kind);
    if (st != J_DONE)
        return send_error(r, 404, code, "id", "job %s %s: it has no result", id, jstate_name(st));
    if (gone)
        return send_error(r, 404, "result_removed", "id",
                          "the result of job %s was removed to keep stored results under "
                          "--results-disk-mb",
                          id);
    FILE *f = fopen(path, "r");
    char *svg = NULL;
    long n = -1;
    if (f && !fseek(f, 0, SEEK_END) && (n = ftell(f)) >= 0 && !fseek(f, 0, SEEK_SET) &&
        (svg = malloc((size_t)n + 1)) && fread(svg, 1, (size_t)n, f) != (size_t)n)
        n = -1;
    if (f)
        fclose(f);
    if (!f || n < 0) {
        free(svg);
        return send_error(r, 404, code, "id", "job %s has no %s: %s", id, kind, none);
    }
    svg[n] = 0;
    return http_send_text(r, 200, "image/svg+xml", svg, (size_t)n);
}

static enum MHD_Result get_heatmap_svg(req *r, const char *id)
{
    return get_picture(r, id, "heatmap",
                       "it is not a grid of one or two axes (a \"grid\" job draws one)");
}

static enum MHD_Result get_circuit_svg(req *r, const char *id)
{
    return get_picture(r, id, "circuit",
                       "it is not an \"attribution\", \"discover\" or \"circuit\" job (a "
                       "sweep's or grid's circuits are not drawn)");
}

/* ---- status, documents and the web UI ------------------------------------------- */

static enum MHD_Result serve_file(req *r, const char *ctype, const char *body)
{
    char *doc = strdup(body);
    return doc ? http_send_text(r, 200, ctype, doc, strlen(doc)) : MHD_NO;
}

static enum MHD_Result get_healthz(req *r, const char *id)
{
    (void)id;
    return send_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

static enum MHD_Result get_readyz(req *r, const char *id)
{
    (void)id;
    pthread_mutex_lock(&S.mu);
    int ready = S.ready && !S.draining;
    const char *why = S.draining ? "draining" : S.ready ? "ready" : "loading";
    pthread_mutex_unlock(&S.mu);
    return send_json(r, ready ? 200 : 503, json_pack("{s:s}", "status", why));
}

static enum MHD_Result get_openapi(req *r, const char *id)
{
    (void)id;
    return serve_file(r, "application/yaml", npp_openapi_yaml);
}

static enum MHD_Result get_index(req *r, const char *id)
{
    (void)id;
    return serve_file(r, "text/html; charset=utf-8", npp_web_index);
}

static enum MHD_Result get_app(req *r, const char *id)
{
    (void)id;
    return serve_file(r, "text/javascript; charset=utf-8", npp_web_app);
}

static enum MHD_Result get_style(req *r, const char *id)
{
    (void)id;
    return serve_file(r, "text/css; charset=utf-8", npp_web_style);
}

static enum MHD_Result get_metrics(req *r, const char *id)
{
    (void)id;
    char *m = metrics_render();
    return m ? http_send_text(r, 200, "text/plain; version=0.0.4", m, strlen(m)) : MHD_NO;
}

/* ---- the routes ------------------------------------------------------------------ */

/* Every endpoint once; http.c matches the path, derives 405 (and Allow)
 * from the rows whose pattern matches, asks for a token where `auth`, and
 * answers 503 to `work` while draining. */
const route_def api_routes[] = {
    {"GET", "/healthz", 0, 0, get_healthz},
    {"GET", "/readyz", 0, 0, get_readyz},
    {"GET", "/openapi.yaml", 0, 0, get_openapi},
    {"GET", "/", 0, 0, get_index},
    {"GET", "/index.html", 0, 0, get_index},
    {"GET", "/app.js", 0, 0, get_app},
    {"GET", "/style.css", 0, 0, get_style},
    {"GET", "/metrics", 1, 0, get_metrics},
    {"GET", "/v1/models", 1, 0, get_models},
    {"POST", "/v1/tokenize", 1, 1, post_tokenize},
    {"GET", "/v1/jobs", 1, 0, get_jobs},
    {"POST", "/v1/jobs", 1, 1, post_job},
    {"GET", "/v1/jobs/{id}", 1, 0, get_job},
    {"DELETE", "/v1/jobs/{id}", 1, 0, delete_job},
    {"GET", "/v1/jobs/{id}/graph.svg", 1, 0, get_graph_svg},
    {"GET", "/v1/jobs/{id}/heatmap.svg", 1, 0, get_heatmap_svg},
    {"GET", "/v1/jobs/{id}/circuit.svg", 1, 0, get_circuit_svg},
    {"GET", "/v1/jobs/{id}/events", 1, 0, get_events},
};
const int api_nroutes = (int)(sizeof api_routes / sizeof api_routes[0]);
