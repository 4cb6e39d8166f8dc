/* http.c - nppd's HTTP side (libmicrohttpd, internal polling thread with
 * epoll): routing, auth and ownership, JSON errors, deferred answers
 * (planners answer suspended requests), long polls (?wait) and
 * Server-Sent Events by suspend/resume, results streamed from their files,
 * one JSON log line per request. Thread roles and locking: see srv.h.
 * Every error is {"error": {"code", "message", "field"}}. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/sha256.h"
#include "model/tok.h"
#include "srv.h"

enum { K_PLAIN, K_DEFER, K_WAIT, K_SSE };

struct req {
    struct MHD_Connection *conn;
    char method[16], path[256], user[SRV_NAME_MAX];
    int admin;
    char *body;
    size_t len, cap;
    int too_big, status, kind, suspended, finished_sse;
    int uid;
    size_t bytes_out;
    double t0, deadline;
    sjob *job; /* a reference, for K_WAIT and K_SSE */
    /* K_DEFER: the answer a planner prepared */
    int answered;
    unsigned ans_status;
    char *ans_body, *ans_ctype, ans_hname[32], ans_hval[96];
    size_t ans_len;
    uint64_t seen; /* the job version last reported, + 1 (SSE); 0: none yet */
    char *sse;     /* pending SSE bytes */
    size_t sse_len, sse_off;
    req *prev, *next; /* the suspended list (under S.mu) */
};

/* ---- suspend and resume ------------------------------------------------------- */

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

/* Suspends r (in one of libmicrohttpd's callbacks, S.mu held). */
static void suspend(req *r)
{
    link_suspended(r);
    MHD_suspend_connection(r->conn);
}

/* ---- responses ---------------------------------------------------------------- */

/* s (len bytes) made valid UTF-8 (new string): what may go into JSON. */
static char *utf8_clean(const char *s, size_t len)
{
    char *out = NULL;
    size_t n;
    if (tok_utf8_sanitize(s, len, &out, &n))
        return strdup("?");
    return out;
}

static int is_utf8(const char *s)
{
    char *c = utf8_clean(s, strlen(s));
    int same = c && !strcmp(c, s);
    free(c);
    return same;
}

json_t *http_error_body(const char *code, const char *field, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char *m = utf8_clean(msg, strlen(msg)),
         *f = utf8_clean(field ? field : "", strlen(field ? field : ""));
    json_t *e = json_pack("{s:{s:s,s:s,s:s}}", "error", "code", code, "message", m ? m : "",
                          "field", f ? f : "");
    free(m);
    free(f);
    return e;
}

static enum MHD_Result queue(req *r, unsigned status, struct MHD_Response *resp, size_t len)
{
    if (!resp)
        return MHD_NO;
    r->status = (int)status;
    r->bytes_out = len;
    enum MHD_Result ret = MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result send_text(req *r, unsigned status, const char *ctype, char *text, size_t len)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", ctype);
    return queue(r, status, resp, len);
}

/* j (taken) as compact JSON text with a newline (new string). */
static char *dump(json_t *j, size_t *len)
{
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    if (!s)
        return NULL;
    size_t n = strlen(s);
    char *t = realloc(s, n + 2);
    if (!t) {
        free(s);
        return NULL;
    }
    t[n++] = '\n';
    t[n] = 0;
    *len = n;
    return t;
}

