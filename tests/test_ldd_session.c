/* test_ldd_session: the session module's flow control (ldd_session.h):
 * credits within max_credits, reservations within credits and within the
 * memory budget (reserved batches plus the wire bytes ZeroMQ holds, each
 * at its boundary), the ready list handing samples out in job order only
 * (jobs returning out of order, failed jobs, stale jobs of an old request),
 * what a new or cancelled request resets, and every invariant at once over
 * random operation sequences (fixed seed, bounded length) against a model
 * of what each session should hold. Jobs are finished by the test
 * (ldd_fixture_finish), not by workers. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "ld_rng.h"
#include "ldd_fixture.h"
#include "ldd_session.h"

static ldd_fixture_t fx;

static void setup(void)
{
    ldd_fixture_open(&fx, NULL);
}

static void teardown(void)
{
    ldd_fixture_close(&fx);
}

/* A request for batch samples toward cam1 from cam0 (two snapshots a chain). */
static ldd_request_t request(uint32_t batch)
{
    Langdaug__V1__PullRequest p = ldd_fixture_pull(0, batch, "cam0", "cam1", NULL, 0);
    ldd_request_t req = ldd_fixture_request(&fx, &p);
    return req;
}

static ldd_session_t *session_with(ldd_sessions_t *t, const char *id, uint32_t batch)
{
    ldd_session_t *s = ldd_sessions_add(t, id, strlen(id), 0);
    ck_assert_ptr_nonnull(s);
    ldd_request_t req = request(batch);
    ldd_session_set_request(s, &req, fx.engine, 1);
    return s;
}

/* A job of n chains scheduled for s. */
static ldd_job_t *job_for(ldd_session_t *s, int n)
{
    ldd_job_t *job = ldd_job_new(fx.engine, 0, n);
    job->params = *ldd_session_view(s).params;
    ldd_session_submit(s, job);
    return job;
}

static int64_t batch_bytes(uint32_t batch)
{
    return (int64_t)batch * ldd_sample_bytes(fx.engine);
}

START_TEST(credits_stay_within_max)
{
    ldd_sessions_t *t = ldd_sessions_new(4, 1 << 30);
    ck_assert_uint_eq(ldd_session_credit_room(NULL, 16), 16);
    ldd_session_t *s = session_with(t, "a", 4);
    ck_assert_uint_eq(ldd_session_credit_room(s, 16), 16);
    ldd_session_grant(s, 10);
    ck_assert_uint_eq(ldd_session_credit_room(s, 16), 6);
    ldd_session_grant(s, 6);
    ck_assert_uint_eq(ldd_session_credit_room(s, 16), 0);
    ck_assert_uint_eq(ldd_session_credit_room(s, 8), 0); /* a lower max after a reload */
    ck_assert_uint_eq(ldd_session_view(s).credits, 16);
    ldd_sessions_destroy(&t);
}
END_TEST

START_TEST(reservations_stay_within_credits)
{
    ldd_sessions_t *t = ldd_sessions_new(4, 1 << 30);
    ldd_session_t *bare = ldd_sessions_add(t, "x", 1, 0);
    ldd_session_grant(bare, 2);
    ck_assert_int_eq(ldd_sessions_reserve(t, bare), 0); /* no request */
    ldd_session_t *s = session_with(t, "a", 4);
    ck_assert_int_eq(ldd_sessions_reserve(t, s), 0);    /* no credit */
    ldd_session_grant(s, 2);
    ck_assert_int_eq(ldd_sessions_reserve(t, s), 1);
    ck_assert_int_eq(ldd_sessions_reserve(t, s), 1);
    ck_assert_int_eq(ldd_sessions_reserve(t, s), 0);
    ck_assert_uint_eq(ldd_session_view(s).reserved, 2);
    ck_assert_int_eq(ldd_session_wanted(s), 8);
    /* a batch handed out gives its reservation back, sent or not; only a
     * sent one uses a credit */
    ldd_session_batch_out(s, 0, 4, 1.0);
    ck_assert_uint_eq(ldd_session_view(s).reserved, 1);
    ck_assert_uint_eq(ldd_session_view(s).credits, 2);
    ldd_session_batch_out(s, 1, 4, 2.0);
    ldd_session_view_t v = ldd_session_view(s);
    ck_assert(v.reserved == 0 && v.credits == 1 && v.batches_sent == 1 && v.samples_sent == 4 && v.last_sent == 2.0);
    ldd_sessions_destroy(&t);
}
END_TEST

