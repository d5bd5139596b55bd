/* The C client library: option checking, encodings and seeds without a
 * daemon; then against the real langdaugd binary on free 127.0.0.1 ports
 * (tiny model from `langdaug init-model`, tiny data from ld_synth): batches
 * well-formed and as requested, a refused request reported, and a client of
 * two samplers that goes on when one is killed and takes it back once it is
 * restarted; heartbeats that keep a session of a sub-second idle timeout
 * while no batch can come (a raw client hogs the queue memory). Sampler
 * fleets: malformed names and hosts files refused; a name whose injected
 * resolver answers with changing sets of 127.0.0.1 daemons (by port) is
 * followed (new samplers used with fresh ids and seeds, vanished ones
 * dropped, a failing resolution changing nothing, an empty one leaving a
 * timeout that says why); a rewritten hosts file, whose names go through
 * the system resolver (localhost). Each daemon is started by its test, dies with it
 * (PR_SET_PDEATHSIG) and is stopped by it; every wait is bounded. */
#include "testutil.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../client/ld_client.h" /* tests are built without -Iclient */
#include "langdaug.pb-c.h"
#include "ld_error.h"
#include "ld_synth.h"
#include <zmq.h>

#define S 16
#define K 2
#define WAIT_MS 20000

/* ---------------------------------------------------------------- without a daemon */

static void base_opts(ld_client_opts_t *o, const char *const *endpoints, int n, const char *const *targets)
{
    ld_client_opts_init(o);
    o->endpoints = endpoints;
    o->n_endpoints = n;
    o->targets = targets;
    o->n_targets = 1;
    o->batch_size = 4;
}

START_TEST(options_are_checked)
{
    static const char *const ep[] = { "tcp://127.0.0.1:1" }, *const tg[] = { "cam1" }, *const empty[] = { "" };
    static const uint32_t down[] = { 4, 2 };
    static const ld_pair_t bad_weight[] = { { "cam0", "cam1", -1 } };
    ld_client_opts_t o;
    ld_client_t *c = (ld_client_t *)&o;
    struct { const char *word; int rc; } expect[] = {
        { "endpoints", LD_EINVAL }, { "batch_size", LD_EINVAL }, { "target", LD_EINVAL },
        { "targets[0]", LD_EINVAL }, { "ascending", LD_EINVAL }, { "weight", LD_ERANGE },
        { "credits", LD_ERANGE }, { "encoding", LD_EINVAL }, { "secret key", LD_EINVAL },
        { "nonsense", LD_EINVAL }, { "curve_server_key: not a 40-character", LD_EINVAL },
        { "curve_secret_key: not a 40-character", LD_EINVAL }, { "keep 2 is not", LD_EINVAL },
    };
    for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++) {
        base_opts(&o, ep, 1, tg);
        switch (i) {
        case 0: o.n_endpoints = 0; break;
        case 1: o.batch_size = 0; break;
        case 2: o.n_targets = -1; break; /* none is fine: every pair the sampler serves */
        case 3: o.targets = empty; break;
        case 4: o.steps = down; o.n_steps = 2; break;
        case 5: o.pairs = bad_weight; o.n_pairs = 1; break;
        case 6: o.credits = 0; break;
        case 7: o.encoding = (ld_encoding_t)7; break;
        case 8: o.curve_server_key = "x"; break; /* and no secret key */
        case 9: { static const char *const bad[] = { "nonsense" }; o.endpoints = bad; break; }
        case 10: o.curve_server_key = "short"; o.curve_secret_key = "short"; break;
        case 11: /* 40 characters, but '"' is not in the Z85 alphabet */
            o.curve_server_key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
            o.curve_secret_key = "\"q:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
            break;
        case 12: o.has_keep = 1; o.keep = (ld_keep_t)2; break;
        }
        ck_assert_int_eq(ld_client_new(&o, &c), expect[i].rc);
        ck_assert_ptr_null(c);
        ck_assert_msg(strstr(ld_errdetail(), expect[i].word), "case %zu: %s", i, ld_errdetail());
    }
}
END_TEST

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

START_TEST(times_out_without_sampler)
{
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", ld_test_free_port());
    const char *eps[] = { ep }, *tg[] = { "cam1" };
    ld_client_opts_t o;
    base_opts(&o, eps, 1, tg);
    o.timeout_ms = 300;
    ld_client_t *c;
    ck_assert_int_eq(ld_client_new(&o, &c), 0);
    ld_batch_t *b = (ld_batch_t *)&o;
    int64_t t0 = now_ms();
    ck_assert_int_eq(ld_client_next(c, &b), LD_ETIMEDOUT);
    int64_t took = now_ms() - t0;
    ck_assert_ptr_null(b);
    ck_assert_msg(took >= 250 && took < 5000, "waited %lld ms for a 300 ms timeout", (long long)took);
    ck_assert_msg(strstr(ld_errdetail(), ep) && strstr(ld_errdetail(), "down"), "%s", ld_errdetail());
    ld_endpoint_stats_t st;
    ck_assert_int_eq(ld_client_stats(c, 0, &st), 0);
    ck_assert_str_eq(st.state, "down");
    ck_assert_int_eq(ld_client_stats(c, 1, &st), LD_ERANGE);
    ld_client_destroy(&c);
    ck_assert_ptr_null(c);
    ld_client_destroy(&c);
}
END_TEST

static volatile sig_atomic_t alarm_rang;

static void on_alarm(int sig)
{
    (void)sig;
    alarm_rang = 1;
}

START_TEST(cancel_flag_interrupts_the_wait)
{
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", ld_test_free_port());
    const char *eps[] = { ep }, *tg[] = { "cam1" };
    ld_client_opts_t o;
    base_opts(&o, eps, 1, tg);
    o.timeout_ms = 10000;
    ld_client_t *c;
    ck_assert_int_eq(ld_client_new(&o, &c), 0);
    ld_client_set_cancel(c, &alarm_rang);
    struct sigaction sa = { .sa_handler = on_alarm };
    sigemptyset(&sa.sa_mask);
    ck_assert_int_eq(sigaction(SIGALRM, &sa, NULL), 0);
    struct itimerval it = { .it_value = { .tv_usec = 200000 } };
    ck_assert_int_eq(setitimer(ITIMER_REAL, &it, NULL), 0);
    ld_batch_t *b;
    int64_t t0 = now_ms();
    ck_assert_int_eq(ld_client_next(c, &b), LD_ECANCELED);
    int64_t took = now_ms() - t0;
    ck_assert_msg(took >= 150 && took < 2500, "cancelled after %lld ms, the alarm rang at 200", (long long)took);
    ck_assert_int_eq(ld_client_next(c, &b), LD_ECANCELED); /* stays raised */
    ld_client_destroy(&c);
}
END_TEST

