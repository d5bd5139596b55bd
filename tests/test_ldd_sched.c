/* test_ldd_sched: which chains the scheduler starts (ldd_sched.h), with
 * jobs captured by a test sink instead of workers: demand only from credits
 * and only for reserved batches (enough chains for a batch, no more),
 * queue_capacity, round-robin between sessions, the memory budget across
 * sessions, a client seed giving the same chains whatever the other
 * clients, any-source pairs drawing only the sources their target is served
 * from, pair weights, and epoch mode visiting every tile once per epoch. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "ldd_fixture.h"
#include "ldd_sched.h"

#define MAX_JOBS 4096

typedef struct {
    ldd_job_t *jobs[MAX_JOBS];
    int n;
} sink_t;

static ldd_fixture_t fx;
static sink_t sink;

static void capture(void *user, ldd_job_t *job)
{
    sink_t *k = user;
    ck_assert_int_lt(k->n, MAX_JOBS);
    k->jobs[k->n++] = job;
}

static void setup(void)
{
    static const char *const keys[] = { "max_batch", "4096", NULL };
    ldd_fixture_open(&fx, keys);
    sink.n = 0;
}

static void teardown(void)
{
    for (int i = 0; i < sink.n; i++)
        ldd_job_free(&sink.jobs[i]);
    ldd_fixture_close(&fx);
}

static ldd_sched_t sched(int capacity, int chain_batch)
{
    return (ldd_sched_t){ .submit = capture, .user = &sink, .capacity = capacity, .chain_batch = chain_batch };
}

/* A session with a request (source NULL: any) and credits. */
static ldd_session_t *client(ldd_sessions_t *t, const char *id, uint32_t batch, const char *source,
                             const char *target, uint32_t credits, Langdaug__V1__PullRequest *extra)
{
    Langdaug__V1__PullRequest p = extra ? *extra : ldd_fixture_pull(0, batch, source, target, NULL, 0);
    ldd_request_t req = ldd_fixture_request(&fx, &p);
    ldd_session_t *s = ldd_sessions_add(t, id, strlen(id), 0);
    ldd_session_set_request(s, &req, fx.engine, 7);
    ldd_session_grant(s, credits);
    return s;
}

static int samples_of(uint64_t key, int from)
{
    int n = 0;
    for (int i = from; i < sink.n; i++)
        if (sink.jobs[i]->session == key)
            n += ldd_job_samples(sink.jobs[i]);
    return n;
}

/* Nothing without credit; with one, chains for one batch (5 samples of two
 * snapshots: 3 chains), and nothing more until the batch is out. */
START_TEST(demand_comes_from_reserved_credits)
{
    ldd_sessions_t *t = ldd_sessions_new(4, 1 << 30);
    ldd_sched_t sc = sched(16, 4);
    ldd_session_t *s = client(t, "a", 5, "cam0", "cam1", 0, NULL);
    ldd_sched_run(&sc, t, fx.engine);
    ck_assert_int_eq(sink.n, 0);
    ldd_session_grant(s, 1);
    ldd_sched_run(&sc, t, fx.engine);
    ck_assert_int_eq(sink.n, 1);
    ck_assert_int_eq(sink.jobs[0]->n, 3);
    ck_assert_int_eq(sc.outstanding, 1);
    ck_assert_uint_eq(ldd_session_view(s).reserved, 1);
    ldd_sched_run(&sc, t, fx.engine);
    ck_assert_int_eq(sink.n, 1);
    /* a second credit: the extra sample of the first batch counts */
    ldd_session_grant(s, 1);
    ldd_sched_run(&sc, t, fx.engine);
    ck_assert_int_eq(samples_of(ldd_session_view(s).key, 0), 10);
    ck_assert_uint_eq(ldd_session_view(s).reserved, 2);
    ldd_sessions_destroy(&t);
}
END_TEST

START_TEST(capacity_bounds_jobs_in_flight)
{
    ldd_sessions_t *t = ldd_sessions_new(4, 1 << 30);
    ldd_sched_t sc = sched(2, 1);
    client(t, "a", 8, "cam0", "cam1", 4, NULL);
    ldd_sched_run(&sc, t, fx.engine);
    ck_assert_int_eq(sink.n, 2);
    ldd_sched_run(&sc, t, fx.engine);
    ck_assert_int_eq(sink.n, 2);
    ldd_sched_release(&sc, 1);
    ldd_sched_run(&sc, t, fx.engine);
    ck_assert_int_eq(sink.n, 3);
    ck_assert_int_eq(sc.outstanding, 2);
    ldd_sched_release(&sc, 5);
    ck_assert_int_eq(sc.outstanding, 0);
    ldd_sessions_destroy(&t);
}
END_TEST

