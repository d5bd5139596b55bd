/* Adam against PyTorch's torch.optim.Adam on the same gradients, exact
 * continuation from saved (m, v, t), parameter validation, the guarded
 * step's gradient norm and divergence stops, and the EMA. */
#include "testutil.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ld_adam.h"
#include "ld_error.h"
#include "ld_rng.h"

#define N_PARAMS 257
#define N_STEPS 25

/* Gradients over several orders of magnitude (so eps and both moments
 * matter), with sign flips between steps. */
static void make_problem(float *p0, float *grads)
{
    ld_rng_t r;
    ld_rng_init(&r, 42, 0);
    for (int i = 0; i < N_PARAMS; i++)
        p0[i] = (float)ld_rng_normal(&r);
    for (int s = 0; s < N_STEPS; s++)
        for (int i = 0; i < N_PARAMS; i++)
            grads[s * N_PARAMS + i] = (float)(ld_rng_normal(&r) * pow(10.0, (double)(i % 7) - 4.0));
}

static void run_adam(const ld_adam_params_t *ap, const float *p0, const float *grads, int steps, float *out)
{
    ld_adam_t *adam;
    ck_assert_int_eq(ld_adam_new(N_PARAMS, ap, &adam), 0);
    memcpy(out, p0, N_PARAMS * sizeof *out);
    for (int s = 0; s < steps; s++)
        ld_adam_step(adam, out, grads + s * N_PARAMS);
    ck_assert_uint_eq(ld_adam_steps(adam), (uint64_t)steps);
    ld_adam_destroy(&adam);
    ck_assert_ptr_null(adam);
}

static const char *torch_script =
    "import sys, numpy as np, torch\n"
    "d = sys.argv[1]; n, steps = int(sys.argv[2]), int(sys.argv[3])\n"
    "p0 = np.fromfile(d + '/p0.f32', dtype=np.float32)\n"
    "g = np.fromfile(d + '/grads.f32', dtype=np.float32).reshape(steps, n)\n"
    "p = torch.nn.Parameter(torch.from_numpy(p0.copy()))\n"
    "opt = torch.optim.Adam([p], lr=1e-3, betas=(0.5, 0.999), eps=1e-8)\n"
    "for s in range(steps):\n"
    "    p.grad = torch.from_numpy(g[s].copy()); opt.step()\n"
    "p.detach().numpy().astype(np.float32).tofile(d + '/torch.f32')\n";

