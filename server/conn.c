/* conn.c - keeps slow senders from holding the server's connections.
 * libmicrohttpd's own timeout is an idle one: a client that sends one byte
 * every few seconds keeps its connection forever, and enough of them fill
 * every slot. Here every connection waiting for a request head (since it
 * opened, or since its previous request ended) has a deadline
 * (--header-timeout), and the waiting ones may hold at most
 * CONN_PENDING_SHARE of the slots: past that, the oldest waiting one is
 * shut as a new one arrives. A request's body has its own deadline
 * (--body-timeout, from its head). A shut connection is shutdown(2) only;
 * its socket stays libmicrohttpd's, which sees the end and closes it.
 *
 * Threads: conn_notify, conn_head_done, conn_body_done and
 * conn_request_done run on the HTTP thread; conn_tick on the loop thread.
 * cmu guards the lists and is taken alone. libmicrohttpd reports a close
 * before it closes the socket, so a socket on a list is always still open. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "srv.h"

#define CONN_PENDING_SHARE 0.75

typedef struct conn {
    int fd;
    int on;       /* the list it is on: 0 none, 1 heads, 2 bodies */
    int shut;     /* shutdown(2) done */
    double since; /* monotonic: start of the wait for a head, or for a body */
    struct conn *prev, *next;
} conn;

/* Connections waiting for something, oldest first (one timeout per list,
 * so the oldest is the first to be late). */
typedef struct {
    conn *head, *tail;
    long n;
} wait_list;

static pthread_mutex_t cmu = PTHREAD_MUTEX_INITIALIZER;
static wait_list lists[3]; /* [1]: waiting for a head; [2]: for the rest of a body */
static long nopen;
static uint64_t nshut;

static void unlink_waiting(conn *c)
{
    if (!c->on)
        return;
    wait_list *l = &lists[c->on];
    if (c->prev)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        l->tail = c->prev;
    c->prev = c->next = NULL;
    c->on = 0;
    l->n--;
}

static void push_waiting(conn *c, int on)
{
    wait_list *l = &lists[on];
    unlink_waiting(c);
    c->since = srv_now();
    c->prev = l->tail;
    c->next = NULL;
    if (l->tail)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
    c->on = on;
    l->n++;
}

static void shut(conn *c)
{
    if (!c->shut && c->fd >= 0) {
        shutdown(c->fd, SHUT_RDWR);
        c->shut = 1;
        nshut++;
    }
    unlink_waiting(c);
}

void conn_notify(void *cls, struct MHD_Connection *mc, void **socket_context,
                 enum MHD_ConnectionNotificationCode code)
{
    (void)cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        conn *c = calloc(1, sizeof *c);
        *socket_context = c;
        if (!c)
            return;
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
        c->fd = ci ? ci->connect_fd : -1;
        pthread_mutex_lock(&cmu);
        nopen++;
        push_waiting(c, 1);
        long budget = (long)(S.max_connections * CONN_PENDING_SHARE);
        while (lists[1].n > budget && lists[1].head != c)
            shut(lists[1].head); /* the oldest waiting sender makes room */
        pthread_mutex_unlock(&cmu);
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        conn *c = *socket_context;
        if (!c)
            return;
        pthread_mutex_lock(&cmu);
        unlink_waiting(c);
        nopen--;
        pthread_mutex_unlock(&cmu);
        free(c);
        *socket_context = NULL;
    }
}

static conn *of(struct MHD_Connection *mc)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(mc, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

void conn_head_done(struct MHD_Connection *mc)
{
    conn *c = of(mc);
    if (!c)
        return;
    pthread_mutex_lock(&cmu);
    if (!c->shut)
        push_waiting(c, 2);
    pthread_mutex_unlock(&cmu);
}

void conn_body_done(struct MHD_Connection *mc)
{
    conn *c = of(mc);
    if (!c)
        return;
    pthread_mutex_lock(&cmu);
    unlink_waiting(c);
    pthread_mutex_unlock(&cmu);
}

void conn_request_done(struct MHD_Connection *mc)
{
    conn *c = of(mc);
    if (!c)
        return;
    pthread_mutex_lock(&cmu);
    if (!c->shut)
        push_waiting(c, 1);
    pthread_mutex_unlock(&cmu);
}

void conn_tick(double now)
{
    pthread_mutex_lock(&cmu);
    while (lists[1].head && now - lists[1].head->since >= S.header_timeout)
        shut(lists[1].head);
    while (lists[2].head && now - lists[2].head->since >= S.body_timeout)
        shut(lists[2].head);
    pthread_mutex_unlock(&cmu);
}

long conn_busy(void)
{
    pthread_mutex_lock(&cmu);
    long n = nopen - lists[1].n;
    pthread_mutex_unlock(&cmu);
    return n;
}

void conn_stats(long *pending, long *open, uint64_t *shut_total)
{
    pthread_mutex_lock(&cmu);
    *pending = lists[1].n + lists[2].n;
    *open = nopen;
    *shut_total = nshut;
    pthread_mutex_unlock(&cmu);
}
