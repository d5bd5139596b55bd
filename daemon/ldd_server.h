/* ldd_server: the daemon's event loop.
 *
 * One libuv loop thread owns every piece of state (sessions, scheduler,
 * counters, the current config and engine); only the sampler workers run
 * elsewhere, and they hand results back through a uv_async_t. ZeroMQ
 * sockets join the loop through ldd_zpoll (edge-triggered ZMQ_FD, bounded
 * passes, idle resume); the server runs a pass after every callback that
 * sent.
 *
 *   running  --SIGHUP-->  reloading (config + engine built on a work thread;
 *                         success swaps them, failure keeps the old ones)
 *   running  --SIGTERM/SIGINT--> draining: no new credit, queued chains
 *                         dropped, running ones finish and complete batches
 *                         are sent, up to drain_timeout --> stopped (exit 0)
 *   draining --second signal--> stopped at once */
#ifndef LDD_SERVER_H
#define LDD_SERVER_H

#include "ldd_config.h"
#include "ldd_engine.h"

typedef struct ldd_server_s ldd_server_t;

/* Takes ownership of cfg's contents and of the engine reference; keeps a
 * pointer to opts (re-read on reload). Binds the sockets and starts the
 * workers. */
int ldd_server_new(const ldd_options_t *opts, ldd_config_t *cfg, ldd_engine_t *engine, ldd_server_t **out);
/* Runs until stopped; returns the process exit status. */
int ldd_server_run(ldd_server_t *self);
void ldd_server_destroy(ldd_server_t **self_p);

#endif
