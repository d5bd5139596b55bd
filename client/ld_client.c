/* ld_client: sampler client (see ld_client.h for the endpoint state machine).
 *
 * Invariants:
 *   - ep->outstanding <= ep->window credits are granted on each endpoint's
 *     current session, never more: a credit is given back only when a
 *     batch was taken off that endpoint's socket, and all of an endpoint's
 *     credits are forgotten when its connection goes (a new connection is a
 *     new daemon session that starts with none).
 *   - Sockets use ZMQ_IMMEDIATE, so nothing is queued towards an endpoint
 *     that is not connected: a PullRequest is either sent on the current
 *     connection or fails with EAGAIN and is retried, never delivered later
 *     to a session it was not meant for.
 *   - Every received message is decoded and checked before anything in it
 *     is trusted (frame count and lengths, shapes, encoding, mask ids).
 *   - Every sampler belongs to one source (an opts.endpoints entry); a
 *     source's samplers are exactly the distinct addresses of its last
 *     successful resolution (a failed one changes nothing), at most
 *     MAX_ENDPOINTS in all. Ids come from a counter and are never reused. */
#include "ld_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <zmq.h>

#include "langdaug.pb-c.h"
#include "ld_rng.h"
#include "ld_error.h"
#include "ld_log.h"

#define MAX_ENDPOINTS 256
#define MAX_CREDITS 4096
#define DEFAULT_IDLE_TIMEOUT_MS 60000
/* Beyond any daemon's setting: a larger (or infinite) HelloReply.idle_timeout
 * is ignored rather than overflow the count of milliseconds. */
#define MAX_IDLE_TIMEOUT_S 1e7
#define RETRY_MS 50 /* resend period of a PullRequest that found no connection */
#define RESOLVE_RETRY_MS 1000 /* retry period of a name or file that gave no sampler */
#define ADDR_MAX (LD_CLIENT_HOST_MAX + 16) /* "tcp://[" host "]:" port */
#define HANDSHAKE_FAILED \
    (ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)

enum ep_state { EP_DOWN, EP_HELLO, EP_LIVE, EP_REJECTED, EP_DRAINING };
static const char *const state_names[] = { "down", "hello", "live", "rejected", "draining" };

typedef struct {
    char *addr;            /* the ZeroMQ endpoint */
    int id, source;        /* never-reused id; index into the client's sources */
    void *sock, *mon;
    enum ep_state state;
    uint32_t window, outstanding;
    int64_t last_send_ms, last_recv_ms, idle_timeout_ms;
    int need_hello;        /* Hello not yet sent on this connection */
    int spec_sent;         /* this session's first PullRequest (with the request) went out */
    int reject_err;        /* LD_E* of the rejection while REJECTED */
    char reject_text[256];
    char handshake_error[128]; /* why the last connection attempt was refused, "" if none */
    uint64_t sessions, batches, samples, bytes, errors;
} endpoint_t;

/* An opts.endpoints entry: one fixed sampler, a name, or a hosts file. */
enum src_kind { SRC_FIXED, SRC_NAME, SRC_FILE };

typedef struct {
    char *spec;            /* as given */
    enum src_kind kind;
    char *target;          /* SRC_NAME: the host name; SRC_FILE: the path */
    uint16_t port;         /* SRC_NAME */
    int64_t next_resolve_ms;
    char problem[256];     /* why the last resolution gave no sampler, "" if it did */
} source_t;

/* The ZeroMQ endpoints a source stands for now. */
typedef struct {
    int n;
    char v[MAX_ENDPOINTS][ADDR_MAX];
} addr_list_t;

struct ld_client_s {
    void *ctx;
    int n, cap;            /* samplers, and the room in eps */
    endpoint_t *eps;
    int next_id;
    int n_srcs;
    source_t *srcs;
    int resolve_ms, dead_ms;
    ld_client_resolver_fn resolver;
    void *resolver_user;
    ld_client_addr_t *found; /* the resolver's output, MAX_ENDPOINTS entries */
    int rr;                /* endpoint served first by the next receive round */
    uint32_t credits;
    int timeout_ms, heartbeat_ms;
    int has_seed;
    uint64_t seed;
    int64_t last_heartbeat_ms;
    char *name;
    const volatile sig_atomic_t *cancel; /* ld_client_set_cancel(), or NULL */
    int curve;             /* the three keys below are set */
    char curve_server[41], curve_public[41], curve_secret[41];
    /* the PullRequest template (credits and seed set per send) */
    Langdaug__V1__PullRequest pull;
    Langdaug__V1__Pair *pair_store;
};

/* The library's half of a batch: the public view first, then what it views. */
typedef struct {
    ld_batch_t pub;
    zmq_msg_t images, masks;
    void *aligned;          /* copy of a misaligned images frame, or NULL */
    Langdaug__V1__ServerMessage *header;
    ld_sample_meta_t *meta;
} batch_impl_t;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t ld_client_session_seed(uint64_t seed, uint32_t endpoint, uint64_t session)
{
    if (endpoint == 0 && session == 0)
        return seed;
    return ld_splitmix64(seed + ld_splitmix64(((uint64_t)endpoint << 40) ^ session ^ 0x6c64636c69656e74ull));
}

/* ------------------------------------------------------------ encodings */

size_t ld_encoding_size(ld_encoding_t enc)
{
    switch (enc) {
    case LD_ENCODING_FLOAT32: return 4;
    case LD_ENCODING_FLOAT16: return 2;
    case LD_ENCODING_UINT8: return 1;
    }
    return 0;
}

const char *ld_encoding_name(ld_encoding_t enc)
{
    switch (enc) {
    case LD_ENCODING_FLOAT32: return "float32";
    case LD_ENCODING_FLOAT16: return "float16";
    case LD_ENCODING_UINT8: return "uint8";
    }
    return "unknown";
}

int ld_encoding_parse(const char *name, ld_encoding_t *out)
{
    static const ld_encoding_t all[] = { LD_ENCODING_FLOAT32, LD_ENCODING_FLOAT16, LD_ENCODING_UINT8 };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (name && !strcmp(name, ld_encoding_name(all[i]))) {
            *out = all[i];
            return 0;
        }
    return ld_seterr(LD_EINVAL, "encoding '%s' is not float32, float16 or uint8", name ? name : "(null)");
}

float ld_half_to_float(uint16_t h)
{
    int sign = h >> 15, exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
    float v;
    if (exp == 0)
        v = ldexpf((float)frac, -24);
    else if (exp == 31)
        v = frac ? NAN : INFINITY;
    else
        v = ldexpf((float)(frac | 0x400), exp - 25);
    return sign ? -v : v;
}

void ld_batch_image_float(const ld_batch_t *b, uint32_t i, float *out)
{
    size_t n = (size_t)b->channels * b->size * b->size;
    const uint8_t *src = (const uint8_t *)b->images + (size_t)i * n * ld_encoding_size(b->encoding);
    for (size_t j = 0; j < n; j++) {
        switch (b->encoding) {
        case LD_ENCODING_FLOAT32: memcpy(&out[j], src + 4 * j, 4); break;
        case LD_ENCODING_FLOAT16: {
            uint16_t h = (uint16_t)(src[2 * j] | src[2 * j + 1] << 8);
            out[j] = ld_half_to_float(h);
            break;
        }
        case LD_ENCODING_UINT8: out[j] = (float)src[j] / 127.5f - 1.0f; break;
        }
    }
}

/* ------------------------------------------------------------ options */

void ld_client_opts_init(ld_client_opts_t *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->encoding = LD_ENCODING_FLOAT32;
    opts->credits = 4;
    opts->timeout_ms = 30000;
    opts->heartbeat_ms = 1000;
    opts->dead_ms = 3000;
    opts->resolve_ms = 30000;
}