/* Sends j (taken) as JSON; one optional extra header. */
static enum MHD_Result send_json_h(req *r, unsigned status, json_t *j, const char *hname,
                                   const char *hval)
{
    size_t n;
    char *s = dump(j, &n);
    if (!s)
        return MHD_NO;
    struct MHD_Response *resp = MHD_create_response_from_buffer(n, s, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(s);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/json");
    if (hname)
        MHD_add_response_header(resp, hname, hval);
    return queue(r, status, resp, n);
}

#define send_json(r, status, j) send_json_h(r, status, j, NULL, NULL)

#define send_error_h(r, status, code, field, hname, hval, ...)                                     \
    send_json_h(r, status, http_error_body(code, field, __VA_ARGS__), hname, hval)
#define send_error(r, status, code, field, ...)                                                    \
    send_error_h(r, status, code, field, NULL, NULL, __VA_ARGS__)

static enum MHD_Result send_draining(req *r)
{
    return send_error_h(r, 503, "draining", NULL, "Retry-After", "30",
                        "the server is shutting down and takes no new work");
}

static enum MHD_Result not_allowed(req *r, const char *allow)
{
    return send_error_h(r, 405, "method_not_allowed", NULL, "Allow", allow,
                        "%s is not allowed here (use %s)", r->method, allow);
}

/* ---- deferred answers (planners) ------------------------------------------------ */

void http_answer(req *r, unsigned status, json_t *body, const char *hname, const char *hval)
{
    r->ans_body = dump(body, &r->ans_len);
    r->ans_status = r->ans_body ? status : 503;
    r->ans_ctype = "application/json";
    snprintf(r->ans_hname, sizeof r->ans_hname, "%s", hname ? hname : "");
    snprintf(r->ans_hval, sizeof r->ans_hval, "%s", hval ? hval : "");
    r->answered = 1;
    wake(r);
}

void http_answer_svg(req *r, char *svg, size_t len)
{
    r->ans_body = svg;
    r->ans_len = len;
    r->ans_status = 200;
    r->ans_ctype = "image/svg+xml";
    r->ans_hname[0] = 0;
    r->answered = 1;
    wake(r);
}

void http_wait_on(req *r, sjob *j, double wait)
{
    r->kind = K_WAIT;
    r->job = j;
    job_ref(j);
    r->deadline = srv_now() + wait;
    if (j->state >= J_DONE)
        wake(r);
}

static enum MHD_Result send_prepared(req *r)
{
    if (!r->answered) /* the planners stopped first (shutdown) */
        return send_draining(r);
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
    return queue(r, r->ans_status, resp, r->ans_len);
}

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
                               "--results-disk-mb (%ld MiB; the oldest go first)",
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
    char *head = s->fd >= 0 && !fstat(s->fd, &sb) ? dump(job_json(j), &n) : NULL;
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
    char loc[64];
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
    return queue(r, status, resp, total);
}

/* ---- auth --------------------------------------------------------------------- */

static void client_address(req *r)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    char addr[64] = "local";
    if (ci && ci->client_addr) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, addr, sizeof addr);
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, addr, sizeof addr);
    }
    snprintf(r->user, sizeof r->user, "%s", addr);
}