START_TEST(sessions_take_turns)
{
    ldd_sessions_t *t = ldd_sessions_new(4, 1 << 30);
    ldd_sched_t sc = sched(8, 1);
    uint64_t a = ldd_session_view(client(t, "a", 64, "cam0", "cam1", 1, NULL)).key;
    uint64_t b = ldd_session_view(client(t, "b", 2, "cam0", "cam1", 4, NULL)).key;
    ldd_sched_run(&sc, t, fx.engine);
    ck_assert_int_eq(sink.n, 8);
    for (int i = 0; i < 8; i++)
        ck_assert_uint_eq(sink.jobs[i]->session, i % 2 ? b : a);
    ldd_sessions_destroy(&t);
}
END_TEST

/* Budget for one batch of 4: only one session gets chains, the other
 * once the first batch is out. */
START_TEST(budget_is_shared_by_sessions)
{
    ldd_sessions_t *t = ldd_sessions_new(4, 4 * ldd_sample_bytes(fx.engine));
    ldd_sched_t sc = sched(16, 4);
    ldd_session_t *a = client(t, "a", 4, "cam0", "cam1", 3, NULL);
    ldd_session_t *b = client(t, "b", 4, "cam0", "cam1", 3, NULL);
    ldd_sched_run(&sc, t, fx.engine);
    ck_assert_int_eq(samples_of(ldd_session_view(a).key, 0), 4);
    ck_assert_int_eq(samples_of(ldd_session_view(b).key, 0), 0);
    ldd_session_batch_out(a, 1, 4, 0);
    ldd_sched_run(&sc, t, fx.engine);
    ck_assert_int_eq(sink.n, 2);
    ck_assert_uint_eq(ldd_session_view(a).reserved + ldd_session_view(b).reserved, 1);
    ldd_sessions_destroy(&t);
}
END_TEST

/* The crops, targets and chain ids of session key's jobs. */
static int chains_of(uint64_t key, ldd_chain_t *out, int cap)
{
    int n = 0;
    for (int i = 0; i < sink.n; i++)
        for (int c = 0; c < sink.jobs[i]->n && sink.jobs[i]->session == key && n < cap; c++)
            out[n++] = sink.jobs[i]->chains[c];
    return n;
}

START_TEST(client_seed_gives_the_same_chains)
{
    uint32_t steps[] = { 0, 1 };
    Langdaug__V1__PullRequest p = ldd_fixture_pull(0, 6, NULL, "cam0", steps, 2);
    p.has_seed = 1;
    p.seed = 99;
    ldd_chain_t alone[64], crowded[64];
    ldd_sessions_t *t = ldd_sessions_new(4, 1 << 30);
    ldd_sched_t sc = sched(64, 2);
    uint64_t key = ldd_session_view(client(t, "a", 0, NULL, NULL, 3, &p)).key;
    ldd_sched_run(&sc, t, fx.engine);
    int n = chains_of(key, alone, 64);
    ldd_sessions_destroy(&t);
    t = ldd_sessions_new(4, 1 << 30);
    sc = sched(64, 3);
    client(t, "x", 5, NULL, "cam1", 4, NULL);
    p = ldd_fixture_pull(0, 6, NULL, "cam0", steps, 2);
    p.has_seed = 1;
    p.seed = 99;
    key = ldd_session_view(client(t, "a", 0, NULL, NULL, 3, &p)).key;
    ldd_sched_run(&sc, t, fx.engine);
    ck_assert_int_eq(chains_of(key, crowded, 64), n);
    ck_assert_int_eq(n, 9);
    for (int i = 0; i < n; i++) {
        ck_assert_uint_eq(crowded[i].chain_id, (uint64_t)i);
        ck_assert(!memcmp(&alone[i].crop, &crowded[i].crop, sizeof alone[i].crop));
        ck_assert_int_eq(alone[i].target, crowded[i].target);
    }
    ldd_sessions_destroy(&t);
}
END_TEST