/* A Z85 key: 40 characters that decode. */
static int check_key(const char *what, const char *key)
{
    uint8_t raw[32];
    if (!key || strlen(key) != 40 || !zmq_z85_decode(raw, key))
        return ld_seterr(LD_EINVAL, "%s: not a 40-character Z85 CURVE key", what);
    return 0;
}

static int check_curve(const ld_client_opts_t *o)
{
    if (!o->curve_server_key && !o->curve_public_key && !o->curve_secret_key)
        return 0;
    if (!zmq_has("curve"))
        return ld_seterr(LD_ENOTSUP, "CURVE keys given, but libzmq was built without CURVE");
    if (!o->curve_server_key || !o->curve_secret_key)
        return ld_seterr(LD_EINVAL, "CURVE needs the server's public key and the client's secret key");
    int rc = check_key("curve_server_key", o->curve_server_key);
    rc = rc ? rc : check_key("curve_secret_key", o->curve_secret_key);
    if (!rc && o->curve_public_key)
        rc = check_key("curve_public_key", o->curve_public_key);
    return rc;
}

static int copy_curve(ld_client_t *c, const ld_client_opts_t *o)
{
    if (!o->curve_server_key)
        return 0;
    c->curve = 1;
    memcpy(c->curve_server, o->curve_server_key, 41);
    memcpy(c->curve_secret, o->curve_secret_key, 41);
    if (o->curve_public_key)
        memcpy(c->curve_public, o->curve_public_key, 41);
    else if (zmq_curve_public(c->curve_public, c->curve_secret) != 0)
        return ld_seterr(LD_EINVAL, "curve_secret_key: cannot derive its public key: %s", zmq_strerror(errno));
    return 0;
}

static int set_curve(const ld_client_t *c, const endpoint_t *ep)
{
    if (!c->curve)
        return 0;
    if (zmq_setsockopt(ep->sock, ZMQ_CURVE_SERVERKEY, c->curve_server, 41) != 0 ||
        zmq_setsockopt(ep->sock, ZMQ_CURVE_PUBLICKEY, c->curve_public, 41) != 0 ||
        zmq_setsockopt(ep->sock, ZMQ_CURVE_SECRETKEY, c->curve_secret, 41) != 0)
        return ld_seterr(LD_EIO, "%s: setting the CURVE keys: %s", ep->addr, zmq_strerror(errno));
    return 0;
}

static int check_opts(const ld_client_opts_t *o)
{
    if (o->n_endpoints < 1 || o->n_endpoints > MAX_ENDPOINTS || !o->endpoints)
        return ld_seterr(LD_EINVAL, "endpoints: need 1..%d, got %d", MAX_ENDPOINTS, o->n_endpoints);
    for (int i = 0; i < o->n_endpoints; i++)
        if (!o->endpoints[i] || !*o->endpoints[i])
            return ld_seterr(LD_EINVAL, "endpoints[%d] is empty", i);
    if (o->batch_size < 1)
        return ld_seterr(LD_EINVAL, "batch_size must be >= 1");
    if (o->n_targets < 0 || o->n_pairs < 0)
        return ld_seterr(LD_EINVAL, "n_targets and n_pairs must be >= 0");
    for (int i = 0; i < o->n_targets; i++)
        if (!o->targets[i] || !*o->targets[i])
            return ld_seterr(LD_EINVAL, "targets[%d] is empty", i);
    for (int i = 0; i < o->n_pairs; i++) {
        if (!o->pairs[i].target || !*o->pairs[i].target)
            return ld_seterr(LD_EINVAL, "pairs[%d]: target is empty", i);
        if (!(o->pairs[i].weight >= 0) || !isfinite(o->pairs[i].weight))
            return ld_seterr(LD_ERANGE, "pairs[%d]: weight %g is not a finite number >= 0", i,
                             o->pairs[i].weight);
    }
    if (o->n_steps < 0 || (o->n_steps > 0 && !o->steps))
        return ld_seterr(LD_EINVAL, "steps: bad count %d", o->n_steps);
    for (int i = 1; i < o->n_steps; i++)
        if (o->steps[i] <= o->steps[i - 1])
            return ld_seterr(LD_EINVAL, "steps must be strictly ascending (%u after %u)", o->steps[i],
                             o->steps[i - 1]);
    if (!ld_encoding_size(o->encoding))
        return ld_seterr(LD_EINVAL, "encoding %d is unknown", (int)o->encoding);
    if (o->has_keep && o->keep != LD_KEEP_NONE && o->keep != LD_KEEP_LUMINANCE)
        return ld_seterr(LD_EINVAL, "keep %d is not LD_KEEP_NONE or LD_KEEP_LUMINANCE", (int)o->keep);
    if (o->credits < 1 || o->credits > MAX_CREDITS)
        return ld_seterr(LD_ERANGE, "credits %u outside 1..%d", o->credits, MAX_CREDITS);
    if (o->timeout_ms < 0 || o->heartbeat_ms < 1 || o->dead_ms < 1)
        return ld_seterr(LD_ERANGE, "timeout_ms >= 0, heartbeat_ms >= 1 and dead_ms >= 1 required");
    if (o->resolve_ms < 0)
        return ld_seterr(LD_ERANGE, "resolve_ms %d is negative", o->resolve_ms);
    return check_curve(o);
}

/* Copies targets, pairs and steps into the PullRequest template. */
static int build_template(ld_client_t *c, const ld_client_opts_t *o)
{
    Langdaug__V1__PullRequest init = LANGDAUG__V1__PULL_REQUEST__INIT;
    c->pull = init;
    c->pull.has_credits = 1;
    c->pull.has_batch_size = 1;
    c->pull.batch_size = o->batch_size;
    c->pull.has_encoding = 1;
    c->pull.encoding = (Langdaug__V1__Encoding)o->encoding;
    c->pull.has_epoch = 1;
    c->pull.epoch = o->epoch != 0;
    c->pull.has_seed = o->has_seed;
    c->pull.has_keep = o->has_keep != 0;
    c->pull.keep = (Langdaug__V1__Keep)o->keep;
    c->pull.targets = calloc((size_t)o->n_targets + 1, sizeof(char *));
    c->pull.pairs = calloc((size_t)o->n_pairs + 1, sizeof *c->pull.pairs);
    c->pair_store = calloc((size_t)o->n_pairs + 1, sizeof *c->pair_store);
    c->pull.steps = calloc((size_t)o->n_steps + 1, sizeof(uint32_t));
    if (!c->pull.targets || !c->pull.pairs || !c->pair_store || !c->pull.steps)
        return ld_seterr(LD_ENOMEM, "out of memory for the request");
    for (int i = 0; i < o->n_targets; i++) {
        if (!(c->pull.targets[i] = strdup(o->targets[i])))
            return ld_seterr(LD_ENOMEM, "out of memory for the request");
        c->pull.n_targets++;
    }
    for (int i = 0; i < o->n_pairs; i++) {
        Langdaug__V1__Pair pinit = LANGDAUG__V1__PAIR__INIT, *p = &c->pair_store[i];
        *p = pinit;
        p->source = strdup(o->pairs[i].source ? o->pairs[i].source : "");
        p->target = strdup(o->pairs[i].target);
        p->has_weight = 1;
        p->weight = o->pairs[i].weight > 0 ? o->pairs[i].weight : 1.0;
        c->pull.pairs[i] = p;
        c->pull.n_pairs++;
        if (!p->source || !p->target)
            return ld_seterr(LD_ENOMEM, "out of memory for the request");
    }
    if (o->n_steps > 0)
        memcpy(c->pull.steps, o->steps, (size_t)o->n_steps * sizeof(uint32_t));
    c->pull.n_steps = (size_t)o->n_steps;
    return 0;
}

static void free_template(ld_client_t *c)
{
    for (size_t i = 0; c->pull.targets && i < c->pull.n_targets; i++)
        free(c->pull.targets[i]);
    for (size_t i = 0; c->pair_store && i < c->pull.n_pairs; i++) {
        free(c->pair_store[i].source);
        free(c->pair_store[i].target);
    }
    free(c->pull.targets);
    free(c->pull.pairs);
    free(c->pair_store);
    free(c->pull.steps);
}

