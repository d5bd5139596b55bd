/* ldd_zpoll: ZeroMQ sockets on the libuv loop (see ldd_zpoll.h).
 *
 * Invariant: after a pass, either no socket is readable or the idle handle
 * is running, so no message waits for an edge that already came. */
#include "ldd_zpoll.h"

#include <stdlib.h>
#include <zmq.h>

#include "ld_error.h"
#include "ldd_mem.h"

typedef struct {
    void *sock;
    ldd_zpoll_fn fn;
    void *user;
    uv_poll_t poll;
} reader_t;

struct ldd_zpoll_s {
    uv_loop_t *loop;
    uv_idle_t resume;
    reader_t readers[LDD_ZPOLL_MAX];
    int n, batch, in_pump;
};

static int readable(void *sock)
{
    int events = 0;
    size_t sz = sizeof events;
    return zmq_getsockopt(sock, ZMQ_EVENTS, &events, &sz) == 0 && (events & ZMQ_POLLIN);
}

static void resume_cb(uv_idle_t *h)
{
    ldd_zpoll_pump(h->data);
}

static void poll_cb(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    ldd_zpoll_pump(h->data);
}

ldd_zpoll_t *ldd_zpoll_new(uv_loop_t *loop, int batch)
{
    ldd_zpoll_t *self = ldd_xcalloc(1, sizeof *self);
    self->loop = loop;
    self->batch = batch;
    uv_idle_init(loop, &self->resume);
    self->resume.data = self;
    return self;
}

int ldd_zpoll_add(ldd_zpoll_t *self, void *sock, ldd_zpoll_fn fn, void *user)
{
    if (self->n == LDD_ZPOLL_MAX)
        return ld_seterr(LD_ERANGE, "more than %d ZeroMQ sockets on the loop", LDD_ZPOLL_MAX);
    int fd;
    size_t sz = sizeof fd;
    if (zmq_getsockopt(sock, ZMQ_FD, &fd, &sz) != 0)
        return ld_seterr(LD_EIO, "cannot read a ZeroMQ socket's file descriptor: %s", zmq_strerror(zmq_errno()));
    reader_t *r = &self->readers[self->n];
    *r = (reader_t){ .sock = sock, .fn = fn, .user = user };
    int rc = uv_poll_init(self->loop, &r->poll, fd);
    if (rc)
        return ld_seterr(LD_EIO, "cannot poll a ZeroMQ socket: %s", uv_strerror(rc));
    self->n++; /* the handle is the loop's now: its slot stays taken */
    r->poll.data = self;
    if ((rc = uv_poll_start(&r->poll, UV_READABLE, poll_cb)))
        return ld_seterr(LD_EIO, "cannot poll a ZeroMQ socket: %s", uv_strerror(rc));
    return 0;
}

/* Up to batch messages of r; 1 if it is still readable after them. */
static int drain(const ldd_zpoll_t *self, const reader_t *r)
{
    for (int n = 0; readable(r->sock); n++) {
        if (n == self->batch)
            return 1;
        r->fn(r->user);
    }
    return 0;
}

void ldd_zpoll_pump(ldd_zpoll_t *self)
{
    if (self->in_pump)
        return;
    self->in_pump = 1;
    int more = 0;
    for (int i = 0; i < self->n; i++)
        more |= drain(self, &self->readers[i]);
    self->in_pump = 0;
    if (more)
        uv_idle_start(&self->resume, resume_cb);
    else
        uv_idle_stop(&self->resume);
}

void ldd_zpoll_free(ldd_zpoll_t **self_p)
{
    free(*self_p);
    *self_p = NULL;
}