/* Any source toward cam0 draws cam1 and cam2, never cam0 itself; weights
 * 3:1 between two pairs show in the draws. */
START_TEST(pairs_draw_by_route_and_weight)
{
    ldd_sessions_t *t = ldd_sessions_new(4, 1 << 30);
    ldd_sched_t sc = sched(MAX_JOBS, 64);
    uint64_t key = ldd_session_view(client(t, "a", 2000, NULL, "cam0", 1, NULL)).key;
    ldd_sched_run(&sc, t, fx.engine);
    int count[LDD_FIXTURE_DOMAINS] = { 0 };
    for (int i = 0; i < sink.n; i++)
        for (int c = 0; c < sink.jobs[i]->n; c++)
            count[sink.jobs[i]->chains[c].crop.domain]++;
    ck_assert_int_eq(count[0], 0);
    ck_assert(count[1] > 350 && count[2] > 350);
    Langdaug__V1__Pair w3 = LANGDAUG__V1__PAIR__INIT, w1 = LANGDAUG__V1__PAIR__INIT, *pairs[] = { &w3, &w1 };
    w3.source = "cam1";
    w3.target = "cam2";
    w3.has_weight = 1;
    w3.weight = 3;
    w1.source = "cam2";
    w1.target = "cam1";
    Langdaug__V1__PullRequest p = ldd_fixture_pull(0, 2000, NULL, NULL, NULL, 0);
    p.pairs = pairs;
    p.n_pairs = 2;
    int from = sink.n;
    key = ldd_session_view(client(t, "b", 0, NULL, NULL, 1, &p)).key;
    ldd_sched_run(&sc, t, fx.engine);
    int first = 0, second = 0;
    for (int i = from; i < sink.n; i++)
        for (int c = 0; c < sink.jobs[i]->n && sink.jobs[i]->session == key; c++)
            *(sink.jobs[i]->chains[c].target_name == 0 ? &first : &second) += 1;
    ck_assert_int_eq(first + second, 1000);
    ck_assert_msg(first > 700 && first < 800, "weight 3 of 4 drew %d of 1000", first);
    ldd_sessions_destroy(&t);
}
END_TEST

/* Epoch mode: each epoch visits every tile of the source domain once. */
START_TEST(epoch_mode_visits_every_tile_once)
{
    uint32_t steps[] = { 1 };
    Langdaug__V1__PullRequest p = ldd_fixture_pull(0, 1, "cam1", "cam0", steps, 1);
    p.has_epoch = 1;
    p.epoch = 1;
    int d = -1;
    ck_assert(ldd_engine_find_source(fx.engine, "cam1", &d));
    int tiles = fx.engine->n_tiles[d];
    ck_assert_int_gt(tiles, 1);
    p.batch_size = (uint32_t)(2 * tiles);
    ldd_sessions_t *t = ldd_sessions_new(4, 1 << 30);
    ldd_sched_t sc = sched(MAX_JOBS, 3);
    uint64_t key = ldd_session_view(client(t, "a", 0, NULL, NULL, 1, &p)).key;
    ldd_sched_run(&sc, t, fx.engine);
    ldd_chain_t c[256];
    ck_assert_int_eq(chains_of(key, c, 256), 2 * tiles);
    for (int e = 0; e < 2; e++) {
        for (int i = 0; i < tiles; i++) {
            ck_assert_uint_eq(c[e * tiles + i].epoch, (uint64_t)e + 1);
            for (int j = 0; j < i; j++)
                ck_assert(memcmp(&c[e * tiles + i].crop, &c[e * tiles + j].crop, sizeof c[0].crop) != 0);
        }
    }
    ldd_sessions_destroy(&t);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ldd_sched");
    TCase *tc = ld_tcase("sched", 60);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, demand_comes_from_reserved_credits);
    tcase_add_test(tc, capacity_bounds_jobs_in_flight);
    tcase_add_test(tc, sessions_take_turns);
    tcase_add_test(tc, budget_is_shared_by_sessions);
    tcase_add_test(tc, client_seed_gives_the_same_chains);
    tcase_add_test(tc, pairs_draw_by_route_and_weight);
    tcase_add_test(tc, epoch_mode_visits_every_tile_once);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