/* ------------------------------------------------------------ sockets */

static int set_int(void *sock, int opt, int v, const char *addr, const char *what)
{
    if (zmq_setsockopt(sock, opt, &v, sizeof v) != 0)
        return ld_seterr(LD_EIO, "%s: setting %s: %s", addr, what, zmq_strerror(errno));
    return 0;
}

static void close_endpoint(endpoint_t *ep);
static int send_message(endpoint_t *ep, Langdaug__V1__ClientMessage *m);

/* Creates a sampler's socket and monitor and starts connecting. */
static int open_endpoint(ld_client_t *c, endpoint_t *ep)
{
    char mon_addr[96];
    ep->sock = zmq_socket(c->ctx, ZMQ_DEALER);
    ep->mon = zmq_socket(c->ctx, ZMQ_PAIR);
    if (!ep->sock || !ep->mon)
        return ld_seterr(LD_EIO, "%s: cannot create sockets: %s", ep->addr, zmq_strerror(errno));
    int rc = set_int(ep->sock, ZMQ_LINGER, 0, ep->addr, "linger");
    rc = rc ? rc : set_int(ep->sock, ZMQ_IMMEDIATE, 1, ep->addr, "immediate");
    rc = rc ? rc : set_int(ep->sock, ZMQ_IPV6, strstr(ep->addr, "://[") != NULL, ep->addr, "IPv6");
    rc = rc ? rc : set_int(ep->sock, ZMQ_RECONNECT_IVL, 100, ep->addr, "reconnect interval");
    rc = rc ? rc : set_int(ep->sock, ZMQ_RECONNECT_IVL_MAX, 2000, ep->addr, "reconnect interval max");
    rc = rc ? rc : set_int(ep->sock, ZMQ_HEARTBEAT_IVL, c->heartbeat_ms, ep->addr, "heartbeat interval");
    rc = rc ? rc : set_int(ep->sock, ZMQ_HEARTBEAT_TIMEOUT, c->dead_ms, ep->addr, "heartbeat timeout");
    rc = rc ? rc : set_int(ep->mon, ZMQ_LINGER, 0, ep->addr, "linger");
    rc = rc ? rc : set_curve(c, ep);
    if (rc)
        return rc;
    snprintf(mon_addr, sizeof mon_addr, "inproc://ld-client-%p-%d", (void *)c, ep->id);
    if (zmq_socket_monitor(ep->sock, mon_addr, ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED | HANDSHAKE_FAILED) != 0 ||
        zmq_connect(ep->mon, mon_addr) != 0)
        return ld_seterr(LD_EIO, "%s: cannot monitor the socket: %s", ep->addr, zmq_strerror(errno));
    if (zmq_connect(ep->sock, ep->addr) != 0)
        return ld_seterr(LD_EINVAL, "endpoint '%s': %s", ep->addr, zmq_strerror(errno));
    ep->state = EP_DOWN;
    ep->window = c->credits;
    ep->idle_timeout_ms = DEFAULT_IDLE_TIMEOUT_MS;
    return 0;
}

/* Drops the sampler at position i (Bye first if in a session). */
static void remove_endpoint(ld_client_t *c, int i)
{
    close_endpoint(&c->eps[i]);
    memmove(&c->eps[i], &c->eps[i + 1], (size_t)(c->n - i - 1) * sizeof *c->eps);
    c->n--;
    if (c->rr > i)
        c->rr--;
    if (c->rr >= c->n)
        c->rr = 0;
}

/* Adds a sampler at addr for source si, with the next id. */
static int add_endpoint(ld_client_t *c, int si, const char *addr)
{
    if (c->n == MAX_ENDPOINTS) {
        ld_warn("%s: sampler %s left out: the client has %d already", c->srcs[si].spec, addr, MAX_ENDPOINTS);
        return 0;
    }
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 8;
        endpoint_t *eps = realloc(c->eps, (size_t)cap * sizeof *eps);
        if (!eps)
            return ld_seterr(LD_ENOMEM, "out of memory for the samplers");
        c->eps = eps;
        c->cap = cap;
    }
    endpoint_t *ep = &c->eps[c->n];
    memset(ep, 0, sizeof *ep);
    ep->id = c->next_id++;
    ep->source = si;
    if (!(ep->addr = strdup(addr)))
        return ld_seterr(LD_ENOMEM, "out of memory for the samplers");
    c->n++;
    int rc = open_endpoint(c, ep);
    if (rc)
        remove_endpoint(c, c->n - 1);
    return rc;
}

/* ------------------------------------------------------------ fleets: names and hosts files */

/* A port: decimal 1..65535. */
static int parse_port(const char *what, const char *text, uint16_t *port)
{
    size_t len = strlen(text);
    long v = len >= 1 && len <= 5 && strspn(text, "0123456789") == len ? strtol(text, NULL, 10) : 0;
    if (v < 1 || v > 65535)
        return ld_seterr(LD_EINVAL, "%s: port '%s' is not a number in 1..65535", what, text);
    *port = (uint16_t)v;
    return 0;
}

/* "HOST:PORT" or "[IPV6]:PORT" into host (without brackets) and port;
 * *literal says whether host is an IP address (else a name). */
static int parse_hostport(const char *what, const char *text, char host[LD_CLIENT_HOST_MAX], uint16_t *port,
                          int *literal)
{
    int v6 = text[0] == '[';
    const char *h = text + v6, *end = v6 ? strchr(text, ']') : strrchr(text, ':');
    if (!end || (v6 && end[1] != ':'))
        return ld_seterr(LD_EINVAL, "%s: '%s' is not %s:PORT", what, text, v6 ? "[IPV6]" : "HOST");
    size_t len = (size_t)(end - h);
    if (len == 0 || len >= LD_CLIENT_HOST_MAX)
        return ld_seterr(LD_EINVAL, "%s: '%s': the host is empty or longer than %d bytes", what, text,
                         LD_CLIENT_HOST_MAX - 1);
    memcpy(host, h, len);
    host[len] = '\0';
    int rc = parse_port(what, end + 1 + v6, port);
    if (rc)
        return rc;
    unsigned char raw[16];
    *literal = inet_pton(v6 ? AF_INET6 : AF_INET, host, raw) == 1;
    if (v6 && !*literal)
        return ld_seterr(LD_EINVAL, "%s: '%s' is not an IPv6 address", what, host);
    if (!*literal && strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") != len)
        return ld_seterr(LD_EINVAL, "%s: '%s' is not a host name or IP address", what, host);
    return 0;
}

/* Classifies an opts.endpoints entry (see ld_client.h). */
static int parse_source(source_t *src, const char *spec)
{
    char what[300], host[LD_CLIENT_HOST_MAX];
    int literal = 1;
    snprintf(what, sizeof what, "endpoint '%.200s'", spec);
    if (strlen(spec) >= ADDR_MAX)
        return ld_seterr(LD_EINVAL, "%s: longer than %d bytes", what, ADDR_MAX - 1);
    if (!(src->spec = strdup(spec)))
        return ld_seterr(LD_ENOMEM, "out of memory for the endpoints");
    if (!strncmp(spec, "file://", 7)) {
        if (spec[7] != '/')
            return ld_seterr(LD_EINVAL, "%s: a hosts file needs an absolute path (file:///path/hosts)", what);
        src->kind = SRC_FILE;
        src->target = strdup(spec + 7);
    } else if (!strncmp(spec, "tcp://", 6) && !strchr(spec, ';')) {
        int rc = parse_hostport(what, spec + 6, host, &src->port, &literal);
        if (rc)
            return rc;
        src->kind = literal ? SRC_FIXED : SRC_NAME;
        src->target = literal ? NULL : strdup(host);
    }
    if (src->kind != SRC_FIXED && !src->target)
        return ld_seterr(LD_ENOMEM, "out of memory for the endpoints");
    return 0;
}

/* Appends tcp://host:port (an IPv6 host in brackets) unless listed. */
static void list_add(addr_list_t *l, const char *host, uint16_t port)
{
    char a[ADDR_MAX];
    if (strchr(host, ':'))
        snprintf(a, sizeof a, "tcp://[%s]:%u", host, port);
    else
        snprintf(a, sizeof a, "tcp://%s:%u", host, port);
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->v[i], a))
            return;
    if (l->n < MAX_ENDPOINTS)
        memcpy(l->v[l->n++], a, sizeof a);
}

