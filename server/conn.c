/* conn.c - keeps slow senders from holding the server's connections.
 * libmicrohttpd's own timeout is an idle one: a client that sends one byte
 * every few seconds keeps its connection forever, and enough of them fill
 * every slot. Here every connection waiting for a request head (since it
 * opened, or since its previous request ended) has a deadline
 * (--header-timeout), and the waiting ones may hold at most
 * CONN_PENDING_SHARE of the slots: past that, the oldest waiting one is
 * shut as a new one arrives. A shut connection is shutdown(2) only; its
 * socket stays libmicrohttpd's, which sees the end and closes it.
 *
 * Threads: conn_notify, conn_head_done and conn_request_done run on the
 * HTTP thread; conn_tick on the loop thread. cmu guards the list and is
 * taken alone. libmicrohttpd reports a close before it closes the socket,
 * so a socket on the list is always still open. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "srv.h"

#define CONN_PENDING_SHARE 0.75

typedef struct conn {
    int fd;
    int waiting;  /* on the waiting list */
    int shut;     /* shutdown(2) done */
    double since; /* monotonic: start of the wait for a head */
    struct conn *prev, *next;
} conn;

static pthread_mutex_t cmu = PTHREAD_MUTEX_INITIALIZER;
static conn *head, *tail; /* waiting for a head, oldest first */
static long nwaiting, nopen;
static uint64_t nshut;

static void unlink_waiting(conn *c)
{
    if (!c->waiting)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        tail = c->prev;
    c->prev = c->next = NULL;
    c->waiting = 0;
    nwaiting--;
}

static void push_waiting(conn *c)
{
    c->since = srv_now();
    c->prev = tail;
    c->next = NULL;
    if (tail)
        tail->next = c;
    else
        head = c;
    tail = c;
    c->waiting = 1;
    nwaiting++;
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
        push_waiting(c);
        long budget = (long)(S.max_connections * CONN_PENDING_SHARE);
        while (nwaiting > budget && head != c)
            shut(head); /* the oldest waiting sender makes room */
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
    unlink_waiting(c);
    pthread_mutex_unlock(&cmu);
}

void conn_request_done(struct MHD_Connection *mc)
{
    conn *c = of(mc);
    if (!c)
        return;
    pthread_mutex_lock(&cmu);
    if (!c->waiting && !c->shut)
        push_waiting(c);
    pthread_mutex_unlock(&cmu);
}

void conn_tick(double now)
{
    pthread_mutex_lock(&cmu);
    while (head && now - head->since >= S.header_timeout)
        shut(head);
    pthread_mutex_unlock(&cmu);
}

void conn_stats(long *pending, long *open, uint64_t *shut_total)
{
    pthread_mutex_lock(&cmu);
    *pending = nwaiting;
    *open = nopen;
    *shut_total = nshut;
    pthread_mutex_unlock(&cmu);
}
