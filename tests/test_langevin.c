/* ld_langevin: parameter checks; the update rule against a hand computation
 * (zero model: pure noise, clamped) and one noise-free step against
 * x - (eta/2) dE/dx from the engine's gradient; energy descent without noise;
 * snapshots and their energies; bit-identical chains across threads and
 * batch compositions; numeric failures, cancellation. */
#include "testutil.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ld_ebm.h"
#include "ld_error.h"
#include "ld_langevin.h"
#include "ld_rng.h"

typedef struct {
    ld_ebm_arch_t arch;
    ld_ebm_t *m;
    int n;
    size_t per, q;
    float *image;
    uint8_t *mask;
    int32_t *target;
    uint64_t *chain;
} fixture_t;

static fixture_t make_fixture(int S, const char *widths, int n, uint64_t seed)
{
    fixture_t f;
    memset(&f, 0, sizeof f);
    f.arch.image_channels = 3;
    f.arch.mask_classes = 2;
    f.arch.size = S;
    ck_assert_int_eq(ld_ebm_arch_set_widths(&f.arch, widths), 0);
    ck_assert_int_eq(ld_ebm_arch_set_domains(&f.arch, "A,B,C"), 0);
    ck_assert_int_eq(ld_ebm_new(&f.arch, &f.m), 0);
    ld_ebm_init_random(f.m, seed);
    f.n = n;
    f.q = (size_t)S * (size_t)S;
    f.per = 3 * f.q;
    f.image = malloc((size_t)n * f.per * sizeof(float));
    f.mask = malloc((size_t)n * f.q);
    f.target = malloc((size_t)n * sizeof(int32_t));
    f.chain = malloc((size_t)n * sizeof(uint64_t));
    ld_rng_t r;
    ld_rng_init(&r, seed, 1);
    for (size_t i = 0; i < (size_t)n * f.per; i++)
        f.image[i] = (float)(1.6 * ld_rng_uniform(&r) - 0.8);
    for (size_t i = 0; i < (size_t)n * f.q; i++)
        f.mask[i] = (uint8_t)((i / 7) % 2);
    for (int c = 0; c < n; c++) {
        f.target[c] = c % 3;
        f.chain[c] = 1000 + (uint64_t)c;
    }
    return f;
}

static void free_fixture(fixture_t *f)
{
    ld_ebm_destroy(&f->m);
    free(f->image);
    free(f->mask);
    free(f->target);
    free(f->chain);
}

static ld_ebm_ws_t *make_ws(const fixture_t *f, int max_batch, int threads)
{
    ld_ebm_ws_t *ws = NULL;
    ck_assert_msg(ld_ebm_ws_new(&f->arch, max_batch, threads, &ws) == 0, "%s", ld_errdetail());
    return ws;
}

static ld_langevin_params_t params(float eta, float sigma, int steps, const char *snaps)
{
    ld_langevin_params_t p;
    memset(&p, 0, sizeof p);
    p.step_size = eta;
    p.noise = sigma;
    p.steps = steps;
    p.seed = 12345;
    ck_assert_int_eq(ld_langevin_set_snapshots(&p, snaps), 0);
    return p;
}

START_TEST(params_validated)
{
    ld_langevin_params_t p = params(0.01f, 0.005f, 10, "10,0,5");
    ck_assert_int_eq(p.n_snapshots, 3);
    ck_assert(p.snapshots[0] == 0 && p.snapshots[1] == 5 && p.snapshots[2] == 10);
    ck_assert_int_eq(ld_langevin_validate(&p), 0);
    ld_expect_err(ld_langevin_set_snapshots(&p, "3,3"), LD_EINVAL);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "twice"));
    ld_expect_err(ld_langevin_set_snapshots(&p, "1,,2"), LD_EINVAL);
    ld_expect_err(ld_langevin_set_snapshots(&p, "1,2,"), LD_EINVAL);
    ld_expect_err(ld_langevin_set_snapshots(&p, "-1"), LD_EINVAL);
    ld_expect_err(ld_langevin_set_snapshots(&p, "1;2"), LD_EINVAL);
    ck_assert_int_eq(p.n_snapshots, 3); /* failures leave p alone */
    ck_assert_int_eq(ld_langevin_set_snapshots(&p, ""), 0);
    ck_assert_int_eq(p.n_snapshots, 0);

    ld_langevin_params_t b = params(0.01f, 0.005f, 10, "10");
    b.snapshots[0] = 11;
    ld_expect_err(ld_langevin_validate(&b), LD_ERANGE);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "snapshots[0]"));
    b = params(0.01f, 0.005f, 10, "4,6");
    b.snapshots[1] = 4;
    ld_expect_err(ld_langevin_validate(&b), LD_ERANGE);
    b = params(0.0f, 0.005f, 10, "");
    ld_expect_err(ld_langevin_validate(&b), LD_ERANGE);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "step_size"));
    b = params(NAN, 0.005f, 10, "");
    ld_expect_err(ld_langevin_validate(&b), LD_ERANGE);
    b = params(0.01f, -1.0f, 10, "");
    ld_expect_err(ld_langevin_validate(&b), LD_ERANGE);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "noise"));
    b = params(0.01f, 0.0f, 0, "");
    ld_expect_err(ld_langevin_validate(&b), LD_ERANGE);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "steps"));
}
END_TEST