START_TEST(encodings_and_seeds)
{
    /* half floats against their definition (-1)^s 2^(e-15) (1 + f/1024) */
    for (uint32_t h = 0; h < 0x10000; h++) {
        int sign = h >> 15, e = (h >> 10) & 31, f = h & 1023;
        double want = e == 0 ? ldexp(f, -24) : ldexp(1024 + f, e - 25);
        if (sign)
            want = -want;
        float got = ld_half_to_float((uint16_t)h);
        if (e == 31)
            ck_assert(f ? isnan(got) : isinf(got) && (got < 0) == sign);
        else
            ck_assert_msg((double)got == want && !signbit(got) == !signbit(want), "half %04x -> %g", h, got);
    }
    ld_encoding_t enc;
    ck_assert_int_eq(ld_encoding_parse("float16", &enc), 0);
    ck_assert_int_eq(enc, LD_ENCODING_FLOAT16);
    ck_assert_str_eq(ld_encoding_name(LD_ENCODING_UINT8), "uint8");
    ck_assert_int_eq(ld_encoding_parse("int8", &enc), LD_EINVAL);
    ck_assert_uint_eq(ld_encoding_size(LD_ENCODING_FLOAT32), 4);
    /* session seeds: the first is the user's, the others all different */
    ck_assert_uint_eq(ld_client_session_seed(42, 0, 0), 42);
    uint64_t seen[64];
    int n = 0;
    for (uint32_t e = 0; e < 8; e++)
        for (uint64_t k = 0; k < 8; k++) {
            seen[n] = ld_client_session_seed(42, e, k);
            for (int j = 0; j < n; j++)
                ck_assert(seen[j] != seen[n]);
            n++;
        }
}
END_TEST

/* ---------------------------------------------------------------- a hand-driven fake sampler */

typedef struct {
    void *ctx, *router;
    char ep[64];
    uint8_t rid[256];
    size_t rid_len;
} fake_t;