/* The default resolver: the IPv4 addresses getaddrinfo() gives. */
static int resolve_ipv4(void *user, const char *host, uint16_t port, ld_client_addr_t *out, int max)
{
    (void)user;
    struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM }, *res;
    int err = getaddrinfo(host, NULL, &hints, &res);
    if (err)
        return ld_seterr(err == EAI_AGAIN ? LD_EAGAIN : err == EAI_NONAME || err == EAI_NODATA ? LD_ENOENT : LD_EIO,
                         "name '%s': %s", host, gai_strerror(err));
    int n = 0;
    for (const struct addrinfo *ai = res; ai && n < max; ai = ai->ai_next, n++) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)ai->ai_addr)->sin_addr, out[n].host,
                  sizeof out[n].host);
        out[n].port = port;
    }
    freeaddrinfo(res);
    return n;
}

/* Adds host:port to l: itself if an IP address, else the resolver's answer. */
static int resolve_host(ld_client_t *c, const char *host, uint16_t port, int literal, addr_list_t *l)
{
    if (literal) {
        list_add(l, host, port);
        return 0;
    }
    int n = c->resolver(c->resolver_user, host, port, c->found, MAX_ENDPOINTS);
    if (n < 0)
        return n;
    if (n > MAX_ENDPOINTS)
        return ld_seterr(LD_ERANGE, "name '%s': the resolver gave %d addresses, at most %d were asked", host, n,
                         MAX_ENDPOINTS);
    for (int i = 0; i < n; i++) {
        const ld_client_addr_t *a = &c->found[i];
        if (!memchr(a->host, '\0', sizeof a->host) || !a->host[0] || !a->port)
            return ld_seterr(LD_EINVAL, "name '%s': the resolver's address %d has no host or port", host, i);
        list_add(l, a->host, a->port);
    }
    return 0;
}

/* One line of a hosts file: HOST:PORT or tcp://HOST:PORT, blank, or a '#' comment. */
static int hosts_line(ld_client_t *c, const char *what, char *line, addr_list_t *l)
{
    char host[LD_CLIENT_HOST_MAX];
    uint16_t port;
    int literal;
    size_t len = strlen(line);
    while (len > 0 && strchr(" \t\r\n", line[len - 1]))
        line[--len] = '\0';
    line += strspn(line, " \t");
    if (!*line || *line == '#')
        return 0;
    if (!strncmp(line, "tcp://", 6))
        line += 6;
    int rc = parse_hostport(what, line, host, &port, &literal);
    if (!rc && (rc = resolve_host(c, host, port, literal, l)))
        rc = ld_seterr(rc, "%s: %s", what, ld_errdetail());
    return rc;
}

static int read_hosts(ld_client_t *c, const char *path, addr_list_t *l)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return ld_seterr(LD_EIO, "hosts file '%s': %s", path, strerror(errno));
    char line[ADDR_MAX + 64], what[300];
    int rc = 0;
    for (int no = 1; !rc && fgets(line, sizeof line, f); no++) {
        snprintf(what, sizeof what, "%.250s:%d", path, no);
        if (strlen(line) == sizeof line - 1 && line[sizeof line - 2] != '\n')
            rc = ld_seterr(LD_EINVAL, "%s: line longer than %zu bytes", what, sizeof line - 2);
        else
            rc = hosts_line(c, what, line, l);
    }
    if (!rc && ferror(f))
        rc = ld_seterr(LD_EIO, "hosts file '%s': %s", path, strerror(errno));
    fclose(f);
    return rc;
}

static int list_source(ld_client_t *c, const source_t *s, addr_list_t *l)
{
    if (s->kind == SRC_NAME)
        return resolve_host(c, s->target, s->port, 0, l);
    if (s->kind == SRC_FILE)
        return read_hosts(c, s->target, l);
    memcpy(l->v[0], s->spec, strlen(s->spec) + 1);
    l->n = 1;
    return 0;
}

static int cmp_addr(const void *a, const void *b)
{
    return strcmp(a, b);
}

static int listed(const addr_list_t *l, const char *addr)
{
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->v[i], addr))
            return 1;
    return 0;
}

static int source_has(const ld_client_t *c, int si, const char *addr)
{
    for (int i = 0; i < c->n; i++)
        if (c->eps[i].source == si && !strcmp(c->eps[i].addr, addr))
            return 1;
    return 0;
}

/* Makes source si's samplers those of l: drops the ones no longer listed,
 * adds the new ones in sorted order. */
static int sync_source(ld_client_t *c, int si, addr_list_t *l)
{
    const char *spec = c->srcs[si].spec;
    qsort(l->v, (size_t)l->n, sizeof l->v[0], cmp_addr);
    for (int i = c->n - 1; i >= 0; i--)
        if (c->eps[i].source == si && !listed(l, c->eps[i].addr)) {
            ld_info("%s: sampler %s is no longer listed; dropped", spec, c->eps[i].addr);
            remove_endpoint(c, i);
        }
    for (int k = 0; k < l->n; k++) {
        if (source_has(c, si, l->v[k]))
            continue;
        int rc = add_endpoint(c, si, l->v[k]);
        if (rc)
            return rc;
        if (c->srcs[si].kind != SRC_FIXED)
            ld_info("%s: sampler %s joined (id %d)", spec, l->v[k], c->next_id - 1);
    }
    return 0;
}

/* Records why a source gives no sampler now ("" = it does), logged once. */
static void set_problem(const ld_client_t *c, int si, const char *why)
{
    source_t *s = &c->srcs[si];
    int kept = 0;
    for (int i = 0; i < c->n; i++)
        kept += c->eps[i].source == si;
    if (why[0] && strcmp(why, s->problem) && c->resolve_ms > 0) /* else ld_client_new() fails with it */
        ld_warn("%s: %s; %d of its samplers kept, retrying", s->spec, why, kept);
    snprintf(s->problem, sizeof s->problem, "%s", why);
}

/* Resolves source si again and brings its samplers in line. A failed
 * resolution changes nothing and is retried sooner; only socket errors
 * (LD_ENOMEM, LD_EIO) are returned. */
static int refresh_source(ld_client_t *c, int si, int64_t t)
{
    source_t *s = &c->srcs[si];
    addr_list_t *l = malloc(sizeof *l);
    if (!l)
        return ld_seterr(LD_ENOMEM, "out of memory for the samplers of %s", s->spec);
    l->n = 0;
    int rc = list_source(c, s, l);
    if (rc == 0) {
        rc = sync_source(c, si, l);
        set_problem(c, si, l->n ? "" : "lists no sampler");
    } else if (rc != LD_ENOMEM) {
        set_problem(c, si, ld_errdetail());
        rc = 0;
    }
    free(l);
    int64_t period = s->problem[0] && c->resolve_ms > RESOLVE_RETRY_MS ? RESOLVE_RETRY_MS : c->resolve_ms;
    s->next_resolve_ms = s->kind == SRC_FIXED || c->resolve_ms == 0 ? INT64_MAX : t + period;
    return rc;
}

