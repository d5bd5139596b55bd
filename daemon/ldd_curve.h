/* ldd_curve: CURVE encryption and client authentication of the daemon's
 * sockets (CurveZMQ + ZAP, RFC 26/27).
 *
 * Off unless the config sets curve_secret_key_file (the server's secret
 * key, ld_curvekey.h format) and curve_allowed_keys_dir (a directory whose
 * *.pub files are the client public keys allowed in). When on, the data
 * and status sockets are CURVE servers: traffic is encrypted, and every
 * connection's client key is checked by a ZAP handler, a REP socket bound
 * to inproc://zeromq.zap.01 in the daemon's ZeroMQ context and driven by
 * the libuv loop (through ldd_zpoll, like the other sockets).
 *
 *   connection's key      | ZAP reply | effect                     | log (rate-limited)
 *   ----------------------+-----------+----------------------------+------------------------------
 *   in the allowed set    | 200       | served; User-Id = file stem| info: key name, Z85, address
 *   not in the set        | 400       | handshake fails, no data   | warning: Z85, address, socket
 *   no CURVE (plain TCP), | -         | handshake fails (libzmq),  | warning: socket, reason
 *   wrong server key      |           | seen by a socket monitor   |   (no address: libzmq gives none)
 *
 * Refusals are logged at most LDD_CURVE_LOG_BURST times a minute, then
 * counted and summarised once the minute is over, so a client retrying in
 * a loop cannot flood the log. The allowed set is re-read on SIGHUP
 * (ldd_keyset_load on the reload thread, ldd_curve_set_keys in the loop);
 * the server key needs a restart. Everything but ldd_keyset_load runs on
 * the loop thread. */
#ifndef LDD_CURVE_H
#define LDD_CURVE_H

#include <stdint.h>
#include <uv.h>

#include "ld_curvekey.h"
#include "ldd_config.h"

#define LDD_CURVE_LOG_BURST 20
#define LDD_MAX_CLIENT_KEYS 4096

/* ---- the allowed client keys ---- */

typedef struct ldd_keyset_s ldd_keyset_t;

/* Loads every *.pub file of dir (dot-files and other names are ignored).
 * A malformed key file, two files with the same key, more than
 * LDD_MAX_CLIENT_KEYS keys or an unreadable directory are errors naming
 * the file. An empty set is allowed (nobody gets in) with a warning. */
int ldd_keyset_load(const char *dir, ldd_keyset_t **out);
void ldd_keyset_destroy(ldd_keyset_t **self_p);
int ldd_keyset_count(const ldd_keyset_t *self);
/* The name (file stem) of an allowed key, or NULL. */
const char *ldd_keyset_find(const ldd_keyset_t *self, const uint8_t key[LD_CURVE_KEY_BYTES]);

/* ---- the sockets' security ---- */

typedef struct ldd_curve_s ldd_curve_t;

/* With CURVE configured: reads the server key and the allowed keys, binds
 * the ZAP handler in zctx and starts polling it on loop; *out is the
 * handle. Without: *out = NULL and 0. Errors name the file. An error once
 * the poll handles are on the loop (polling the ZAP socket fails) still
 * sets *out: like a handle that ran, it is destroyed after the loop's
 * handles are closed (ldd_server_destroy does both). */
int ldd_curve_new(const ldd_config_t *cfg, void *zctx, uv_loop_t *loop, ldd_curve_t **out);
/* Makes sock (not yet bound) a CURVE server with ZAP domain `name`
 * ("data", "status") and monitors its failed handshakes. */
int ldd_curve_secure(ldd_curve_t *self, void *sock, const char *name);
/* Replaces the allowed keys (takes ownership, NULLs *keys). New
 * connections are checked against them; established ones stay. */
void ldd_curve_set_keys(ldd_curve_t *self, ldd_keyset_t **keys);
/* Connections refused so far (unknown key or failed handshake), every
 * one counted, whether logged or not (the status reply shows it); 0 on
 * NULL. */
uint64_t ldd_curve_refused(const ldd_curve_t *self);
/* Client keys allowed now (re-read on SIGHUP); 0 on NULL (no CURVE). */
int ldd_curve_allowed_keys(const ldd_curve_t *self);
/* Closes the ZeroMQ sockets and frees. The loop must have closed this
 * module's uv handles already (the server closes every handle of the loop
 * on shutdown) and the secured sockets must be closed; call before
 * zmq_ctx_term. Safe on NULL. */
void ldd_curve_destroy(ldd_curve_t **self_p);

#endif