/* 0 and r->user set if allowed; otherwise an error was sent (returns 1). */
static int authorize(req *r, enum MHD_Result *ret)
{
    if (!S.ntokens) {
        client_address(r);
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
            diff |= (unsigned)(d[k] ^ S.tokens[i].hash[k]);
        int hit = diff == 0;
        found = hit && found < 0 ? i : found;
    }
    if (found < 0) {
        *ret = send_error(r, 403, "forbidden", "Authorization", "the bearer token is not valid");
        return 1;
    }
    snprintf(r->user, sizeof r->user, "%s", S.tokens[found].name);
    r->admin = S.tokens[found].admin;
    return 0;
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
    json_t *limits =
        json_pack("{s:I,s:I,s:I,s:I,s:I}", "memory_mb", (json_int_t)S.memory_mb, "max_job_mb",
                  (json_int_t)S.max_job_mb, "max_result_mb", (json_int_t)S.max_result_mb,
                  "max_body_kb", (json_int_t)S.max_body_kb, "max_values", (json_int_t)S.max_values);
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
static enum MHD_Result post_tokenize(req *r)
{
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
    suspend(r);
    pthread_mutex_unlock(&S.mu);
    return MHD_YES;
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
    char id[33], loc[64];
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
        return send_json_h(r, ended ? 200 : 202, body, "Location", loc);
    return send_stream(r, 200, st, err, id);
}

static enum MHD_Result post_job(req *r)
{
    enum MHD_Result ret = MHD_NO;
    const char *w = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "wait");
    double wait = 0;
    if (w) {
        char *end;
        wait = strtod(w, &end);
        if (!*w || *end || !(wait >= 0 && wait <= 3600))
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
    suspend(r);
    pthread_mutex_unlock(&S.mu);
    return MHD_YES;
}

static enum MHD_Result get_jobs(req *r)
{
    pthread_mutex_lock(&S.mu);
    json_t *list = jobs_list(r->user, r->admin);
    pthread_mutex_unlock(&S.mu);
    return send_json(
        r, 200,
        json_pack("{s:o,s:s,s:b}", "jobs", list, "user", r->user, "all", !S.ntokens || r->admin));
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
                sse_add(r, jstate_name(j->state), job_json(j));
                r->finished_sse = 1;
            } else {
                sse_add(r, "progress",
                        json_pack("{s:s,s:I,s:I}", "state", jstate_name(j->state), "done",
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

/* The event stream of r->job (S.mu not held). */
static enum MHD_Result send_events(req *r)
{
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_reader, r, NULL);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    return queue(r, 200, resp, 0);
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
    suspend(r);
    return MHD_YES;
}

/* /v1/jobs/{id}[/graph.svg|/events] */
static enum MHD_Result job_route(req *r, const char *rest)
{
    char id[40];
    const char *slash = strchr(rest, '/');
    size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
    const char *sub = slash ? slash + 1 : "";
    int is_get = !strcmp(r->method, "GET"), is_del = !strcmp(r->method, "DELETE");
    if ((*sub && !is_get) || (!*sub && !is_get && !is_del))
        return not_allowed(r, *sub ? "GET" : "GET, DELETE");
    if (*sub && strcmp(sub, "graph.svg") && strcmp(sub, "events"))
        return send_error(r, 404, "not_found", NULL, "no such resource: %s", r->path);
    if (n >= sizeof id)
        n = sizeof id - 1;
    memcpy(id, rest, n);
    id[n] = 0;
    pthread_mutex_lock(&S.mu);
    sjob *j = n ? job_find(id) : NULL;
    /* another user's job answers exactly as an unknown one */
    if (!j || !job_visible(j, r->user, r->admin)) {
        pthread_mutex_unlock(&S.mu);
        return send_error(r, 404, "not_found", "id",
                          "unknown job %s (results are kept %.0f s after a job ends; a job is "
                          "visible only to the token that submitted it)",
                          id, S.result_ttl);
    }
    if (!strcmp(sub, "events")) {
        r->kind = K_SSE;
        r->job = j;
        job_ref(j);
        pthread_mutex_unlock(&S.mu);
        return send_events(r);
    }
    if (!strcmp(sub, "graph.svg")) { /* answers or suspends under the lock */
        json_t *err = NULL;
        unsigned status;
        enum MHD_Result ret = get_graph(r, j, &err, &status);
        pthread_mutex_unlock(&S.mu);
        return err ? send_json(r, status, err) : ret;
    }
    if (is_del) {
        int was_queued = j->state == J_QUEUED;
        sched_cancel(j);
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
    char jid[33];
    memcpy(jid, j->id, sizeof jid);
    stream *st = NULL;
    json_t *err = NULL, *body = NULL;
    if (j->state == J_DONE)
        st = result_stream(j, &err);
    else
        body = job_json(j);
    pthread_mutex_unlock(&S.mu);
    return body ? send_json(r, 200, body) : send_stream(r, 200, st, err, jid);
}

/* ---- routing ---------------------------------------------------------------------- */

static enum MHD_Result serve_file(req *r, const char *ctype, const char *body)
{
    char *doc = strdup(body);
    return doc ? send_text(r, 200, ctype, doc, strlen(doc)) : MHD_NO;
}

typedef struct {
    const char *path;
    const char *allow; /* the methods, "GET" or "POST" */
    int auth;          /* needs a token (with --token-file) */
    int work;          /* new work: refused while draining */
    enum MHD_Result (*fn)(req *r);
} route_entry;

static enum MHD_Result r_healthz(req *r)
{
    return send_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

static enum MHD_Result r_readyz(req *r)
{
    pthread_mutex_lock(&S.mu);
    int ready = S.ready && !S.draining;
    const char *why = S.draining ? "draining" : S.ready ? "ready" : "loading";
    pthread_mutex_unlock(&S.mu);
    return send_json(r, ready ? 200 : 503, json_pack("{s:s}", "status", why));
}

static enum MHD_Result r_openapi(req *r)
{
    return serve_file(r, "application/yaml", npp_openapi_yaml);
}

static enum MHD_Result r_index(req *r)
{
    return serve_file(r, "text/html; charset=utf-8", npp_web_index);
}

static enum MHD_Result r_app(req *r)
{
    return serve_file(r, "text/javascript; charset=utf-8", npp_web_app);
}

static enum MHD_Result r_style(req *r)
{
    return serve_file(r, "text/css; charset=utf-8", npp_web_style);
}

static enum MHD_Result r_metrics(req *r)
{
    char *m = metrics_render();
    return m ? send_text(r, 200, "text/plain; version=0.0.4", m, strlen(m)) : MHD_NO;
}

static const route_entry routes[] = {
    {"/healthz", "GET", 0, 0, r_healthz},      {"/readyz", "GET", 0, 0, r_readyz},
    {"/openapi.yaml", "GET", 0, 0, r_openapi}, {"/", "GET", 0, 0, r_index},
    {"/index.html", "GET", 0, 0, r_index},     {"/app.js", "GET", 0, 0, r_app},
    {"/style.css", "GET", 0, 0, r_style},      {"/metrics", "GET", 1, 0, r_metrics},
    {"/v1/models", "GET", 1, 0, get_models},   {"/v1/tokenize", "POST", 1, 1, post_tokenize},
};

static enum MHD_Result route(req *r)
{
    const char *p = r->path;
    enum MHD_Result ret;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        const route_entry *e = &routes[i];
        if (strcmp(p, e->path))
            continue;
        if (strcmp(r->method, e->allow))
            return not_allowed(r, e->allow);
        if (e->auth && authorize(r, &ret))
            return ret;
        pthread_mutex_lock(&S.mu);
        int draining = S.draining;
        pthread_mutex_unlock(&S.mu);
        if (e->work && draining)
            return send_draining(r);
        return e->fn(r);
    }
    if (authorize(r, &ret))
        return ret;
    pthread_mutex_lock(&S.mu);
    r->uid = sched_user(r->user);
    int draining = S.draining;
    pthread_mutex_unlock(&S.mu);
    if (!strcmp(p, "/v1/jobs")) {
        if (!strcmp(r->method, "GET"))
            return get_jobs(r);
        if (strcmp(r->method, "POST"))
            return not_allowed(r, "GET, POST");
        return draining ? send_draining(r) : post_job(r);
    }
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
    if (!r) { /* first call: the head is complete */
        conn_head_done(conn);
        if (!(r = calloc(1, sizeof *r)))
            return MHD_NO;
        r->conn = conn;
        r->t0 = srv_now();
        /* what the log and messages show is valid UTF-8 whatever came */
        char *m = utf8_clean(method, strlen(method)), *u = utf8_clean(url, strlen(url));
        snprintf(r->method, sizeof r->method, "%s", m ? m : "?");
        snprintf(r->path, sizeof r->path, "%s", u ? u : "?");
        free(m);
        free(u);
        *con_cls = r;
        if (!is_utf8(url) || strlen(url) >= sizeof r->path) {
            r->too_big = 1; /* ignore any body */
            return strlen(url) >= sizeof r->path
                       ? send_error(r, 414, "uri_too_long", "url",
                                    "the URL is longer than %zu bytes", sizeof r->path - 1)
                       : send_error(r, 400, "invalid_url", "url",
                                    "the URL is not valid UTF-8 (after percent-decoding)");
        }
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
    if (r->kind == K_DEFER) /* resumed: a planner answered */
        return send_prepared(r);
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
    conn_request_done(conn);
    req *r = *con_cls;
    if (!r)
        return;
    double ms = (srv_now() - r->t0) * 1e3;
    json_t *line =
        json_pack("{s:s,s:s,s:i,s:f,s:I,s:s,s:s}", "method", r->method, "path", r->path, "status",
                  r->status, "ms", ms, "bytes", (json_int_t)r->bytes_out, "user", r->user, "end",
                  toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "ok" : "aborted");
    char *s = line ? json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
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
    free(r->ans_body);
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
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL, MHD_OPTION_NOTIFY_CONNECTION, conn_notify,
        NULL, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)S.conn_timeout,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)S.max_conn_per_ip,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)S.max_connections,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 * 1024, MHD_OPTION_END);
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