/* Budget = exactly two batches of 4: the second reservation fills it to the
 * byte, a third is refused, over every session; wire bytes count too. */
START_TEST(reservations_stay_within_budget)
{
    ldd_sessions_t *t = ldd_sessions_new(4, 2 * batch_bytes(4));
    ldd_session_t *a = session_with(t, "a", 4), *b = session_with(t, "b", 4);
    ldd_session_grant(a, 5);
    ldd_session_grant(b, 5);
    ck_assert(ldd_sessions_batch_fits(t, a));
    ck_assert_int_eq(ldd_sessions_reserve(t, a), 1);
    ck_assert_int_eq(ldd_sessions_reserve(t, b), 1);
    ck_assert_int_eq(ldd_sessions_reserve(t, a), 0);
    ck_assert_int_eq(ldd_sessions_reserve(t, b), 0);
    ldd_session_batch_out(a, 1, 4, 0);
    ldd_wire_hold_t *hold = ldd_sessions_wire_hold(t, 1); /* one byte on the wire is one too many */
    ck_assert_int_eq(ldd_sessions_reserve(t, a), 0);
    ck_assert_int_eq(ldd_sessions_queue_bytes(t), 1);
    ldd_wire_release(hold);
    ck_assert_int_eq(ldd_sessions_queue_bytes(t), 0);
    ck_assert_int_eq(ldd_sessions_reserve(t, a), 1);
    /* a lower budget after a reload: nothing new until the held memory drains */
    ldd_sessions_set_limits(t, 4, batch_bytes(4));
    ck_assert(ldd_sessions_batch_fits(t, a));
    ldd_session_batch_out(a, 1, 4, 0);
    ck_assert_int_eq(ldd_sessions_reserve(t, a), 0);
    ldd_session_batch_out(b, 1, 4, 0);
    ck_assert_int_eq(ldd_sessions_reserve(t, a), 1);
    ldd_sessions_set_limits(t, 4, batch_bytes(4) - 1);
    ck_assert(!ldd_sessions_batch_fits(t, a));
    ldd_sessions_destroy(&t);
}
END_TEST

/* Takes n samples; checks that their tags increase from *last. */
static void take_in_order(ldd_session_t *s, int n, float *last)
{
    ldd_job_t *used = NULL;
    for (int k = 0; k < n; k++) {
        ldd_sample_t smp;
        ldd_session_take_sample(s, &smp, &used);
        float tag = ldd_fixture_tag(smp.job->seq, smp.chain, smp.snap);
        ck_assert_msg(tag > *last, "sample %d out of order: %g after %g", k, tag, *last);
        ck_assert(smp.job->energy[(size_t)smp.snap * smp.job->n + smp.chain] == tag);
        *last = tag;
    }
    while (used) {
        ldd_job_t *next = used->next;
        ldd_job_free(&used);
        used = next;
    }
}

