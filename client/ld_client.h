/* ld_client: the C client of langdaugd samplers (liblangdaug).
 *
 * A client holds one ZeroMQ DEALER socket per sampler endpoint and keeps a
 * window of `credits` batches granted on each: every batch handed to the
 * caller is replaced by a new credit on the endpoint it came from, so a
 * faster sampler serves more. Batches are views over the received frames
 * (no pixel copy); the caller owns each batch until ld_batch_destroy().
 *
 * Samplers may die and come back. Each endpoint runs this state machine
 * (driven from ld_client_next(); the client has no thread of its own):
 *
 *   state    | event                                  | action                          | next
 *   ---------+----------------------------------------+---------------------------------+---------
 *   DOWN     | ZMTP handshake done (socket monitor)   | send Hello                      | HELLO
 *   HELLO    | HelloReply                             | send PullRequest(window)        | LIVE
 *   LIVE     | Batch                                  | hand out; top up the window     | LIVE
 *   LIVE     | no message sent for idle_timeout       | session presumed expired:       | LIVE
 *            |   (caller did not call next in time)   |   grant the whole window again  |
 *   HELLO,   | Error INVALID_REQUEST, UNKNOWN_DOMAIN, | error returned once by next();  | REJECTED
 *   LIVE     |   LIMIT, UNSUPPORTED_VERSION...        |   no more credits               |
 *   LIVE     | Error UNAVAILABLE (daemon draining)    | no more credits                 | DRAINING
 *   any      | connection lost (socket monitor, or    | outstanding credits forgotten   | DOWN
 *            |   ZMTP heartbeat timeout)              |                                 |
 *
 * A reconnection is a new session on the daemon (ZeroMQ gives the new
 * connection a new routing id), so nothing of the old one can arrive after
 * it and the window restarts from zero. Heartbeats go to every live
 * endpoint each heartbeat_ms while the caller waits in ld_client_next();
 * heartbeat_ms is lowered to a third of a daemon's idle timeout
 * (HelloReply.idle_timeout, which may be below a second, or the whole
 * seconds of idle_timeout_s from daemons that do not send it).
 *
 * Seeds: with opts.has_seed, session k (0, 1, ... counted per sampler, a
 * new one after each reconnection) of the sampler with id e asks for seed
 * ld_client_session_seed(seed, e, k): exactly `seed` for sampler 0's first
 * session, distinct well-mixed seeds otherwise, so two samplers or a
 * restarted one never replay the same chains.
 *
 * Typical use (link with `pkg-config --cflags --libs langdaug`):
 *   const char *eps[] = { "tcp://sampler1:5555", "tcp://sampler2:5555" }, *tg[] = { "DomainB" };
 *   ld_client_opts_t o;
 *   ld_client_opts_init(&o);
 *   o.endpoints = eps; o.n_endpoints = 2; o.targets = tg; o.n_targets = 1; o.batch_size = 16;
 *   ld_client_t *c;
 *   if ((rc = ld_client_new(&o, &c))) -> report ld_strerror(rc), ld_errdetail()
 *   while (training) {
 *       ld_batch_t *b;
 *       if ((rc = ld_client_next(c, &b))) -> report; the client stays usable
 *       else { use b->images, b->masks, b->meta[0 .. b->n-1]; ld_batch_destroy(&b); }
 *   }
 *   ld_client_destroy(&c);
 *
 * Sampler fleets. An endpoint may stand for several samplers, each a
 * connection of its own with its own credit window:
 *   tcp://HOST:PORT   HOST a name: one sampler per IPv4 address it resolves
 *                     to (a Kubernetes headless Service, round-robin DNS);
 *                     an IP address ([...] for IPv6) is one sampler;
 *   file:///PATH      a hosts file: one HOST:PORT (or tcp://HOST:PORT) a
 *                     line, '#' comments, each HOST resolved as above (a
 *                     Slurm job writes its node list there);
 *   anything else     (ipc://, tcp://IFACE;HOST:PORT) one sampler, as is.
 * Names and files are resolved at ld_client_new() and again every
 * resolve_ms from ld_client_next(): samplers that appear are connected,
 * ones no longer listed are said Bye and dropped. A resolution that fails
 * (unknown name, unreadable or malformed file, resolver error) changes
 * nothing: the samplers already known stay, the failure is logged once,
 * named in ld_client_next()'s timeout detail, and retried every second (or
 * every resolve_ms if shorter). Resolution blocks ld_client_next() while it
 * runs (getaddrinfo: usually well under a millisecond from a local cache).
 * Each sampler gets an id, never reused within a client: endpoints that are
 * one sampler get 0, 1, ... in option order; samplers of a name or file get
 * the next ids in sorted address order. Batches and stats carry the id, and
 * seeds are per id (below), so samplers that come and go never share seeds.
 *
 * A sampler that refuses the connection (CURVE keys not accepted, or CURVE
 * on one side only) stays "down"; ZeroMQ keeps retrying, the failure is
 * logged once and named in ld_client_next()'s timeout detail.
 *
 * Errors: functions return 0 or a negative LD_E* code with ld_errdetail()
 * naming the endpoint and what was wrong. The library never aborts or exits
 * and logs through ld_log (ld_log_set() installs the caller's callback).
 * A client is used by one thread at a time. */
