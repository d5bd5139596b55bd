/* ldd_curve: CURVE server sockets, the ZAP handler and the monitor of
 * failed handshakes (see ldd_curve.h).
 *
 * Invariants: a ZAP request always gets exactly one reply (libzmq holds
 * the handshake until it does). The ZAP socket and the monitors are read
 * through ldd_zpoll (at most PUMP_BATCH messages per socket and pass, so
 * that a connection storm cannot starve the loop). */
#include "ldd_curve.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "ld_error.h"
#include "ld_log.h"
#include "ldd_err.h"
#include "ldd_mem.h"
#include "ldd_zpoll.h"

#define PUMP_BATCH 64
#define MAX_MONITORS 4
#define ZAP_FRAMES 8
#define LOG_WINDOW_MS 60000

/* ------------------------------------------------------------ key set */

typedef struct {
    uint8_t key[LD_CURVE_KEY_BYTES];
    char name[64];
} allowed_key_t;

struct ldd_keyset_s {
    allowed_key_t *keys;
    int n;
};

static int has_suffix(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a > b && !strcmp(s + a - b, suffix);
}

static int add_key(ldd_keyset_t *set, const char *dir, const char *file)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    allowed_key_t k = { 0 };
    char z85[LD_CURVE_KEY_Z85 + 1];
    int rc = ld_curvekey_read_key(path, z85, k.key);
    if (rc < 0)
        return rc;
    if (set->n >= LDD_MAX_CLIENT_KEYS)
        return ld_seterr(LD_ERANGE, "%s: more than %d client keys", dir, LDD_MAX_CLIENT_KEYS);
    snprintf(k.name, sizeof k.name, "%.*s", (int)(strlen(file) - 4), file);
    const char *dup = ldd_keyset_find(set, k.key);
    if (dup)
        return ld_seterr(LD_EINVAL, "%s: same key as %s/%s.pub", path, dir, dup);
    set->keys = ldd_xrealloc(set->keys, (size_t)(set->n + 1) * sizeof *set->keys);
    set->keys[set->n++] = k;
    return 0;
}

int ldd_keyset_load(const char *dir, ldd_keyset_t **out)
{
    *out = NULL;
    DIR *d = opendir(dir);
    if (!d)
        return ld_seterr(LD_EIO, "curve_allowed_keys_dir %s: cannot open: %s", dir, strerror(errno));
    ldd_keyset_t *set = ldd_xcalloc(1, sizeof *set);
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)))
        if (e->d_name[0] != '.' && has_suffix(e->d_name, ".pub"))
            rc = add_key(set, dir, e->d_name);
    closedir(d);
    if (rc < 0) {
        ldd_keyset_destroy(&set);
        return rc;
    }
    if (set->n == 0)
        ld_warn("curve_allowed_keys_dir %s holds no *.pub key: every client will be refused", dir);
    *out = set;
    return 0;
}

void ldd_keyset_destroy(ldd_keyset_t **self_p)
{
    if (!*self_p)
        return;
    free((*self_p)->keys);
    free(*self_p);
    *self_p = NULL;
}

int ldd_keyset_count(const ldd_keyset_t *self)
{
    return self ? self->n : 0;
}

const char *ldd_keyset_find(const ldd_keyset_t *self, const uint8_t key[LD_CURVE_KEY_BYTES])
{
    for (int i = 0; self && i < self->n; i++)
        if (!memcmp(self->keys[i].key, key, LD_CURVE_KEY_BYTES))
            return self->keys[i].name;
    return NULL;
}

/* ------------------------------------------------------------ sockets */

typedef struct {
    struct ldd_curve_s *curve;
    void *sock;        /* PAIR connected to a secured socket's monitor */
    char name[16];     /* "data", "status" */
} monitor_t;

struct ldd_curve_s {
    uv_loop_t *loop;
    void *zctx, *zap;
    ldd_zpoll_t *reader;   /* the ZAP socket and the monitors on the loop */
    monitor_t monitors[MAX_MONITORS];
    int n_monitors;
    uint8_t secret[LD_CURVE_KEY_BYTES];
    char server_public[LD_CURVE_KEY_Z85 + 1];
    ldd_keyset_t *keys;
    char keys_dir[4096];
    uint64_t refused;
    uint64_t log_window_start;
    int logged;
    uint64_t suppressed;
};

/* 1 when a refusal may be logged now; counts the ones that may not. */
static int may_log_refusal(ldd_curve_t *self)
{
    self->refused++;
    uint64_t now = uv_now(self->loop);
    if (now - self->log_window_start >= LOG_WINDOW_MS) {
        if (self->suppressed)
            ld_warn("CURVE: %llu more refused connections were not logged in the last minute",
                    (unsigned long long)self->suppressed);
        self->log_window_start = now;
        self->logged = 0;
        self->suppressed = 0;
    }
    if (self->logged < LDD_CURVE_LOG_BURST) {
        self->logged++;
        return 1;
    }
    self->suppressed++;
    return 0;
}

