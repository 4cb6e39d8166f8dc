/* http.c - nppd's HTTP side (libmicrohttpd, internal polling thread with
 * epoll): routing, auth, limits, JSON errors, long polls (?wait) and
 * Server-Sent Events by suspend/resume, one JSON log line per request.
 * Thread roles and locking: see srv.h. Every error is
 * {"error": {"code", "message", "field"}}. */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../engine/sha256.h"
#include "../engine/svg.h"
#include "../engine/tok.h"
#include "srv.h"

enum { K_PLAIN, K_WAIT, K_SSE };

struct req {
    struct MHD_Connection *conn;
    char method[8], path[200], user[64];
    char *body;
    size_t len, cap;
    int too_big, status, kind, suspended, finished_sse;
    int uid;
    size_t bytes_out;
    double t0, deadline;
    sjob *job;     /* a reference, for K_WAIT and K_SSE */
    uint64_t seen; /* the job version last reported, + 1 (SSE); 0: none yet */
    char *sse;     /* pending SSE bytes */
    size_t sse_len, sse_off;
    req *prev, *next; /* the suspended list (under S.mu) */
};

static req *suspended; /* every suspended request, under S.mu */

static void link_suspended(req *r)
{
    r->prev = NULL;
    r->next = suspended;
    if (suspended)
        suspended->prev = r;
    suspended = r;
    r->suspended = 1;
}

static void unlink_suspended(req *r)
{
    if (!r->suspended)
        return;
    if (r->prev)
        r->prev->next = r->next;
    else
        suspended = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
    r->suspended = 0;
}

/* Requests woken but not yet resumed. MHD_resume_connection is called by
 * the loop thread without S.mu held (http_flush_resumes), so no thread ever
 * holds S.mu while waiting for libmicrohttpd's own locks. A woken request
 * stays valid: libmicrohttpd does not touch (or complete) a connection
 * until it is resumed. */
static req *to_resume;

static void wake(req *r)
{
    unlink_suspended(r);
    r->next = to_resume;
    to_resume = r;
    uv_async_send(&S.resume);
}

void http_flush_resumes(void)
{
    pthread_mutex_lock(&S.mu);
    req *list = to_resume;
    to_resume = NULL;
    pthread_mutex_unlock(&S.mu);
    while (list) {
        req *n = list->next;
        list->next = NULL;
        MHD_resume_connection(list->conn);
        list = n;
    }
}

void http_wake_job(sjob *j)
{
    for (req *r = suspended, *n; r; r = n) {
        n = r->next;
        if (r->job == j)
            wake(r);
    }
}

void http_tick(double now)
{
    for (req *r = suspended, *n; r; r = n) {
        n = r->next;
        if (r->kind == K_WAIT && now >= r->deadline)
            wake(r);
    }
}

void http_resume_all(void)
{
    pthread_mutex_lock(&S.mu);
    while (suspended)
        wake(suspended);
    pthread_mutex_unlock(&S.mu);
    http_flush_resumes();
}

/* ---- responses ---------------------------------------------------------------- */

static enum MHD_Result send_text(req *r, unsigned status, const char *ctype, char *text, size_t len)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", ctype);
    r->status = (int)status;
    r->bytes_out = len;
    enum MHD_Result ret = MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* Sends j (taken) as JSON; extra headers as name, value pairs, NULL-ended. */
