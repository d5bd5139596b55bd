/* ldd_server: event loop, sockets, protocol handling (see ldd_server.h).
 *
 * Invariants:
 *  - a session is never sent more batches than the credits it granted (the
 *    session module uses a credit only for a batch that ZeroMQ accepted);
 *  - every job submitted comes back through the done list exactly once,
 *    which gives its capacity back to the scheduler;
 *  - a bad message costs its sender an Error reply and nothing else: no
 *    session is created for it and nothing else changes. */
#include "ldd_server.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <uv.h>
#include <zmq.h>

#include "langdaug.pb-c.h"
#include "ld_error.h"
#include "ld_log.h"
#include "ldd_batch.h"
#include "ldd_curve.h"
#include "ldd_mem.h"
#include "ldd_metrics.h"
#include "ldd_notify.h"
#include "ldd_request.h"
#include "ldd_sched.h"
#include "ldd_session.h"
#include "ldd_status.h"
#include "ldd_workers.h"
#include "ldd_zpoll.h"

#define PUMP_BATCH 256   /* messages per socket and pass before yielding to other events */
#define TICK_MS 100
#define RCV_HWM 64       /* messages queued per connection before ZeroMQ stops reading it */

typedef struct {
    uv_work_t work;
    ldd_config_t cfg;
    ldd_engine_t *engine;
    ldd_keyset_t *keys;    /* the allowed client keys again, when CURVE is on */
    int rc;
    char detail[1024];
} reload_t;

struct ldd_server_s {
    uv_loop_t loop;
    const ldd_options_t *opts;
    ldd_config_t cfg;
    ldd_engine_t *engine;
    void *zctx, *data, *status_sock;
    ldd_curve_t *curve;    /* NULL = plain TCP */
    ldd_metrics_t *metrics;  /* NULL = metrics_listen off */
    ldd_zpoll_t *reader;   /* the data and status sockets on the loop */
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t tick, watchdog;
    uv_async_t wake;
    ldd_workers_t *workers;
    ldd_sched_t sched;
    ldd_sessions_t *sessions;
    ldd_status_t *stats;
    double started, last_rate_tick, last_status_note, drain_deadline;
    uint64_t stream_seed;  /* seeds of clients that send none: cfg.seed, or random when 0 */
    int draining, stopping, exit_code;
    reload_t *reload;
    char last_reload[1100];
    double last_reload_time;
};

static double now_s(ldd_server_t *self)
{
    return (double)uv_now(&self->loop) / 1000.0;
}

/* ------------------------------------------------------------ sending */

/* zmq_free_fn (ZeroMQ's I/O thread); hint = the frame's hold on the queue
 * memory budget (ldd_sessions_wire_hold), or NULL. */
static void free_buffer(void *data, void *hint)
{
    free(data);
    if (hint)
        ldd_wire_release(hint);
}

/* The failed zmq_msg_send's error: LD_ENOENT when the peer is gone
 * (EHOSTUNREACH), LD_EAGAIN when its queue is full, else LD_EIO. */
static int send_failed(void)
{
    int e = zmq_errno();
    return ld_seterr(e == EHOSTUNREACH ? LD_ENOENT : e == EAGAIN ? LD_EAGAIN : LD_EIO, "send to the client: %s",
                     zmq_strerror(e));
}

/* Sends [id][frames...] as one multipart message without copying the
 * frames; ownership of every frame buffer passes to ZeroMQ (or is freed on
 * failure). With `counted`, the frames count in the sessions' wire bytes
 * (batch frames waiting to be written to a client are part of the queue
 * memory) until ZeroMQ frees them. Returns 0, or an error of send_failed(). */