static int refresh_due(ld_client_t *c, int64_t t)
{
    for (int si = 0; si < c->n_srcs; si++) {
        int rc = t >= c->srcs[si].next_resolve_ms ? refresh_source(c, si, t) : 0;
        if (rc)
            return rc;
    }
    return 0;
}

/* Parses every endpoint and resolves it a first time. */
static int open_sources(ld_client_t *c, const ld_client_opts_t *o)
{
    c->n_srcs = o->n_endpoints;
    c->srcs = calloc((size_t)c->n_srcs, sizeof *c->srcs);
    c->found = calloc(MAX_ENDPOINTS, sizeof *c->found);
    if (!c->srcs || !c->found)
        return ld_seterr(LD_ENOMEM, "out of memory for the endpoints");
    for (int si = 0; si < c->n_srcs; si++) {
        int rc = parse_source(&c->srcs[si], o->endpoints[si]);
        if (rc)
            return rc;
    }
    int64_t t = now_ms();
    for (int si = 0; si < c->n_srcs; si++) {
        int rc = refresh_source(c, si, t);
        if (rc)
            return rc;
        if (c->resolve_ms == 0 && c->srcs[si].problem[0])
            return ld_seterr(LD_ENOENT, "%s: %s", c->srcs[si].spec, c->srcs[si].problem);
    }
    return 0;
}

int ld_client_new(const ld_client_opts_t *opts, ld_client_t **out)
{
    *out = NULL;
    int rc = check_opts(opts);
    if (rc)
        return rc;
    ld_client_t *c = calloc(1, sizeof *c);
    if (!c)
        return ld_seterr(LD_ENOMEM, "out of memory for the client");
    c->credits = opts->credits;
    c->timeout_ms = opts->timeout_ms;
    c->heartbeat_ms = opts->heartbeat_ms;
    c->dead_ms = opts->dead_ms;
    c->resolve_ms = opts->resolve_ms;
    c->resolver = opts->resolver ? opts->resolver : resolve_ipv4;
    c->resolver_user = opts->resolver_user;
    c->has_seed = opts->has_seed;
    c->seed = opts->seed;
    c->name = strdup(opts->name ? opts->name : "liblangdaug");
    c->ctx = zmq_ctx_new();
    if (!c->name)
        rc = ld_seterr(LD_ENOMEM, "out of memory for the client");
    else if (!c->ctx)
        rc = ld_seterr(LD_EIO, "cannot create a ZeroMQ context: %s", zmq_strerror(errno));
    else if (!(rc = build_template(c, opts)) && !(rc = copy_curve(c, opts)))
        rc = open_sources(c, opts);
    if (rc) {
        ld_client_destroy(&c);
        return rc;
    }
    c->last_heartbeat_ms = now_ms();
    *out = c;
    return 0;
}

/* Packs and sends one ClientMessage without blocking: 0, LD_EAGAIN (no
 * connection right now), LD_ENOMEM or LD_EIO. */
static int send_message(endpoint_t *ep, Langdaug__V1__ClientMessage *m)
{
    m->has_version = 1;
    m->version = LD_CLIENT_PROTOCOL_VERSION;
    size_t len = langdaug__v1__client_message__get_packed_size(m);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return ld_seterr(LD_ENOMEM, "out of memory for a message");
    langdaug__v1__client_message__pack(m, buf);
    int rc = zmq_send(ep->sock, buf, len, ZMQ_DONTWAIT);
    int err = errno;
    free(buf);
    if (rc < 0) {
        if (err == EAGAIN)
            return LD_EAGAIN;
        return ld_seterr(LD_EIO, "%s: send: %s", ep->addr, zmq_strerror(err));
    }
    ep->last_send_ms = now_ms();
    return 0;
}

static int send_hello(ld_client_t *c, endpoint_t *ep)
{
    Langdaug__V1__Hello hello = LANGDAUG__V1__HELLO__INIT;
    hello.has_min_version = hello.has_max_version = 1;
    hello.min_version = hello.max_version = LD_CLIENT_PROTOCOL_VERSION;
    hello.client_name = c->name;
    Langdaug__V1__ClientMessage m = LANGDAUG__V1__CLIENT_MESSAGE__INIT;
    m.body_case = LANGDAUG__V1__CLIENT_MESSAGE__BODY_HELLO;
    m.hello = &hello;
    return send_message(ep, &m);
}

/* Grants what is missing from the window on a live endpoint. */
static int top_up(ld_client_t *c, endpoint_t *ep)
{
    if (ep->state != EP_LIVE || ep->outstanding >= ep->window)
        return 0;
    /* the session's first PullRequest says what to sample; later ones only
     * add credits, so the daemon never mistakes them for a new request */
    Langdaug__V1__PullRequest pull = LANGDAUG__V1__PULL_REQUEST__INIT;
    if (!ep->spec_sent) {
        pull = c->pull;
        pull.seed = ld_client_session_seed(c->seed, (uint32_t)ep->id, ep->sessions - 1);
    }
    pull.has_credits = 1;
    pull.credits = ep->window - ep->outstanding;
    Langdaug__V1__ClientMessage m = LANGDAUG__V1__CLIENT_MESSAGE__INIT;
    m.body_case = LANGDAUG__V1__CLIENT_MESSAGE__BODY_PULL;
    m.pull = &pull;
    int rc = send_message(ep, &m);
    if (rc == 0) {
        ep->outstanding = ep->window;
        ep->spec_sent = 1;
    }
    return rc == LD_EAGAIN ? 0 : rc;
}

static int send_heartbeat(endpoint_t *ep, int64_t t)
{
    Langdaug__V1__Heartbeat hb = LANGDAUG__V1__HEARTBEAT__INIT;
    hb.has_time_ms = 1;
    hb.time_ms = (uint64_t)t;
    Langdaug__V1__ClientMessage m = LANGDAUG__V1__CLIENT_MESSAGE__INIT;
    m.body_case = LANGDAUG__V1__CLIENT_MESSAGE__BODY_HEARTBEAT;
    m.heartbeat = &hb;
    int rc = send_message(ep, &m);
    return rc == LD_EAGAIN ? 0 : rc;
}

static void set_down(endpoint_t *ep, const char *why)
{
    if (ep->state != EP_DOWN)
        ld_warn("%s: %s; going on with the other samplers", ep->addr, why);
    ep->state = EP_DOWN;
    ep->outstanding = 0;
    ep->need_hello = 0;
}

/* Starts over with a new connection (hence a new daemon session). */
static int reconnect(endpoint_t *ep, const char *why)
{
    set_down(ep, why);
    zmq_disconnect(ep->sock, ep->addr);
    if (zmq_connect(ep->sock, ep->addr) != 0)
        return ld_seterr(LD_EIO, "%s: reconnect: %s", ep->addr, zmq_strerror(errno));
    return 0;
}

/* Records (and logs once) why a sampler refused the connection. ZeroMQ
 * retries by itself, so the endpoint just stays down meanwhile. */
static void handshake_failed(endpoint_t *ep, uint16_t event, uint32_t value)
{
    char why[sizeof ep->handshake_error];
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
        snprintf(why, sizeof why, "the sampler refused our CURVE key (status %u)", value);
    else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL)
        snprintf(why, sizeof why, "security handshake failed (ZMTP error 0x%x: CURVE keys or CURVE on one side only?)",
                 value);
    else
        snprintf(why, sizeof why, "security handshake failed (%s)", zmq_strerror((int)value));
    if (strcmp(why, ep->handshake_error))
        ld_warn("%s: %s", ep->addr, why);
    memcpy(ep->handshake_error, why, sizeof why);
}