START_TEST(zero_model_steps_are_clamped_noise)
{
    /* With all parameters 0 the gradient is 0, so each step is exactly
     * x <- clamp(x + sqrt(eta) sigma z_k, -1, 1) with z_k from ld_noise_fill. */
    fixture_t f = make_fixture(16, "4,6,8", 2, 1);
    memset(ld_ebm_params(f.m), 0, ld_ebm_numel(f.m) * sizeof(float));
    ld_ebm_ws_t *ws = make_ws(&f, 2, 2);
    ld_langevin_params_t p = params(0.04f, 3.0f, 3, "0,3");
    float *want = malloc(2 * f.per * sizeof(float)), *z = malloc(f.per * sizeof(float));
    float *snaps = malloc(2 * 2 * f.per * sizeof(float)), energy[4];
    memcpy(want, f.image, 2 * f.per * sizeof(float));
    float b = sqrtf(0.04f) * 3.0f;
    int clamped = 0;
    for (int k = 0; k < 3; k++)
        for (int c = 0; c < 2; c++) {
            ld_noise_fill(p.seed, f.chain[c], (uint32_t)k, z, f.per);
            for (size_t i = 0; i < f.per; i++) {
                float v = (want[c * f.per + i] - 0.02f * 0.0f) + b * z[i];
                clamped += v > 1.0f || v < -1.0f;
                want[c * f.per + i] = v < -1.0f ? -1.0f : v > 1.0f ? 1.0f : v;
            }
        }
    ck_assert_int_gt(clamped, 100); /* the clamp is exercised */
    float *start = malloc(2 * f.per * sizeof(float));
    memcpy(start, f.image, 2 * f.per * sizeof(float));
    ck_assert_int_eq(ld_langevin_run(f.m, ws, &p, 2, f.image, f.mask, f.target, f.chain, snaps, energy, NULL), 0);
    ck_assert_int_eq(memcmp(f.image, want, 2 * f.per * sizeof(float)), 0);
    ck_assert_int_eq(memcmp(snaps, start, 2 * f.per * sizeof(float)), 0);
    ck_assert_int_eq(memcmp(snaps + 2 * f.per, want, 2 * f.per * sizeof(float)), 0);
    for (int i = 0; i < 4; i++)
        ck_assert_float_eq(energy[i], 0.0f);
    free(want);
    free(z);
    free(snaps);
    free(start);
    ld_ebm_ws_destroy(&ws);
    free_fixture(&f);
}
END_TEST

