/* http.c - nppd's HTTP side (libmicrohttpd, internal polling thread with
 * epoll): suspend and resume, responses and deferred answers, routing from
 * the table in api.c (a 405 and its Allow header come from the table), the
 * callbacks, one JSON log line per request. Thread roles and locking: see
 * srv.h. Every error is {"error": {"code", "message", "field"}}. */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_internal.h"
#include "model/tok.h"

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

void http_wake_queued(void)
{
    for (req *r = suspended, *n; r; r = n) {
        n = r->next;
        if (r->kind == K_SSE && r->job->state == J_QUEUED && sched_waiting(r->job) + 1 != r->said)
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
void http_suspend(req *r)
{
    link_suspended(r);
    MHD_suspend_connection(r->conn);
}

/* ---- responses ---------------------------------------------------------------- */

/* s (len bytes) made valid UTF-8 (new string): what may go into JSON. */
char *http_utf8_clean(const char *s, size_t len)
{
    char *out = NULL;
    size_t n;
    if (tok_utf8_sanitize(s, len, &out, &n))
        return strdup("?");
    return out;
}

static int is_utf8(const char *s)
{
    char *c = http_utf8_clean(s, strlen(s));
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
    char *m = http_utf8_clean(msg, strlen(msg)),
         *f = http_utf8_clean(field ? field : "", strlen(field ? field : ""));
    json_t *e = json_pack("{s:{s:s,s:s,s:s}}", "error", "code", code, "message", m ? m : "",
                          "field", f ? f : "");
    free(m);
    free(f);
    return e;
}

enum MHD_Result http_queue(req *r, unsigned status, struct MHD_Response *resp, size_t len)
{
    if (!resp)
        return MHD_NO;
    r->status = (int)status;
    r->bytes_out = len;
    if (r->at_head) /* the body is not read: the connection cannot carry another request */
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result ret = MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

enum MHD_Result http_send_text(req *r, unsigned status, const char *ctype, char *text, size_t len)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", ctype);
    return http_queue(r, status, resp, len);
}

/* j (taken) as compact JSON text with a newline (new string). */
char *http_dump(json_t *j, size_t *len)
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
enum MHD_Result http_send_json_h(req *r, unsigned status, json_t *j, const char *hname,
                                 const char *hval)
{
    size_t n;
    char *s = http_dump(j, &n);
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
    return http_queue(r, status, resp, n);
}

enum MHD_Result http_send_draining(req *r)
{
    return send_error_h(r, 503, "draining", NULL, "Retry-After", "30",
                        "the server is shutting down and takes no new work");
}

/* ---- deferred answers (planners) ------------------------------------------------ */

void http_answer(req *r, unsigned status, json_t *body, const char *hname, const char *hval)
{
    r->ans_body = http_dump(body, &r->ans_len);
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

/* ---- routing ---------------------------------------------------------------------- */

static enum MHD_Result not_allowed(req *r, const char *allow)
{
    return send_error_h(r, 405, "method_not_allowed", NULL, "Allow", allow,
                        "%s is not allowed here (use %s)", r->method, allow);
}

/* Whether path matches pattern; {id} matches one non-empty segment,
 * copied into id. */
static int matches(const char *pattern, const char *path, char id[SRV_ID_MAX])
{
    while (*pattern && *path) {
        if (!strncmp(pattern, "{id}", 4)) {
            size_t n = strcspn(path, "/");
            if (!n || n >= SRV_ID_MAX)
                return 0;
            memcpy(id, path, n);
            id[n] = 0;
            pattern += 4, path += n;
            continue;
        }
        if (*pattern++ != *path++)
            return 0;
    }
    return !*pattern && !*path;
}

/* The route of r's method and path (NULL: none; allow gets the methods
 * its path has, "" for an unknown path), its id, and whether the path
 * needs a token. */
static const route_def *route_find(const req *r, char id[SRV_ID_MAX], char allow[64], int *auth)
{
    const route_def *hit = NULL;
    *auth = 0, allow[0] = 0;
    for (int i = 0; i < api_nroutes; i++) {
        const route_def *e = &api_routes[i];
        char this_id[SRV_ID_MAX] = "";
        if (!matches(e->pattern, r->path, this_id))
            continue;
        *auth |= e->auth;
        size_t n = strlen(allow);
        snprintf(allow + n, 64 - n, "%s%s", n ? ", " : "", e->method);
        if (!strcmp(e->method, r->method) && !hit) {
            hit = e;
            memcpy(id, this_id, SRV_ID_MAX);
        }
    }
    return hit;
}

static enum MHD_Result route(req *r)
{
    char id[SRV_ID_MAX] = "", allow[64];
    int auth;
    const route_def *hit = route_find(r, id, allow, &auth);
    if (!allow[0])
        return send_error(r, 404, "not_found", NULL, "no such resource: %s", r->path);
    if (!hit)
        return not_allowed(r, allow);
    pthread_mutex_lock(&S.mu);
    r->uid = sched_user(r->user);
    int draining = S.draining;
    pthread_mutex_unlock(&S.mu);
    if (hit->work && draining)
        return http_send_draining(r);
    return hit->fn(r, id);
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
        r->at_head = 1; /* answers before the body is read close the connection */
        r->t0 = srv_now();
        /* what the log and messages show is valid UTF-8 whatever came */
        char *m = http_utf8_clean(method, strlen(method)), *u = http_utf8_clean(url, strlen(url));
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
        /* Everything but a token holder's POST is answered here, at the head,
         * its body (if any) never read, so that nobody without a token, and
         * no request that takes no body, can hold a connection by sending a
         * body slowly. The token first, except for the open documents (an
         * unknown path's 404 is a token holder's answer too). */
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        unsigned long long len = cl ? strtoull(cl, NULL, 10) : 0;
        int body =
            len > 0 || MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Transfer-Encoding");
        char id[SRV_ID_MAX], allow[64];
        int auth;
        enum MHD_Result ret;
        const route_def *hit = route_find(r, id, allow, &auth);
        r->at_head = body; /* an answer now leaves the body unread */
        r->too_big = body; /* and ignores it if it comes */
        if ((auth || !allow[0]) && auth_request(r, &ret))
            return ret;
        if (!hit || strcmp(hit->method, "POST")) { /* it takes no body */
            if (!body)
                conn_body_done(conn);
            return route(r);
        }
        r->too_big = 0;
        if (len > (unsigned long long)S.max_body_kb * 1024) {
            r->too_big = 1;
            return send_error(r, 413, "payload_too_large", "body",
                              "the body is over the limit of %ld KiB", S.max_body_kb);
        }
        r->at_head = 0;
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
    conn_body_done(conn);  /* the whole body is in (or there was none) */
    if (r->kind == K_WAIT) /* resumed */
        return api_answer_wait(r);
    if (r->kind == K_DEFER) /* resumed: a planner answered */
        return api_send_prepared(r);
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
    /* the port again, for libmicrohttpd's own messages (it binds ss) */
    uint16_t port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                   : ((struct sockaddr_in *)&ss)->sin_port);
    S.httpd = MHD_start_daemon(
        flags, port, NULL, NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
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