static int send_frames(ldd_server_t *self, const void *id, size_t id_len, void **bufs, const size_t *lens,
                       int n, int counted)
{
    zmq_msg_t msg;
    int rc = 0, i = 0;
    zmq_msg_init_size(&msg, id_len);
    memcpy(zmq_msg_data(&msg), id, id_len);
    if (zmq_msg_send(&msg, self->data, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        rc = send_failed();
        zmq_msg_close(&msg);
        for (; i < n; i++)
            free(bufs[i]);
        return rc;
    }
    for (; i < n; i++) {
        void *hold = counted ? ldd_sessions_wire_hold(self->sessions, lens[i]) : NULL;
        zmq_msg_init_data(&msg, bufs[i], lens[i], free_buffer, hold);
        if (zmq_msg_send(&msg, self->data, (i + 1 < n ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) < 0) {
            rc = send_failed(); /* cannot happen after the first part; handled anyway */
            zmq_msg_close(&msg);
            for (int k = i + 1; k < n; k++)
                free(bufs[k]);
            break;
        }
    }
    return rc;
}

static int send_server_message(ldd_server_t *self, const void *id, size_t id_len, Langdaug__V1__ServerMessage *m)
{
    m->has_version = 1;
    m->version = LANGDAUG__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT;
    size_t len = langdaug__v1__server_message__get_packed_size(m);
    void *buf = ldd_xmalloc(len);
    langdaug__v1__server_message__pack(m, buf);
    return send_frames(self, id, id_len, &buf, &len, 1, 0);
}

static void send_error(ldd_server_t *self, const void *id, size_t id_len, ldd_session_t *s, int code,
                       const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static void send_error(ldd_server_t *self, const void *id, size_t id_len, ldd_session_t *s, int code,
                       const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    ld_debug("client error: %s", text);
    ldd_status_protocol_error(self->stats);
    if (s)
        ldd_session_count_error(s);
    Langdaug__V1__Error err = LANGDAUG__V1__ERROR__INIT;
    err.has_code = 1;
    err.code = code;
    err.text = text;
    Langdaug__V1__ServerMessage m = LANGDAUG__V1__SERVER_MESSAGE__INIT;
    m.body_case = LANGDAUG__V1__SERVER_MESSAGE__BODY_ERROR;
    m.error = &err;
    send_server_message(self, id, id_len, &m);
}

static void drop_session(ldd_server_t *self, ldd_session_t *s, const char *why)
{
    ldd_session_view_t v = ldd_session_view(s);
    ld_info("client %llu (%s): %s; %u credits expire", (unsigned long long)v.key, v.name[0] ? v.name : "-", why,
            v.credits);
    ldd_sessions_remove(self->sessions, s);
}

/* Sends every complete batch the session has credit for. Returns false if
 * the session was dropped (peer unreachable), true if it is still there. */
static bool flush_session(ldd_server_t *self, ldd_session_t *s)
{
    ldd_batch_t b;
    while (ldd_session_batch_ready(s)) {
        ldd_session_view_t v = ldd_session_view(s);
        if (ldd_batch_cut(s, v.credits - 1, &b))
            break; /* not reached: ldd_session_batch_ready said a batch is there */
        void *bufs[3] = { b.header, b.images, b.masks };
        size_t lens[3] = { b.header_len, b.images_len, b.masks_len };
        int rc = send_frames(self, v.id, v.id_len, bufs, lens, 3, 1);
        ldd_session_batch_out(s, rc == 0, b.n, now_s(self));
        if (rc == LD_ENOENT) {
            drop_session(self, s, "unreachable");
            return false;
        }
        if (rc < 0)
            ld_warn("client %llu: batch dropped: %s", (unsigned long long)v.key, ld_errdetail());
        else
            ldd_status_sent(self->stats, b.n);
    }
    return true;
}

static void flush_all(ldd_server_t *self)
{
    for (int i = 0; i < ldd_sessions_count(self->sessions);) {
        ldd_session_t *s = ldd_sessions_at(self->sessions, i);
        if (flush_session(self, s))
            i++;
    }
}

static void schedule(ldd_server_t *self)
{
    if (!self->draining)
        ldd_sched_run(&self->sched, self->sessions, self->engine);
}

/* ------------------------------------------------------------ requests */

/* A new session for a client that has none, or NULL after telling it that
 * max_clients is reached. */
static ldd_session_t *open_session(ldd_server_t *self, const uint8_t *id, size_t id_len)
{
    ldd_session_t *s = ldd_sessions_add(self->sessions, id, id_len, now_s(self));
    if (!s)
        send_error(self, id, id_len, NULL, LANGDAUG__V1__ERROR_CODE__ERROR_LIMIT,
                   "too many clients (max_clients = %d)", self->cfg.max_clients);
    return s;
}

static void on_pull(ldd_server_t *self, const uint8_t *id, size_t id_len, ldd_session_t *s,
                    const Langdaug__V1__PullRequest *p)
{
    if (self->draining) {
        send_error(self, id, id_len, s, LANGDAUG__V1__ERROR_CODE__ERROR_UNAVAILABLE, "the daemon is shutting down");
        return;
    }
    uint32_t credits = p->has_credits ? p->credits : 0, max = (uint32_t)self->cfg.max_credits;
    uint32_t room = ldd_session_credit_room(s, max);
    if (credits > room) {
        send_error(self, id, id_len, s, LANGDAUG__V1__ERROR_CODE__ERROR_LIMIT,
                   "credits: %u outstanding + %u asked is beyond max_credits = %u", max - room, credits, max);
        return;
    }
    ldd_request_t req;
    int has_spec = !ldd_request_only_credits(p);
    const ldd_request_t *current = s ? ldd_session_request(s) : NULL;
    if (!has_spec && !current) {
        send_error(self, id, id_len, s, LANGDAUG__V1__ERROR_CODE__ERROR_INVALID_REQUEST,
                   "the first pull request must say what to sample (batch_size and targets or pairs)");
        return;
    }
    int code;
    char text[512];
    if (has_spec && ldd_request_parse(&self->cfg, self->engine, p, &req, &code, text, sizeof text) < 0) {
        send_error(self, id, id_len, s, code, "%s", text);
        return;
    }
    if (!s && !(s = open_session(self, id, id_len)))
        return;
    if (has_spec && (!current || memcmp(&req, current, sizeof req) != 0))
        ldd_session_set_request(s, &req, self->engine, self->stream_seed);
    ldd_session_grant(s, credits);
    flush_session(self, s);
    schedule(self);
}

static void on_hello(ldd_server_t *self, const uint8_t *id, size_t id_len, ldd_session_t *s,
                     const Langdaug__V1__Hello *h)
{
    int code;
    char text[256];
    if (ldd_request_check_hello(h, &code, text, sizeof text) < 0) {
        send_error(self, id, id_len, s, code, "%s", text);
        return;
    }
    if (!s && !(s = open_session(self, id, id_len)))
        return;
    if (h->client_name)
        ldd_session_set_name(s, h->client_name);
    const ldd_engine_t *e = self->engine;
    ldd_model_infos_t *mi = ldd_xcalloc(1, sizeof *mi);
    char *sources[LD_EBM_MAX_DOMAINS];
    uint32_t steps[LD_LANGEVIN_MAX_SNAPSHOTS];
    Langdaug__V1__HelloReply r = LANGDAUG__V1__HELLO_REPLY__INIT;
    ldd_model_infos_fill(mi, e);
    r.n_models = (size_t)e->n_models;
    r.models = mi->ptr;
    for (int d = 0; d < ld_dataset_n_domains(e->dataset); d++)
        sources[d] = (char *)ld_dataset_domain(e->dataset, d);
    r.n_source_domains = (size_t)ld_dataset_n_domains(e->dataset);
    r.source_domains = sources;
    for (int k = 0; k < e->defaults.n_snapshots; k++)
        steps[k] = (uint32_t)e->defaults.snapshots[k];
    r.n_default_steps = (size_t)e->defaults.n_snapshots;
    r.default_steps = steps;
    r.has_version = r.has_image_channels = r.has_mask_classes = r.has_size = 1;
    r.version = 1;
    r.server_version = LD_VERSION;
    r.image_channels = (uint32_t)e->channels;
    r.mask_classes = (uint32_t)e->classes;
    r.size = (uint32_t)e->size;
    r.has_max_batch = r.has_max_credits = r.has_idle_timeout_s = r.has_idle_timeout = 1;
    r.max_batch = (uint32_t)self->cfg.max_batch;
    r.max_credits = (uint32_t)self->cfg.max_credits;
    r.idle_timeout_s = (uint32_t)ceil(self->cfg.idle_timeout); /* rounded up: never 0 for older clients */
    r.idle_timeout = self->cfg.idle_timeout;
    r.has_keep = 1;
    r.keep = (Langdaug__V1__Keep)e->keep;
    Langdaug__V1__ServerMessage m = LANGDAUG__V1__SERVER_MESSAGE__INIT;
    m.body_case = LANGDAUG__V1__SERVER_MESSAGE__BODY_HELLO;
    m.hello = &r;
    send_server_message(self, id, id_len, &m);
    ldd_model_infos_free(mi);
    free(mi);
}

static void send_heartbeat(ldd_server_t *self, const uint8_t *id, size_t id_len, uint64_t time_ms)
{
    Langdaug__V1__Heartbeat hb = LANGDAUG__V1__HEARTBEAT__INIT;
    hb.has_time_ms = 1;
    hb.time_ms = time_ms;
    Langdaug__V1__ServerMessage m = LANGDAUG__V1__SERVER_MESSAGE__INIT;
    m.body_case = LANGDAUG__V1__SERVER_MESSAGE__BODY_HEARTBEAT;
    m.heartbeat = &hb;
    send_server_message(self, id, id_len, &m);
}

static void handle_client(ldd_server_t *self, const uint8_t *id, size_t id_len, const uint8_t *data, size_t len,
                          int parts, size_t total)
{
    ldd_session_t *s = ldd_sessions_find(self->sessions, id, id_len);
    if (s)
        ldd_session_touch(s, now_s(self));
    int code;
    char text[512];
    Langdaug__V1__ClientMessage *m =
        ldd_request_decode(data, len, parts, total, self->cfg.max_message_size, &code, text, sizeof text);
    if (!m) {
        send_error(self, id, id_len, s, code, "%s", text);
        return;
    }
    switch (m->body_case) {
    case LANGDAUG__V1__CLIENT_MESSAGE__BODY_HELLO: on_hello(self, id, id_len, s, m->hello); break;
    case LANGDAUG__V1__CLIENT_MESSAGE__BODY_PULL: on_pull(self, id, id_len, s, m->pull); break;
    case LANGDAUG__V1__CLIENT_MESSAGE__BODY_HEARTBEAT:
        send_heartbeat(self, id, id_len, m->heartbeat->has_time_ms ? m->heartbeat->time_ms : 0);
        break;
    case LANGDAUG__V1__CLIENT_MESSAGE__BODY_BYE:
        if (s)
            drop_session(self, s, "said bye");
        break;
    default:
        break; /* ldd_request_decode refuses a message without a body */
    }
    langdaug__v1__client_message__free_unpacked(m, NULL);
}

/* Receives one whole multipart message from the data socket: the routing
 * id, then the client's frames (only the first is kept; the rest counted). */
static void recv_client(ldd_server_t *self)
{
    zmq_msg_t id, body, part;
    zmq_msg_init(&id);
    zmq_msg_init(&body);
    int parts = 0;
    size_t total = 0;
    if (zmq_msg_recv(&id, self->data, ZMQ_DONTWAIT) >= 0) {
        for (int more = zmq_msg_more(&id); more;) {
            zmq_msg_init(&part);
            if (zmq_msg_recv(&part, self->data, 0) < 0) {
                zmq_msg_close(&part);
                break;
            }
            more = zmq_msg_more(&part);
            total += zmq_msg_size(&part);
            if (parts++ == 0)
                zmq_msg_move(&body, &part);
            zmq_msg_close(&part);
        }
        handle_client(self, zmq_msg_data(&id), zmq_msg_size(&id), zmq_msg_data(&body), zmq_msg_size(&body),
                      parts, total);
    }
    zmq_msg_close(&id);
    zmq_msg_close(&body);
}

/* ------------------------------------------------------------ status socket */

static ldd_status_view_t status_view(ldd_server_t *self)
{
    /* open_socket() secures both sockets or neither */
    return (ldd_status_view_t){
        .cfg = &self->cfg,
        .engine = self->engine,
        .sessions = self->sessions,
        .workers = ldd_workers_count(self->workers),
        .queue_depth = ldd_workers_busy(self->workers),
        .queue_capacity = self->cfg.queue_capacity,
        .draining = self->draining,
        .now = now_s(self),
        .started = self->started,
        .last_reload_time = self->last_reload_time,
        .last_reload = self->last_reload,
        .data_curve = self->curve != NULL,
        .status_curve = self->curve != NULL,
        .allowed_keys = ldd_curve_allowed_keys(self->curve),
        .refused = ldd_curve_refused(self->curve),
    };
}

/* The metrics endpoint's snapshot (loop thread): the status reply a status
 * request gets. */
static void *metrics_snapshot(void *user, size_t *len)
{
    ldd_server_t *self = user;
    ldd_status_view_t v = status_view(self);
    return ldd_status_reply(self->stats, &v, len);
}

static void answer_status(ldd_server_t *self)
{
    zmq_msg_t req;
    zmq_msg_init(&req);
    if (zmq_msg_recv(&req, self->status_sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&req);
        return;
    }
    int parts = 1;
    size_t len = zmq_msg_size(&req);
    Langdaug__V1__StatusRequest *sr = NULL;
    if (!zmq_msg_more(&req))
        sr = langdaug__v1__status_request__unpack(NULL, len, zmq_msg_data(&req));
    while (zmq_msg_more(&req)) {
        zmq_msg_close(&req);
        zmq_msg_init(&req);
        if (zmq_msg_recv(&req, self->status_sock, 0) < 0)
            break;
        parts++;
    }
    zmq_msg_close(&req);
    void *buf;
    size_t out_len;
    if (!sr || parts != 1) {
        ldd_status_protocol_error(self->stats);
        buf = ldd_status_error_reply(LANGDAUG__V1__ERROR_CODE__ERROR_MALFORMED,
                                     "expected one frame holding a StatusRequest", &out_len);
    } else {
        ldd_status_view_t v = status_view(self);
        buf = ldd_status_reply(self->stats, &v, &out_len);
    }
    langdaug__v1__status_request__free_unpacked(sr, NULL);
    zmq_msg_t reply;
    zmq_msg_init_data(&reply, buf, out_len, free_buffer, NULL);
    if (zmq_msg_send(&reply, self->status_sock, ZMQ_DONTWAIT) < 0) {
        ld_warn("status reply not sent: %s", zmq_strerror(zmq_errno()));
        zmq_msg_close(&reply);
    }
}

/* ------------------------------------------------------------ pumping */

/* The readers of the data and status sockets (ldd_zpoll). */
static void data_message(void *self)
{
    recv_client(self);
}

static void status_message(void *self)
{
    answer_status(self);
}

/* A pass over both sockets: after every callback that sent (ZMQ_FD is
 * edge-triggered and reset by a send). */
static void pump(ldd_server_t *self)
{
    ldd_zpoll_pump(self->reader);
}

/* ------------------------------------------------------------ workers */

static void stop_now(ldd_server_t *self);

static void job_done(ldd_server_t *self, ldd_job_t *job)
{
    ldd_session_t *s = ldd_sessions_job_owner(self->sessions, job);
    if (!s || job->status == LD_ECANCELED) {
        ldd_job_free(&job);
        return;
    }
    ldd_session_view_t v = ldd_session_view(s);
    if (job->status < 0) {
        ldd_status_chain_failed(self->stats);
        ld_warn("client %llu: chains failed: %s", (unsigned long long)v.key, job->error);
        send_error(self, v.id, v.id_len, s, LANGDAUG__V1__ERROR_CODE__ERROR_INTERNAL, "chains failed: %s",
                   job->error);
    } else {
        const ldd_engine_t *e = job->engine;
        for (int c = 0; c < job->n; c++)
            for (int k = 0; k < job->params.n_snapshots; k++)
                ldd_status_produced(self->stats, ld_dataset_domain(e->dataset, job->chains[c].crop.domain),
                                    v.req->pairs[job->chains[c].target_name].target,
                                    job->energy[(size_t)k * job->n + c]);
    }
    ldd_session_add_ready(s, job);
}

/* The scheduler's sink: the workers. */
static void submit_job(void *workers, ldd_job_t *job)
{
    ldd_workers_submit(workers, job);
}

static void wake_cb(uv_async_t *h)
{
    ldd_server_t *self = h->data;
    ldd_job_t *list = ldd_workers_take_done(self->workers);
    while (list) {
        ldd_job_t *next = list->next;
        ldd_sched_release(&self->sched, 1);
        job_done(self, list);
        list = next;
    }
    flush_all(self);
    schedule(self);
    pump(self);
    if (self->draining && ldd_workers_busy(self->workers) == 0)
        stop_now(self);
}

/* ------------------------------------------------------------ timers */

static void tick_cb(uv_timer_t *h)
{
    ldd_server_t *self = h->data;
    double now = now_s(self);
    for (int i = 0; i < ldd_sessions_count(self->sessions);) {
        ldd_session_t *s = ldd_sessions_at(self->sessions, i);
        ldd_session_view_t v = ldd_session_view(s);
        if (now - v.last_seen > self->cfg.idle_timeout) {
            drop_session(self, s, "idle timeout");
            continue;
        }
        if (v.credits > 0 && now - v.last_sent >= self->cfg.heartbeat_interval) {
            send_heartbeat(self, v.id, v.id_len, (uint64_t)(now * 1000));
            ldd_session_heartbeat_sent(s, now);
        }
        i++;
    }
    if (now - self->last_rate_tick >= LDD_RATE_TICK) {
        ldd_status_tick(self->stats, now - self->last_rate_tick);
        self->last_rate_tick = now;
    }
    if (now - self->last_status_note >= 10 && !self->draining) {
        char note[128];
        snprintf(note, sizeof note, "%d clients, %llu samples sent", ldd_sessions_count(self->sessions),
                 (unsigned long long)ldd_status_samples_sent(self->stats));
        ldd_notify_status(note);
        self->last_status_note = now;
    }
    if (self->draining && now >= self->drain_deadline) {
        ld_warn("drain timeout: stopping with %d jobs unfinished", ldd_workers_busy(self->workers));
        stop_now(self);
        return;
    }
    schedule(self);
    pump(self);
}

static void watchdog_cb(uv_timer_t *h)
{
    (void)h;
    ldd_notify_watchdog();
}

/* ------------------------------------------------------------ signals */

/* Closes every handle but the signal handles, which are only unref'ed so
 * that a SIGTERM arriving during the final flush is still caught instead of
 * killing the process (see close_signals). */
static void close_handle(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (h->type == UV_SIGNAL)
        uv_unref(h);
    else if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Last step of shutdown: closing a signal handle restores the default
 * action, so each is replaced by SIG_IGN right away. */
static void close_signals(ldd_server_t *self)
{
    uv_signal_t *sigs[] = { &self->sig_term, &self->sig_int, &self->sig_hup };
    int nums[] = { SIGTERM, SIGINT, SIGHUP };
    for (int i = 0; i < 3; i++) {
        if (sigs[i]->loop && !uv_is_closing((uv_handle_t *)sigs[i])) {
            uv_close((uv_handle_t *)sigs[i], NULL);
            signal(nums[i], SIG_IGN);
        }
    }
}

static void stop_now(ldd_server_t *self)
{
    if (self->stopping)
        return;
    self->stopping = 1;
    ldd_workers_cancel(self->workers, 1);
    ldd_metrics_close(&self->metrics);
    uv_walk(&self->loop, close_handle, NULL);
}

static void start_drain(ldd_server_t *self, const char *signame)
{
    if (self->draining) {
        ld_info("%s again: stopping now", signame);
        stop_now(self);
        return;
    }
    ld_info("%s: draining (up to %g s)", signame, self->cfg.drain_timeout);
    ldd_notify_stopping();
    self->draining = 1;
    self->drain_deadline = now_s(self) + self->cfg.drain_timeout;
    ldd_workers_cancel(self->workers, 0);
    if (ldd_workers_busy(self->workers) == 0)
        uv_async_send(&self->wake);
}

static void term_cb(uv_signal_t *h, int signum)
{
    start_drain(h->data, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

static void reload_work(uv_work_t *w)
{
    reload_t *r = w->data;
    ldd_server_t *self = r->work.loop->data;
    r->rc = ldd_config_build(self->opts, &r->cfg);
    if (r->rc == 0 && self->curve && !*r->cfg.curve_allowed_keys_dir)
        r->rc = ld_seterr(LD_EINVAL, "curve_allowed_keys_dir: CURVE is on, so the allowed keys are needed "
                          "(turning CURVE off needs a restart)");
    if (r->rc == 0 && self->curve)
        r->rc = ldd_keyset_load(r->cfg.curve_allowed_keys_dir, &r->keys);
    if (r->rc == 0)
        r->rc = ldd_engine_load(&r->cfg, &r->engine);
    if (r->rc < 0) {
        ldd_keyset_destroy(&r->keys);
        ldd_config_free(&r->cfg);
    }
    if (r->rc < 0)
        snprintf(r->detail, sizeof r->detail, "%s: %s", ld_strerror(r->rc), ld_errdetail());
}

/* Re-resolves every session's request against the new engine. */
static void rebind_sessions(ldd_server_t *self)
{
    for (int i = 0; i < ldd_sessions_count(self->sessions); i++) {
        ldd_session_t *s = ldd_sessions_at(self->sessions, i);
        ldd_session_view_t v = ldd_session_view(s);
        if (!v.req)
            continue;
        ldd_request_t req = *v.req;
        int code;
        char text[400];
        int ok = ldd_request_resolve(self->engine, &req, &code, text, sizeof text) == 0;
        ldd_session_set_request(s, &req, self->engine, self->stream_seed);
        if (ok && !ldd_sessions_batch_fits(self->sessions, s)) {
            send_error(self, v.id, v.id_len, s, LANGDAUG__V1__ERROR_CODE__ERROR_LIMIT,
                       "after a reload, a batch is beyond max_queue_memory; credits dropped");
            ldd_session_cancel_request(s);
        } else if (!ok) {
            send_error(self, v.id, v.id_len, s, code, "after a reload, %s; credits dropped", text);
            ldd_session_cancel_request(s);
        }
    }
}

static void reload_done(uv_work_t *w, int status)
{
    reload_t *r = w->data;
    ldd_server_t *self = w->loop->data;
    self->reload = NULL;
    if (self->stopping) {
        if (status == 0 && r->rc == 0) {
            ldd_engine_unref(&r->engine);
            ldd_config_free(&r->cfg);
        }
        ldd_keyset_destroy(&r->keys);
        free(r);
        return;
    }
    self->last_reload_time = now_s(self);
    if (status != 0 || r->rc < 0) {
        snprintf(self->last_reload, sizeof self->last_reload, "failed: %s",
                 status ? uv_strerror(status) : r->detail);
        ld_error("reload %s; the running models stay", self->last_reload);
        if (r->rc == 0) {
            ldd_engine_unref(&r->engine);
            ldd_config_free(&r->cfg);
        }
        ldd_keyset_destroy(&r->keys);
    } else {
        ldd_config_keep_restart_keys(&r->cfg, &self->cfg);
        ldd_config_free(&self->cfg);
        self->cfg = r->cfg;
        ldd_engine_unref(&self->engine);
        self->engine = r->engine;
        ld_log_level = ldd_config_log_level(&self->cfg);
        ldd_sessions_set_limits(self->sessions, self->cfg.max_clients, (int64_t)self->cfg.max_queue_memory << 20);
        self->sched.capacity = self->cfg.queue_capacity;
        self->sched.chain_batch = self->cfg.chain_batch;
        rebind_sessions(self);
        if (self->curve)
            ldd_curve_set_keys(self->curve, &r->keys);
        snprintf(self->last_reload, sizeof self->last_reload, "ok: %d models, first %.16s", self->engine->n_models,
                 self->engine->models[0].hash);
        ld_info("reload %s", self->last_reload);
    }
    free(r);
    ldd_notify_ready(self->last_reload);
    schedule(self);
    pump(self);
}

static void hup_cb(uv_signal_t *h, int signum)
{
    (void)signum;
    ldd_server_t *self = h->data;
    if (self->reload || self->draining) {
        ld_warn("SIGHUP ignored: %s", self->reload ? "a reload is running" : "draining");
        return;
    }
    ld_info("SIGHUP: reloading the config and models");
    ldd_notify_reloading();
    reload_t *r = ldd_xcalloc(1, sizeof *r);
    r->work.data = r;
    self->reload = r;
    uv_queue_work(&self->loop, &r->work, reload_work, reload_done);
}

/* ------------------------------------------------------------ setup */

static int zmq_fail(const char *what, const char *endpoint)
{
    return ld_seterr(LD_EIO, "%s %s: %s", what, endpoint, zmq_strerror(zmq_errno()));
}

/* Whether an endpoint is reachable from this machine only. */
static int local_only(const char *endpoint)
{
    static const char *const prefixes[] = { "tcp://127.", "tcp://localhost:", "tcp://[::1]:", "ipc://", "inproc://" };
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
        if (!strncmp(endpoint, prefixes[i], strlen(prefixes[i])))
            return 1;
    return 0;
}

static int open_socket(ldd_server_t *self, int type, const char *endpoint, void **out, ldd_zpoll_fn on_message)
{
    const char *name = type == ZMQ_ROUTER ? "data" : "status";
    void *sock = zmq_socket(self->zctx, type);
    if (!sock)
        return zmq_fail("cannot create a socket for", endpoint);
    *out = sock;
    int one = 1, linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    /* Messages up to 4x max_message_size are received and answered with
     * Error TOO_LARGE; longer ones make ZeroMQ drop the connection. At most
     * RCV_HWM messages wait per connection, bounding what a flooding peer
     * makes the daemon buffer to RCV_HWM * that size. */
    int64_t maxmsg = (int64_t)self->cfg.max_message_size * 4 + 4096;
    int rcvhwm = RCV_HWM, handshake_ms = (int)(self->cfg.handshake_timeout * 1000),
        backlog = self->cfg.max_pending_connections;
    zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    zmq_setsockopt(sock, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm);
    /* Half-open and slow peers: each is dropped after the handshake timeout,
     * and at most the backlog wait to be accepted. */
    zmq_setsockopt(sock, ZMQ_HANDSHAKE_IVL, &handshake_ms, sizeof handshake_ms);
    zmq_setsockopt(sock, ZMQ_BACKLOG, &backlog, sizeof backlog);
    if (type == ZMQ_ROUTER) {
        int hwm = self->cfg.max_credits * 2 + 1000;
        zmq_setsockopt(sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
        zmq_setsockopt(sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    }
    if (self->curve) {
        int rc = ldd_curve_secure(self->curve, sock, name);
        if (rc < 0)
            return rc;
    } else {
        /* With a ZAP domain, libzmq refuses peers whose greeting is not
         * ZMTP/3 (CURVE sets one too). Without it, raw bytes not starting
         * with 0xFF pass as a ZMTP/1.0 peer, after which a REP socket loses
         * about one request in three (tests/test_daemon_hostile.py). No ZAP
         * handler runs in plain mode, so ZeroMQ peers are let in as before. */
        if (zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, name, strlen(name)) != 0)
            return zmq_fail("cannot set the ZAP domain of", endpoint);
        if (!local_only(endpoint))
            ld_warn("the %s socket %s is plain TCP: anyone who can reach it may use it; set "
                    "curve_secret_key_file and curve_allowed_keys_dir to encrypt and authenticate", name, endpoint);
    }
    if (zmq_bind(sock, endpoint) != 0)
        return zmq_fail("cannot bind", endpoint);
    int rc = ldd_zpoll_add(self->reader, sock, on_message, self);
    if (rc < 0)
        return rc;
    ld_info("listening on %s (%s%s; handshake timeout %g s, at most %d pending connections)", endpoint, name,
            self->curve ? ", CURVE" : "", self->cfg.handshake_timeout, self->cfg.max_pending_connections);
    return 0;
}

static int default_workers(void)
{
    uv_cpu_info_t *info;
    int n = 0;
    if (uv_cpu_info(&info, &n) == 0)
        uv_free_cpu_info(info, n);
    return n > 0 ? n : 1;
}

int ldd_server_new(const ldd_options_t *opts, ldd_config_t *cfg, ldd_engine_t *engine, ldd_server_t **out)
{
    ldd_server_t *self = ldd_xcalloc(1, sizeof *self);
    self->opts = opts;
    self->cfg = *cfg;
    memset(cfg, 0, sizeof *cfg);
    self->engine = engine;
    uv_loop_init(&self->loop);
    self->loop.data = self;
    self->reader = ldd_zpoll_new(&self->loop, PUMP_BATCH);
    self->started = self->last_rate_tick = self->last_status_note = now_s(self);
    self->sessions = ldd_sessions_new(self->cfg.max_clients, (int64_t)self->cfg.max_queue_memory << 20);
    self->stream_seed = self->cfg.seed;
    if (!self->stream_seed && getrandom(&self->stream_seed, sizeof self->stream_seed, 0) != sizeof self->stream_seed)
        self->stream_seed = uv_hrtime();
    self->stats = ldd_status_new();
    int rc = 0;
    self->zctx = zmq_ctx_new();
    if (!self->zctx)
        rc = ld_seterr(LD_EIO, "cannot create a ZeroMQ context: %s", zmq_strerror(zmq_errno()));
    if (rc == 0)
        rc = ldd_curve_new(&self->cfg, self->zctx, &self->loop, &self->curve);
    if (rc == 0)
        rc = open_socket(self, ZMQ_ROUTER, self->cfg.bind, &self->data, data_message);
    if (rc == 0)
        rc = open_socket(self, ZMQ_REP, self->cfg.status, &self->status_sock, status_message);
    uv_async_init(&self->loop, &self->wake, wake_cb);
    self->wake.data = self;
    int nworkers = self->cfg.workers ? self->cfg.workers : default_workers();
    if (rc == 0)
        rc = ldd_workers_new(nworkers, &self->wake, &self->workers);
    if (rc == 0 && *self->cfg.metrics_listen)
        rc = ldd_metrics_open(&self->loop, self->cfg.metrics_listen, metrics_snapshot, self, &self->metrics);
    if (rc < 0)
        goto fail;
    self->sched = (ldd_sched_t){ .submit = submit_job, .user = self->workers, .capacity = self->cfg.queue_capacity,
                                 .chain_batch = self->cfg.chain_batch };
    uv_signal_init(&self->loop, &self->sig_term);
    uv_signal_init(&self->loop, &self->sig_int);
    uv_signal_init(&self->loop, &self->sig_hup);
    self->sig_term.data = self->sig_int.data = self->sig_hup.data = self;
    uv_signal_start(&self->sig_term, term_cb, SIGTERM);
    uv_signal_start(&self->sig_int, term_cb, SIGINT);
    uv_signal_start(&self->sig_hup, hup_cb, SIGHUP);
    uv_timer_init(&self->loop, &self->tick);
    self->tick.data = self;
    uv_timer_start(&self->tick, tick_cb, TICK_MS, TICK_MS);
    uv_timer_init(&self->loop, &self->watchdog);
    uint64_t wd = ldd_notify_watchdog_usec();
    if (wd) {
        uint64_t ms = wd / 2000 ? wd / 2000 : 1;
        uv_timer_start(&self->watchdog, watchdog_cb, 0, ms);
        ld_info("systemd watchdog: pinging every %llu ms", (unsigned long long)ms);
    }
    ld_info("langdaugd %s: %d workers, %d models, size %d", LD_VERSION, nworkers, engine->n_models, engine->size);
    *out = self;
    return 0;
fail:
    ldd_server_destroy(&self);
    return rc;
}

int ldd_server_run(ldd_server_t *self)
{
    char note[128];
    snprintf(note, sizeof note, "serving %d models on %s", self->engine->n_models, self->cfg.bind);
    ldd_notify_ready(note);
    pump(self);
    uv_run(&self->loop, UV_RUN_DEFAULT);
    ld_info("stopped: %llu samples sent", (unsigned long long)ldd_status_samples_sent(self->stats));
    return self->exit_code;
}

void ldd_server_destroy(ldd_server_t **self_p)
{
    ldd_server_t *self = *self_p;
    if (!self)
        return;
    ldd_metrics_close(&self->metrics);
    ldd_workers_destroy(&self->workers);
    if (!self->stopping)
        uv_walk(&self->loop, close_handle, NULL);
    uv_run(&self->loop, UV_RUN_DEFAULT);
    if (self->data) {
        /* Give queued batches time to leave before the context ends. */
        int linger = (int)(self->cfg.drain_timeout * 1000);
        zmq_setsockopt(self->data, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(self->data);
    }
    if (self->status_sock)
        zmq_close(self->status_sock);
    ldd_curve_destroy(&self->curve);
    if (self->zctx)
        zmq_ctx_term(self->zctx);
    close_signals(self);
    uv_run(&self->loop, UV_RUN_DEFAULT);
    uv_loop_close(&self->loop);
    ldd_zpoll_free(&self->reader);
    ldd_sessions_destroy(&self->sessions);
    ldd_status_destroy(&self->stats);
    ldd_engine_unref(&self->engine);
    ldd_config_free(&self->cfg);
    free(self);
    *self_p = NULL;
}
