/* fuzz_socket_frames: the pull/status request path as the daemon's socket
 * reader sees it. The target compiles daemon/ldd_server.c into itself (so
 * that its static reader, pump() -> recv_client()/answer_status(), can be
 * driven), builds a real server with ldd_server_new() bound on inproc://
 * endpoints with a small random model and a synthetic dataset, and sends each
 * input as a sequence of multipart messages from ZeroMQ peers: two DEALERs
 * on the data socket (ROUTER; max_clients = 1, so the second one meets the
 * limit) and a DEALER on the status socket (REP; the input decides whether
 * the empty envelope delimiter comes first, anywhere, or not at all). After
 * every message the target runs pump() once, as the loop's poll callback
 * does, and reads every reply.
 *
 * Input: a sequence of messages. Each starts with one header byte
 *   bit 0-1  peer: 0, 1 = data DEALER 0 or 1; 2, 3 = status DEALER
 *   bit 2-4  frames - 1 (1..8 frames)
 *   bit 5    status only: no leading empty delimiter (the frames as given)
 * then per frame one length byte L (L = 255: the next two bytes, little
 * endian, are the length), then L bytes (fewer if the input ends).
 *
 * Invariants checked beyond "no crash, no leak, no sanitizer report":
 *  - data socket: every reply is one frame decoding as a ServerMessage of the
 *    current version with a body, and never a batch (no chains run: the
 *    scheduler's capacity is 0); a message ldd_request_decode refuses for
 *    its frames (count, total size as the reader sums them, first frame) gets
 *    exactly one Error with that code; a heartbeat exactly one Heartbeat
 *    echoing its time; an Error never comes with a new session; sessions
 *    never exceed max_clients, and after each input the status socket shows
 *    no more clients than that, none holding more than max_credits;
 *  - status socket: a message REP accepts (an empty frame with more frames
 *    after it; the frames before it are the envelope) gets exactly one reply
 *    with the same envelope and a StatusReply that decodes; it is an Error
 *    MALFORMED exactly when the body is not one frame holding a
 *    StatusRequest. Any other message gets no reply.
 * Sessions are forgotten between inputs; the sockets and the server stay. */
#include "ldd_server.c"

#include <stdio.h>

#include "fuzz_util.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len);

#define MAX_FRAMES 8

static ldd_options_t opts;
static ldd_server_t *server;
static void *peer_ctx, *data_peer[2], *status_peer;

static void fail(const char *what)
{
    fprintf(stderr, "fuzz_socket_frames setup: %s: %s (zmq: %s)\n", what, ld_errdetail(), zmq_strerror(zmq_errno()));
    exit(1);
}

static void *peer(int type, const char *endpoint)
{
    void *s = zmq_socket(peer_ctx, type);
    int zero = 0;
    if (!s || zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero) != 0 || zmq_connect(s, endpoint) != 0)
        fail("peer socket");
    return s;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    fuzz_engine_files_t files;
    fuzz_engine_files("socket-frames", &files);
    const char *model = files.model, *data = files.data;
    ldd_config_t cfg;
    const char *keys[][2] = {
        { "model", model }, { "data", data }, { "bind", "inproc://fuzz-data" }, { "status", "inproc://fuzz-status" },
        { "workers", "1" }, { "max_clients", "1" }, { "max_credits", "8" }, { "max_batch", "64" },
        { "max_steps", "50" }, { "max_message_size", "256" }, { "step_size", "0.01" }, { "noise", "0.005" },
    };
    if (ldd_config_defaults(&cfg) < 0)
        fail("config defaults");
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (ldd_config_set(&cfg, keys[i][0], keys[i][1], "fuzz") < 0)
            fail(keys[i][0]);
    ldd_engine_t *engine = NULL;
    if (ldd_engine_load(&cfg, &engine) < 0)
        fail("engine");
    if (ldd_server_new(&opts, &cfg, engine, &server) < 0)
        fail("server");
    /* no chains ever run (the reader, not the sampler, is under test), and
     * signals stay libFuzzer's */
    server->sched.capacity = 0;
    uv_signal_stop(&server->sig_term);
    uv_signal_stop(&server->sig_int);
    uv_signal_stop(&server->sig_hup);
    /* inproc:// peers must share the server's context */
    peer_ctx = server->zctx;
    data_peer[0] = peer(ZMQ_DEALER, "inproc://fuzz-data");
    data_peer[1] = peer(ZMQ_DEALER, "inproc://fuzz-data");
    status_peer = peer(ZMQ_DEALER, "inproc://fuzz-status");
    fuzz_remove_dir(files.dir);
    return 0;
}