/* Frame i as printable text (ZAP frames are short ASCII strings). */
static void frame_text(zmq_msg_t *f, int n, int i, char *out, size_t cap)
{
    out[0] = '\0';
    if (i >= n)
        return;
    size_t len = zmq_msg_size(&f[i]);
    const unsigned char *p = zmq_msg_data(&f[i]);
    size_t k = 0;
    for (size_t j = 0; j < len && k + 1 < cap; j++)
        out[k++] = p[j] >= 0x20 && p[j] < 0x7f ? (char)p[j] : '?';
    out[k] = '\0';
}

static void send_reply(ldd_curve_t *self, zmq_msg_t *request_id, const char *code, const char *text,
                       const char *user)
{
    zmq_send(self->zap, "1.0", 3, ZMQ_SNDMORE);
    zmq_msg_send(request_id, self->zap, ZMQ_SNDMORE);
    zmq_send(self->zap, code, strlen(code), ZMQ_SNDMORE);
    zmq_send(self->zap, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(self->zap, user, strlen(user), ZMQ_SNDMORE);
    zmq_send(self->zap, "", 0, 0);
}

/* One ZAP request: [version, request id, domain, address, routing id,
 * mechanism, credentials...] -> [version, request id, status code, status
 * text, user id, metadata]. */
static void handle_zap(void *curve)
{
    ldd_curve_t *self = curve;
    zmq_msg_t f[ZAP_FRAMES];
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, self->zap, n ? 0 : ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&part);
            break;
        }
        more = zmq_msg_more(&part);
        if (n < ZAP_FRAMES) {
            zmq_msg_init(&f[n]);
            zmq_msg_move(&f[n++], &part);
        }
        zmq_msg_close(&part);
    }
    if (n == 0)
        return;
    char domain[32], address[64], mechanism[16], version[8];
    frame_text(f, n, 0, version, sizeof version);
    frame_text(f, n, 2, domain, sizeof domain);
    frame_text(f, n, 3, address, sizeof address);
    frame_text(f, n, 5, mechanism, sizeof mechanism);
    if (n >= 2) {
        zmq_msg_t request_id;
        zmq_msg_init(&request_id);
        zmq_msg_copy(&request_id, &f[1]);
        if (strcmp(version, "1.0") != 0 || n < 6) {
            ld_warn("CURVE: malformed ZAP request (%d frames, version '%s')", n, version);
            send_reply(self, &request_id, "500", "malformed ZAP request", "");
        } else if (strcmp(mechanism, "CURVE") != 0 || n != 7 || zmq_msg_size(&f[6]) != LD_CURVE_KEY_BYTES) {
            if (may_log_refusal(self))
                ld_warn("CURVE: refused a %s connection from %s to the %s socket: only CURVE is accepted", mechanism,
                        address, domain);
            send_reply(self, &request_id, "400", "only CURVE is accepted", "");
        } else {
            const uint8_t *key = zmq_msg_data(&f[6]);
            char z85[LD_CURVE_KEY_Z85 + 1];
            zmq_z85_encode(z85, key, LD_CURVE_KEY_BYTES);
            const char *name = ldd_keyset_find(self->keys, key);
            if (name) {
                ld_info("CURVE: client key '%s' (%s) connected from %s to the %s socket", name, z85, address, domain);
                send_reply(self, &request_id, "200", "OK", name);
            } else {
                if (may_log_refusal(self))
                    ld_warn("CURVE: refused unknown client key %s from %s on the %s socket (not in %s)", z85, address,
                            domain, self->keys_dir);
                send_reply(self, &request_id, "400", "unknown client key", "");
            }
        }
        zmq_msg_close(&request_id);
    }
    for (int i = 0; i < n; i++)
        zmq_msg_close(&f[i]);
}