START_TEST(noiseless_small_steps_descend)
{
    fixture_t f = make_fixture(16, "8,16,16", 6, 2);
    ld_ebm_ws_t *ws = make_ws(&f, 6, 2);
    ld_langevin_params_t p = params(1e-3f, 0.0f, 20, "0,10,20");
    float *snaps = malloc(3 * 6 * f.per * sizeof(float)), energy[18];
    uint8_t *mask0 = malloc(6 * f.q);
    memcpy(mask0, f.mask, 6 * f.q);
    ck_assert_int_eq(ld_langevin_run(f.m, ws, &p, 6, f.image, f.mask, f.target, f.chain, snaps, energy, NULL), 0);
    ck_assert_int_eq(memcmp(mask0, f.mask, 6 * f.q), 0);
    double mean[3] = { 0, 0, 0 };
    for (int s = 0; s < 3; s++)
        for (int c = 0; c < 6; c++)
            mean[s] += energy[s * 6 + c] / 6;
    ck_assert_msg(mean[1] < mean[0] && mean[2] < mean[1], "mean energies %g %g %g", mean[0], mean[1], mean[2]);
    for (int c = 0; c < 6; c++) /* each chain too: gradient descent with a small step */
        ck_assert_msg(energy[12 + c] < energy[c], "chain %d: %g -> %g", c, energy[c], energy[12 + c]);
    /* the snapshot energies are the energies of the snapshot images */
    float e[6];
    ld_ebm_ws_t *other = make_ws(&f, 6, 1);
    for (int s = 0; s < 3; s++) {
        ck_assert_int_eq(ld_ebm_energy(f.m, other, 6, snaps + (size_t)s * 6 * f.per, f.mask, f.target, e, NULL), 0);
        ck_assert_int_eq(memcmp(e, energy + s * 6, sizeof e), 0);
    }
    ck_assert_int_eq(memcmp(snaps + 2 * 6 * f.per, f.image, 6 * f.per * sizeof(float)), 0);
    free(snaps);
    free(mask0);
    ld_ebm_ws_destroy(&ws);
    ld_ebm_ws_destroy(&other);
    free_fixture(&f);
}
END_TEST

/* One noise-free step is exactly clamp(x - (eta/2) dE/dx, -1, 1) with the
 * gradient ld_ebm_energy gives: pins the update's coefficient and sign. The
 * step is large enough that some pixels hit the clamp and most do not. */
START_TEST(one_noiseless_step_is_half_eta_gradient_descent)
{
    fixture_t f = make_fixture(16, "8,16,16", 4, 5);
    ld_ebm_ws_t *ws = make_ws(&f, 4, 1);
    size_t total = 4 * f.per;
    float *grad = malloc(total * sizeof(float)), *want = malloc(total * sizeof(float)), e[4];
    ck_assert_int_eq(ld_ebm_energy(f.m, ws, 4, f.image, f.mask, f.target, e, grad), 0);
    double gmax = 0;
    for (size_t i = 0; i < total; i++)
        gmax = fmax(gmax, fabs(grad[i]));
    ck_assert(gmax > 0);
    const float eta = (float)(0.5 / gmax); /* the largest move is 0.25: some pixels near +-0.8 clamp */
    int clamped = 0, moved = 0;
    for (size_t i = 0; i < total; i++) {
        float v = f.image[i] - 0.5f * eta * grad[i];
        clamped += v > 1.0f || v < -1.0f;
        want[i] = v > 1.0f ? 1.0f : v < -1.0f ? -1.0f : v;
        moved += want[i] != f.image[i];
    }
    ck_assert_msg(moved > (int)(total / 2), "only %d of %zu pixels move", moved, total);
    ck_assert_msg(clamped > 0, "no pixel reaches the clamp: the test does not cover it");
    ld_langevin_params_t p = params(eta, 0.0f, 1, "1");
    ck_assert_int_eq(ld_langevin_run(f.m, ws, &p, 4, f.image, f.mask, f.target, f.chain, NULL, NULL, NULL), 0);
    for (size_t i = 0; i < total; i++)
        ck_assert_msg(fabsf(f.image[i] - want[i]) <= 1e-6f, "pixel %zu: %.9g, want %.9g", i, f.image[i], want[i]);
    free(grad);
    free(want);
    ld_ebm_ws_destroy(&ws);
    free_fixture(&f);
}
END_TEST

START_TEST(large_steps_stay_in_range)
{
    fixture_t f = make_fixture(16, "4,6,8", 3, 3);
    ld_ebm_ws_t *ws = make_ws(&f, 3, 2);
    ld_langevin_params_t p = params(50.0f, 2.0f, 4, "");
    ck_assert_int_eq(ld_langevin_run(f.m, ws, &p, 3, f.image, f.mask, f.target, f.chain, NULL, NULL, NULL), 0);
    int at_bounds = 0;
    for (size_t i = 0; i < 3 * f.per; i++) {
        ck_assert_msg(f.image[i] >= -1.0f && f.image[i] <= 1.0f, "x[%zu] = %g", i, f.image[i]);
        at_bounds += fabsf(f.image[i]) == 1.0f;
    }
    ck_assert_int_gt(at_bounds, 0);
    ld_ebm_ws_destroy(&ws);
    free_fixture(&f);
}
END_TEST

