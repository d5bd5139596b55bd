/* ldd_metrics: GET /metrics over libmicrohttpd (see ldd_metrics.h).
 *
 * Invariants: requests are handled one at a time by MHD's single internal
 * thread, which owns nothing of the loop; the loop answers a request with
 * generation g (asked) by publishing one snapshot and answered >= g under
 * the mutex. A snapshot nobody waits for any more (the request timed out)
 * is freed by the next answer or at close. After `closed` is set no
 * request waits, so MHD_stop_daemon() returns promptly. */
#include "ldd_metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "langdaug.pb-c.h"
#include "ld_error.h"
#include "ld_log.h"
#include "ld_prom.h"
#include "ldd_mem.h"

#define WAIT_S 5             /* a request waits this long for the loop's snapshot */
#define CONNECTION_TIMEOUT_S 10
#define MAX_CONNECTIONS 32

struct ldd_metrics_s {
    uv_async_t async;        /* first: the close callback gets the struct from it */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct MHD_Daemon *mhd;
    ldd_metrics_snapshot_fn snapshot;
    void *user;
    uint64_t asked, answered;
    void *buf;               /* the last snapshot, until a request takes it */
    size_t len;
    int closed;
};

int ldd_metrics_parse_listen(const char *text, struct sockaddr_storage *out, socklen_t *out_len)
{
    memset(out, 0, sizeof *out);
    const char *colon = strrchr(text, ':');
    if (!colon || colon == text)
        return ld_seterr(LD_EINVAL, "'%s' is not ADDRESS:PORT (e.g. 127.0.0.1:9464 or [::1]:9464)", text);
    char host[64], *end;
    size_t hlen = (size_t)(colon - text);
    int v6 = text[0] == '[';
    if (v6 && (hlen < 3 || text[hlen - 1] != ']'))
        return ld_seterr(LD_EINVAL, "'%s': an IPv6 address goes in brackets, e.g. [::1]:9464", text);
    if (hlen - 2 * v6 >= sizeof host)
        return ld_seterr(LD_EINVAL, "'%s': the address is too long", text);
    memcpy(host, text + v6, hlen - 2 * v6);
    host[hlen - 2 * v6] = '\0';
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (colon[1] < '0' || colon[1] > '9' || *end || errno || port < 1 || port > 65535)
        return ld_seterr(LD_EINVAL, "'%s': the port must be a number in 1..65535", text);
    if (v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)out;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
            return ld_seterr(LD_EINVAL, "'%s': '%s' is not an IPv6 address", text, host);
        *out_len = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)out;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
            return ld_seterr(LD_EINVAL, "'%s': '%s' is not an IPv4 address (names are not resolved)", text, host);
        *out_len = sizeof *a;
    }
    return 0;
}

static int is_loopback(const struct sockaddr_storage *a)
{
    if (a->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)a)->sin_addr.s_addr) >> 24) == 127;
    return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)a)->sin6_addr);
}

/* Loop thread: publishes one snapshot for the newest request. */
static void async_cb(uv_async_t *h)
{
    ldd_metrics_t *self = (ldd_metrics_t *)h;
    pthread_mutex_lock(&self->mu);
    uint64_t gen = self->asked;
    pthread_mutex_unlock(&self->mu);
    if (gen == self->answered)   /* only the loop writes answered */
        return;
    size_t len;
    void *buf = self->snapshot(self->user, &len);
    pthread_mutex_lock(&self->mu);
    free(self->buf);
    self->buf = buf;
    self->len = len;
    self->answered = gen;
    pthread_cond_broadcast(&self->cv);
    pthread_mutex_unlock(&self->mu);
}

/* HTTP thread: a packed StatusReply from the loop, or NULL (closing, or no
 * answer within WAIT_S). */