START_TEST(matches_pytorch)
{
    const char *py = getenv("LD_PY") ? getenv("LD_PY") : "/usr/bin/python3";
    if (ld_test_system("%s -c 'import torch, numpy' >/dev/null 2>&1", py) != 0)
        LD_SKIP("%s has no torch/numpy", py);
    static float p0[N_PARAMS], grads[N_STEPS * N_PARAMS], ours[N_PARAMS], theirs[N_PARAMS];
    make_problem(p0, grads);
    const ld_adam_params_t ap = { .lr = 1e-3, .beta1 = 0.5, .beta2 = 0.999, .eps = 1e-8 };
    run_adam(&ap, p0, grads, N_STEPS, ours);

    char *dir = ld_test_tmpdir(), *script = ld_test_path(dir, "adam.py");
    char *f_p0 = ld_test_path(dir, "p0.f32"), *f_g = ld_test_path(dir, "grads.f32");
    char *f_out = ld_test_path(dir, "torch.f32");
    ld_test_write_file(script, torch_script, strlen(torch_script));
    ld_test_write_file(f_p0, p0, sizeof p0);
    ld_test_write_file(f_g, grads, sizeof grads);
    ck_assert_int_eq(ld_test_system("%s %s %s %d %d", py, script, dir, N_PARAMS, N_STEPS), 0);
    FILE *f = fopen(f_out, "rb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fread(theirs, sizeof(float), N_PARAMS, f), N_PARAMS);
    fclose(f);

    /* Each step moves a parameter by about lr = 1e-3, so a wrong update
     * (bias correction, eps placement, moment order) is off by ~1e-4 or
     * more; float rounding of parameters ~1 over 25 steps stays ~1e-6. */
    double moved = 0;
    for (int i = 0; i < N_PARAMS; i++)
        moved += fabs((double)theirs[i] - p0[i]) / N_PARAMS;
    ck_assert_msg(moved > 2e-3, "reference barely moved (%g)", moved);
    double err = ld_test_max_rel_err(ours, theirs, N_PARAMS, 1.0);
    ck_assert_msg(err < 3e-6, "Adam differs from PyTorch: max err %g (relative to max(|p|, 1))", err);
    ld_test_rmtree(dir);
    free(dir), free(script), free(f_p0), free(f_g), free(f_out);
}
END_TEST

START_TEST(restored_state_continues_exactly)
{
    static float p0[N_PARAMS], grads[N_STEPS * N_PARAMS], straight[N_PARAMS], split[N_PARAMS];
    make_problem(p0, grads);
    const ld_adam_params_t ap = { .lr = 3e-3, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8 };
    run_adam(&ap, p0, grads, N_STEPS, straight);

    const int half = N_STEPS / 2;
    ld_adam_t *a, *b;
    ck_assert_int_eq(ld_adam_new(N_PARAMS, &ap, &a), 0);
    memcpy(split, p0, sizeof split);
    for (int s = 0; s < half; s++)
        ld_adam_step(a, split, grads + s * N_PARAMS);
    ck_assert_int_eq(ld_adam_new(N_PARAMS, &ap, &b), 0);
    memcpy(ld_adam_m(b), ld_adam_m(a), N_PARAMS * sizeof(float));
    memcpy(ld_adam_v(b), ld_adam_v(a), N_PARAMS * sizeof(float));
    ld_adam_set_steps(b, ld_adam_steps(a));
    ld_adam_destroy(&a);
    for (int s = half; s < N_STEPS; s++)
        ld_adam_step(b, split, grads + s * N_PARAMS);
    ck_assert_uint_eq(ld_adam_size(b), N_PARAMS);
    ld_adam_destroy(&b);
    ck_assert_int_eq(memcmp(straight, split, sizeof split), 0);
}
END_TEST

START_TEST(rejects_bad_params)
{
    ld_adam_t *a = (ld_adam_t *)1;
    const ld_adam_params_t good = { .lr = 1e-3, .beta1 = 0.5, .beta2 = 0.999, .eps = 1e-8 };
    ld_adam_params_t p = good;
    p.lr = 0;
    ld_expect_err(ld_adam_new(4, &p, &a), LD_ERANGE);
    ck_assert_ptr_null(a);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "learning rate"));
    p = good;
    p.beta2 = 1;
    ld_expect_err(ld_adam_validate(&p), LD_ERANGE);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "beta2"));
    p = good;
    p.beta1 = -0.1;
    ld_expect_err(ld_adam_validate(&p), LD_ERANGE);
    p = good;
    p.eps = NAN;
    ld_expect_err(ld_adam_validate(&p), LD_ERANGE);
    ck_assert_int_eq(ld_adam_validate(&good), 0);
}
END_TEST

/* The guarded step: the gradient's L2 norm, the very update of
 * ld_adam_step, a stop with nothing changed on a NaN or Inf gradient, and a
 * stop after an update that leaves a weight NaN or Inf. */