static const char *handshake_reason(uint16_t event, uint32_t value)
{
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        return "handshake failed before authentication (the client closed it: no CURVE, or a wrong server key?)";
    if (value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
        return "the client does not use CURVE";
    if (value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC)
        return "CURVE decryption failed (the client has the wrong server key?)";
    return "malformed handshake";
}

/* One monitor event: [u16 event, u32 value][endpoint]. */
static void handle_event(void *monitor)
{
    monitor_t *m = monitor;
    ldd_curve_t *self = m->curve;
    zmq_msg_t head, addr;
    zmq_msg_init(&head);
    zmq_msg_init(&addr);
    if (zmq_msg_recv(&head, m->sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&head);
        zmq_msg_close(&addr);
        return;
    }
    if (zmq_msg_more(&head))
        zmq_msg_recv(&addr, m->sock, 0);
    if (zmq_msg_size(&head) == 6) {
        const uint8_t *p = zmq_msg_data(&head);
        uint16_t event;
        uint32_t value;
        memcpy(&event, p, 2);
        memcpy(&value, p + 2, 4);
        if ((event & (ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)) &&
            may_log_refusal(self))
            ld_warn("CURVE: refused a connection to the %s socket (%.*s): %s (code 0x%x)", m->name,
                    (int)zmq_msg_size(&addr), (const char *)zmq_msg_data(&addr), handshake_reason(event, value),
                    value);
    }
    zmq_msg_close(&head);
    zmq_msg_close(&addr);
}

static int load_server_key(ldd_curve_t *self, const char *path)
{
    char secret[LD_CURVE_KEY_Z85 + 1];
    int rc = ld_curvekey_read_secret_key(path, secret);
    if (rc < 0)
        return ldd_err_wrap(rc, "curve_secret_key_file");
    rc = ld_curvekey_public_key(secret, self->server_public);
    if (rc == 0 && !zmq_z85_decode(self->secret, secret))
        rc = ld_seterr(LD_EFORMAT, "%s: not a Z85 key", path);
    memset(secret, 0, sizeof secret);
    return rc;
}

int ldd_curve_new(const ldd_config_t *cfg, void *zctx, uv_loop_t *loop, ldd_curve_t **out)
{
    *out = NULL;
    if (!*cfg->curve_secret_key_file)
        return 0;
    if (!zmq_has("curve"))
        return ld_seterr(LD_ENOTSUP, "CURVE is configured, but this libzmq was built without it");
    ldd_curve_t *self = ldd_xcalloc(1, sizeof *self);
    self->loop = loop;
    self->zctx = zctx;
    self->log_window_start = uv_now(loop);
    snprintf(self->keys_dir, sizeof self->keys_dir, "%s", cfg->curve_allowed_keys_dir);
    int rc = load_server_key(self, cfg->curve_secret_key_file);
    if (rc == 0)
        rc = ldd_keyset_load(cfg->curve_allowed_keys_dir, &self->keys);
    if (rc == 0 && !(self->zap = zmq_socket(zctx, ZMQ_REP)))
        rc = ld_seterr(LD_EIO, "ZAP handler: cannot create a socket: %s", zmq_strerror(zmq_errno()));
    int linger = 0;
    if (rc == 0)
        zmq_setsockopt(self->zap, ZMQ_LINGER, &linger, sizeof linger);
    if (rc == 0 && zmq_bind(self->zap, "inproc://zeromq.zap.01") != 0)
        rc = ld_seterr(LD_EIO, "ZAP handler: cannot bind inproc://zeromq.zap.01: %s", zmq_strerror(zmq_errno()));
    if (rc < 0) {
        ldd_curve_destroy(&self);
        return rc;
    }
    self->reader = ldd_zpoll_new(loop, PUMP_BATCH);
    *out = self;   /* its handles are the loop's from here on: the owner destroys it after closing them */
    rc = ldd_zpoll_add(self->reader, self->zap, handle_zap, self);
    if (rc < 0)
        return rc;
    ld_info("CURVE on: server public key %s; %d allowed client keys in %s", self->server_public,
            ldd_keyset_count(self->keys), self->keys_dir);
    return 0;
}

int ldd_curve_secure(ldd_curve_t *self, void *sock, const char *name)
{
    int one = 1;
    if (self->n_monitors == MAX_MONITORS)
        return ld_seterr(LD_ERANGE, "CURVE: more than %d secured sockets", MAX_MONITORS);
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, self->secret, sizeof self->secret) != 0 ||
        zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, name, strlen(name)) != 0)
        return ld_seterr(LD_EIO, "CURVE on the %s socket: %s", name, zmq_strerror(zmq_errno()));
    monitor_t *m = &self->monitors[self->n_monitors];
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "inproc://langdaugd-monitor-%s", name);
    snprintf(m->name, sizeof m->name, "%s", name);
    m->curve = self;
    if (zmq_socket_monitor(sock, endpoint, ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) !=
            0 ||
        !(m->sock = zmq_socket(self->zctx, ZMQ_PAIR)) || zmq_connect(m->sock, endpoint) != 0) {
        int rc = ld_seterr(LD_EIO, "CURVE: cannot monitor the %s socket: %s", name, zmq_strerror(zmq_errno()));
        if (m->sock)
            zmq_close(m->sock);
        m->sock = NULL;
        return rc;
    }
    int linger = 0;
    zmq_setsockopt(m->sock, ZMQ_LINGER, &linger, sizeof linger);
    self->n_monitors++;
    return ldd_zpoll_add(self->reader, m->sock, handle_event, m);
}

void ldd_curve_set_keys(ldd_curve_t *self, ldd_keyset_t **keys)
{
    ldd_keyset_destroy(&self->keys);
    self->keys = *keys;
    *keys = NULL;
    ld_info("CURVE: %d allowed client keys", ldd_keyset_count(self->keys));
}

uint64_t ldd_curve_refused(const ldd_curve_t *self)
{
    return self ? self->refused : 0;
}

int ldd_curve_allowed_keys(const ldd_curve_t *self)
{
    return self ? ldd_keyset_count(self->keys) : 0;
}

void ldd_curve_destroy(ldd_curve_t **self_p)
{
    ldd_curve_t *self = *self_p;
    if (!self)
        return;
    for (int i = 0; i < self->n_monitors; i++)
        zmq_close(self->monitors[i].sock);
    if (self->zap)
        zmq_close(self->zap);
    ldd_keyset_destroy(&self->keys);
    ldd_zpoll_free(&self->reader);
    memset(self->secret, 0, sizeof self->secret);
    free(self);
    *self_p = NULL;
}