typedef struct {
    const uint8_t *p[MAX_FRAMES];
    size_t len[MAX_FRAMES];
    int n;
} frames_t;

/* Sends frames on sock as one multipart message (aborts if ZeroMQ refuses:
 * inproc with a high-water mark far above what one input sends). */
static void send_all(void *sock, const frames_t *f, int first_empty)
{
    if (first_empty && zmq_send(sock, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) != 0)
        abort();
    for (int i = 0; i < f->n; i++)
        if (zmq_send(sock, f->len[i] ? f->p[i] : (const uint8_t *)"", f->len[i],
                     (i + 1 < f->n ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) != (int)f->len[i])
            abort();
}

/* Receives one whole message from sock without waiting: its frames into
 * msgs (up to cap, the rest closed); returns the frame count, 0 if none. */
static int recv_all(void *sock, zmq_msg_t *msgs, int cap)
{
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, n ? 0 : ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            if (n)
                abort(); /* a multipart message arrives whole */
            return 0;
        }
        more = zmq_msg_more(&m);
        if (n < cap)
            msgs[n] = m;
        else
            zmq_msg_close(&m);
        n++;
    }
    return n;
}

static void close_all(zmq_msg_t *msgs, int n, int cap)
{
    for (int i = 0; i < n && i < cap; i++)
        zmq_msg_close(&msgs[i]);
}

static void check_session_count(void)
{
    if (ldd_sessions_count(server->sessions) > server->cfg.max_clients)
        abort();
}

/* What the status socket says of the sessions: within max_clients, each
 * within max_credits (the protocol's view, whatever the session module's
 * internals). */
static void check_status(void)
{
    uint8_t req[16];
    Langdaug__V1__StatusRequest sr = LANGDAUG__V1__STATUS_REQUEST__INIT;
    sr.has_version = 1;
    sr.version = 1;
    frames_t f = { .p = { req }, .len = { langdaug__v1__status_request__pack(&sr, req) }, .n = 1 };
    send_all(status_peer, &f, 1);
    pump(server);
    zmq_msg_t r[2];
    int got = recv_all(status_peer, r, 2);
    if (got != 2)
        abort();
    Langdaug__V1__StatusReply *st = langdaug__v1__status_reply__unpack(NULL, zmq_msg_size(&r[1]), zmq_msg_data(&r[1]));
    if (!st || st->error || st->n_clients > (size_t)server->cfg.max_clients)
        abort();
    for (size_t i = 0; i < st->n_clients; i++)
        if (st->clients[i]->has_credits && st->clients[i]->credits > (uint32_t)server->cfg.max_credits)
            abort();
    langdaug__v1__status_reply__free_unpacked(st, NULL);
    close_all(r, got, 2);
}

static void send_data_message(int who, const frames_t *f)
{
    int sessions_before = ldd_sessions_count(server->sessions);
    size_t total = 0;
    for (int i = 0; i < f->n; i++)
        total += f->len[i];
    /* what the reader should make of the frames: the oracle */
    int want_code = 0;
    char text[512];
    Langdaug__V1__ClientMessage *m =
        ldd_request_decode(f->p[0], f->len[0], f->n, total, server->cfg.max_message_size, &want_code, text,
                           sizeof text);
    int decoded = m != NULL;
    int heartbeat = m && m->body_case == LANGDAUG__V1__CLIENT_MESSAGE__BODY_HEARTBEAT;
    uint64_t beat_ms = heartbeat && m->heartbeat->has_time_ms ? m->heartbeat->time_ms : 0;
    if (m)
        langdaug__v1__client_message__free_unpacked(m, NULL);
    send_all(data_peer[who], f, 0);
    pump(server);
    check_session_count();
    int replies = 0, errors = 0, beats = 0;
    for (;;) {
        zmq_msg_t r[2];
        int n = recv_all(data_peer[who], r, 2);
        if (!n)
            break;
        if (n != 1) /* a batch (3 frames) cannot come: no chains run */
            abort();
        Langdaug__V1__ServerMessage *sm =
            langdaug__v1__server_message__unpack(NULL, zmq_msg_size(&r[0]), zmq_msg_data(&r[0]));
        if (!sm || !sm->has_version || sm->version != LANGDAUG__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT)
            abort();
        switch (sm->body_case) {
        case LANGDAUG__V1__SERVER_MESSAGE__BODY_ERROR:
            errors++;
            if (!decoded && (!sm->error->has_code || (int)sm->error->code != want_code))
                abort();
            break;
        case LANGDAUG__V1__SERVER_MESSAGE__BODY_HEARTBEAT:
            beats++;
            if (!heartbeat || !sm->heartbeat->has_time_ms || sm->heartbeat->time_ms != beat_ms)
                abort();
            break;
        case LANGDAUG__V1__SERVER_MESSAGE__BODY_HELLO: break;
        default: abort(); /* BATCH or no body */
        }
        langdaug__v1__server_message__free_unpacked(sm, NULL);
        close_all(r, n, 2);
        replies++;
    }
    if (!decoded && (replies != 1 || errors != 1))
        abort();
    if (heartbeat && (replies != 1 || beats != 1))
        abort();
    if (errors && ldd_sessions_count(server->sessions) > sessions_before)
        abort();
    /* the other peer got nothing */
    zmq_msg_t stray;
    if (recv_all(data_peer[!who], &stray, 1))
        abort();
}

