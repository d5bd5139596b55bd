/* test_ldd_zpoll: ZeroMQ sockets read from a libuv loop (ldd_zpoll.h): a
 * pass handles at most `batch` messages per socket, the idle handle goes on
 * with the rest without any new poll event, every socket of the reader is
 * served in each pass, and a pump from inside a handler does not nest. */
#include "testutil.h"

#include <zmq.h>

#include "ld_error.h"
#include "ldd_zpoll.h"

typedef struct {
    void *sock;
    ldd_zpoll_t *zp;
    int n, depth, max_depth;
} counter_t;

static void on_message(void *user)
{
    counter_t *c = user;
    char buf[16];
    ck_assert_int_ge(zmq_recv(c->sock, buf, sizeof buf, ZMQ_DONTWAIT), 0);
    c->n++;
    if (++c->depth > c->max_depth)
        c->max_depth = c->depth;
    ldd_zpoll_pump(c->zp); /* must return at once */
    c->depth--;
}

static void close_all(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* A bound PAIR socket (returned) and its peer, which sent n messages. */
static void *pair_with(void *ctx, const char *endpoint, int n, void **peer)
{
    void *in = zmq_socket(ctx, ZMQ_PAIR), *out = zmq_socket(ctx, ZMQ_PAIR);
    ck_assert_int_eq(zmq_bind(in, endpoint), 0);
    ck_assert_int_eq(zmq_connect(out, endpoint), 0);
    for (int i = 0; i < n; i++)
        ck_assert_int_eq(zmq_send(out, "m", 1, 0), 1);
    *peer = out;
    return in;
}

START_TEST(passes_are_bounded_and_resume_when_idle)
{
    void *ctx = zmq_ctx_new(), *pa, *pb;
    uv_loop_t loop;
    uv_loop_init(&loop);
    ldd_zpoll_t *zp = ldd_zpoll_new(&loop, 64);
    counter_t a = { .sock = pair_with(ctx, "inproc://a", 150, &pa), .zp = zp };
    counter_t b = { .sock = pair_with(ctx, "inproc://b", 10, &pb), .zp = zp };
    ck_assert_int_eq(ldd_zpoll_add(zp, a.sock, on_message, &a), 0);
    ck_assert_int_eq(ldd_zpoll_add(zp, b.sock, on_message, &b), 0);
    ldd_zpoll_pump(zp);
    ck_assert_int_eq(a.n, 64);
    ck_assert_int_eq(b.n, 10);
    for (int i = 0; i < 10 && a.n < 150; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    ck_assert_int_eq(a.n, 150);
    ck_assert_int_eq(a.max_depth, 1);
    uv_walk(&loop, close_all, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    ldd_zpoll_free(&zp);
    void *socks[] = { a.sock, b.sock, pa, pb };
    for (int i = 0; i < 4; i++)
        zmq_close(socks[i]);
    zmq_ctx_term(ctx);
}
END_TEST

START_TEST(socket_count_is_bounded)
{
    void *ctx = zmq_ctx_new();
    uv_loop_t loop;
    uv_loop_init(&loop);
    ldd_zpoll_t *zp = ldd_zpoll_new(&loop, 4);
    void *socks[LDD_ZPOLL_MAX + 1];
    counter_t c = { .zp = zp };
    for (int i = 0; i <= LDD_ZPOLL_MAX; i++) {
        socks[i] = zmq_socket(ctx, ZMQ_PAIR);
        ck_assert_int_eq(ldd_zpoll_add(zp, socks[i], on_message, &c), i < LDD_ZPOLL_MAX ? 0 : LD_ERANGE);
    }
    uv_walk(&loop, close_all, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    ldd_zpoll_free(&zp);
    for (int i = 0; i <= LDD_ZPOLL_MAX; i++)
        zmq_close(socks[i]);
    zmq_ctx_term(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ldd_zpoll");
    TCase *tc = ld_tcase("zpoll", 30);
    tcase_add_test(tc, passes_are_bounded_and_resume_when_idle);
    tcase_add_test(tc, socket_count_is_bounded);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