#ifndef LD_CLIENT_H
#define LD_CLIENT_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "ld_error.h"  /* LD_E* codes, ld_strerror(), ld_errdetail() */
#include "ld_export.h" /* LD_EXTERN */
#include "ld_keep.h"   /* ld_keep_t */
#include "ld_log.h"    /* ld_log_set(): where the library logs */

#define LD_CLIENT_PROTOCOL_VERSION 1

typedef enum {
    LD_ENCODING_FLOAT32 = 0, /* little-endian IEEE float, values in [-1, 1] */
    LD_ENCODING_FLOAT16 = 1, /* little-endian IEEE half */
    LD_ENCODING_UINT8 = 2    /* round((v + 1) * 127.5) */
} ld_encoding_t;

/* A weighted (source, target) domain pair; source NULL or "" = any dataset
 * domain other than the target. */
typedef struct {
    const char *source;
    const char *target;
    double weight; /* > 0; 0 means the default 1 */
} ld_pair_t;

#define LD_CLIENT_HOST_MAX 256 /* bytes of a resolved host, with its NUL */

/* One address a resolver found: a host ZeroMQ connects to (numeric, IPv6
 * without brackets) and its port. */
typedef struct {
    char host[LD_CLIENT_HOST_MAX];
    uint16_t port;
} ld_client_addr_t;

/* A resolver (ld_client_opts_t.resolver): writes the addresses of `host` (a
 * name, never an IP address) for `port` into out[0 .. max-1] and returns
 * how many (0 = no sampler now), or a negative LD_E* with ld_seterr()'s
 * detail when it cannot say now (the client then keeps what it had). Called
 * from ld_client_new() and ld_client_next(), on the caller's thread. The
 * default uses getaddrinfo() for IPv4 addresses, as ZeroMQ itself does. */
typedef int (*ld_client_resolver_fn)(void *user, const char *host, uint16_t port, ld_client_addr_t *out, int max);

/* Options; start from ld_client_opts_init() and set what you need. The
 * client copies everything it keeps, so the caller's arrays and strings
 * need only live through ld_client_new(). */
