/* The energy network's gradients on images larger than 8 px, where the
 * convolutions take the F(4x4,3x3) Winograd path (maps of
 * LD_CN_WINO4_MIN_SIZE px and more), with partial border tiles, several
 * tile-row bands, and 1 or 2 threads, against central finite differences of
 * the engine's own energy (no PyTorch needed). test_ebm.c checks 8 px images,
 * where only F(2x2,3x3) runs.
 *
 * Checked along directions rather than entry by entry (a float energy summed
 * over thousands of pixels leaves finite differences of single entries in
 * rounding noise): <dE/dx, u> for u over the whole image, over the last rows
 * and columns only (the partial border tiles) and over a block of interior tiles; and
 * <dF/dtheta, u> for F = sum_i coef_i E_i along a random direction in each
 * weight tensor of each block. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ld_convnet.h"
#include "ld_ebm.h"
#include "ld_error.h"
#include "ld_rng.h"

enum { N = 2, C = 3, K = 2 };

typedef struct {
    int size;
    const char *widths;
} config_t;

/* 36: convs at 36 (F4, 9 whole tiles) and 18 (F4, a partial border tile);
 * 72: convs at 72, 36 and 18 (F4; several bands on one thread). */
static const config_t configs[] = { { 36, "4,6,8" }, { 72, "4,4,6,8" } };

/* Runs check on every config with 1 and 2 threads. */
static void on_every_config(void (*check)(const config_t *cfg, int threads))
{
    for (size_t c = 0; c < sizeof configs / sizeof configs[0]; c++)
        for (int threads = 1; threads <= 2; threads++)
            check(&configs[c], threads);
}

typedef struct {
    ld_ebm_t *m;
    ld_ebm_ws_t *ws;
    int S;
    size_t per; /* floats of one image */
    float *x, *grad, *energy;
    uint8_t *mask;
    int32_t target[N];
} net_t;

static net_t net_new(const config_t *cfg, int threads, uint64_t seed)
{
    net_t t;
    memset(&t, 0, sizeof t);
    ld_ebm_arch_t a;
    memset(&a, 0, sizeof a);
    a.image_channels = C;
    a.mask_classes = K;
    a.size = cfg->size;
    ck_assert_int_eq(ld_ebm_arch_set_widths(&a, cfg->widths), 0);
    ck_assert_int_eq(ld_ebm_arch_set_domains(&a, "P,Q"), 0);
    ck_assert_msg(ld_ebm_new(&a, &t.m) == 0, "%s", ld_errdetail());
    ld_ebm_init_random(t.m, seed);
    ck_assert_msg(ld_ebm_ws_new(&a, N, threads, &t.ws) == 0, "%s", ld_errdetail());
    t.S = cfg->size;
    t.per = (size_t)C * t.S * t.S;
    t.x = malloc(N * t.per * sizeof(float));
    t.grad = malloc(N * t.per * sizeof(float));
    t.energy = malloc(N * sizeof(float));
    t.mask = malloc((size_t)N * t.S * t.S);
    ld_rng_t r;
    ld_rng_init(&r, seed, 5);
    for (size_t i = 0; i < N * t.per; i++)
        t.x[i] = (float)(1.6 * ld_rng_uniform(&r) - 0.8);
    for (size_t i = 0; i < (size_t)N * t.S * t.S; i++) /* class blobs of 6 px rows, so both classes occur */
        t.mask[i] = (uint8_t)((i / t.S / 6 + i % t.S / 6) % K);
    for (int s = 0; s < N; s++)
        t.target[s] = s % 2;
    return t;
}

static void net_free(net_t *t)
{
    free(t->x);
    free(t->grad);
    free(t->energy);
    free(t->mask);
    ld_ebm_ws_destroy(&t->ws);
    ld_ebm_destroy(&t->m);
}

/* Energies at x + step * u (u over both images), in out[N]. */
static void energies_at(net_t *t, const float *u, double step, double *out)
{
    float *xs = malloc(N * t->per * sizeof(float));
    for (size_t i = 0; i < N * t->per; i++)
        xs[i] = (float)(t->x[i] + step * u[i]);
    float e[N];
    ck_assert_int_eq(ld_ebm_energy(t->m, t->ws, N, xs, t->mask, t->target, e, NULL), 0);
    for (int s = 0; s < N; s++)
        out[s] = e[s];
    free(xs);
}

/* Where a direction lives: the whole image, the last `edge` rows and
 * columns, or the 12x12 input footprint of 3x3 interior 4x4 output tiles
 * (a 10x10 block, with the 3x3 kernel's halo). */
typedef enum { WHOLE, BORDER, INTERIOR } region_t;

static int in_region(region_t reg, int S, int y, int x)
{
    switch (reg) {
    case WHOLE: return 1;
    case BORDER: return y >= S - 3 || x >= S - 3;
    default: return y >= 7 && y < 19 && x >= 7 && x < 19;
    }
}

static const char *region_name(region_t r)
{
    return r == WHOLE ? "whole image" : r == BORDER ? "border rows and columns" : "interior tiles";
}

