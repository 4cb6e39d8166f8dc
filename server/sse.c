/* sse.c - a job's progress as Server-Sent Events: a "progress" event at
 * every change (and, while it is queued, whenever what it waits for
 * changes), then one named after the end state, then the end of the
 * stream. The reader sleeps (suspends) until the job changes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_internal.h"

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
        int why = sched_waiting(j);
        if (r->seen != j->version + 1 || r->said != why + 1) {
            r->seen = j->version + 1, r->said = why + 1;
            if (j->state >= J_DONE) {
                sse_add(r, jstate_name(j->state), job_json(j));
                r->finished_sse = 1;
            } else {
                json_t *d = json_pack("{s:s,s:I,s:I}", "state", jstate_name(j->state), "done",
                                      (json_int_t)j->done, "total", (json_int_t)j->total);
                if (why >= 0)
                    json_object_set_new(d, "waiting_for", json_string(sched_wait_names[why]));
                sse_add(r, "progress", d);
            }
        }
    }
    if (r->sse_off == r->sse_len) { /* nothing new: sleep until the job changes */
        if (S.stopping) {
            pthread_mutex_unlock(&S.mu);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        http_suspend(r);
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
enum MHD_Result sse_start(req *r)
{
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_reader, r, NULL);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    return http_queue(r, 200, resp, 0);
}