/* Reads every pending monitor event of one endpoint. */
static void read_monitor(endpoint_t *ep)
{
    for (;;) {
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, ep->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&msg);
            return;
        }
        uint16_t event = 0;
        uint32_t value = 0;
        if (zmq_msg_size(&msg) >= 6) {
            memcpy(&event, zmq_msg_data(&msg), sizeof event);
            memcpy(&value, (const char *)zmq_msg_data(&msg) + 2, sizeof value);
        }
        while (zmq_msg_more(&msg)) { /* the address frame */
            zmq_msg_close(&msg);
            zmq_msg_init(&msg);
            if (zmq_msg_recv(&msg, ep->mon, ZMQ_DONTWAIT) < 0)
                break;
        }
        zmq_msg_close(&msg);
        if (event == ZMQ_EVENT_DISCONNECTED) {
            set_down(ep, "connection lost");
        } else if (event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
            ep->state = EP_HELLO;
            ep->outstanding = 0;
            ep->need_hello = 1;
            ep->spec_sent = 0;
            ep->window = 0;
            ep->sessions++;
            ep->last_recv_ms = now_ms();
            ep->handshake_error[0] = '\0';
            ld_info("%s: connected (session %" PRIu64 ")", ep->addr, ep->sessions);
        } else if (event & HANDSHAKE_FAILED) {
            handshake_failed(ep, event, value);
        }
    }
}

/* Sends what each endpoint is owed: Hello, credits, heartbeats; starts a
 * new session where the daemon has surely forgotten the old one. */
static int maintain(ld_client_t *c, int64_t t)
{
    int beat = t - c->last_heartbeat_ms >= c->heartbeat_ms;
    if (beat)
        c->last_heartbeat_ms = t;
    for (int i = 0; i < c->n; i++) {
        endpoint_t *ep = &c->eps[i];
        int rc = 0;
        if (ep->state == EP_LIVE && t - ep->last_send_ms > ep->idle_timeout_ms * 4 / 5)
            rc = reconnect(ep, "idle for longer than the daemon keeps a session");
        else if (ep->state == EP_HELLO && ep->need_hello) {
            rc = send_hello(c, ep);
            if (rc == 0)
                ep->need_hello = 0;
            else if (rc == LD_EAGAIN)
                rc = 0;
        } else if (ep->state == EP_LIVE) {
            rc = top_up(c, ep);
        }
        if (rc == 0 && beat && (ep->state == EP_LIVE || ep->state == EP_HELLO))
            rc = send_heartbeat(ep, t);
        if (rc)
            return rc;
    }
    return 0;
}

/* ------------------------------------------------------------ receiving */

static void drain_frames(void *sock, zmq_msg_t *last)
{
    while (zmq_msg_more(last)) {
        zmq_msg_close(last);
        zmq_msg_init(last);
        if (zmq_msg_recv(last, sock, ZMQ_DONTWAIT) < 0)
            break;
    }
}

static int error_to_ld(Langdaug__V1__ErrorCode code)
{
    switch (code) {
    case LANGDAUG__V1__ERROR_CODE__ERROR_UNSUPPORTED_VERSION: return LD_ENOTSUP;
    case LANGDAUG__V1__ERROR_CODE__ERROR_INVALID_REQUEST: return LD_EINVAL;
    case LANGDAUG__V1__ERROR_CODE__ERROR_UNKNOWN_DOMAIN: return LD_ENOENT;
    case LANGDAUG__V1__ERROR_CODE__ERROR_LIMIT: return LD_ERANGE;
    default: return LD_EPROTO;
    }
}

static int handle_error(endpoint_t *ep, const Langdaug__V1__Error *e)
{
    const char *text = e->text ? e->text : "";
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&langdaug__v1__error_code__descriptor, (int)e->code);
    const char *name = v ? v->name : "unknown error code";
    ep->errors++;
    if (e->code == LANGDAUG__V1__ERROR_CODE__ERROR_UNAVAILABLE) {
        ld_warn("%s: sampler is shutting down (%s)", ep->addr, text);
        ep->state = EP_DRAINING;
        ep->outstanding = 0;
        return 0;
    }
    if (e->code == LANGDAUG__V1__ERROR_CODE__ERROR_INTERNAL) {
        /* failed chains: their samples are dropped, the credit stays granted */
        ld_warn("%s: sampler dropped samples: %s", ep->addr, text);
        return 0;
    }
    ep->state = EP_REJECTED;
    ep->outstanding = 0;
    ep->reject_err = error_to_ld(e->code);
    snprintf(ep->reject_text, sizeof ep->reject_text, "%s: sampler refused the request: %s: %s", ep->addr,
             name, text);
    ld_warn("%s", ep->reject_text);
    return ld_seterr(ep->reject_err, "%s", ep->reject_text);
}

/* The daemon's idle timeout in ms, 0 if it did not say: the precise
 * idle_timeout when present and sane, else the whole seconds of older
 * daemons (rounded up, so heartbeats planned from them can be too slow for
 * a timeout below a second). */
static int64_t hello_idle_ms(const Langdaug__V1__HelloReply *h)
{
    if (h->has_idle_timeout && h->idle_timeout > 0 && h->idle_timeout <= MAX_IDLE_TIMEOUT_S) {
        int64_t ms = llround(h->idle_timeout * 1000);
        return ms > 0 ? ms : 1;
    }
    return h->has_idle_timeout_s ? (int64_t)h->idle_timeout_s * 1000 : 0;
}

static int handle_hello(ld_client_t *c, endpoint_t *ep, const Langdaug__V1__HelloReply *h)
{
    if (ep->state != EP_HELLO)
        return 0; /* a late reply to an earlier connection's Hello */
    if (h->has_version && h->version != LD_CLIENT_PROTOCOL_VERSION) {
        ep->errors++;
        ep->state = EP_REJECTED;
        ep->reject_err = LD_ENOTSUP;
        snprintf(ep->reject_text, sizeof ep->reject_text, "%s: sampler chose protocol version %u, we speak %d",
                 ep->addr, h->version, LD_CLIENT_PROTOCOL_VERSION);
        return ld_seterr(LD_ENOTSUP, "%s", ep->reject_text);
    }
    ep->window = c->credits;
    if (h->has_max_credits && h->max_credits > 0 && h->max_credits < ep->window) {
        ld_info("%s: credit window %u lowered to the sampler's maximum %u", ep->addr, ep->window,
                h->max_credits);
        ep->window = h->max_credits;
    }
    int64_t idle_ms = hello_idle_ms(h);
    if (idle_ms > 0) {
        ep->idle_timeout_ms = idle_ms;
        if (c->heartbeat_ms > ep->idle_timeout_ms / 3) /* heartbeats must beat the daemon's expiry */
            c->heartbeat_ms = ep->idle_timeout_ms / 3 > 10 ? (int)(ep->idle_timeout_ms / 3) : 10;
    }
    ep->state = EP_LIVE;
    return top_up(c, ep);
}

static int check_mul(size_t a, size_t b, size_t *out)
{
    return __builtin_mul_overflow(a, b, out);
}

/* Checks a batch header against its frames and what was asked. */
static int check_batch(const ld_client_t *c, const endpoint_t *ep, const Langdaug__V1__Batch *b, size_t img_len,
                       size_t mask_len)
{
    size_t pix, img, mask, esize = ld_encoding_size((ld_encoding_t)b->encoding);
    if (!b->has_n || !b->has_channels || !b->has_size || b->n < 1 || b->channels < 1 || b->size < 1)
        return ld_seterr(LD_EPROTO, "%s: batch without n, channels or size", ep->addr);
    if ((b->has_encoding ? (int)b->encoding : 0) != (int)c->pull.encoding)
        return ld_seterr(LD_EPROTO, "%s: batch encoding %d, asked for %d", ep->addr, (int)b->encoding,
                         (int)c->pull.encoding);
    if (b->n_samples != b->n)
        return ld_seterr(LD_EPROTO, "%s: batch of %u samples has %zu metadata entries", ep->addr, b->n,
                         b->n_samples);
    if (check_mul((size_t)b->n * b->size, b->size, &mask) || check_mul(mask, b->channels, &pix) ||
        check_mul(pix, esize, &img))
        return ld_seterr(LD_EPROTO, "%s: batch shape %ux%ux%ux%u overflows", ep->addr, b->n, b->channels,
                         b->size, b->size);
    if (img != img_len || (b->has_images_bytes && b->images_bytes != img_len))
        return ld_seterr(LD_EPROTO, "%s: images frame has %zu bytes, shape %ux%ux%ux%u %s needs %zu", ep->addr,
                         img_len, b->n, b->channels, b->size, b->size,
                         ld_encoding_name((ld_encoding_t)b->encoding), img);
    if (mask != mask_len || (b->has_masks_bytes && b->masks_bytes != mask_len))
        return ld_seterr(LD_EPROTO, "%s: masks frame has %zu bytes, needs %zu", ep->addr, mask_len, mask);
    return 0;
}