static enum MHD_Result send_json_h(req *r, unsigned status, json_t *j, ...)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (!s)
        return MHD_NO;
    size_t n = strlen(s);
    char *t = realloc(s, n + 2);
    if (t) {
        s = t;
        s[n++] = '\n';
        s[n] = 0;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(n, s, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(s);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/json");
    va_list ap;
    va_start(ap, j);
    for (const char *k; (k = va_arg(ap, const char *));)
        MHD_add_response_header(resp, k, va_arg(ap, const char *));
    va_end(ap);
    r->status = (int)status;
    r->bytes_out = n;
    enum MHD_Result ret = MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

#define send_json(r, status, j) send_json_h(r, status, j, NULL)

static enum MHD_Result send_error_h(req *r, unsigned status, const char *code, const char *field,
                                    const char *hname, const char *hval, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

static enum MHD_Result send_error_h(req *r, unsigned status, const char *code, const char *field,
                                    const char *hname, const char *hval, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *e = json_pack("{s:{s:s,s:s,s:s}}", "error", "code", code, "message", msg, "field",
                          field ? field : "");
    if (hname)
        return send_json_h(r, status, e, hname, hval, NULL);
    return send_json(r, status, e);
}

#define send_error(r, status, code, field, ...)                                                    \
    send_error_h(r, status, code, field, NULL, NULL, __VA_ARGS__)

/* ---- auth ------------------------------------------------------------------------ */

/* 0 and r->user set if allowed; otherwise an error was sent (returns 1). */
static int authorize(req *r, enum MHD_Result *ret)
{
    if (!S.ntokens) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        char addr[64] = "local";
        if (ci && ci->client_addr) {
            const struct sockaddr *sa = ci->client_addr;
            if (sa->sa_family == AF_INET)
                inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, addr, sizeof addr);
            else if (sa->sa_family == AF_INET6)
                inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, addr,
                          sizeof addr);
        }
        snprintf(r->user, sizeof r->user, "%s", addr);
        return 0;
    }
    const char *h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0 || !h[7]) {
        *ret = send_error_h(r, 401, "unauthorized", "Authorization", "WWW-Authenticate",
                            "Bearer realm=\"nppd\"",
                            "this server needs a bearer token (Authorization: Bearer TOKEN)");
        return 1;
    }
    /* Compare digests, every token, no early exit: constant time. */
    unsigned char d[32];
    sha256(h + 7, strlen(h + 7), d);
    int found = -1;
    for (int i = 0; i < S.ntokens; i++) {
        unsigned diff = 0;
        for (int k = 0; k < 32; k++)
            diff |= (unsigned)(d[k] ^ S.token_hash[i][k]);
        int hit = diff == 0;
        found = hit && found < 0 ? i : found;
    }
    if (found < 0) {
        *ret = send_error(r, 403, "forbidden", "Authorization", "the bearer token is not valid");
        return 1;
    }
    snprintf(r->user, sizeof r->user, "%s", S.token_name[found]);
    return 0;
}

/* ---- helpers -------------------------------------------------------------------- */

static srv_model *find_model(const char *name)
{
    if (!name)
        return S.nmodels ? &S.models[0] : NULL;
    for (int i = 0; i < S.nmodels; i++)
        if (!strcmp(S.models[i].name, name))
            return &S.models[i];
    return NULL;
}

static const char *state_name(jstate s)
{
    static const char *n[] = {"queued", "running", "done", "failed", "cancelled"};
    return n[s];
}

static unsigned status_of(int code)
{
    switch (code) {
    case NPP_ENOMEM: return 503;
    case NPP_ETORCH:
    case NPP_EIO: return 500;
    default: return 422;
    }
}

/* The job as the API shows it (caller holds S.mu). */
static json_t *job_json(const sjob *j, int with_result)
{
    char created[32], link[96];
    struct tm tm;
    gmtime_r(&j->created, &tm);
    strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:{s:I,s:I}}", "id", j->id, "state",
                          state_name(j->state), "model", j->model->name, "created", created,
                          "progress", "done", (json_int_t)j->done, "total", (json_int_t)j->total);
    if (j->t_start > 0)
        json_object_set_new(o, "queue_seconds", json_real(j->t_start - j->t_submit));
    if (j->t_end > 0 && j->t_start > 0)
        json_object_set_new(o, "run_seconds", json_real(j->t_end - j->t_start));
    json_t *links = json_object();
    snprintf(link, sizeof link, "/v1/jobs/%s", j->id);
    json_object_set_new(links, "self", json_string(link));
    snprintf(link, sizeof link, "/v1/jobs/%s/graph.svg", j->id);
    json_object_set_new(links, "graph", json_string(link));
    snprintf(link, sizeof link, "/v1/jobs/%s/events", j->id);
    json_object_set_new(links, "events", json_string(link));
    json_object_set_new(o, "links", links);
    if (j->state == J_FAILED || j->state == J_CANCELLED)
        json_object_set_new(
            o, "error",
            json_pack("{s:s,s:s,s:s}", "code",
                      j->state == J_CANCELLED ? "cancelled" : npp_err_name(j->err.code), "message",
                      j->err.message, "field", j->err.field));
    if (with_result && j->state == J_DONE && j->run && j->run->result)
        json_object_set_new(o, "result", json_incref(j->run->result));
    return o;
}

/* ---- endpoints -------------------------------------------------------------------- */

