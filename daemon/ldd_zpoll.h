/* ldd_zpoll: reading ZeroMQ sockets from the libuv loop; the one place
 * that knows how (the server's data and status sockets, the CURVE module's
 * ZAP handler and handshake monitors all go through it).
 *
 * Each socket joins the loop through its ZMQ_FD and a uv_poll. That
 * descriptor is edge-triggered and is also reset by zmq_send, so a pass
 * receives from every socket until ZMQ_EVENTS says it is no longer
 * readable; at most `batch` messages per socket per pass, the rest
 * continued from a uv_idle so that a flood cannot starve timers and
 * workers. A pass runs on every poll event, and owners call ldd_zpoll_pump
 * after they send outside a pass (their send may have taken the edge).
 * Passes do not nest: a pump from inside a handler returns at once.
 *
 * Lifetime: the uv handles live inside; the owner closes them with the
 * loop's other handles (uv_close on each, as uv_walk finds them), runs the
 * loop until they are closed, and only then frees with ldd_zpoll_free.
 * Everything runs on the loop thread. */
#ifndef LDD_ZPOLL_H
#define LDD_ZPOLL_H

#include <uv.h>

#define LDD_ZPOLL_MAX 8

/* Receives and handles one message of the socket it was added with. */
typedef void (*ldd_zpoll_fn)(void *user);

typedef struct ldd_zpoll_s ldd_zpoll_t;

ldd_zpoll_t *ldd_zpoll_new(uv_loop_t *loop, int batch);
/* Starts reading sock (calls fn(user) per readable message). Returns 0, or
 * LD_ERANGE beyond LDD_ZPOLL_MAX sockets, or LD_EIO when ZeroMQ or libuv
 * refuse the socket (with a detail). */
int ldd_zpoll_add(ldd_zpoll_t *self, void *sock, ldd_zpoll_fn fn, void *user);
/* One pass over every socket (see above). */
void ldd_zpoll_pump(ldd_zpoll_t *self);
/* Frees; the handles must be closed already. Safe on NULL. */
void ldd_zpoll_free(ldd_zpoll_t **self_p);

#endif