static void send_status_message(const frames_t *f, int with_delimiter)
{
    /* what REP makes of [delimiter?][frames]: the envelope runs up to the
     * first empty frame that has more frames after it */
    const uint8_t *p[MAX_FRAMES + 1];
    size_t len[MAX_FRAMES + 1];
    int n = 0;
    if (with_delimiter)
        p[n] = NULL, len[n++] = 0;
    for (int i = 0; i < f->n; i++)
        p[n] = f->p[i], len[n++] = f->len[i];
    int bottom = -1;
    for (int i = 0; i + 1 < n; i++)
        if (len[i] == 0) {
            bottom = i;
            break;
        }
    int malformed = 1;
    if (bottom >= 0 && bottom + 2 == n) {
        Langdaug__V1__StatusRequest *sr = langdaug__v1__status_request__unpack(NULL, len[n - 1], p[n - 1]);
        malformed = sr == NULL;
        langdaug__v1__status_request__free_unpacked(sr, NULL);
    }
    send_all(status_peer, f, with_delimiter);
    pump(server);
    zmq_msg_t r[MAX_FRAMES + 2];
    int got = recv_all(status_peer, r, MAX_FRAMES + 2);
    if (bottom < 0) {
        if (got)
            abort(); /* REP drops a message without an envelope */
        return;
    }
    if (got != bottom + 2) { /* the envelope, the delimiter, one reply frame */
        /* seen once in a 1 h run under load, not reproduced by the input alone: say what came */
        fprintf(stderr, "status reply of %d frames, expected %d (%d request frames, envelope up to frame %d)\n", got,
                bottom + 2, n, bottom);
        abort();
    }
    for (int i = 0; i <= bottom; i++)
        if (zmq_msg_size(&r[i]) != len[i] || (len[i] && memcmp(zmq_msg_data(&r[i]), p[i], len[i]) != 0))
            abort();
    Langdaug__V1__StatusReply *sr =
        langdaug__v1__status_reply__unpack(NULL, zmq_msg_size(&r[got - 1]), zmq_msg_data(&r[got - 1]));
    if (!sr)
        abort();
    int is_error = sr->error != NULL;
    if (is_error != malformed || (is_error && sr->error->code != LANGDAUG__V1__ERROR_CODE__ERROR_MALFORMED))
        abort();
    langdaug__v1__status_reply__free_unpacked(sr, NULL);
    close_all(r, got, MAX_FRAMES + 2);
    if (recv_all(status_peer, r, 1)) /* one reply per request */
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    size_t at = 0;
    for (int msgs = 0; at < len && msgs < 16; msgs++) {
        uint8_t h = data[at++];
        int who = h & 3;
        frames_t f = { .n = ((h >> 2) & 7) + 1 };
        for (int i = 0; i < f.n; i++) {
            size_t l = at < len ? data[at++] : 0;
            if (l == 255 && at + 2 <= len) {
                l = data[at] | (size_t)data[at + 1] << 8;
                at += 2;
            }
            if (l > len - at)
                l = len - at;
            f.p[i] = data + at;
            f.len[i] = l;
            at += l;
        }
        if (who < 2)
            send_data_message(who, &f);
        else
            send_status_message(&f, !(h & 0x20));
    }
    if (ldd_sessions_count(server->sessions) > 0)
        check_status();
    /* forget the sessions (the peers keep their connections) */
    while (ldd_sessions_count(server->sessions) > 0)
        ldd_sessions_remove(server->sessions, ldd_sessions_at(server->sessions, 0));
    return 0;
}