START_TEST(checked_step_measures_and_stops)
{
    static float p0[N_PARAMS], grads[N_STEPS * N_PARAMS];
    make_problem(p0, grads);
    const ld_adam_params_t ap = { .lr = 1e-3, .beta1 = 0.5, .beta2 = 0.999, .eps = 1e-8 };
    ld_adam_t *checked, *plain;
    ck_assert_int_eq(ld_adam_new(N_PARAMS, &ap, &checked), 0);
    ck_assert_int_eq(ld_adam_new(N_PARAMS, &ap, &plain), 0);
    float pc[N_PARAMS], pp[N_PARAMS], g[N_PARAMS] = { 0 };
    memcpy(pc, p0, sizeof pc);
    memcpy(pp, p0, sizeof pp);
    /* sqrt(3^2 + 4^2 + 12^2) = 13, with the last element counted */
    g[0] = 3, g[N_PARAMS / 2] = -4, g[N_PARAMS - 1] = 12;
    double norm = -1;
    ck_assert_int_eq(ld_adam_step_checked(checked, pc, g, &norm), 0);
    ck_assert(norm == 13.0);
    ld_adam_step(plain, pp, g);
    /* gradients over seven orders of magnitude: summed in double */
    long double sq = 0;
    for (int i = 0; i < N_PARAMS; i++)
        sq += (long double)grads[i] * grads[i];
    ck_assert_int_eq(ld_adam_step_checked(checked, pc, grads, &norm), 0);
    ck_assert_double_eq_tol(norm, (double)sqrtl(sq), 1e-12 * (double)sqrtl(sq));
    ld_adam_step(plain, pp, grads);
    ck_assert_int_eq(memcmp(pc, pp, sizeof pc), 0);
    ck_assert_uint_eq(ld_adam_steps(checked), 2);

    /* a NaN or an Inf anywhere in the gradient: refused, nothing updated */
    static float m[N_PARAMS], v[N_PARAMS];
    memcpy(m, ld_adam_m(checked), sizeof m);
    memcpy(v, ld_adam_v(checked), sizeof v);
    const float bad[2] = { NAN, -INFINITY };
    for (int k = 0; k < 2; k++) {
        g[N_PARAMS - 1] = bad[k];
        ld_expect_err(ld_adam_step_checked(checked, pc, g, &norm), LD_ENUMERIC);
        ck_assert(!isfinite(norm));
        ck_assert_ptr_nonnull(strstr(ld_errdetail(), "gradient is not finite"));
        ck_assert_int_eq(memcmp(pc, pp, sizeof pc), 0);
        ck_assert_int_eq(memcmp(ld_adam_m(checked), m, sizeof m), 0);
        ck_assert_int_eq(memcmp(ld_adam_v(checked), v, sizeof v), 0);
        ck_assert_uint_eq(ld_adam_steps(checked), 2);
    }
    /* a finite gradient but a weight that is NaN after the update */
    g[N_PARAMS - 1] = 12;
    pc[N_PARAMS - 1] = NAN;
    ld_expect_err(ld_adam_step_checked(checked, pc, g, &norm), LD_ENUMERIC);
    ck_assert(norm == 13.0);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "weight became NaN/Inf"));
    ck_assert_uint_eq(ld_adam_steps(checked), 3);
    ld_adam_destroy(&checked);
    ld_adam_destroy(&plain);

    /* a weight that overflows to Inf in the update itself */
    const ld_adam_params_t huge = { .lr = 1e38, .beta1 = 0.5, .beta2 = 0.999, .eps = 1e-8 };
    ck_assert_int_eq(ld_adam_new(2, &huge, &checked), 0);
    float w[2] = { 0, FLT_MAX };
    ld_expect_err(ld_adam_step_checked(checked, w, (const float[2]){ 0, -1 }, &norm), LD_ENUMERIC);
    ck_assert(norm == 1.0);
    ck_assert(isinf(w[1]));
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "weight became NaN/Inf"));
    ld_adam_destroy(&checked);
}
END_TEST

START_TEST(ema_tracks_weights)
{
    float ema[3] = { 0, 1, -2 }, w[3] = { 1, 1, 2 };
    ld_ema_update(ema, w, 3, 0.75);
    ck_assert_float_eq_tol(ema[0], 0.25f, 1e-7f);
    ck_assert_float_eq_tol(ema[1], 1.0f, 1e-7f);
    ck_assert_float_eq_tol(ema[2], -1.0f, 1e-7f);
    for (int i = 0; i < 200; i++)
        ld_ema_update(ema, w, 3, 0.9);
    for (int i = 0; i < 3; i++)
        ck_assert_float_eq_tol(ema[i], w[i], 1e-6f);
    ld_ema_update(ema, (const float[3]){ 5, 5, 5 }, 3, 0);
    ck_assert_float_eq(ema[1], 5.0f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("adam");
    TCase *tc = ld_tcase("adam", 60);
    tcase_add_test(tc, matches_pytorch);
    tcase_add_test(tc, restored_state_continues_exactly);
    tcase_add_test(tc, rejects_bad_params);
    tcase_add_test(tc, checked_step_measures_and_stops);
    tcase_add_test(tc, ema_tracks_weights);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