typedef struct {
    const char *const *endpoints; /* e.g. "tcp://host:5555", "file:///run/hosts"; 1.. endpoints */
    int n_endpoints;              /* (at most 256 samplers in all) */
    uint32_t batch_size;          /* samples per batch (required, >= 1) */
    const char *const *targets;   /* target domains (shorthand pairs) */
    int n_targets;
    const ld_pair_t *pairs;
    int n_pairs;                  /* no targets and no pairs: every pair the samplers serve */
    const uint32_t *steps;        /* snapshot steps, ascending; none = daemon default */
    int n_steps;
    ld_encoding_t encoding;       /* default FLOAT32 */
    int has_seed;                 /* 0 = each session gets a random daemon seed */
    uint64_t seed;
    int epoch;                    /* each source crop once per epoch */
    int has_keep;                 /* 0 = the daemon's keep setting */
    ld_keep_t keep;               /* with has_keep: LD_KEEP_NONE or LD_KEEP_LUMINANCE (ld_keep.h) */
    uint32_t credits;             /* window per endpoint; default 4 */
    int timeout_ms;               /* ld_client_next() waits at most this; default 30000 */
    int heartbeat_ms;             /* client heartbeats while waiting; default 1000 */
    int dead_ms;                  /* ZMTP heartbeat: connection lost after this silence; default 3000 */
    const char *name;             /* client name shown by `langdaug status`; default "liblangdaug" */
    /* CURVE encryption and authentication (langdaugd's curve_* settings):
     * Z85 keys of 40 characters (common/ld_curvekey.h reads key files). All
     * NULL = plain TCP. Otherwise the server's public key and the client's
     * secret key are needed; the client's public key may be NULL (computed
     * from the secret one). Every endpoint gets the same keys. */
    const char *curve_server_key;
    const char *curve_public_key;
    const char *curve_secret_key;
    /* Fleets (above): names and hosts files are resolved again every
     * resolve_ms (default 30000; 0 = only at ld_client_new(), where a
     * failure is then an error); resolver NULL = getaddrinfo(). */
    int resolve_ms;
    ld_client_resolver_fn resolver;
    void *resolver_user;
} ld_client_opts_t;

/* Metadata of one sample; strings are "" when the daemon did not send them.
 * Pointers stay valid as long as their batch. */
typedef struct {
    const char *source_domain;
    const char *target_domain;
    uint32_t step;          /* Langevin step of the snapshot, 0 = the source crop */
    float energy;
    uint64_t chain_id;      /* chain number within its session; (seed, chain_id) identifies a chain */
    uint64_t seed;          /* noise seed of the chain */
    const char *source_file;
    int32_t crop_x, crop_y;
    const char *model_hash;
    uint32_t source_item;
    uint64_t epoch;
} ld_sample_meta_t;

/* A received batch. Read-only view: images and masks point into the
 * received frames (images is aligned for its element type: a misaligned
 * frame is copied once). */
typedef struct {
    int endpoint;                /* id of the sampler it came from (= index into opts.endpoints
                                  * when every endpoint is one sampler) */
    uint64_t sequence;           /* per session, 0, 1, ... */
    uint32_t n, channels, size;  /* N, C, S */
    uint32_t mask_classes;       /* K (0 if the daemon did not say) */
    ld_encoding_t encoding;
    const void *images;          /* N*C*S*S values [n][c][y][x] */
    size_t images_bytes;
    const uint8_t *masks;        /* N*S*S class ids [n][y][x] */
    size_t masks_bytes;
    const ld_sample_meta_t *meta;/* N entries */
    uint32_t credits_left;       /* the daemon's count after this batch */
} ld_batch_t;

typedef struct ld_client_s ld_client_t;

/* Per-sampler counters (for `langdaug bench` and tests). */
typedef struct {
    int id;                      /* as in ld_batch_t.endpoint */
    const char *endpoint;        /* its ZeroMQ endpoint; valid until it is dropped */
    const char *source;          /* the opts.endpoints entry it comes from; valid while the client lives */
    const char *state;           /* "down", "hello", "live", "rejected", "draining" */
    uint32_t outstanding;        /* credits granted and not yet answered */
    uint32_t window;             /* credits kept outstanding (clamped to the daemon's max) */
    uint64_t batches, samples, bytes; /* received */
    uint64_t sessions;           /* connections that reached HELLO */
    uint64_t errors;             /* Error messages and malformed batches */
} ld_endpoint_stats_t;