static void *fetch_snapshot(ldd_metrics_t *self, size_t *len)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += WAIT_S;
    pthread_mutex_lock(&self->mu);
    uint64_t gen = ++self->asked;
    uv_async_send(&self->async);
    int rc = 0;
    while (!self->closed && self->answered < gen && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&self->cv, &self->mu, &deadline);
    void *buf = NULL;
    if (!self->closed && self->answered >= gen) {
        buf = self->buf;
        *len = self->len;
        self->buf = NULL;
    }
    pthread_mutex_unlock(&self->mu);
    return buf;
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned code, const char *text)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    if (code == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result ok = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result serve_metrics(ldd_metrics_t *self, struct MHD_Connection *c)
{
    size_t len = 0;
    void *packed = fetch_snapshot(self, &len);
    if (!packed)
        return reply(c, MHD_HTTP_SERVICE_UNAVAILABLE, "the daemon did not answer in time\n");
    Langdaug__V1__StatusReply *st = langdaug__v1__status_reply__unpack(NULL, len, packed);
    free(packed);
    char *text = NULL;
    size_t text_len = 0;
    int rc = st ? ld_prom_format(st, &text, &text_len)
                : ld_seterr(LD_EPROTO, "metrics: the status snapshot (%zu bytes) does not decode", len);
    langdaug__v1__status_reply__free_unpacked(st, NULL);
    if (rc)
        return reply(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot format the status\n");
    struct MHD_Response *r = MHD_create_response_from_buffer(text_len, text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, LD_PROM_CONTENT_TYPE);
    enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ok;
}

/* Answers at the first call, before any body: a request with one gets its
 * answer early and MHD closes the connection. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)con_cls;
    if (strcmp(url, "/metrics"))
        return reply(c, MHD_HTTP_NOT_FOUND, "not found: the metrics are at /metrics\n");
    if (strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD))
        return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed: use GET\n");
    return serve_metrics(cls, c);
}

static void on_closed(uv_handle_t *h)
{
    ldd_metrics_t *self = (ldd_metrics_t *)h;
    free(self->buf);
    pthread_cond_destroy(&self->cv);
    pthread_mutex_destroy(&self->mu);
    free(self);
}

static int listen_socket(const struct sockaddr_storage *addr, socklen_t len, const char *text, int *out)
{
    int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0)
        return ld_seterr(LD_EIO, "metrics_listen: cannot create a socket: %s", strerror(errno));
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)addr, len) != 0 || listen(fd, 64) != 0) {
        int e = errno;
        close(fd);
        return ld_seterr(LD_EIO, "metrics_listen: cannot listen on %s: %s", text, strerror(e));
    }
    *out = fd;
    return 0;
}

int ldd_metrics_open(uv_loop_t *loop, const char *listen, ldd_metrics_snapshot_fn snapshot, void *user,
                     ldd_metrics_t **out)
{
    *out = NULL;
    struct sockaddr_storage addr;
    socklen_t addr_len;
    int fd = -1, rc = ldd_metrics_parse_listen(listen, &addr, &addr_len);
    if (rc)
        return ld_seterr(rc, "metrics_listen: %s", ld_errdetail());
    if ((rc = listen_socket(&addr, addr_len, listen, &fd)))
        return rc;
    ldd_metrics_t *self = ldd_xcalloc(1, sizeof *self);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&self->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&self->mu, NULL);
    self->snapshot = snapshot;
    self->user = user;
    uv_async_init(loop, &self->async, async_cb);
    self->mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO, 0, NULL, NULL, on_request, self,
                                 MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
                                 MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)LDD_METRICS_REQUEST_MAX,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)MAX_CONNECTIONS,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)CONNECTION_TIMEOUT_S, MHD_OPTION_END);
    if (!self->mhd) {
        close(fd);
        ldd_metrics_close(&self);
        return ld_seterr(LD_EIO, "metrics_listen: cannot start the HTTP server on %s", listen);
    }
    if (!is_loopback(&addr))
        ld_warn("metrics_listen %s is not a loopback address: anyone who can reach it may read the metrics "
                "(model paths, client names); prefer 127.0.0.1 behind a scraper on the same host", listen);
    ld_info("metrics on http://%s/metrics", listen);
    *out = self;
    return 0;
}

void ldd_metrics_close(ldd_metrics_t **self_p)
{
    ldd_metrics_t *self = *self_p;
    if (!self)
        return;
    *self_p = NULL;
    pthread_mutex_lock(&self->mu);
    self->closed = 1;
    pthread_cond_broadcast(&self->cv);
    pthread_mutex_unlock(&self->mu);
    if (self->mhd)
        MHD_stop_daemon(self->mhd);
    uv_close((uv_handle_t *)&self->async, on_closed);
}