START_TEST(ready_list_hands_out_job_order)
{
    ldd_sessions_t *t = ldd_sessions_new(4, 1 << 30);
    ldd_session_t *s = session_with(t, "a", 4);
    ldd_session_grant(s, 3);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(ldd_sessions_reserve(t, s), 1);
    ck_assert_int_eq(ldd_session_wanted(s), 12);
    ldd_job_t *j[4];
    for (int i = 0; i < 4; i++)
        j[i] = job_for(s, 2); /* 4 samples each */
    ck_assert_int_eq(ldd_session_wanted(s), -4);
    /* job 2 first: held, not ready */
    ldd_fixture_finish(j[2]);
    ck_assert_ptr_eq(ldd_sessions_job_owner(t, j[2]), s);
    ldd_session_add_ready(s, j[2]);
    ck_assert_int_eq(ldd_session_held_samples(s), 4);
    ck_assert_int_eq(ldd_session_ready_samples(s), 0);
    ck_assert(!ldd_session_batch_ready(s));
    /* job 1 fails: its place in the order, no samples */
    j[1]->status = -5;
    ldd_session_add_ready(s, j[1]);
    ck_assert_int_eq(ldd_session_ready_samples(s), 0);
    ldd_fixture_finish(j[0]);
    ldd_session_add_ready(s, j[0]);
    ck_assert_int_eq(ldd_session_ready_samples(s), 8); /* jobs 0, (1), 2 */
    ck_assert_int_eq(ldd_session_wanted(s), 12 - 4 - 8);
    ck_assert(ldd_session_batch_ready(s));
    float last = -1;
    take_in_order(s, 3, &last);
    ck_assert_int_eq(ldd_session_ready_samples(s), 5);
    take_in_order(s, 3, &last); /* across the failed job */
    ck_assert_int_eq(ldd_session_ready_samples(s), 2);
    ck_assert_int_eq(ldd_session_held_samples(s), 2);
    ldd_fixture_finish(j[3]);
    ldd_session_add_ready(s, j[3]);
    take_in_order(s, 6, &last);
    ck_assert_int_eq(ldd_session_held_samples(s), 0);
    ck_assert(!ldd_session_batch_ready(s));
    ldd_sessions_destroy(&t);
}
END_TEST

/* A new request drops finished jobs and reservations and makes running
 * jobs stale; credits stay. Cancelling drops the credits too. */
START_TEST(new_request_resets_flow_state)
{
    ldd_sessions_t *t = ldd_sessions_new(4, 1 << 30);
    ldd_session_t *s = session_with(t, "a", 4);
    ldd_session_grant(s, 2);
    ck_assert_int_eq(ldd_sessions_reserve(t, s), 1);
    ldd_job_t *done = job_for(s, 2), *running = job_for(s, 2);
    ldd_fixture_finish(done);
    ldd_session_add_ready(s, done);
    ck_assert_int_eq(ldd_session_held_samples(s), 4);
    ldd_request_t req = request(6);
    ldd_session_set_request(s, &req, fx.engine, 1);
    ldd_session_view_t v = ldd_session_view(s);
    ck_assert(v.credits == 2 && v.reserved == 0 && v.req->batch_size == 6);
    ck_assert_int_eq(ldd_session_held_samples(s), 0);
    ck_assert_ptr_null(ldd_sessions_job_owner(t, running));
    ldd_job_free(&running);
    ck_assert_int_eq(ldd_sessions_reserve(t, s), 1);
    ck_assert_int_eq(ldd_session_wanted(s), 6);
    ldd_session_cancel_request(s);
    v = ldd_session_view(s);
    ck_assert(v.credits == 0 && v.reserved == 0 && !v.req);
    ck_assert_int_eq(ldd_sessions_reserve(t, s), 0);
    /* a job of a removed session has no owner */
    ldd_session_t *b = session_with(t, "b", 4);
    ldd_job_t *orphan = job_for(b, 1);
    ldd_sessions_remove(t, b);
    ck_assert_ptr_null(ldd_sessions_job_owner(t, orphan));
    ldd_job_free(&orphan);
    ldd_sessions_destroy(&t);
}
END_TEST

/* ---- random operation sequences ---- */

#define N_IDS 4
#define MAX_CREDITS 5
#define MAX_RUNNING 8