LD_EXTERN void ld_client_opts_init(ld_client_opts_t *opts);

/* Checks and copies opts, creates the sockets and starts connecting (the
 * endpoints need not be up yet). LD_EINVAL/LD_ERANGE name a bad option or a
 * malformed endpoint (key text is never put in the detail), LD_ENOTSUP
 * CURVE keys with a libzmq built without CURVE, LD_EIO a ZeroMQ failure,
 * and with resolve_ms 0, LD_ENOENT for a name or
 * file that gives no sampler. */
LD_EXTERN int ld_client_new(const ld_client_opts_t *opts, ld_client_t **out);

/* Says Bye to live endpoints, closes everything, NULLs *self_p. Safe on
 * NULL. Batches still held by the caller stay valid. */
LD_EXTERN void ld_client_destroy(ld_client_t **self_p);

/* Waits up to opts.timeout_ms for the next batch from any endpoint (served
 * round-robin among those with batches waiting). Returns 0 and *out (owned
 * by the caller), or:
 *   LD_ETIMEDOUT  nothing arrived in time (detail: each sampler's state, and
 *                 why a name or file gave none);
 *   LD_EPROTO     an endpoint sent a malformed message (dropped);
 *   LD_EINVAL, LD_ENOENT, LD_ERANGE, LD_ENOTSUP  the daemon rejected the
 *                 request (Error INVALID_REQUEST, UNKNOWN_DOMAIN, LIMIT,
 *                 UNSUPPORTED_VERSION; the detail has its text): that
 *                 endpoint gets no more credits until it reconnects;
 *   LD_ECANCELED  the flag of ld_client_set_cancel() was raised;
 *   LD_EIO        a ZeroMQ call failed.
 * After an error the client stays usable: call again to go on. */
LD_EXTERN int ld_client_next(ld_client_t *self, ld_batch_t **out);

/* Makes ld_client_next() return LD_ECANCELED once *flag is non-zero, e.g.
 * set by a SIGINT handler (the signal also wakes the wait; at worst the
 * client notices within heartbeat_ms). NULL removes the flag. */
LD_EXTERN void ld_client_set_cancel(ld_client_t *self, const volatile sig_atomic_t *flag);

/* Number of samplers now, and a snapshot of the counters of the one at
 * position 0 .. ld_client_endpoints() - 1 (positions change only when a
 * resolution in ld_client_next() adds or drops samplers; ids never do). */
LD_EXTERN int ld_client_endpoints(const ld_client_t *self);
LD_EXTERN int ld_client_stats(const ld_client_t *self, int endpoint, ld_endpoint_stats_t *out);

/* Frees a batch (its frames and metadata) and NULLs *b_p. Safe on NULL. */
LD_EXTERN void ld_batch_destroy(ld_batch_t **b_p);

/* Sample i's C*S*S pixel values as floats in [-1, 1], whatever the
 * encoding. i < b->n. */
LD_EXTERN void ld_batch_image_float(const ld_batch_t *b, uint32_t i, float *out);

/* Bytes per pixel value of an encoding (4, 2, 1; 0 if unknown). */
LD_EXTERN size_t ld_encoding_size(ld_encoding_t enc);
/* "float32", "float16", "uint8"; parse returns 0 or LD_EINVAL. */
LD_EXTERN const char *ld_encoding_name(ld_encoding_t enc);
LD_EXTERN int ld_encoding_parse(const char *name, ld_encoding_t *out);

/* IEEE half (bits) to float. */
LD_EXTERN float ld_half_to_float(uint16_t h);

/* The seed session k of endpoint e asks for (see above). */
LD_EXTERN uint64_t ld_client_session_seed(uint64_t seed, uint32_t endpoint, uint64_t session);

#endif