/* Chain 5 alone, with 1 and 2 threads, and inside batches with other chains:
 * identical snapshots and energies, bit for bit. */
START_TEST(chains_bit_identical_across_batches_and_threads)
{
    fixture_t f = make_fixture(128, "16,32,32", 6, 4); /* multi-band and single-band layers (see test_ebm) */
    ld_langevin_params_t p = params(0.01f, 0.005f, 4, "0,2,4");
    size_t per = f.per, q = f.q;
    float *ref_snap = malloc(3 * per * sizeof(float)), ref_e[3];
    float *x = malloc(6 * per * sizeof(float)), *snap = malloc(3 * 6 * per * sizeof(float)), e[18];
    for (int threads = 1; threads <= 2; threads++) {
        ld_ebm_ws_t *ws = make_ws(&f, 6, threads);
        /* alone */
        memcpy(x, f.image + 5 * per, per * sizeof(float));
        ck_assert_int_eq(ld_langevin_run(f.m, ws, &p, 1, x, f.mask + 5 * q, f.target + 5, f.chain + 5, snap, e, NULL),
                         0);
        if (threads == 1) {
            memcpy(ref_snap, snap, 3 * per * sizeof(float));
            memcpy(ref_e, e, sizeof ref_e);
        } else {
            ck_assert_int_eq(memcmp(snap, ref_snap, 3 * per * sizeof(float)), 0);
            ck_assert_int_eq(memcmp(e, ref_e, sizeof ref_e), 0);
        }
        /* last of a batch of 4 (chains 2..5), and first of a batch of 6 in reverse order */
        memcpy(x, f.image + 2 * per, 4 * per * sizeof(float));
        ck_assert_int_eq(
            ld_langevin_run(f.m, ws, &p, 4, x, f.mask + 2 * q, f.target + 2, f.chain + 2, snap, e, NULL), 0);
        for (int s = 0; s < 3; s++) {
            ck_assert_int_eq(memcmp(snap + ((size_t)s * 4 + 3) * per, ref_snap + s * per, per * sizeof(float)), 0);
            ck_assert(e[s * 4 + 3] == ref_e[s]);
        }
        fixture_t r = make_fixture(128, "16,32,32", 6, 4);
        for (int c = 0; c < 6; c++) {
            memcpy(r.image + c * per, f.image + (5 - c) * per, per * sizeof(float));
            memcpy(r.mask + c * q, f.mask + (5 - c) * q, q);
            r.target[c] = f.target[5 - c];
            r.chain[c] = f.chain[5 - c];
        }
        ck_assert_int_eq(ld_langevin_run(r.m, ws, &p, 6, r.image, r.mask, r.target, r.chain, snap, e, NULL), 0);
        for (int s = 0; s < 3; s++) {
            ck_assert_int_eq(memcmp(snap + (size_t)s * 6 * per, ref_snap + s * per, per * sizeof(float)), 0);
            ck_assert(e[s * 6] == ref_e[s]);
        }
        free_fixture(&r);
        ld_ebm_ws_destroy(&ws);
    }
    /* and a different chain id gives a different trajectory */
    ld_ebm_ws_t *ws = make_ws(&f, 1, 1);
    uint64_t other = 99;
    memcpy(x, f.image + 5 * per, per * sizeof(float));
    ck_assert_int_eq(ld_langevin_run(f.m, ws, &p, 1, x, f.mask + 5 * q, f.target + 5, &other, snap, e, NULL), 0);
    ck_assert_int_ne(memcmp(snap + 2 * per, ref_snap + 2 * per, per * sizeof(float)), 0);
    ld_ebm_ws_destroy(&ws);
    free(ref_snap);
    free(x);
    free(snap);
    free_fixture(&f);
}
END_TEST