typedef struct {
    ldd_session_t *s;
    int64_t running;      /* samples of running jobs (model) */
    float last;           /* tag of the last sample taken */
} model_t;

typedef struct {
    ldd_sessions_t *t;
    model_t m[N_IDS];
    ldd_job_t *running[MAX_RUNNING];
    int n_running;
    ldd_wire_hold_t *wire[16];
    int64_t wire_bytes[16];
    int n_wire;
    ld_rng_t rng;
} world_t;

static int64_t model_reserved_bytes(world_t *w)
{
    int64_t sum = 0;
    for (int i = 0; i < N_IDS; i++)
        if (w->m[i].s) {
            ldd_session_view_t v = ldd_session_view(w->m[i].s);
            sum += (int64_t)v.reserved * batch_bytes(v.req ? v.req->batch_size : 0);
        }
    return sum;
}

static int64_t model_wire(world_t *w)
{
    int64_t sum = 0;
    for (int i = 0; i < w->n_wire; i++)
        sum += w->wire_bytes[i];
    return sum;
}

static void op_reserve(world_t *w, model_t *m)
{
    ldd_session_view_t v = ldd_session_view(m->s);
    int64_t need = v.req ? batch_bytes(v.req->batch_size) : 0;
    int expect = v.req && v.reserved < v.credits &&
                 model_wire(w) + model_reserved_bytes(w) + need <= ldd_sessions_budget(w->t);
    ck_assert_int_eq(ldd_sessions_reserve(w->t, m->s), expect);
}

static void op_submit(world_t *w, model_t *m)
{
    if (ldd_session_wanted(m->s) <= 0 || w->n_running == MAX_RUNNING)
        return;
    ldd_job_t *job = job_for(m->s, 1 + (int)ld_rng_below(&w->rng, 3));
    m->running += ldd_job_samples(job);
    w->running[w->n_running++] = job;
}

static void op_finish(world_t *w)
{
    if (w->n_running == 0)
        return;
    int k = (int)ld_rng_below(&w->rng, (uint32_t)w->n_running);
    ldd_job_t *job = w->running[k];
    w->running[k] = w->running[--w->n_running];
    ldd_session_t *owner = ldd_sessions_job_owner(w->t, job);
    model_t *m = NULL;
    for (int i = 0; i < N_IDS; i++)
        if (w->m[i].s && ldd_session_view(w->m[i].s).key == job->session)
            m = &w->m[i];
    if (!owner) {
        ldd_job_free(&job);
        return;
    }
    ck_assert_ptr_nonnull(m);
    ck_assert_ptr_eq(owner, m->s);
    m->running -= ldd_job_samples(job);
    if (ld_rng_below(&w->rng, 10) == 0)
        job->status = -5;
    else
        ldd_fixture_finish(job);
    ldd_session_add_ready(m->s, job);
}

static void op_cut(world_t *w, model_t *m)
{
    if (!ldd_session_batch_ready(m->s))
        return;
    take_in_order(m->s, (int)ldd_session_view(m->s).req->batch_size, &m->last);
    int sent = ld_rng_below(&w->rng, 8) != 0;
    if (sent && w->n_wire < 16) {
        w->wire_bytes[w->n_wire] = batch_bytes(ldd_session_view(m->s).req->batch_size);
        w->wire[w->n_wire] = ldd_sessions_wire_hold(w->t, (size_t)w->wire_bytes[w->n_wire]);
        w->n_wire++;
    }
    ldd_session_batch_out(m->s, sent, 0, 0);
}

static void op_release_wire(world_t *w)
{
    if (w->n_wire == 0)
        return;
    int k = (int)ld_rng_below(&w->rng, (uint32_t)w->n_wire);
    ldd_wire_release(w->wire[k]);
    w->n_wire--;
    w->wire[k] = w->wire[w->n_wire];
    w->wire_bytes[k] = w->wire_bytes[w->n_wire];
}

