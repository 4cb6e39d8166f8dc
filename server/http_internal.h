/* http_internal.h - what nppd's HTTP files share: http.c (the daemon,
 * suspend/resume, responses, routing), api.c (the endpoints and the route
 * table), sse.c (event streams), auth.c (a request's token). Private to
 * server/; threads and locks as srv.h says. */
#ifndef NPP_HTTP_INTERNAL_H
#define NPP_HTTP_INTERNAL_H

#include "srv.h"

enum { K_PLAIN, K_DEFER, K_WAIT, K_SSE };

/* One request, from its head to its completion (libmicrohttpd's con_cls). */
struct req {
    struct MHD_Connection *conn;
    char method[16], path[256], user[SRV_NAME_MAX];
    int admin;
    char *body;
    size_t len, cap;
    int too_big, status, kind, suspended, finished_sse;
    int at_head; /* in on_request's first call: an answer now leaves the body unread */
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
    int said;      /* the waiting_for last reported, + 1 (SSE); 0: none */
    char *sse;     /* pending SSE bytes */
    size_t sse_len, sse_off;
    req *prev, *next; /* the suspended list (under S.mu) */
};

/* ---- http.c: responses (any thread in a libmicrohttpd callback; S.mu not
 * held, except http_suspend, which needs it) ---- */
enum MHD_Result http_queue(req *r, unsigned status, struct MHD_Response *resp, size_t len);
enum MHD_Result http_send_text(req *r, unsigned status, const char *ctype, char *text,
                               size_t len); /* text taken */
/* j (taken) as JSON; one optional extra header. */
enum MHD_Result http_send_json_h(req *r, unsigned status, json_t *j, const char *hname,
                                 const char *hval);
enum MHD_Result http_send_draining(req *r);
/* j (taken) as compact JSON text and a newline (new string). */
char *http_dump(json_t *j, size_t *len);
/* s (len bytes) made valid UTF-8 (new string). */
char *http_utf8_clean(const char *s, size_t len);
/* Suspends r (in a libmicrohttpd callback, S.mu held). */
void http_suspend(req *r);

#define send_json(r, status, j) http_send_json_h(r, status, j, NULL, NULL)
#define send_error_h(r, status, code, field, hname, hval, ...)                                     \
    http_send_json_h(r, status, http_error_body(code, field, __VA_ARGS__), hname, hval)
#define send_error(r, status, code, field, ...)                                                    \
    send_error_h(r, status, code, field, NULL, NULL, __VA_ARGS__)

/* ---- auth.c ---- */
/* 0 with r->user (and r->admin) set; or 1, an error sent into *ret. */
int auth_request(req *r, enum MHD_Result *ret);

/* ---- sse.c ---- */
/* Starts the event stream of r->job (held by r; S.mu not held). */
enum MHD_Result sse_start(req *r);

/* ---- api.c: the endpoints ---- */
typedef struct {
    const char *method;
    const char *pattern; /* "/v1/jobs/{id}": {id} is one path segment */
    int auth;            /* needs a token (with --token-file) */
    int work;            /* new work: answered 503 while draining */
    enum MHD_Result (*fn)(req *r, const char *id);
} route_def;

extern const route_def api_routes[];
extern const int api_nroutes;
/* A resumed request: a planner's answer, or a ?wait that ended. */
enum MHD_Result api_send_prepared(req *r);
enum MHD_Result api_answer_wait(req *r);

#endif