static void check_input_gradient(const config_t *cfg, int threads)
{
    net_t t = net_new(cfg, threads, 100 + (uint64_t)cfg->size);
    ck_assert_int_eq(ld_ebm_energy(t.m, t.ws, N, t.x, t.mask, t.target, t.energy, t.grad), 0);
    float *u = malloc(N * t.per * sizeof(float));
    ld_rng_t r;
    ld_rng_init(&r, 7, (uint64_t)cfg->size);
    const double h = 1e-2;
    for (region_t reg = WHOLE; reg <= INTERIOR; reg++) {
        double dot[N] = { 0 }, mag[N] = { 0 };
        for (size_t i = 0; i < N * t.per; i++) {
            int p = (int)(i % ((size_t)t.S * t.S));
            u[i] = in_region(reg, t.S, p / t.S, p % t.S) ? (float)(2.0 * ld_rng_uniform(&r) - 1.0) : 0.0f;
            dot[i / t.per] += (double)u[i] * t.grad[i];
            mag[i / t.per] += fabs((double)u[i] * t.grad[i]);
        }
        double ep[N], em[N];
        energies_at(&t, u, h, ep);
        energies_at(&t, u, -h, em);
        for (int s = 0; s < N; s++) {
            double fd = (ep[s] - em[s]) / (2 * h);
            ck_assert_msg(mag[s] > 1e-3, "S %d, %s: too little gradient there to check (%g)", cfg->size,
                          region_name(reg), mag[s]);
            ck_assert_msg(fabs(fd - dot[s]) <= 2e-3 * mag[s] + 1e-4,
                          "S %d, %d threads, %s, sample %d: <dE/dx, u> = %.6g, finite differences %.6g "
                          "(sum |g u| %.3g)", cfg->size, threads, region_name(reg), s, dot[s], fd, mag[s]);
        }
    }
    free(u);
    net_free(&t);
}

START_TEST(input_gradient_on_large_images)
{
    on_every_config(check_input_gradient);
}
END_TEST

static double weighted(net_t *t, const float *coef)
{
    float e[N];
    ck_assert_int_eq(ld_ebm_energy(t->m, t->ws, N, t->x, t->mask, t->target, e, NULL), 0);
    double f = 0;
    for (int s = 0; s < N; s++)
        f += (double)coef[s] * e[s];
    return f;
}

static void check_weight_gradient(const config_t *cfg, int threads)
{
    net_t t = net_new(cfg, threads, 200 + (uint64_t)cfg->size);
    const float coef[N] = { 1.0f, -0.75f };
    size_t np = ld_ebm_numel(t.m);
    float *g = calloc(np, sizeof(float)), *p = ld_ebm_params(t.m), *p0 = malloc(np * sizeof(float));
    ck_assert_int_eq(ld_ebm_backward_params(t.m, t.ws, N, t.x, t.mask, t.target, coef, NULL, g), 0);
    memcpy(p0, p, np * sizeof(float));
    ld_rng_t r;
    ld_rng_init(&r, 9, (uint64_t)cfg->size);
    const double h = 1e-2;
    int checked = 0;
    for (size_t k = 0; k < ld_ebm_n_tensors(t.m); k++) {
        const ld_ebm_tensor_t *tt = ld_ebm_tensor(t.m, k);
        if (strncmp(tt->name, "blocks.", 7) != 0 || !strstr(tt->name, "conv"))
            continue; /* the 3x3 convolutions: the Winograd paths */
        float *u = malloc(tt->numel * sizeof(float));
        double dot = 0, mag = 0;
        for (size_t i = 0; i < tt->numel; i++) {
            u[i] = (float)(2.0 * ld_rng_uniform(&r) - 1.0);
            dot += (double)u[i] * g[tt->offset + i];
            mag += fabs((double)u[i] * g[tt->offset + i]);
        }
        double f[2];
        for (int sign = 0; sign < 2; sign++) {
            for (size_t i = 0; i < tt->numel; i++)
                p[tt->offset + i] = (float)(p0[tt->offset + i] + (sign ? -h : h) * u[i]);
            f[sign] = weighted(&t, coef);
        }
        memcpy(p + tt->offset, p0 + tt->offset, tt->numel * sizeof(float));
        double fd = (f[0] - f[1]) / (2 * h);
        ck_assert_msg(mag > 0, "%s: no gradient", tt->name);
        ck_assert_msg(fabs(fd - dot) <= 2e-3 * mag + 1e-4,
                      "S %d, %d threads, %s: <dF/dw, u> = %.6g, finite differences %.6g (sum |g u| %.3g)",
                      cfg->size, threads, tt->name, dot, fd, mag);
        checked++;
        free(u);
    }
    ck_assert_int_ge(checked, 4);
    free(g);
    free(p0);
    net_free(&t);
}

START_TEST(weight_gradient_on_large_images)
{
    on_every_config(check_weight_gradient);
}
END_TEST

START_TEST(configs_take_the_f4_path)
{
    /* the premise: every config has a conv map of at least LD_CN_WINO4_MIN_SIZE
     * px that is not a multiple of 4 (a partial F(4x4) border tile) */
    for (size_t c = 0; c < sizeof configs / sizeof configs[0]; c++) {
        int partial = 0;
        for (int side = configs[c].size; side >= LD_CN_WINO4_MIN_SIZE; side /= 2)
            partial |= side % 4 != 0;
        ck_assert_msg(partial, "S %d: no partial F(4x4) tile", configs[c].size);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ebm_large");
    TCase *tc = ld_tcase("finite differences", 300);
    tcase_add_test(tc, configs_take_the_f4_path);
    tcase_add_test(tc, input_gradient_on_large_images);
    tcase_add_test(tc, weight_gradient_on_large_images);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