static enum MHD_Result get_models(req *r)
{
    json_t *arr = json_array();
    pthread_mutex_lock(&S.mu);
    for (int i = 0; i < S.nmodels; i++) {
        srv_model *sm = &S.models[i];
        json_t *o =
            json_pack("{s:s,s:s,s:b}", "name", sm->name, "path", sm->dir, "loaded", sm->m != NULL);
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
    pthread_mutex_unlock(&S.mu);
    return send_json(r, 200, json_pack("{s:o}", "models", arr));
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

static enum MHD_Result post_tokenize(req *r)
{
    enum MHD_Result ret = MHD_NO;
    json_t *doc = parse_body(r, &ret);
    if (!doc)
        return ret;
    srv_model *m = doc_model(r, doc, &ret);
    json_t *text = json_object_get(doc, "text");
    if (m && !json_is_string(text)) {
        ret = send_error(r, 422, "invalid_request", "text", "text: a string to tokenize");
    } else if (m) {
        int32_t *ids;
        size_t n;
        npp_err e = {0};
        if (tok_encode(m->m->tok, json_string_value(text), json_string_length(text), &ids, &n,
                       &e)) {
            ret = send_error(r, 422, "invalid_request", "text", "text: %s", e.message);
        } else {
            json_t *a = json_array(), *t = json_array();
            for (size_t i = 0; i < n; i++) {
                char *s;
                size_t len;
                json_array_append_new(a, json_integer(ids[i]));
                if (!tok_decode(m->m->tok, &ids[i], 1, &s, &len, NULL)) {
                    json_array_append_new(t, json_stringn(s, len));
                    free(s);
                }
            }
            free(ids);
            ret = send_json(r, 200,
                            json_pack("{s:s,s:o,s:o}", "model", m->name, "ids", a, "tokens", t));
        }
    }
    json_decref(doc);
    return ret;
}

static void suspend(req *r)
{
    link_suspended(r);
    MHD_suspend_connection(r->conn);
}

/* Answers a ?wait request: the result if the job ended, else 202. */
static enum MHD_Result answer_wait(req *r)
{
    pthread_mutex_lock(&S.mu);
    sjob *j = r->job;
    if (j->state < J_DONE && srv_now() < r->deadline && !S.stopping) {
        suspend(r);
        pthread_mutex_unlock(&S.mu);
        return MHD_YES;
    }
    int ended = j->state >= J_DONE;
    json_t *o = job_json(j, 1);
    char loc[64];
    snprintf(loc, sizeof loc, "/v1/jobs/%s", j->id);
    pthread_mutex_unlock(&S.mu);
    return send_json_h(r, ended ? 200 : 202, o, "Location", loc, NULL);
}

static enum MHD_Result send_draining(req *r)
{
    return send_error_h(r, 503, "draining", NULL, "Retry-After", "30",
                        "the server is shutting down and takes no new jobs");
}

static enum MHD_Result post_job(req *r)
{
    enum MHD_Result ret = MHD_NO;
    const char *w = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "wait");
    double wait = 0;
    if (w) {
        char *end;
        wait = strtod(w, &end);
        if (*end || !(wait >= 0 && wait <= 3600))
            return send_error(r, 400, "invalid_request", "wait",
                              "wait: seconds to wait for the result, 0..3600");
    }
    pthread_mutex_lock(&S.mu);
    int draining = S.draining, ready = S.ready;
    pthread_mutex_unlock(&S.mu);
    if (draining)
        return send_draining(r);
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
    npp_err e = {0};
    run_output *run = NULL;
    run_opts o = {.cache = m->cache, .max_values = (size_t)S.max_values, .model_name = m->name};
    int rc = run_prepare(m->m, doc, &o, &run, &e);
    json_decref(doc);
    if (rc)
        return send_error(r, status_of(rc), rc == NPP_ELIMIT ? "plan_too_large" : "invalid_job",
                          e.field, "%s", e.message);
    pthread_mutex_lock(&S.mu);
    if (S.draining) { /* SIGTERM came while the job was being prepared */
        pthread_mutex_unlock(&S.mu);
        run_output_free(run);
        return send_draining(r);
    }
    srv_user *u = &S.users[r->uid];
    if (S.nqueued >= S.queue_max) {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", 1 + S.nqueued / (S.workers ? S.workers : 1));
        pthread_mutex_unlock(&S.mu);
        run_output_free(run);
        return send_error_h(r, 429, "queue_full", NULL, "Retry-After", ra,
                            "the queue is full (%d jobs); retry later", S.queue_max);
    }
    if (u->queued + u->running >= S.max_inflight) {
        pthread_mutex_unlock(&S.mu);
        run_output_free(run);
        return send_error_h(r, 429, "too_many_jobs", NULL, "Retry-After", "1",
                            "this token already has %d jobs queued or running (the cap)",
                            S.max_inflight);
    }
    sjob *j = sched_submit(m, run, r->uid);
    if (!j) {
        pthread_mutex_unlock(&S.mu);
        run_output_free(run);
        return send_error(r, 503, "nomem", NULL, "out of memory");
    }
    if (wait > 0) {
        r->kind = K_WAIT;
        r->job = j;
        job_ref(j);
        r->deadline = srv_now() + wait;
        suspend(r);
        pthread_mutex_unlock(&S.mu);
        return MHD_YES;
    }
    json_t *out = job_json(j, 0);
    char loc[64];
    snprintf(loc, sizeof loc, "/v1/jobs/%s", j->id);
    pthread_mutex_unlock(&S.mu);
    return send_json_h(r, 202, out, "Location", loc, NULL);
}

/* ---- Server-Sent Events ------------------------------------------------------------- */

static void sse_add(req *r, const char *event, json_t *data)
{
    char *d = json_dumps(data, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(data);
    size_t n = strlen(event) + (d ? strlen(d) : 0) + 32;
    char *buf = realloc(r->sse, r->sse_len + n);
    if (!buf || !d) {
        free(d);
        return;
    }
    r->sse = buf;
    r->sse_len += (size_t)snprintf(buf + r->sse_len, n, "event: %s\ndata: %s\n\n", event, d);
    free(d);
}

static ssize_t sse_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    req *r = cls;
    pthread_mutex_lock(&S.mu);
    sjob *j = r->job;
    if (r->sse_off == r->sse_len) {
        r->sse_off = r->sse_len = 0;
        if (r->finished_sse) {
            pthread_mutex_unlock(&S.mu);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        if (r->seen != j->version + 1) { /* seen: the version sent + 1; 0: none yet */
            r->seen = j->version + 1;
            if (j->state >= J_DONE) {
                sse_add(r, state_name(j->state), job_json(j, 0));
                r->finished_sse = 1;
            } else {
                sse_add(r, "progress",
                        json_pack("{s:s,s:I,s:I}", "state", state_name(j->state), "done",
                                  (json_int_t)j->done, "total", (json_int_t)j->total));
            }
        }
    }
    if (r->sse_off == r->sse_len) { /* nothing new: sleep until the job changes */
        if (S.stopping) {
            pthread_mutex_unlock(&S.mu);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        suspend(r);
        pthread_mutex_unlock(&S.mu);
        return 0;
    }
    size_t n = r->sse_len - r->sse_off < max ? r->sse_len - r->sse_off : max;
    memcpy(buf, r->sse + r->sse_off, n);
    r->sse_off += n;
    r->bytes_out += n;
    pthread_mutex_unlock(&S.mu);
    return (ssize_t)n;
}

static enum MHD_Result get_events(req *r, sjob *j)
{
    r->kind = K_SSE;
    r->job = j;
    job_ref(j);
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_reader, r, NULL);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    r->status = 200;
    enum MHD_Result ret = MHD_queue_response(r->conn, 200, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* /v1/jobs/{id}[/graph.svg|/events] */
static enum MHD_Result job_route(req *r, const char *rest)
{
    char id[40];
    const char *slash = strchr(rest, '/');
    size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
    const char *sub = slash ? slash + 1 : "";
    if (n == 0 || n >= sizeof id)
        return send_error(r, 404, "not_found", "id", "unknown job");
    memcpy(id, rest, n);
    id[n] = 0;
    int is_get = !strcmp(r->method, "GET"), is_del = !strcmp(r->method, "DELETE");
    if ((*sub && !is_get) || (!*sub && !is_get && !is_del))
        return send_error_h(r, 405, "method_not_allowed", NULL, "Allow",
                            *sub ? "GET" : "GET, DELETE", "%s is not allowed here", r->method);
    if (*sub && strcmp(sub, "graph.svg") && strcmp(sub, "events"))
        return send_error(r, 404, "not_found", NULL, "no such resource: %s", r->path);
    pthread_mutex_lock(&S.mu);
    sjob *j = job_find(id);
    if (!j) {
        pthread_mutex_unlock(&S.mu);
        return send_error(r, 404, "not_found", "id",
                          "unknown job %s (results are kept %.0f s after a job ends)", id,
                          S.result_ttl);
    }
    if (!strcmp(sub, "events")) {
        enum MHD_Result ret = get_events(r, j);
        pthread_mutex_unlock(&S.mu);
        return ret;
    }
    if (!strcmp(sub, "graph.svg")) {
        /* The plan is immutable once queued; render outside the lock. */
        const char *vs = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "variant");
        int nvar = j->run->job->nvar;
        long variant = 0;
        char *end = NULL;
        if (vs)
            variant = strtol(vs, &end, 10);
        if (vs && (!*vs || *end || variant < 0 || variant >= (nvar ? nvar : 1))) {
            pthread_mutex_unlock(&S.mu);
            if (!nvar)
                return send_error(r, 400, "invalid_request", "variant",
                                  "variant: this job is not a sweep; leave variant out (or 0)");
            return send_error(r, 400, "invalid_request", "variant",
                              "variant: an index in 0..%d (the job's sweep has %d variants)",
                              nvar - 1, nvar);
        }
        job_ref(j);
        pthread_mutex_unlock(&S.mu);
        char *svg = NULL;
        size_t len = 0;
        npp_err e = {0};
        int rc = svg_render(run_tree(j->run, (int)variant), j->run->job, &svg, &len, &e);
        pthread_mutex_lock(&S.mu);
        job_unref(j);
        pthread_mutex_unlock(&S.mu);
        if (rc)
            return send_error(r, 500, "internal", NULL, "%s", e.message);
        return send_text(r, 200, "image/svg+xml", svg, len);
    }
    if (is_del) {
        sched_cancel(j);
        json_t *o = job_json(j, 0);
        pthread_mutex_unlock(&S.mu);
        return send_json(r, 200, o);
    }
    json_t *o = job_json(j, 1);
    pthread_mutex_unlock(&S.mu);
    return send_json(r, 200, o);
}

static enum MHD_Result route(req *r)
{
    const char *p = r->path;
    int get = !strcmp(r->method, "GET"), post = !strcmp(r->method, "POST");
    enum MHD_Result ret;
    if (!strcmp(p, "/healthz"))
        return get ? send_json(r, 200, json_pack("{s:s}", "status", "ok"))
                   : send_error_h(r, 405, "method_not_allowed", NULL, "Allow", "GET", "use GET");
    if (!strcmp(p, "/readyz")) {
        pthread_mutex_lock(&S.mu);
        int ready = S.ready && !S.draining;
        const char *why = S.draining ? "draining" : S.ready ? "ready" : "loading";
        pthread_mutex_unlock(&S.mu);
        return send_json(r, ready ? 200 : 503, json_pack("{s:s}", "status", why));
    }
    /* Documents and the web UI: no token needed to load them. */
    static const struct {
        const char *path, *ctype, *body;
    } files[] = {{"/openapi.yaml", "application/yaml", npp_openapi_yaml},
                 {"/", "text/html; charset=utf-8", npp_web_index},
                 {"/index.html", "text/html; charset=utf-8", npp_web_index},
                 {"/app.js", "text/javascript; charset=utf-8", npp_web_app},
                 {"/style.css", "text/css; charset=utf-8", npp_web_style}};
    for (size_t i = 0; get && i < sizeof files / sizeof files[0]; i++) {
        if (!strcmp(p, files[i].path)) {
            char *doc = strdup(files[i].body);
            return doc ? send_text(r, 200, files[i].ctype, doc, strlen(doc)) : MHD_NO;
        }
    }
    if (authorize(r, &ret))
        return ret;
    pthread_mutex_lock(&S.mu);
    r->uid = sched_user(r->user);
    pthread_mutex_unlock(&S.mu);
    if (!strcmp(p, "/metrics") && get) {
        char *m = metrics_render();
        return m ? send_text(r, 200, "text/plain; version=0.0.4", m, strlen(m)) : MHD_NO;
    }
    if (!strcmp(p, "/v1/models"))
        return get ? get_models(r)
                   : send_error_h(r, 405, "method_not_allowed", NULL, "Allow", "GET", "use GET");
    if (!strcmp(p, "/v1/tokenize"))
        return post ? post_tokenize(r)
                    : send_error_h(r, 405, "method_not_allowed", NULL, "Allow", "POST", "use POST");
    if (!strcmp(p, "/v1/jobs"))
        return post ? post_job(r)
                    : send_error_h(r, 405, "method_not_allowed", NULL, "Allow", "POST", "use POST");
    if (!strncmp(p, "/v1/jobs/", 9))
        return job_route(r, p + 9);
    return send_error(r, 404, "not_found", NULL, "no such resource: %s", p);
}

/* ---- libmicrohttpd callbacks ----------------------------------------------------------- */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **con_cls)
{
    (void)cls;
    (void)version;
    req *r = *con_cls;
    if (!r) { /* first call: headers only */
        if (!(r = calloc(1, sizeof *r)))
            return MHD_NO;
        r->conn = conn;
        r->t0 = srv_now();
        snprintf(r->method, sizeof r->method, "%s", method);
        snprintf(r->path, sizeof r->path, "%s", url);
        *con_cls = r;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > (unsigned long long)S.max_body_kb * 1024) {
            r->too_big = 1;
            return send_error(r, 413, "payload_too_large", "body",
                              "the body is over the limit of %ld KiB", S.max_body_kb);
        }
        return MHD_YES;
    }
    if (*upload_size) { /* body data */
        size_t n = *upload_size;
        *upload_size = 0;
        if (r->too_big || r->len + n > (size_t)S.max_body_kb * 1024) {
            r->too_big = 1;
            return MHD_YES;
        }
        if (r->len + n + 1 > r->cap) {
            size_t c = r->cap ? r->cap : 4096;
            while (c < r->len + n + 1)
                c *= 2;
            char *b = realloc(r->body, c);
            if (!b)
                return MHD_NO;
            r->body = b, r->cap = c;
        }
        memcpy(r->body + r->len, upload_data, n);
        r->len += n;
        return MHD_YES;
    }
    if (r->kind == K_WAIT) /* resumed */
        return answer_wait(r);
    if (r->status) /* already answered */
        return MHD_YES;
    if (r->too_big)
        return send_error(r, 413, "payload_too_large", "body",
                          "the body is over the limit of %ld KiB", S.max_body_kb);
    return route(r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    req *r = *con_cls;
    if (!r)
        return;
    double ms = (srv_now() - r->t0) * 1e3;
    json_t *line =
        json_pack("{s:s,s:s,s:i,s:f,s:I,s:s,s:s}", "method", r->method, "path", r->path, "status",
                  r->status, "ms", ms, "bytes", (json_int_t)r->bytes_out, "user", r->user, "end",
                  toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "ok" : "aborted");
    char *s = json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (s) {
        fprintf(stderr, "%s\n", s);
        free(s);
    }
    json_decref(line);
    pthread_mutex_lock(&S.mu);
    if (r->status >= 100 && r->status < 600)
        S.http_total[r->status / 100]++;
    unlink_suspended(r);
    if (r->job)
        job_unref(r->job);
    pthread_mutex_unlock(&S.mu);
    free(r->body);
    free(r->sse);
    free(r);
    *con_cls = NULL;
}

static int parse_listen(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[128];
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s)
        return -1;
    size_t hl = (size_t)(colon - s);
    if (hl >= sizeof host)
        return -1;
    memcpy(host, s, hl);
    host[hl] = 0;
    long port = strtol(colon + 1, NULL, 10);
    if (port <= 0 || port > 65535)
        return -1;
    memset(ss, 0, sizeof *ss);
    if (host[0] == '[' && host[hl - 1] == ']') {
        host[hl - 1] = 0;
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        *len = sizeof *a;
        return inet_pton(AF_INET6, host + 1, &a->sin6_addr) == 1 ? 0 : -1;
    }
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    *len = sizeof *a;
    if (!strcmp(host, "localhost"))
        snprintf(host, sizeof host, "127.0.0.1");
    return inet_pton(AF_INET, host, &a->sin_addr) == 1 ? 0 : -1;
}

int http_start(void)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (parse_listen(S.listen, &ss, &len)) {
        fprintf(stderr, "nppd: --listen %s: expected HOST:PORT (e.g. 127.0.0.1:8080)\n", S.listen);
        return -1;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    S.httpd = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)S.conn_timeout, MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)S.max_conn_per_ip,
        MHD_OPTION_CONNECTION_LIMIT, 1024u, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 * 1024,
        MHD_OPTION_END);
    if (!S.httpd) {
        fprintf(stderr, "nppd: cannot listen on %s (in use, or not an address of this host)\n",
                S.listen);
        return -1;
    }
    return 0;
}

void http_stop(void)
{
    if (S.httpd)
        MHD_stop_daemon(S.httpd);
    S.httpd = NULL;
}
