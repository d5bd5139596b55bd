/* ldd_metrics: the optional Prometheus endpoint (config key metrics_listen).
 *
 * libmicrohttpd serves GET /metrics from its own internal polling thread;
 * every other path gets 404, every other method 405, and requests are
 * bounded (headers in LDD_METRICS_REQUEST_MAX bytes, a connection timeout,
 * a connection limit). The HTTP thread never touches loop state: for each
 * request it asks the loop thread through a uv_async_t for a packed
 * StatusReply (the snapshot callback, run on the loop), waits for it under
 * a mutex for at most a few seconds (503 otherwise), and formats it with
 * ld_prom outside the loop. So the loop does one status reply per scrape
 * and nothing an HTTP peer does (slow, silent, flooding) can stall it.
 *
 * Lifetime: ldd_metrics_close() stops the HTTP thread (waking a request
 * waiting for the loop) and closes the async handle; the memory goes with
 * the handle's close callback, so the loop must run once more after it. */
#ifndef LDD_METRICS_H
#define LDD_METRICS_H

#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

#define LDD_METRICS_REQUEST_MAX 8192

typedef struct ldd_metrics_s ldd_metrics_t;

/* Runs on the loop thread: a packed StatusReply, malloc'ed (the caller frees). */
typedef void *(*ldd_metrics_snapshot_fn)(void *user, size_t *len);

/* Parses metrics_listen: "IPV4:PORT" or "[IPV6]:PORT", port 1..65535.
 * Returns 0 (out filled), or LD_EINVAL with a detail saying what is wrong. */
int ldd_metrics_parse_listen(const char *text, struct sockaddr_storage *out, socklen_t *out_len);

/* Binds listen (a valid metrics_listen) and starts serving; logs a warning
 * for a non-loopback address. Returns 0, or negative LD_E* with a detail
 * naming metrics_listen. */
int ldd_metrics_open(uv_loop_t *loop, const char *listen, ldd_metrics_snapshot_fn snapshot, void *user,
                     ldd_metrics_t **out);
/* Stops serving and closes; sets *self_p to NULL. Safe with NULL. */
void ldd_metrics_close(ldd_metrics_t **self_p);

#endif