static void op_new_request(model_t *m, uint32_t batch)
{
    ldd_request_t req = request(batch);
    ldd_session_set_request(m->s, &req, fx.engine, 1);
    m->running = 0; /* its running jobs are stale now */
    m->last = -1;
}

static void op_lifecycle(world_t *w, model_t *m, int id)
{
    char name[2] = { (char)('a' + id), 0 };
    if (m->s) {
        ldd_sessions_remove(w->t, m->s);
        memset(m, 0, sizeof *m);
        return;
    }
    m->s = ldd_sessions_add(w->t, name, 1, 0);
    ck_assert_ptr_nonnull(m->s);
    op_new_request(m, 1 + ld_rng_below(&w->rng, 7));
}

static void check_invariants(world_t *w)
{
    int64_t held = model_wire(w);
    for (int i = 0; i < N_IDS; i++) {
        model_t *m = &w->m[i];
        if (!m->s)
            continue;
        ldd_session_view_t v = ldd_session_view(m->s);
        ck_assert_uint_le(v.credits, MAX_CREDITS);
        ck_assert_uint_le(v.reserved, v.credits);
        int64_t want = v.reserved ? (int64_t)v.reserved * v.req->batch_size - m->running -
                                        ldd_session_held_samples(m->s) : 0;
        ck_assert_int_eq(ldd_session_wanted(m->s), want);
        ck_assert_int_le(ldd_session_ready_samples(m->s), ldd_session_held_samples(m->s));
        held += ldd_session_held_samples(m->s) * ldd_sample_bytes(fx.engine);
    }
    ck_assert_int_eq(ldd_sessions_queue_bytes(w->t), held);
}

static void step(world_t *w)
{
    int id = (int)ld_rng_below(&w->rng, N_IDS);
    model_t *m = &w->m[id];
    uint32_t r = ld_rng_below(&w->rng, 100);
    if (!m->s || r < 2) {
        op_lifecycle(w, m, id);
        return;
    }
    if (r < 20) {
        uint32_t room = ldd_session_credit_room(m->s, MAX_CREDITS);
        ldd_session_grant(m->s, room ? ld_rng_below(&w->rng, room + 1) : 0);
    } else if (r < 40) {
        op_reserve(w, m);
    } else if (r < 55) {
        op_submit(w, m);
    } else if (r < 75) {
        op_finish(w);
    } else if (r < 88) {
        op_cut(w, m);
    } else if (r < 97) {
        op_release_wire(w);
    } else {
        op_new_request(m, 1 + ld_rng_below(&w->rng, 7));
    }
}

START_TEST(invariants_hold_under_random_operations)
{
    world_t w = { 0 };
    /* about three batches of the largest size */
    w.t = ldd_sessions_new(N_IDS, 3 * batch_bytes(7));
    ld_rng_init(&w.rng, 20260301, 1);
    int cuts_before = 0;
    for (int i = 0; i < 20000; i++) {
        step(&w);
        check_invariants(&w);
    }
    for (int i = 0; i < N_IDS; i++)
        if (w.m[i].s)
            cuts_before += (int)ldd_session_view(w.m[i].s).batches_sent;
    ck_assert_int_gt(cuts_before, 0); /* the sequence got as far as sending */
    while (w.n_running)
        ldd_job_free(&w.running[--w.n_running]);
    while (w.n_wire)
        ldd_wire_release(w.wire[--w.n_wire]);
    ldd_sessions_destroy(&w.t);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ldd_session");
    TCase *tc = ld_tcase("session", 60);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, credits_stay_within_max);
    tcase_add_test(tc, reservations_stay_within_credits);
    tcase_add_test(tc, reservations_stay_within_budget);
    tcase_add_test(tc, ready_list_hands_out_job_order);
    tcase_add_test(tc, new_request_resets_flow_state);
    tcase_add_test(tc, invariants_hold_under_random_operations);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