START_TEST(non_finite_energy_stops_run)
{
    fixture_t f = make_fixture(16, "4,6,8", 2, 5);
    ld_ebm_ws_t *ws = make_ws(&f, 2, 1);
    ld_langevin_params_t p = params(0.01f, 0.01f, 3, "");
    size_t head_bias;
    ck_assert(ld_ebm_find_tensor(f.m, "head.bias", &head_bias));
    ld_ebm_params(f.m)[ld_ebm_tensor(f.m, head_bias)->offset] = INFINITY;
    ck_assert_int_eq(ld_langevin_run(f.m, ws, &p, 2, f.image, f.mask, f.target, f.chain, NULL, NULL, NULL),
                     LD_ENUMERIC);
    ck_assert_msg(strstr(ld_errdetail(), "chain 1000") && strstr(ld_errdetail(), "step 0"), "%s", ld_errdetail());
    /* a NaN pixel in chain 1001 */
    ld_ebm_init_random(f.m, 5);
    f.image[f.per + 10] = NAN;
    ck_assert_int_eq(ld_langevin_run(f.m, ws, &p, 2, f.image, f.mask, f.target, f.chain, NULL, NULL, NULL),
                     LD_ENUMERIC);
    ck_assert_msg(strstr(ld_errdetail(), "chain 1001"), "%s", ld_errdetail());
    /* bad inputs are the engine's errors */
    f.image[f.per + 10] = 0.0f;
    f.target[1] = 7;
    ld_expect_err(ld_langevin_run(f.m, ws, &p, 2, f.image, f.mask, f.target, f.chain, NULL, NULL, NULL), LD_EINVAL);
    ld_expect_err(ld_langevin_run(f.m, ws, &p, 3, f.image, f.mask, f.target, f.chain, NULL, NULL, NULL), LD_EINVAL);
    p.steps = 0;
    ld_expect_err(ld_langevin_run(f.m, ws, &p, 2, f.image, f.mask, f.target, f.chain, NULL, NULL, NULL), LD_ERANGE);
    ld_ebm_ws_destroy(&ws);
    free_fixture(&f);
}
END_TEST

typedef struct {
    atomic_int *flag;
    int delay_ms;
} canceler_t;

static void *cancel_later(void *arg)
{
    canceler_t *c = arg;
    struct timespec ts = { c->delay_ms / 1000, (long)(c->delay_ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
    atomic_store(c->flag, 1);
    return NULL;
}

START_TEST(cancel_stops_between_steps)
{
    fixture_t f = make_fixture(16, "4,6,8", 2, 6);
    ld_ebm_ws_t *ws = make_ws(&f, 2, 2);
    atomic_int flag = 1;
    float *start = malloc(2 * f.per * sizeof(float));
    memcpy(start, f.image, 2 * f.per * sizeof(float));
    ld_langevin_params_t p = params(0.01f, 0.01f, 5, "");
    ck_assert_int_eq(ld_langevin_run(f.m, ws, &p, 2, f.image, f.mask, f.target, f.chain, NULL, NULL, &flag),
                     LD_ECANCELED);
    ck_assert_int_eq(memcmp(start, f.image, 2 * f.per * sizeof(float)), 0);
    /* from another thread, in the middle of a run that would take hours */
    atomic_store(&flag, 0);
    p.steps = 10000000;
    canceler_t c = { &flag, 50 };
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, cancel_later, &c), 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ck_assert_int_eq(ld_langevin_run(f.m, ws, &p, 2, f.image, f.mask, f.target, f.chain, NULL, NULL, &flag),
                     LD_ECANCELED);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    pthread_join(th, NULL);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "canceled"));
    ck_assert_int_ne(memcmp(start, f.image, 2 * f.per * sizeof(float)), 0); /* some steps ran */
    ck_assert_double_lt((double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec), 20.0);
    free(start);
    ld_ebm_ws_destroy(&ws);
    free_fixture(&f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("langevin");
    TCase *tc = ld_tcase("langevin", 60);
    tcase_add_test(tc, params_validated);
    tcase_add_test(tc, zero_model_steps_are_clamped_noise);
    tcase_add_test(tc, noiseless_small_steps_descend);
    tcase_add_test(tc, one_noiseless_step_is_half_eta_gradient_descent);
    tcase_add_test(tc, large_steps_stay_in_range);
    tcase_add_test(tc, chains_bit_identical_across_batches_and_threads);
    tcase_add_test(tc, non_finite_energy_stops_run);
    tcase_add_test(tc, cancel_stops_between_steps);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