static const char *str_or_empty(const char *s)
{
    return s ? s : "";
}

static int fill_view(batch_impl_t *bi, const endpoint_t *ep)
{
    const Langdaug__V1__Batch *b = bi->header->batch;
    ld_batch_t *v = &bi->pub;
    v->sequence = b->sequence;
    v->n = b->n;
    v->channels = b->channels;
    v->size = b->size;
    v->mask_classes = b->has_mask_classes ? b->mask_classes : 0;
    v->encoding = (ld_encoding_t)b->encoding;
    v->credits_left = b->credits_left;
    v->images_bytes = zmq_msg_size(&bi->images);
    v->images = zmq_msg_data(&bi->images);
    size_t esize = ld_encoding_size(v->encoding);
    if ((uintptr_t)v->images % esize != 0) {
        if (!(bi->aligned = malloc(v->images_bytes)))
            return ld_seterr(LD_ENOMEM, "out of memory for a batch");
        memcpy(bi->aligned, v->images, v->images_bytes);
        v->images = bi->aligned;
    }
    v->masks_bytes = zmq_msg_size(&bi->masks);
    v->masks = zmq_msg_data(&bi->masks);
    if (v->mask_classes > 0)
        for (size_t j = 0; j < v->masks_bytes; j++)
            if (v->masks[j] >= v->mask_classes)
                return ld_seterr(LD_EPROTO, "%s: mask value %u at byte %zu, but %u classes", ep->addr,
                                 v->masks[j], j, v->mask_classes);
    if (!(bi->meta = calloc(v->n, sizeof *bi->meta)))
        return ld_seterr(LD_ENOMEM, "out of memory for a batch");
    for (uint32_t i = 0; i < v->n; i++) {
        const Langdaug__V1__SampleMeta *s = b->samples[i];
        bi->meta[i] = (ld_sample_meta_t){
            .source_domain = str_or_empty(s->source_domain), .target_domain = str_or_empty(s->target_domain),
            .step = s->step, .energy = s->energy, .chain_id = s->chain_id, .seed = s->seed,
            .source_file = str_or_empty(s->source_file), .crop_x = s->crop_x, .crop_y = s->crop_y,
            .model_hash = str_or_empty(s->model_hash), .source_item = s->source_item, .epoch = s->epoch,
        };
    }
    v->meta = bi->meta;
    return 0;
}

/* Receives the two data frames of a batch whose header is decoded. */
static int receive_batch(ld_client_t *c, endpoint_t *ep, Langdaug__V1__ServerMessage *header, zmq_msg_t *first,
                         ld_batch_t **out)
{
    batch_impl_t *bi = calloc(1, sizeof *bi);
    if (!bi) {
        drain_frames(ep->sock, first);
        langdaug__v1__server_message__free_unpacked(header, NULL);
        return ld_seterr(LD_ENOMEM, "out of memory for a batch");
    }
    bi->header = header;
    zmq_msg_init(&bi->images);
    zmq_msg_init(&bi->masks);
    bi->pub.endpoint = ep->id;
    int rc = 0;
    if (!zmq_msg_more(first) || zmq_msg_recv(&bi->images, ep->sock, ZMQ_DONTWAIT) < 0 ||
        !zmq_msg_more(&bi->images) || zmq_msg_recv(&bi->masks, ep->sock, ZMQ_DONTWAIT) < 0)
        rc = ld_seterr(LD_EPROTO, "%s: batch message with fewer than 3 frames", ep->addr);
    else if (zmq_msg_more(&bi->masks))
        rc = ld_seterr(LD_EPROTO, "%s: batch message with more than 3 frames", ep->addr);
    drain_frames(ep->sock, &bi->masks);
    if (ep->outstanding > 0)
        ep->outstanding--;
    if (!rc)
        rc = check_batch(c, ep, header->batch, zmq_msg_size(&bi->images), zmq_msg_size(&bi->masks));
    if (!rc)
        rc = fill_view(bi, ep);
    if (rc) {
        ep->errors++;
        ld_batch_t *b = &bi->pub;
        ld_batch_destroy(&b);
        return rc;
    }
    ep->batches++;
    ep->samples += bi->pub.n;
    ep->bytes += zmq_msg_size(first) + bi->pub.images_bytes + bi->pub.masks_bytes;
    *out = &bi->pub;
    return 1;
}

/* Takes messages off one endpoint until a batch (returns 1), nothing left
 * (0) or an error (< 0). */
static int receive_one(ld_client_t *c, endpoint_t *ep, ld_batch_t **out)
{
    for (;;) {
        zmq_msg_t first;
        zmq_msg_init(&first);
        if (zmq_msg_recv(&first, ep->sock, ZMQ_DONTWAIT) < 0) {
            int err = errno;
            zmq_msg_close(&first);
            if (err == EAGAIN)
                return 0;
            return ld_seterr(LD_EIO, "%s: receive: %s", ep->addr, zmq_strerror(err));
        }
        ep->last_recv_ms = now_ms();
        Langdaug__V1__ServerMessage *m =
            langdaug__v1__server_message__unpack(NULL, zmq_msg_size(&first), zmq_msg_data(&first));
        int rc = 0;
        if (!m) {
            rc = ld_seterr(LD_EPROTO, "%s: a message of %zu bytes does not decode", ep->addr, zmq_msg_size(&first));
        } else if (m->has_version && m->version != LD_CLIENT_PROTOCOL_VERSION) {
            rc = ld_seterr(LD_EPROTO, "%s: message of protocol version %u", ep->addr, m->version);
        } else if (m->body_case == LANGDAUG__V1__SERVER_MESSAGE__BODY_BATCH) {
            rc = receive_batch(c, ep, m, &first, out);
            zmq_msg_close(&first);
            return rc;
        } else if (zmq_msg_more(&first)) {
            rc = ld_seterr(LD_EPROTO, "%s: extra frames after a non-batch message", ep->addr);
        } else if (m->body_case == LANGDAUG__V1__SERVER_MESSAGE__BODY_HELLO) {
            rc = handle_hello(c, ep, m->hello);
        } else if (m->body_case == LANGDAUG__V1__SERVER_MESSAGE__BODY_ERROR) {
            rc = handle_error(ep, m->error);
        } else if (m->body_case != LANGDAUG__V1__SERVER_MESSAGE__BODY_HEARTBEAT) {
            rc = ld_seterr(LD_EPROTO, "%s: message without a body", ep->addr);
        }
        if (rc == LD_EPROTO)
            ep->errors++;
        drain_frames(ep->sock, &first);
        zmq_msg_close(&first);
        if (m)
            langdaug__v1__server_message__free_unpacked(m, NULL);
        if (rc)
            return rc;
    }
}

/* ------------------------------------------------------------ next */

static int all_rejected(const ld_client_t *c)
{
    if (c->n == 0)
        return 0;
    for (int i = 0; i < c->n; i++)
        if (c->eps[i].state != EP_REJECTED)
            return 0;
    return 1;
}