static void fake_open(fake_t *f)
{
    f->ctx = zmq_ctx_new();
    f->router = zmq_socket(f->ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(f->router, ZMQ_LINGER, &linger, sizeof linger);
    snprintf(f->ep, sizeof f->ep, "tcp://127.0.0.1:%d", ld_test_free_port());
    ck_assert_int_eq(zmq_bind(f->router, f->ep), 0);
}

static void fake_close(fake_t *f)
{
    zmq_close(f->router);
    zmq_ctx_term(f->ctx);
}

/* The next client message that is not a heartbeat (caller frees it). */
static Langdaug__V1__ClientMessage *fake_receive(fake_t *f)
{
    int64_t deadline = now_ms() + WAIT_MS;
    while (now_ms() < deadline) {
        zmq_pollitem_t it = { .socket = f->router, .events = ZMQ_POLLIN };
        if (zmq_poll(&it, 1, 100) <= 0)
            continue;
        int n = zmq_recv(f->router, f->rid, sizeof f->rid, 0);
        ck_assert_int_gt(n, 0);
        f->rid_len = (size_t)n;
        uint8_t buf[4096];
        n = zmq_recv(f->router, buf, sizeof buf, 0);
        ck_assert_int_ge(n, 0);
        Langdaug__V1__ClientMessage *m = langdaug__v1__client_message__unpack(NULL, (size_t)n, buf);
        ck_assert_ptr_nonnull(m);
        if (m->body_case != LANGDAUG__V1__CLIENT_MESSAGE__BODY_HEARTBEAT)
            return m;
        langdaug__v1__client_message__free_unpacked(m, NULL);
    }
    ck_abort_msg("no message from the client");
    return NULL;
}

/* Sends a ServerMessage (NULL = `raw` instead) followed by `n` frames. */
static void fake_send(fake_t *f, Langdaug__V1__ServerMessage *m, const char *raw, const void *const *frames,
                      const size_t *lens, int n)
{
    uint8_t buf[4096];
    size_t len = raw ? strlen(raw) : langdaug__v1__server_message__pack(m, buf);
    zmq_send(f->router, f->rid, f->rid_len, ZMQ_SNDMORE);
    zmq_send(f->router, raw ? (const void *)raw : buf, len, n ? ZMQ_SNDMORE : 0);
    for (int i = 0; i < n; i++)
        zmq_send(f->router, frames[i], lens[i], i + 1 < n ? ZMQ_SNDMORE : 0);
}

START_TEST(malformed_messages_are_errors)
{
    fake_t f;
    fake_open(&f);
    const char *eps[] = { f.ep }, *tg[] = { "cam1" };
    ld_client_opts_t o;
    base_opts(&o, eps, 1, tg);
    o.batch_size = 2;
    o.credits = 8;
    o.timeout_ms = 200;
    o.has_keep = 1;
    o.keep = LD_KEEP_LUMINANCE;
    ld_client_t *c;
    ck_assert_int_eq(ld_client_new(&o, &c), 0);
    ld_batch_t *b;
    ck_assert_int_eq(ld_client_next(c, &b), LD_ETIMEDOUT); /* sends Hello meanwhile */
    Langdaug__V1__ClientMessage *cm = fake_receive(&f);
    ck_assert_int_eq(cm->body_case, LANGDAUG__V1__CLIENT_MESSAGE__BODY_HELLO);
    ck_assert_uint_eq(cm->hello->min_version, 1);
    langdaug__v1__client_message__free_unpacked(cm, NULL);

    Langdaug__V1__HelloReply hr = LANGDAUG__V1__HELLO_REPLY__INIT;
    hr.has_version = hr.has_max_credits = 1;
    hr.version = 1;
    hr.max_credits = 3;
    Langdaug__V1__ServerMessage sm = LANGDAUG__V1__SERVER_MESSAGE__INIT;
    sm.has_version = 1;
    sm.version = 1;
    sm.body_case = LANGDAUG__V1__SERVER_MESSAGE__BODY_HELLO;
    sm.hello = &hr;
    fake_send(&f, &sm, NULL, NULL, NULL, 0);
    ck_assert_int_eq(ld_client_next(c, &b), LD_ETIMEDOUT);
    cm = fake_receive(&f);
    ck_assert_int_eq(cm->body_case, LANGDAUG__V1__CLIENT_MESSAGE__BODY_PULL);
    ck_assert_uint_eq(cm->pull->credits, 3); /* the window, lowered to the sampler's maximum */
    ck_assert_uint_eq(cm->pull->batch_size, 2);
    ck_assert_str_eq(cm->pull->targets[0], "cam1");
    ck_assert(cm->pull->has_keep && cm->pull->keep == LANGDAUG__V1__KEEP__KEEP_LUMINANCE);
    langdaug__v1__client_message__free_unpacked(cm, NULL);

    static float img[2 * 3 * S * S];
    static uint8_t mask[2 * S * S], bad_mask[2 * S * S];
    memset(mask, 1, sizeof mask);
    memset(bad_mask, K, sizeof bad_mask);
    Langdaug__V1__SampleMeta meta[2] = { LANGDAUG__V1__SAMPLE_META__INIT, LANGDAUG__V1__SAMPLE_META__INIT };
    Langdaug__V1__SampleMeta *metas[2] = { &meta[0], &meta[1] };
    meta[1].source_domain = "cam0";
    meta[1].has_chain_id = 1;
    meta[1].chain_id = 4;
    Langdaug__V1__Batch bt = LANGDAUG__V1__BATCH__INIT;
    bt.has_n = bt.has_channels = bt.has_size = bt.has_mask_classes = 1;
    bt.n = 2;
    bt.channels = 3;
    bt.size = S;
    bt.mask_classes = K;
    bt.n_samples = 2;
    bt.samples = metas;
    sm.body_case = LANGDAUG__V1__SERVER_MESSAGE__BODY_BATCH;
    sm.batch = &bt;
    const void *good[2] = { img, mask }, *badm[2] = { img, bad_mask };
    size_t lens[2] = { sizeof img, sizeof mask }, short_img[2] = { sizeof img - 4, sizeof mask },
           short_mask[2] = { sizeof img, sizeof mask - 1 };
    struct { const char *raw; const void *const *frames; const size_t *lens; int n; int samples, enc; const char *word; }
    cases[] = {
        { "\xff\xff", NULL, NULL, 0, 2, 0, "does not decode" },
        { NULL, good, short_img, 2, 2, 0, "images frame" },
        { NULL, good, short_mask, 2, 2, 0, "masks frame" },
        { NULL, good, lens, 2, 1, 0, "metadata" },
        { NULL, badm, lens, 2, 2, 0, "mask value" },
        { NULL, good, lens, 2, 2, LD_ENCODING_UINT8, "encoding" },
        { NULL, good, lens, 1, 2, 0, "fewer than 3 frames" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bt.n_samples = (size_t)cases[i].samples;
        bt.has_encoding = cases[i].enc != 0;
        bt.encoding = (Langdaug__V1__Encoding)cases[i].enc;
        fake_send(&f, &sm, cases[i].raw, cases[i].frames, cases[i].lens, cases[i].n);
        ck_assert_int_eq(ld_client_next(c, &b), LD_EPROTO);
        ck_assert_msg(strstr(ld_errdetail(), cases[i].word) && strstr(ld_errdetail(), f.ep), "case %zu: %s", i,
                      ld_errdetail());
    }
    bt.n_samples = 2;
    bt.has_encoding = 0;
    fake_send(&f, &sm, NULL, good, lens, 2);
    ck_assert_int_eq(ld_client_next(c, &b), 0); /* the client goes on after every error */
    ck_assert_uint_eq(b->n, 2);
    ck_assert_mem_eq(b->masks, mask, sizeof mask);
    ck_assert_str_eq(b->meta[1].source_domain, "cam0");
    ck_assert_str_eq(b->meta[0].source_domain, ""); /* unset strings read as "" */
    ck_assert_uint_eq(b->meta[1].chain_id, 4);
    ld_batch_destroy(&b);
    /* one credit back per batch message received, in credit-only PullRequests */
    uint32_t credits = 0;
    for (int k = 0; k < 20 && credits < 7; k++) {
        cm = fake_receive(&f);
        ck_assert_int_eq(cm->body_case, LANGDAUG__V1__CLIENT_MESSAGE__BODY_PULL);
        ck_assert(!cm->pull->has_batch_size && cm->pull->n_targets == 0 && !cm->pull->has_keep);
        credits += cm->pull->credits;
        langdaug__v1__client_message__free_unpacked(cm, NULL);
        if (credits < 7)
            ck_assert_int_eq(ld_client_next(c, &b), LD_ETIMEDOUT); /* lets a retried top-up out */
    }
    ck_assert_uint_eq(credits, 7);

    Langdaug__V1__Error err = LANGDAUG__V1__ERROR__INIT;
    err.has_code = 1;
    err.code = LANGDAUG__V1__ERROR_CODE__ERROR_LIMIT;
    err.text = "too many";
    sm.body_case = LANGDAUG__V1__SERVER_MESSAGE__BODY_ERROR;
    sm.error = &err;
    fake_send(&f, &sm, NULL, NULL, NULL, 0);
    ck_assert_int_eq(ld_client_next(c, &b), LD_ERANGE);
    ck_assert_msg(strstr(ld_errdetail(), "ERROR_LIMIT: too many"), "%s", ld_errdetail());
    ld_endpoint_stats_t st;
    ck_assert_int_eq(ld_client_stats(c, 0, &st), 0);
    ck_assert_str_eq(st.state, "rejected");
    ck_assert_uint_eq(st.errors, 8);
    ld_client_destroy(&c);
    fake_close(&f);
}
END_TEST

/* ---------------------------------------------------------------- a sampler that stops mid-batch */

/* A sampler speaking ZMTP 3.0 by hand on a plain TCP socket, so that it can
 * do what libzmq never does: send the first frame of a multipart message
 * (a batch) and not the rest. It serves one connection after the other
 * until told to stop, and counts the Byes it reads. */
typedef struct {
    int fd, port;
    atomic_int stop, conns, byes;
    pthread_t thread;
} stalling_t;

static int read_full(int fd, void *buf, size_t n)
{
    for (size_t got = 0; got < n;) {
        ssize_t r = recv(fd, (char *)buf + got, n - got, 0);
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

/* Reads the client's frames until it goes, counting its Byes; `stall`
 * (the first frame of a batch) goes out once the handshake is done. */
static void stalling_read(stalling_t *st, int fd, const uint8_t *stall, size_t stall_len)
{
    static uint8_t body[65536];
    uint8_t greeting[64], head[9];
    if (read_full(fd, greeting, sizeof greeting))
        return;
    while (read_full(fd, head, 2) == 0) {
        uint64_t len = head[1];
        if (head[0] & 0x02) { /* long frame: 8-byte size */
            if (read_full(fd, head + 2, 7))
                return;
            len = 0;
            for (int i = 1; i < 9; i++)
                len = len << 8 | head[i];
        }
        if (len > sizeof body || read_full(fd, body, (size_t)len))
            return;
        if (head[0] & 0x04) { /* a command: READY (the handshake is done), PING */
            if (stall && send(fd, stall, stall_len, MSG_NOSIGNAL) == (ssize_t)stall_len)
                st->conns++;
            stall = NULL;
            continue;
        }
        Langdaug__V1__ClientMessage *m = langdaug__v1__client_message__unpack(NULL, (size_t)len, body);
        if (m && m->body_case == LANGDAUG__V1__CLIENT_MESSAGE__BODY_BYE)
            st->byes++;
        if (m)
            langdaug__v1__client_message__free_unpacked(m, NULL);
    }
}

static void *stalling_run(void *arg)
{
    stalling_t *st = arg;
    /* greeting: signature, version 3.0, mechanism NULL, as-server, filler;
     * then READY (Socket-Type ROUTER) */
    uint8_t hello[64 + 30] = { 0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0, 'N', 'U', 'L', 'L' };
    hello[32] = 1;
    memcpy(hello + 64, "\x04\x1c\x05READY\x0bSocket-Type\0\0\0\x06ROUTER", 30);
    uint8_t stall[2 + 200] = { 0x01, 200 }; /* a 200-byte frame that says more follow */
    memset(stall + 2, 0x55, 200);
    while (!st->stop) {
        struct pollfd p = { .fd = st->fd, .events = POLLIN };
        if (poll(&p, 1, 50) <= 0)
            continue;
        int fd = accept(st->fd, NULL, NULL);
        if (fd < 0)
            continue;
        struct timeval tv = { .tv_sec = 5 };
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (send(fd, hello, sizeof hello, MSG_NOSIGNAL) == (ssize_t)sizeof hello)
            stalling_read(st, fd, stall, sizeof stall);
        close(fd);
    }
    return NULL;
}

static void stalling_start(stalling_t *st)
{
    memset(st, 0, sizeof *st);
    st->fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(st->fd, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    ck_assert_int_eq(bind(st->fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(listen(st->fd, 8), 0);
    ck_assert_int_eq(getsockname(st->fd, (struct sockaddr *)&a, &len), 0);
    st->port = ntohs(a.sin_port);
    ck_assert_int_eq(pthread_create(&st->thread, NULL, stalling_run, st), 0);
}

static void stalling_stop(stalling_t *st)
{
    st->stop = 1;
    pthread_join(st->thread, NULL);
    close(st->fd);
}

/* A client closed while a batch has only partly arrived frees all of it,
 * and still says Bye. LeakSanitizer checks the first half in the sanitizer
 * build: libzmq 4.3.4 lost the frames (and the 18160-byte buffer they live
 * in) in 8 to 25 of these 60 closes, in each of 12 runs, while the client
 * closed its socket without a zmq_disconnect() first (see close_endpoint). */
START_TEST(close_frees_a_partly_received_batch)
{
    enum { ROUNDS = 60 };
    stalling_t st;
    stalling_start(&st);
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", st.port);
    const char *eps[] = { ep }, *tg[] = { "cam1" };
    for (int i = 0; i < ROUNDS; i++) {
        ld_client_opts_t o;
        base_opts(&o, eps, 1, tg);
        o.timeout_ms = 20;
        ld_client_t *c;
        ck_assert_int_eq(ld_client_new(&o, &c), 0);
        /* until connected (Hello sent) and the first frame of a batch is out */
        ld_endpoint_stats_t es = { .state = "" };
        ld_batch_t *b;
        for (int64_t until = now_ms() + WAIT_MS; now_ms() < until && (st.conns <= i || strcmp(es.state, "hello"));) {
            ck_assert_int_eq(ld_client_next(c, &b), LD_ETIMEDOUT); /* the batch never completes */
            ck_assert_int_eq(ld_client_stats(c, 0, &es), 0);
        }
        ck_assert_int_eq(st.conns, i + 1);
        ck_assert_str_eq(es.state, "hello");
        ck_assert_int_eq(ld_client_next(c, &b), LD_ETIMEDOUT); /* the frame comes in meanwhile */
        ld_client_destroy(&c);
    }
    for (int64_t until = now_ms() + WAIT_MS; now_ms() < until && st.byes < ROUNDS;)
        usleep(10000);
    stalling_stop(&st);
    ck_assert_int_eq(st.conns, ROUNDS);
    ck_assert_int_eq(st.byes, ROUNDS);
}
END_TEST

/* zmq_ctx_term, interposed: the first ctx_term_eintr calls fail with EINTR
 * as a signal would make them (the client library is linked into this
 * program as objects, so its calls come here), the rest reach libzmq. */
static int ctx_term_eintr, ctx_term_real_calls;

int zmq_ctx_term(void *ctx)
{
    static int (*real)(void *);
    if (!real)
        *(void **)&real = dlsym(RTLD_NEXT, "zmq_ctx_term");
    if (ctx_term_eintr > 0) {
        ctx_term_eintr--;
        errno = EINTR;
        return -1;
    }
    ctx_term_real_calls++;
    return real(ctx);
}

/* An interrupted zmq_ctx_term is restarted: the context (its I/O thread,
 * its sockets' memory) is not left behind. */
START_TEST(destroy_restarts_an_interrupted_context_term)
{
    const char *eps[] = { "tcp://127.0.0.1:9" }, *tg[] = { "cam1" };
    ld_client_opts_t o;
    base_opts(&o, eps, 1, tg);
    ld_client_t *c;
    ck_assert_int_eq(ld_client_new(&o, &c), 0);
    ctx_term_eintr = 3;
    ctx_term_real_calls = 0;
    ld_client_destroy(&c);
    ck_assert_ptr_null(c);
    ck_assert_int_eq(ctx_term_eintr, 0);
    ck_assert_int_eq(ctx_term_real_calls, 1);
}
END_TEST

/* ---------------------------------------------------------------- daemon fixtures */

typedef struct {
    char *dir, *model, *data;
    int ok;
} fixture_t;

static fixture_t fx;

static int daemon_built(void)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/langdaugd", ld_test_build_dir());
    return access(path, X_OK) == 0;
}

/* A tiny model (init-model) and two synthetic domains cam0, cam1. */
static void fixture_setup(void)
{
    fx.dir = ld_test_tmpdir();
    fx.model = ld_test_path(fx.dir, "m.safetensors");
    fx.data = ld_test_path(fx.dir, "data");
    if (!daemon_built())
        return;
    ld_synth_opts_t so;
    ld_synth_defaults(&so);
    so.n_domains = 2;
    so.per_domain = 2;
    so.size = 32;
    int rc = ld_synth_write(fx.data, &so);
    ck_assert_msg(rc == 0, "ld_synth_write: %s", ld_errdetail());
    int st = ld_test_system("%s/langdaug init-model --out %s --size %d --widths 4,8 --domains cam0,cam1 "
                            "--mask-classes %d --seed 3 >%s/init.log 2>&1",
                            ld_test_build_dir(), fx.model, S, K, fx.dir);
    ck_assert_msg(st == 0, "langdaug init-model failed (exit %d), see %s/init.log", st, fx.dir);
    fx.ok = 1;
}

static void fixture_teardown(void)
{
    ld_test_rmtree(fx.dir);
    free(fx.dir);
    free(fx.model);
    free(fx.data);
    fx = (fixture_t){ 0 };
}

typedef struct {
    pid_t pid;
    int port;
    char ep[64];
} daemon_t;

/* Starts langdaugd on `port` (0 = a free one) with the test settings plus
 * NULL-terminated `extra` options; it dies with the test. */
static void daemon_start_with(daemon_t *d, int port, const char *const *extra)
{
    d->port = port ? port : ld_test_free_port();
    snprintf(d->ep, sizeof d->ep, "tcp://127.0.0.1:%d", d->port);
    char bin[4096], status[64], log[4096];
    snprintf(bin, sizeof bin, "%s/langdaugd", ld_test_build_dir());
    snprintf(status, sizeof status, "tcp://127.0.0.1:%d", ld_test_free_port());
    snprintf(log, sizeof log, "%s/daemon-%d.log", fx.dir, d->port);
    const char *argv[40] = { bin, "--bind", d->ep, "--status", status, "--model", fx.model, "--data", fx.data,
                             "--workers", "1", "--chain-batch", "2", "--steps", "0,2,4", "--step-size", "0.01",
                             "--noise", "0.005", "--drain-timeout", "2" };
    int argc = 21;
    for (int i = 0; extra && extra[i] && argc < 39; i++)
        argv[argc++] = extra[i];
    fflush(NULL);
    d->pid = fork();
    ck_assert_int_ge(d->pid, 0);
    if (d->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (!freopen(log, "a", stdout) || !freopen(log, "a", stderr))
            _exit(127);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
}

static void daemon_start(daemon_t *d, int port)
{
    daemon_start_with(d, port, NULL);
}

/* Stops it (SIGKILL when `kill_it`, else SIGTERM), bounded. */
static void daemon_stop(daemon_t *d, int kill_it)
{
    if (d->pid <= 0)
        return;
    kill(d->pid, kill_it ? SIGKILL : SIGTERM);
    int st;
    for (int i = 0; i < 200 && waitpid(d->pid, &st, WNOHANG) == 0; i++)
        usleep(50000);
    if (waitpid(d->pid, &st, WNOHANG) == 0) {
        kill(d->pid, SIGKILL);
        waitpid(d->pid, &st, 0);
    }
    d->pid = 0;
}

#define NEED_DAEMON()                                                                                          \
    do {                                                                                                       \
        if (!daemon_built())                                                                                   \
            LD_SKIP("%s/langdaugd is not built yet", ld_test_build_dir());                                   \
    } while (0)

/* Checks one batch against the request: shape, value ranges, metadata. */
static void check_batch(const ld_batch_t *b, uint32_t n, const char *target, const uint32_t *steps, int n_steps)
{
    ck_assert_uint_eq(b->n, n);
    ck_assert_uint_eq(b->channels, 3);
    ck_assert_uint_eq(b->size, S);
    ck_assert_uint_eq(b->images_bytes, (size_t)n * 3 * S * S * ld_encoding_size(b->encoding));
    ck_assert_uint_eq(b->masks_bytes, (size_t)n * S * S);
    float px[3 * S * S];
    for (uint32_t i = 0; i < n; i++) {
        ld_batch_image_float(b, i, px);
        for (int j = 0; j < 3 * S * S; j++)
            ck_assert_msg(px[j] >= -1.0f && px[j] <= 1.0f, "pixel %g outside [-1, 1]", px[j]);
        for (int j = 0; j < S * S; j++)
            ck_assert_uint_lt(b->masks[(size_t)i * S * S + (size_t)j], K);
        const ld_sample_meta_t *m = &b->meta[i];
        ck_assert_str_eq(m->target_domain, target);
        ck_assert_msg(!strcmp(m->source_domain, "cam0") || !strcmp(m->source_domain, "cam1"), "source %s",
                      m->source_domain);
        ck_assert_str_ne(m->source_domain, m->target_domain);
        int step_ok = 0;
        for (int k = 0; k < n_steps; k++)
            step_ok |= m->step == steps[k];
        ck_assert_msg(step_ok, "step %u was not asked for", m->step);
        ck_assert(isfinite(m->energy));
    }
}

/* A client of one daemon for `target`, with the tests' timeout. */
static ld_client_t *client_of(const daemon_t *d, const char *target)
{
    const char *eps[] = { d->ep }, *tg[] = { target };
    ld_client_opts_t o;
    base_opts(&o, eps, 1, tg);
    o.timeout_ms = WAIT_MS;
    ld_client_t *c;
    ck_assert_int_eq(ld_client_new(&o, &c), 0);
    return c;
}

START_TEST(pulls_batches)
{
    NEED_DAEMON();
    daemon_t d = { 0 };
    daemon_start(&d, 0);
    const char *eps[] = { d.ep }, *tg[] = { "cam1" };
    static const uint32_t steps[] = { 0, 3 };
    static const ld_encoding_t encs[] = { LD_ENCODING_FLOAT32, LD_ENCODING_UINT8, LD_ENCODING_FLOAT16 };
    for (size_t e = 0; e < 3; e++) {
        ld_client_opts_t o;
        base_opts(&o, eps, 1, tg);
        o.encoding = encs[e];
        o.steps = steps;
        o.n_steps = 2;
        o.has_seed = 1;
        o.seed = 11;
        o.timeout_ms = WAIT_MS;
        ld_client_t *c;
        ck_assert_int_eq(ld_client_new(&o, &c), 0);
        uint64_t prev_seq = 0;
        for (int k = 0; k < 5; k++) {
            ld_batch_t *b;
            int rc = ld_client_next(c, &b);
            ck_assert_msg(rc == 0, "next: %s: %s", ld_strerror(rc), ld_errdetail());
            ck_assert_int_eq(b->encoding, encs[e]);
            ck_assert_int_eq(b->endpoint, 0);
            if (k)
                ck_assert_uint_eq(b->sequence, prev_seq + 1);
            prev_seq = b->sequence;
            check_batch(b, 4, "cam1", steps, 2);
            ck_assert_uint_eq(b->meta[0].seed, 11); /* endpoint 0, first session: the seed as given */
            ld_batch_destroy(&b);
            ck_assert_ptr_null(b);
        }
        ld_endpoint_stats_t st;
        ck_assert_int_eq(ld_client_stats(c, 0, &st), 0);
        ck_assert_str_eq(st.state, "live");
        ck_assert_uint_eq(st.batches, 5);
        ck_assert_uint_eq(st.samples, 20);
        ck_assert_uint_eq(st.sessions, 1);
        ck_assert_uint_le(st.outstanding, st.window);
        ld_client_destroy(&c);
    }
    daemon_stop(&d, 0);
}
END_TEST

START_TEST(refused_request_is_reported)
{
    NEED_DAEMON();
    daemon_t d = { 0 };
    daemon_start(&d, 0);
    ld_client_t *c = client_of(&d, "no-such-domain");
    ld_batch_t *b;
    int64_t t0 = now_ms();
    ck_assert_int_eq(ld_client_next(c, &b), LD_ENOENT);
    ck_assert_msg(strstr(ld_errdetail(), "UNKNOWN_DOMAIN") && strstr(ld_errdetail(), d.ep), "%s", ld_errdetail());
    /* every sampler refused: the next call says so at once instead of waiting */
    ck_assert_int_eq(ld_client_next(c, &b), LD_ENOENT);
    ck_assert_msg(now_ms() - t0 < WAIT_MS / 2, "refusal took the whole timeout");
    ld_client_destroy(&c);
    daemon_stop(&d, 0);
}
END_TEST

/* Prints the daemons' logs (for a failure message). */
static void dump_logs(void)
{
    ld_test_system("for f in %s/daemon-*.log; do echo \"== $f\"; tail -n 20 \"$f\"; done", fx.dir);
}

/* Pulls until a batch from `endpoint` (a sampler id) arrives (bounded in
 * time) and returns its first sample's seed; counts the batches taken from
 * each endpoint meanwhile when counts is not NULL. */
static uint64_t pull_until_from(ld_client_t *c, int endpoint, int *counts)
{
    int64_t deadline = now_ms() + WAIT_MS;
    while (now_ms() < deadline) {
        ld_batch_t *b;
        int rc = ld_client_next(c, &b);
        ck_assert_msg(rc == 0, "next: %s: %s", ld_strerror(rc), ld_errdetail());
        int from = b->endpoint;
        uint64_t seed = b->meta[0].seed;
        if (counts)
            counts[from]++;
        ld_batch_destroy(&b);
        if (from == endpoint)
            return seed;
    }
    dump_logs();
    ck_abort_msg("no batch from endpoint %d within %d ms", endpoint, WAIT_MS);
}

START_TEST(survives_sampler_restart)
{
    NEED_DAEMON();
    daemon_t d0 = { 0 }, d1 = { 0 };
    daemon_start(&d0, 0);
    daemon_start(&d1, 0);
    const char *eps[] = { d0.ep, d1.ep }, *tg[] = { "cam0" };
    ld_client_opts_t o;
    base_opts(&o, eps, 2, tg);
    o.batch_size = 2;
    o.credits = 2;
    o.has_seed = 1;
    o.seed = 5;
    o.timeout_ms = WAIT_MS;
    o.heartbeat_ms = 200;
    o.dead_ms = 1000;
    ld_client_t *c;
    ck_assert_int_eq(ld_client_new(&o, &c), 0);
    int counts[2] = { 0, 0 };
    pull_until_from(c, 1, counts);
    pull_until_from(c, 0, counts);

    daemon_stop(&d1, 1);
    /* the other sampler alone keeps the batches coming */
    int alone[2] = { 0, 0 };
    for (int k = 0; k < 12; k++) {
        ld_batch_t *b;
        int rc = ld_client_next(c, &b);
        ck_assert_msg(rc == 0, "next with one sampler down: %s: %s", ld_strerror(rc), ld_errdetail());
        alone[b->endpoint]++;
        ld_batch_destroy(&b);
    }
    ck_assert_msg(alone[0] >= 12 - 2 * 2, "only %d of 12 batches from the live sampler", alone[0]);
    ld_endpoint_stats_t st;
    ck_assert_int_eq(ld_client_stats(c, 1, &st), 0);
    ck_assert_str_eq(st.state, "down");

    daemon_start(&d1, d1.port);
    int back[2] = { 0, 0 };
    pull_until_from(c, 1, back);
    ck_assert_int_eq(ld_client_stats(c, 1, &st), 0);
    ck_assert_str_eq(st.state, "live");
    ck_assert_uint_eq(st.sessions, 2);
    /* and the restarted sampler serves its share again, with a fresh seed */
    ld_batch_t *b = NULL;
    int64_t deadline = now_ms() + WAIT_MS;
    while (now_ms() < deadline) {
        ck_assert_int_eq(ld_client_next(c, &b), 0);
        if (b->endpoint == 1)
            break;
        ld_batch_destroy(&b);
    }
    ck_assert_ptr_nonnull(b);
    ck_assert_int_eq(b->endpoint, 1);
    ck_assert_uint_eq(b->meta[0].seed, ld_client_session_seed(5, 1, 1));
    ld_batch_destroy(&b);
    ld_client_destroy(&c);
    daemon_stop(&d0, 0);
    daemon_stop(&d1, 0);
}
END_TEST

START_TEST(outlives_session_expiry)
{
    /* the caller stops calling next() for longer than the daemon keeps a
     * session: the daemon forgets the credits, the client must notice and
     * start a new session instead of waiting for batches that never come */
    NEED_DAEMON();
    daemon_t d = { 0 };
    static const char *const extra[] = { "--idle-timeout", "1", NULL };
    daemon_start_with(&d, 0, extra);
    ld_client_t *c = client_of(&d, "cam1");
    ld_batch_t *b;
    ck_assert_int_eq(ld_client_next(c, &b), 0);
    ld_batch_destroy(&b);
    usleep(2500 * 1000);
    for (int k = 0; k < 3 * 4; k++) { /* past what the old session had already queued */
        int rc = ld_client_next(c, &b);
        ck_assert_msg(rc == 0, "after an expired session: %s: %s", ld_strerror(rc), ld_errdetail());
        ld_batch_destroy(&b);
    }
    ld_endpoint_stats_t st;
    ck_assert_int_eq(ld_client_stats(c, 0, &st), 0);
    ck_assert_uint_eq(st.sessions, 2);
    ld_client_destroy(&c);
    daemon_stop(&d, 0);
}
END_TEST

/* A raw client that asks for many batches of `batch` samples of cam1 and
 * never reads them, with tiny receive buffers: once the kernel's socket
 * buffers are full, its batches wait in the daemon's ZeroMQ queue and hold
 * max_queue_memory, so no other client gets a batch of that size until it
 * stops. Its thread owns the socket and sends heartbeats every 50 ms, so
 * that a short idle_timeout keeps its session. */
typedef struct {
    void *ctx;
    char ep[64];
    uint32_t batch;
    atomic_int stop;
    pthread_t thread;
} hog_t;

static void hog_send(void *sock, Langdaug__V1__ClientMessage *m)
{
    uint8_t buf[256];
    m->has_version = 1;
    m->version = 1;
    size_t len = langdaug__v1__client_message__get_packed_size(m);
    if (len <= sizeof buf) {
        langdaug__v1__client_message__pack(m, buf);
        zmq_send(sock, buf, len, ZMQ_DONTWAIT); /* a daemon not reading ends the hog's session: the test sees it */
    }
}

static void *hog_run(void *arg)
{
    hog_t *h = arg;
    void *sock = zmq_socket(h->ctx, ZMQ_DEALER);
    int zero = 0, one = 1, small = 4096;
    zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(sock, ZMQ_RCVHWM, &one, sizeof one);
    zmq_setsockopt(sock, ZMQ_RCVBUF, &small, sizeof small);
    zmq_connect(sock, h->ep);
    char *targets[] = { "cam1" };
    uint32_t steps[] = { 0 };
    Langdaug__V1__PullRequest p = LANGDAUG__V1__PULL_REQUEST__INIT;
    p.has_credits = p.has_batch_size = 1;
    p.credits = 1000;
    p.batch_size = h->batch;
    p.n_targets = 1;
    p.targets = targets;
    p.n_steps = 1;
    p.steps = steps;
    Langdaug__V1__ClientMessage m = LANGDAUG__V1__CLIENT_MESSAGE__INIT;
    m.body_case = LANGDAUG__V1__CLIENT_MESSAGE__BODY_PULL;
    m.pull = &p;
    hog_send(sock, &m);
    Langdaug__V1__Heartbeat hb = LANGDAUG__V1__HEARTBEAT__INIT;
    m.body_case = LANGDAUG__V1__CLIENT_MESSAGE__BODY_HEARTBEAT;
    m.heartbeat = &hb;
    while (!atomic_load(&h->stop)) {
        hog_send(sock, &m);
        usleep(50000);
    }
    zmq_close(sock);
    return NULL;
}

static void hog_start(hog_t *h, const char *ep, uint32_t batch)
{
    snprintf(h->ep, sizeof h->ep, "%s", ep);
    h->batch = batch;
    atomic_store(&h->stop, 0);
    h->ctx = zmq_ctx_new();
    ck_assert_ptr_nonnull(h->ctx);
    ck_assert_int_eq(pthread_create(&h->thread, NULL, hog_run, h), 0);
}

/* Idempotent. */
static void hog_stop(hog_t *h)
{
    if (!h->ctx)
        return;
    atomic_store(&h->stop, 1);
    pthread_join(h->thread, NULL);
    zmq_ctx_term(h->ctx);
    h->ctx = NULL;
}

START_TEST(heartbeats_keep_a_short_idle_timeout)
{
    /* idle_timeout 0.3 s: HelloReply.idle_timeout says so, idle_timeout_s
     * says 1. While next() waits with no batch to come (the hog holds the
     * queue memory), heartbeats planned from the precise value keep the
     * session; planned from 1 s they would come every 333 ms, too late, and
     * the daemon would forget a client that does not notice */
    NEED_DAEMON();
    enum { BATCH = 32 };
    daemon_t d = { 0 };
    static const char *const extra[] = { "--idle-timeout", "0.3", "--max-queue-memory", "1", "--max-credits", "1000",
                                         NULL };
    daemon_start_with(&d, 0, extra);
    hog_t hog = { 0 };
    hog_start(&hog, d.ep, BATCH);
    const char *eps[] = { d.ep }, *tg[] = { "cam1" };
    static const uint32_t steps[] = { 0 };
    ld_client_opts_t o;
    base_opts(&o, eps, 1, tg);
    o.batch_size = BATCH;
    o.steps = steps;
    o.n_steps = 1;
    o.timeout_ms = 3000;
    o.name = "short-idle";
    ld_client_t *c;
    ck_assert_int_eq(ld_client_new(&o, &c), 0);
    int waited = 0;
    for (int64_t deadline = now_ms() + WAIT_MS; !waited && now_ms() < deadline;) {
        ld_batch_t *b = NULL;
        int rc = ld_client_next(c, &b); /* batches come until the hog's fill the queue memory */
        ck_assert_msg(rc == 0 || rc == LD_ETIMEDOUT, "%s: %s", ld_strerror(rc), ld_errdetail());
        waited = rc == LD_ETIMEDOUT;
        ld_batch_destroy(&b);
    }
    ck_assert_msg(waited, "the hog never held the queue memory: nothing was tested");
    hog_stop(&hog);
    ld_batch_t *b = NULL;
    int rc = ld_client_next(c, &b); /* the same session is served once the memory is free */
    ck_assert_msg(rc == 0, "after the wait: %s: %s", ld_strerror(rc), ld_errdetail());
    ld_batch_destroy(&b);
    ld_endpoint_stats_t st;
    ck_assert_int_eq(ld_client_stats(c, 0, &st), 0);
    ck_assert_str_eq(st.state, "live");
    ck_assert_uint_eq(st.sessions, 1);
    ld_client_destroy(&c);
    daemon_stop(&d, 0);
    char log[4096];
    snprintf(log, sizeof log, "%s/daemon-%d.log", fx.dir, d.port);
    char *text = ld_test_read_file(log, NULL);
    ck_assert_msg(!strstr(text, "(short-idle): idle timeout"), "the session expired:\n%s", text);
    free(text);
}
END_TEST

/* Writes a key file as `langdaug keygen` does (common/ld_curvekey.h). */
static void write_key(const char *path, const char *z85, int secret)
{
    char text[128];
    int n = snprintf(text, sizeof text, "# test key\n%s\n", z85);
    ld_test_write_file(path, text, (size_t)n);
    ck_assert_int_eq(chmod(path, secret ? 0600 : 0644), 0);
}

START_TEST(curve_keys)
{
    NEED_DAEMON();
    char server_pub[41], server_sec[41], client_pub[41], client_sec[41], other_pub[41], other_sec[41];
    ck_assert_int_eq(zmq_curve_keypair(server_pub, server_sec), 0);
    ck_assert_int_eq(zmq_curve_keypair(client_pub, client_sec), 0);
    ck_assert_int_eq(zmq_curve_keypair(other_pub, other_sec), 0);
    char *server_key = ld_test_path(fx.dir, "server.key"), *allowed = ld_test_path(fx.dir, "allowed");
    char *client_key = ld_test_path(allowed, "trainer.pub");
    write_key(server_key, server_sec, 1);
    ck_assert_int_eq(mkdir(allowed, 0755), 0);
    write_key(client_key, client_pub, 0);
    daemon_t d = { 0 };
    const char *extra[] = { "--curve-secret-key-file", server_key, "--curve-allowed-keys-dir", allowed, NULL };
    daemon_start_with(&d, 0, extra);

    const char *eps[] = { d.ep }, *tg[] = { "cam1" };
    struct { const char *secret, *server; int rc; const char *word; } cases[] = {
        { client_sec, server_pub, 0, NULL },          /* allowed key: served */
        { other_sec, server_pub, LD_ETIMEDOUT, "refused our CURVE key" },
        { NULL, NULL, LD_ETIMEDOUT, "security handshake failed" }, /* no CURVE at all */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ld_client_opts_t o;
        base_opts(&o, eps, 1, tg);
        o.curve_server_key = cases[i].server;
        o.curve_secret_key = cases[i].secret;
        o.timeout_ms = cases[i].rc ? 1500 : WAIT_MS;
        ld_client_t *c;
        ck_assert_int_eq(ld_client_new(&o, &c), 0);
        ld_batch_t *b = NULL;
        int rc = ld_client_next(c, &b);
        ck_assert_msg(rc == cases[i].rc, "case %zu: %s: %s", i, ld_strerror(rc), ld_errdetail());
        if (rc == 0) {
            check_batch(b, 4, "cam1", (const uint32_t[]){ 0, 2, 4 }, 3);
            ld_batch_destroy(&b);
        } else {
            ck_assert_msg(strstr(ld_errdetail(), cases[i].word), "case %zu: %s", i, ld_errdetail());
        }
        ld_client_destroy(&c);
    }
    daemon_stop(&d, 0);
    free(server_key);
    free(client_key);
    free(allowed);
}
END_TEST

/* ---------------------------------------------------------------- fleets */

/* An injected resolver: every name resolves to 127.0.0.1 at the ports
 * listed now, or fails with `fail`. Called on the test's thread. */
typedef struct {
    int ports[4], n, fail, calls;
} fake_dns_t;

static int fake_resolve(void *user, const char *host, uint16_t port, ld_client_addr_t *out, int max)
{
    fake_dns_t *dns = user;
    (void)port;
    dns->calls++;
    if (dns->fail)
        return ld_seterr(dns->fail, "name '%s': the test's resolver fails", host);
    for (int i = 0; i < dns->n && i < max; i++) {
        snprintf(out[i].host, sizeof out[i].host, "127.0.0.1");
        out[i].port = (uint16_t)dns->ports[i];
    }
    return dns->n < max ? dns->n : max;
}

static void fleet_opts(ld_client_opts_t *o, const char *const *eps, fake_dns_t *dns)
{
    static const char *const tg[] = { "cam1" };
    base_opts(o, eps, 1, tg);
    o->batch_size = 2;
    o->credits = 2;
    o->resolve_ms = 200;
    o->timeout_ms = 5000;
    o->heartbeat_ms = 200;
    o->dead_ms = 1000;
    if (dns) {
        o->resolver = fake_resolve;
        o->resolver_user = dns;
    }
}

START_TEST(fleet_specs_are_checked)
{
    static const struct { const char *ep, *word; } bad[] = {
        { "tcp://sampler", "is not HOST:PORT" }, { "tcp://sampler:0", "port '0' is not" },
        { "tcp://sampler:65536", "port '65536'" }, { "tcp://sampler:55x", "port '55x'" },
        { "tcp://[::1:5555", "is not [IPV6]:PORT" }, { "tcp://[fe80::zz]:5555", "not an IPv6 address" },
        { "tcp://sam pler:5555", "'sam pler' is not a host name" }, { "tcp://:5555", "host is empty" },
        { "file://hosts", "absolute path" },
    };
    fake_dns_t dns = { .fail = LD_ENOENT };
    ld_client_opts_t o;
    ld_client_t *c = (ld_client_t *)&o;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *eps[] = { bad[i].ep };
        fleet_opts(&o, eps, &dns);
        ck_assert_int_eq(ld_client_new(&o, &c), LD_EINVAL);
        ck_assert_ptr_null(c);
        ck_assert_msg(strstr(ld_errdetail(), bad[i].word) && strstr(ld_errdetail(), bad[i].ep), "%s: %s", bad[i].ep,
                      ld_errdetail());
    }
    const char *eps[] = { "tcp://samplers.test:5555" };
    fleet_opts(&o, eps, &dns);
    o.resolve_ms = -1;
    ck_assert_int_eq(ld_client_new(&o, &c), LD_ERANGE);
    /* resolved once only: a name or file that gives nothing is an error now */
    o.resolve_ms = 0;
    ck_assert_int_eq(ld_client_new(&o, &c), LD_ENOENT);
    ck_assert_msg(strstr(ld_errdetail(), "samplers.test") && strstr(ld_errdetail(), "test's resolver fails"), "%s",
                  ld_errdetail());
    const char *missing[] = { "file:///nonexistent/langdaug-hosts" };
    o.endpoints = missing;
    ck_assert_int_eq(ld_client_new(&o, &c), LD_ENOENT);
    ck_assert_msg(strstr(ld_errdetail(), "/nonexistent/langdaug-hosts"), "%s", ld_errdetail());
    /* re-resolved: the client waits for samplers, and its timeout says why there are none */
    o.endpoints = eps;
    o.resolve_ms = 100;
    o.timeout_ms = 300;
    ck_assert_int_eq(ld_client_new(&o, &c), 0);
    ck_assert_int_eq(ld_client_endpoints(c), 0);
    ld_batch_t *b;
    ck_assert_int_eq(ld_client_next(c, &b), LD_ETIMEDOUT);
    ck_assert_msg(strstr(ld_errdetail(), "no sampler; tcp://samplers.test:5555: name 'samplers.test': the test's"),
                  "%s", ld_errdetail());
    ck_assert_int_ge(dns.calls, 3); /* retried while waiting */
    ld_client_destroy(&c);
}
END_TEST

/* The client's samplers now, as "id=port" in position order. */
static void fleet_is(ld_client_t *c, const char *want)
{
    char got[256] = "";
    for (int e = 0; e < ld_client_endpoints(c); e++) {
        ld_endpoint_stats_t st;
        ck_assert_int_eq(ld_client_stats(c, e, &st), 0);
        const char *port = strrchr(st.endpoint, ':');
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s%d=%s", e ? " " : "", st.id, port + 1);
    }
    ck_assert_str_eq(got, want);
}

START_TEST(fleet_follows_the_resolver)
{
    NEED_DAEMON();
    daemon_t d[3] = { { 0 } };
    for (int i = 0; i < 3; i++)
        daemon_start(&d[i], 0);
    fake_dns_t dns = { .ports = { d[1].port, d[0].port }, .n = 2 };
    const char *eps[] = { "tcp://samplers.test:5555" };
    ld_client_opts_t o;
    fleet_opts(&o, eps, &dns);
    o.has_seed = 1;
    o.seed = 9;
    ld_client_t *c;
    ck_assert_int_eq(ld_client_new(&o, &c), 0);
    char want[256];
    int lo = d[0].port < d[1].port ? 0 : 1, hi = 1 - lo; /* ids are given in sorted address order */
    snprintf(want, sizeof want, "0=%d 1=%d", d[lo].port, d[hi].port);
    fleet_is(c, want);
    ck_assert_uint_eq(pull_until_from(c, 0, NULL), 9);
    ck_assert_uint_eq(pull_until_from(c, 1, NULL), ld_client_session_seed(9, 1, 0));
    ld_endpoint_stats_t st;
    ck_assert_int_eq(ld_client_stats(c, 0, &st), 0);
    ck_assert_str_eq(st.source, eps[0]);

    /* one sampler goes, another appears: the new one serves with the next id and its own seed */
    dns.ports[0] = d[hi].port;
    dns.ports[1] = d[2].port;
    ck_assert_uint_eq(pull_until_from(c, 2, NULL), ld_client_session_seed(9, 2, 0));
    snprintf(want, sizeof want, "1=%d 2=%d", d[hi].port, d[2].port);
    fleet_is(c, want);

    /* a failing resolution changes nothing */
    dns.fail = LD_EAGAIN;
    int calls = dns.calls;
    while (dns.calls < calls + 2)
        pull_until_from(c, 1, NULL);
    fleet_is(c, want);

    /* an empty answer drops every sampler; the timeout says why */
    dns.fail = 0;
    dns.n = 0;
    ld_batch_t *b = NULL;
    int rc;
    while ((rc = ld_client_next(c, &b)) == 0)
        ld_batch_destroy(&b);
    ck_assert_int_eq(rc, LD_ETIMEDOUT);
    ck_assert_msg(strstr(ld_errdetail(), "no sampler; tcp://samplers.test:5555: lists no sampler"), "%s",
                  ld_errdetail());
    fleet_is(c, "");
    ld_client_destroy(&c);
    for (int i = 0; i < 3; i++)
        daemon_stop(&d[i], 0);
}
END_TEST

/* Replaces a file's content at once (as a job script should). */
static void write_hosts(const char *path, const char *text)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    ld_test_write_file(tmp, text, strlen(text));
    ck_assert_int_eq(rename(tmp, path), 0);
}

/* A log sink keeping the warnings, one a line. */
static void keep_warnings(int level, const char *msg, void *user)
{
    char *buf = user;
    if (level <= LD_LOG_WARN && strlen(buf) + strlen(msg) + 2 < 4096)
        strcat(strcat(buf, msg), "\n");
}

START_TEST(fleet_reads_a_hosts_file)
{
    NEED_DAEMON();
    daemon_t d[2] = { { 0 } };
    for (int i = 0; i < 2; i++)
        daemon_start(&d[i], 0);
    char *hosts = ld_test_path(fx.dir, "hosts"), ep[4200], text[256];
    snprintf(ep, sizeof ep, "file://%s", hosts);
    snprintf(text, sizeof text, "# written by the job script\n\n  127.0.0.1:%d  \n", d[0].port);
    write_hosts(hosts, text);
    const char *eps[] = { ep };
    ld_client_opts_t o;
    fleet_opts(&o, eps, NULL);
    ld_client_t *c;
    ck_assert_int_eq(ld_client_new(&o, &c), 0);
    pull_until_from(c, 0, NULL);

    /* rewritten: a name (through the system resolver) replaces the first sampler */
    snprintf(text, sizeof text, "tcp://localhost:%d\n", d[1].port);
    write_hosts(hosts, text);
    pull_until_from(c, 1, NULL);
    char want[64];
    snprintf(want, sizeof want, "1=%d", d[1].port);
    fleet_is(c, want);

    /* a malformed file keeps the samplers and says where it is wrong, once */
    static char warnings[4096];
    ld_log_set(keep_warnings, warnings, LD_LOG_INFO);
    write_hosts(hosts, "127.0.0.1:1\nnode-7\n");
    for (int64_t until = now_ms() + 600; now_ms() < until;)
        pull_until_from(c, 1, NULL);
    ld_log_set(NULL, NULL, LD_LOG_INFO);
    fleet_is(c, want);
    static const char said[] = "hosts:2: 'node-7' is not HOST:PORT; 1 of its samplers kept";
    const char *line = strstr(warnings, said);
    ck_assert_msg(line && !strstr(line + sizeof said, "node-7"), "%s", warnings);
    ld_client_destroy(&c);
    for (int i = 0; i < 2; i++)
        daemon_stop(&d[i], 0);
    free(hosts);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("client");
    TCase *tc = ld_tcase("offline", 30);
    tcase_add_test(tc, options_are_checked);
    tcase_add_test(tc, times_out_without_sampler);
    tcase_add_test(tc, encodings_and_seeds);
    tcase_add_test(tc, malformed_messages_are_errors);
    tcase_add_test(tc, close_frees_a_partly_received_batch);
    tcase_add_test(tc, destroy_restarts_an_interrupted_context_term);
    tcase_add_test(tc, cancel_flag_interrupts_the_wait);
    tcase_add_test(tc, fleet_specs_are_checked);
    suite_add_tcase(s, tc);
    tc = ld_tcase("daemon", 90);
    tcase_add_checked_fixture(tc, fixture_setup, fixture_teardown);
    tcase_add_test(tc, pulls_batches);
    tcase_add_test(tc, refused_request_is_reported);
    tcase_add_test(tc, survives_sampler_restart);
    tcase_add_test(tc, outlives_session_expiry);
    tcase_add_test(tc, curve_keys);
    tcase_add_test(tc, fleet_follows_the_resolver);
    tcase_add_test(tc, fleet_reads_a_hosts_file);
    suite_add_tcase(s, tc);
    /* Tagged "timing": a 0.3 s idle timeout against the daemon's real clock,
     * which the ThreadSanitizer pass (5-15x slower) leaves out. */
    tc = ld_tcase("daemon-timing", 90);
    tcase_set_tags(tc, "timing");
    tcase_add_checked_fixture(tc, fixture_setup, fixture_teardown);
    tcase_add_test(tc, heartbeats_keep_a_short_idle_timeout);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