/* Each sampler's state, then each name or file that gives none and why. */
static int timeout_error(const ld_client_t *c)
{
    char detail[1024];
    int len = snprintf(detail, sizeof detail, "no batch within %d ms:%s", c->timeout_ms, c->n ? "" : " no sampler");
    for (int i = 0; i < c->n && (size_t)len < sizeof detail; i++)
        len += snprintf(detail + len, sizeof detail - (size_t)len, "%s %s %s (%u credits out%s%s)", i ? "," : "",
                        c->eps[i].addr, state_names[c->eps[i].state], c->eps[i].outstanding,
                        c->eps[i].handshake_error[0] ? "; " : "", c->eps[i].handshake_error);
    for (int si = 0; si < c->n_srcs && (size_t)len < sizeof detail; si++)
        if (c->srcs[si].problem[0])
            len += snprintf(detail + len, sizeof detail - (size_t)len, "; %s: %s", c->srcs[si].spec,
                            c->srcs[si].problem);
    return ld_seterr(LD_ETIMEDOUT, "%s", detail);
}

/* Milliseconds zmq_poll may sleep: until the deadline, the next heartbeat
 * or resolution, or a short retry while a send is waiting for a connection. */
static long poll_wait(const ld_client_t *c, int64_t t, int64_t deadline)
{
    int64_t wait = deadline - t;
    int64_t beat = c->last_heartbeat_ms + c->heartbeat_ms - t;
    if (beat < wait)
        wait = beat;
    for (int si = 0; si < c->n_srcs; si++)
        if (c->srcs[si].next_resolve_ms - t < wait)
            wait = c->srcs[si].next_resolve_ms - t;
    for (int i = 0; i < c->n; i++) {
        const endpoint_t *ep = &c->eps[i];
        if ((ep->state == EP_HELLO && ep->need_hello) || (ep->state == EP_LIVE && ep->outstanding < ep->window))
            wait = wait < RETRY_MS ? wait : RETRY_MS;
    }
    return wait < 0 ? 0 : (long)wait;
}

static int poll_all(ld_client_t *c, long wait_ms)
{
    zmq_pollitem_t items[2 * MAX_ENDPOINTS];
    for (int i = 0; i < c->n; i++) {
        items[2 * i] = (zmq_pollitem_t){ .socket = c->eps[i].sock, .events = ZMQ_POLLIN };
        items[2 * i + 1] = (zmq_pollitem_t){ .socket = c->eps[i].mon, .events = ZMQ_POLLIN };
    }
    if (zmq_poll(items, 2 * c->n, wait_ms) < 0 && errno != EINTR)
        return ld_seterr(LD_EIO, "zmq_poll: %s", zmq_strerror(errno));
    return 0;
}

int ld_client_next(ld_client_t *self, ld_batch_t **out)
{
    *out = NULL;
    int64_t deadline = now_ms() + self->timeout_ms;
    for (;;) {
        if (self->cancel && *self->cancel)
            return ld_seterr(LD_ECANCELED, "interrupted while waiting for a batch");
        int rc = refresh_due(self, now_ms());
        if (rc)
            return rc;
        for (int i = 0; i < self->n; i++)
            read_monitor(&self->eps[i]);
        rc = maintain(self, now_ms());
        if (rc)
            return rc;
        for (int k = 0; k < self->n; k++) {
            int i = (self->rr + k) % self->n;
            rc = receive_one(self, &self->eps[i], out);
            if (rc == 1) {
                self->rr = (i + 1) % self->n;
                rc = top_up(self, &self->eps[i]);
                if (rc)
                    ld_batch_destroy(out);
                return rc;
            }
            if (rc < 0)
                return rc;
        }
        if (all_rejected(self))
            return ld_seterr(self->eps[0].reject_err, "%s", self->eps[0].reject_text);
        int64_t t = now_ms();
        if (t >= deadline)
            return timeout_error(self);
        if ((rc = poll_all(self, poll_wait(self, t, deadline))))
            return rc;
    }
}

/* ------------------------------------------------------------ teardown, stats */

/* Says Bye to a sampler in a session and closes its sockets.
 *
 * zmq_disconnect() before zmq_close(): with ZMQ_IMMEDIATE the socket holds
 * no pipe for the endpoint, so the disconnect makes libzmq's session (the
 * I/O thread) end the pipe that brings the sampler's messages, and it first
 * drops a batch that has only partly arrived (pipe_t::terminate, rollback).
 * A close alone ends the pipe from the socket's side, and libzmq 4.3.4 then
 * never frees such frames, nor the 18160-byte decoder buffer they live in,
 * whenever its I/O thread reads the socket's end-of-pipe delimiter before
 * the termination command (pipe_t::process_pipe_term in state
 * delimiter_received drops the pipe without a rollback): the Bye sent just
 * before made that likely. The Bye still leaves: libzmq hands it to the
 * connection (read_activated, a speculative write) before it handles the
 * disconnect. */
static void close_endpoint(endpoint_t *ep)
{
    if (ep->sock && (ep->state == EP_LIVE || ep->state == EP_HELLO)) {
        Langdaug__V1__Bye bye = LANGDAUG__V1__BYE__INIT;
        Langdaug__V1__ClientMessage m = LANGDAUG__V1__CLIENT_MESSAGE__INIT;
        m.body_case = LANGDAUG__V1__CLIENT_MESSAGE__BODY_BYE;
        m.bye = &bye;
        set_int(ep->sock, ZMQ_LINGER, 200, ep->addr, "linger"); /* let the Bye leave */
        send_message(ep, &m);
    }
    if (ep->sock) {
        zmq_socket_monitor(ep->sock, NULL, 0);
        zmq_disconnect(ep->sock, ep->addr); /* ENOENT if it never connected: nothing to end */
        zmq_close(ep->sock);
    }
    if (ep->mon)
        zmq_close(ep->mon);
    free(ep->addr);
}

void ld_batch_destroy(ld_batch_t **b_p)
{
    if (!b_p || !*b_p)
        return;
    batch_impl_t *bi = (batch_impl_t *)*b_p;
    zmq_msg_close(&bi->images);
    zmq_msg_close(&bi->masks);
    free(bi->aligned);
    free(bi->meta);
    if (bi->header)
        langdaug__v1__server_message__free_unpacked(bi->header, NULL);
    free(bi);
    *b_p = NULL;
}

void ld_client_destroy(ld_client_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ld_client_t *c = *self_p;
    for (int i = 0; i < c->n; i++)
        close_endpoint(&c->eps[i]);
    /* A signal (a trainer's SIGALRM or SIGCHLD) interrupts zmq_ctx_term with
     * EINTR and leaves the context alive: it is restarted until it ends. */
    while (c->ctx && zmq_ctx_term(c->ctx) != 0 && zmq_errno() == EINTR)
        ;
    for (int si = 0; c->srcs && si < c->n_srcs; si++) {
        free(c->srcs[si].spec);
        free(c->srcs[si].target);
    }
    free(c->srcs);
    free(c->found);
    free_template(c);
    free(c->eps);
    free(c->name);
    free(c);
    *self_p = NULL;
}

void ld_client_set_cancel(ld_client_t *self, const volatile sig_atomic_t *flag)
{
    self->cancel = flag;
}

int ld_client_endpoints(const ld_client_t *self)
{
    return self->n;
}

int ld_client_stats(const ld_client_t *self, int endpoint, ld_endpoint_stats_t *out)
{
    if (endpoint < 0 || endpoint >= self->n)
        return ld_seterr(LD_ERANGE, "endpoint %d outside 0..%d", endpoint, self->n - 1);
    const endpoint_t *ep = &self->eps[endpoint];
    *out = (ld_endpoint_stats_t){
        .id = ep->id, .endpoint = ep->addr, .source = self->srcs[ep->source].spec, .state = state_names[ep->state], .outstanding = ep->outstanding,
        .window = ep->window, .batches = ep->batches, .samples = ep->samples, .bytes = ep->bytes,
        .sessions = ep->sessions, .errors = ep->errors,
    };
    return 0;
}
