/* ld_ebm (and its kernels ld_conv, ld_threadpool): architecture helpers, tensor
 * table, initialisation; every kernel against a naive double-precision
 * reference; the whole network's energy against a naive double forward;
 * gradients to the input and to every weight tensor against central finite
 * differences; bit-identical results across threads and batch
 * compositions; input validation. */
#include "testutil.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ld_conv.h"
#include "ld_ebm.h"
#include "ld_error.h"
#include "ld_threadpool.h"
#include "ld_rng.h"

/* ---------------- fixtures ---------------- */

static ld_ebm_arch_t make_arch(int C, int K, int S, const char *widths, int D)
{
    ld_ebm_arch_t a;
    memset(&a, 0, sizeof a);
    a.image_channels = C;
    a.mask_classes = K;
    a.size = S;
    ck_assert_int_eq(ld_ebm_arch_set_widths(&a, widths), 0);
    static const char *names = "DRIVE,STARE,CHASEDB1,HRF,d4,d5,d6,d7";
    char buf[128];
    snprintf(buf, sizeof buf, "%s", names);
    char *cut = buf;
    for (int i = 0; i < D; i++)
        cut = strchr(cut, ',') + 1;
    cut[-1] = '\0';
    ck_assert_int_eq(ld_ebm_arch_set_domains(&a, buf), 0);
    ck_assert_int_eq(a.n_domains, D);
    return a;
}

static ld_ebm_t *make_model(const ld_ebm_arch_t *a, uint64_t seed)
{
    ld_ebm_t *m = NULL;
    ck_assert_int_eq(ld_ebm_new(a, &m), 0);
    ld_ebm_init_random(m, seed);
    return m;
}

typedef struct {
    int n;
    float *image;
    uint8_t *mask;
    int32_t *target;
    float *energy, *grad;
} batch_t;

static size_t per_image(const ld_ebm_arch_t *a)
{
    return (size_t)a->image_channels * (size_t)a->size * (size_t)a->size;
}

static batch_t make_batch(const ld_ebm_arch_t *a, int n, uint64_t seed)
{
    batch_t b = { n, NULL, NULL, NULL, NULL, NULL };
    size_t per = per_image(a), q = (size_t)a->size * (size_t)a->size;
    b.image = malloc((size_t)n * per * sizeof(float));
    b.grad = malloc((size_t)n * per * sizeof(float));
    b.mask = malloc((size_t)n * q);
    b.target = malloc((size_t)n * sizeof(int32_t));
    b.energy = malloc((size_t)n * sizeof(float));
    ld_rng_t rng;
    ld_rng_init(&rng, seed, 77);
    for (size_t i = 0; i < (size_t)n * per; i++)
        b.image[i] = (float)(2.0 * ld_rng_uniform(&rng) - 1.0);
    /* Blobby masks: class from a coarse pattern, so that every class occurs. */
    for (int s = 0; s < n; s++)
        for (size_t i = 0; i < q; i++)
            b.mask[(size_t)s * q + i] = (uint8_t)ld_rng_below(&rng, (uint32_t)a->mask_classes);
    for (int s = 0; s < n; s++)
        b.target[s] = (int32_t)ld_rng_below(&rng, (uint32_t)a->n_domains);
    return b;
}

static void free_batch(batch_t *b)
{
    free(b->image);
    free(b->mask);
    free(b->target);
    free(b->energy);
    free(b->grad);
}

static ld_ebm_ws_t *make_ws(const ld_ebm_arch_t *a, int max_batch, int threads)
{
    ld_ebm_ws_t *ws = NULL;
    ck_assert_msg(ld_ebm_ws_new(a, max_batch, threads, &ws) == 0, "%s", ld_errdetail());
    return ws;
}

static double frand(ld_rng_t *r) { return 2.0 * ld_rng_uniform(r) - 1.0; }

/* ---------------- naive double-precision reference ---------------- */

static double dsilu_d(double x)
{
    double s = 1.0 / (1.0 + exp(-x));
    return s * (1.0 + x * (1.0 - s));
}

static const float *tensor(const ld_ebm_t *m, const char *name)
{
    size_t i;
    ck_assert_msg(ld_ebm_find_tensor(m, name, &i), "no tensor %s", name);
    return ld_ebm_params_const(m) + ld_ebm_tensor(m, i)->offset;
}

/* The network exactly as documented in ld_ebm.h, in double, loop by loop. */
static double ref_energy(const ld_ebm_t *m, const float *image, const uint8_t *mask, int target)
{
    const ld_ebm_arch_t *a = ld_ebm_arch(m);
    int C = a->image_channels, K = a->mask_classes, S = a->size, L = a->n_blocks;
    int q = S * S;
    double *x = malloc(sizeof(double) * (size_t)(C + K) * (size_t)q);
    for (int c = 0; c < C; c++)
        for (int i = 0; i < q; i++)
            x[c * q + i] = image[c * q + i];
    for (int k = 0; k < K; k++)
        for (int i = 0; i < q; i++)
            x[(C + k) * q + i] = mask[i] == k ? 1.0 : -1.0;
    double *h = malloc(sizeof(double) * (size_t)a->widths[0] * (size_t)q);
    ld_test_ref_conv(x, C + K, S, S, tensor(m, "stem.weight"), tensor(m, "stem.bias"), a->widths[0], 1, h);
    free(x);
    int hw = S;
    char name[64];
    static const char *parts[6] = { "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "skip.weight",
                                     "skip.bias" };
    for (int b = 0; b < L; b++) {
        const float *t[6];
        for (int k = 0; k < 6; k++) {
            snprintf(name, sizeof name, "blocks.%d.%s", b, parts[k]);
            t[k] = tensor(m, name);
        }
        double *out = malloc(sizeof(double) * (size_t)a->widths[b + 1] * (size_t)(hw / 2) * (size_t)(hw / 2));
        ld_test_ref_down(h, a->widths[b], a->widths[b + 1], hw, t, out);
        free(h);
        h = out;
        hw /= 2;
    }
    int wl = a->widths[L];
    const float *hwt = tensor(m, "head.weight"), *emb = tensor(m, "domain_embed.weight") + target * wl;
    double e = tensor(m, "head.bias")[0];
    for (int c = 0; c < wl; c++) {
        double v = 0;
        for (int i = 0; i < hw * hw; i++)
            v += ld_test_silu(h[c * hw * hw + i]);
        e += ((double)hwt[c] + (double)emb[c]) * v;
    }
    free(h);
    return e;
}

/* ---------------- architecture, tensors, init ---------------- */

START_TEST(arch_parsing_and_validation)
{
    ld_ebm_arch_t a = make_arch(3, 2, 64, "32,64,128,128,256", 3);
    ck_assert_int_eq(a.n_blocks, 4);
    ck_assert_int_eq(a.widths[4], 256);
    ck_assert_int_eq(ld_ebm_arch_validate(&a), 0);
    int d = -1;
    ck_assert(ld_ebm_arch_domain(&a, "STARE", &d));
    ck_assert_int_eq(d, 1);
    ck_assert(!ld_ebm_arch_domain(&a, "HRF", &d));
    ck_assert_int_eq(d, 1); /* not found: left as it was */

    ld_ebm_arch_t b = a;
    ld_expect_err(ld_ebm_arch_set_widths(&b, "32,,64"), LD_EINVAL);
    ld_expect_err(ld_ebm_arch_set_widths(&b, "32"), LD_ERANGE);
    ld_expect_err(ld_ebm_arch_set_widths(&b, "32,0"), LD_ERANGE);
    ld_expect_err(ld_ebm_arch_set_widths(&b, "32,64,"), LD_EINVAL);
    ld_expect_err(ld_ebm_arch_set_widths(&b, "1,2,3,4,5,6,7,8,9,10"), LD_ERANGE);
    ld_expect_err(ld_ebm_arch_set_widths(&b, "32, 64"), LD_EINVAL);
    ck_assert_int_eq(b.n_blocks, 4); /* failures leave the architecture alone */
    ld_expect_err(ld_ebm_arch_set_domains(&b, "A,A"), LD_EINVAL);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "twice"));
    ld_expect_err(ld_ebm_arch_set_domains(&b, "A,,B"), LD_EINVAL);
    ld_expect_err(ld_ebm_arch_set_domains(&b, "A B"), LD_EINVAL);
    ck_assert_int_eq(b.n_domains, 3);

    b = a;
    b.size = 40; /* not a multiple of 2^4 */
    ld_expect_err(ld_ebm_arch_validate(&b), LD_ERANGE);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "size"));
    b = a;
    b.mask_classes = 17;
    ld_expect_err(ld_ebm_arch_validate(&b), LD_ERANGE);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "mask_classes"));
    b = a;
    b.image_channels = 0;
    ld_expect_err(ld_ebm_arch_validate(&b), LD_ERANGE);
    b = a;
    b.widths[2] = 0;
    ld_expect_err(ld_ebm_arch_validate(&b), LD_ERANGE);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "widths[2]"));
    b = a;
    strcpy(b.domains[2], "DRIVE");
    ld_expect_err(ld_ebm_arch_validate(&b), LD_EINVAL);
    b = a;
    strcpy(b.domains[1], "bad/name");
    ld_expect_err(ld_ebm_arch_validate(&b), LD_EINVAL);
    b = a;
    b.colour_space = LD_COLOUR_LAB;
    ck_assert_int_eq(ld_ebm_arch_validate(&b), 0);
    ck_assert(ld_ebm_arch_same_shape(&a, &b)); /* one workspace serves both */
    b.image_channels = 1;
    ld_expect_err(ld_ebm_arch_validate(&b), LD_EINVAL);
    ck_assert_str_eq(ld_errdetail(), "architecture: colour space lab needs 3 image channels, not 1");
    b = a;
    b.colour_space = (ld_colour_space_t)2;
    ld_expect_err(ld_ebm_arch_validate(&b), LD_EINVAL);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "colour space 2"));
}
END_TEST

START_TEST(flops_of_reference_config)
{
    /* The lead's figures for the reference network: ~2.43 GFLOP per
     * image-step at S=64, ~9.74 at S=128 (conv FLOPs, forward + backward). */
    ld_ebm_arch_t a = make_arch(3, 2, 64, "32,64,128,128,256", 3);
    double f64 = ld_ebm_arch_flops(&a);
    ck_assert_msg(fabs(f64 - 2.435e9) < 0.005e9, "S=64: %g", f64);
    a.size = 128;
    double f128 = ld_ebm_arch_flops(&a);
    ck_assert_msg(fabs(f128 - 9.74e9) < 0.02e9, "S=128: %g", f128);
}
END_TEST

START_TEST(tensor_table_matches_state_dict)
{
    ld_ebm_arch_t a = make_arch(3, 2, 16, "4,6,8", 3);
    ld_ebm_t *m = make_model(&a, 1);
    static const char *names[] = { "stem.weight", "stem.bias", "blocks.0.conv1.weight", "blocks.0.conv1.bias",
                                   "blocks.0.conv2.weight", "blocks.0.conv2.bias", "blocks.0.skip.weight",
                                   "blocks.0.skip.bias", "blocks.1.conv1.weight", "blocks.1.conv1.bias",
                                   "blocks.1.conv2.weight", "blocks.1.conv2.bias", "blocks.1.skip.weight",
                                   "blocks.1.skip.bias", "head.weight", "head.bias", "domain_embed.weight" };
    static const int64_t shapes[][4] = { { 4, 5, 1, 1 }, { 4 },       { 6, 4, 3, 3 }, { 6 }, { 6, 6, 3, 3 },
                                         { 6 },          { 6, 4, 1, 1 }, { 6 },       { 8, 6, 3, 3 }, { 8 },
                                         { 8, 8, 3, 3 }, { 8 },       { 8, 6, 1, 1 }, { 8 }, { 1, 8 },
                                         { 1 },          { 3, 8 } };
    const ld_cn_params_t *ps = ld_ebm_parameters_const(m);
    ld_test_tensor_table(ps, names, shapes, 17, "blocks.2.conv1.weight");
    ck_assert_uint_eq(ld_ebm_n_tensors(m), 17);
    ck_assert_ptr_eq(ld_ebm_tensor(m, 16), &ps->t[16]);
    ck_assert_ptr_null(ld_ebm_tensor(m, 17));
    size_t found = 0;
    ck_assert(ld_ebm_find_tensor(m, "head.bias", &found));
    ck_assert_uint_eq(found, 15);
    ck_assert(!ld_ebm_find_tensor(m, "blocks.2.conv1.weight", &found));
    ck_assert_uint_eq(found, 15); /* not found: left as it was */
    ck_assert_uint_eq(ld_ebm_numel(m), ps->numel);
    ck_assert_ptr_eq(ld_ebm_params(m), ps->params);
    ld_ebm_destroy(&m);
    ck_assert_ptr_null(m);
}
END_TEST

START_TEST(init_is_seeded_and_pytorch_like)
{
    ld_ebm_arch_t a = make_arch(3, 2, 16, "16,32,64", 4);
    ld_ebm_t *m1 = make_model(&a, 5), *m2 = make_model(&a, 5), *m3 = make_model(&a, 6);
    size_t n = ld_ebm_numel(m1);
    ck_assert_int_eq(memcmp(ld_ebm_params(m1), ld_ebm_params(m2), n * sizeof(float)), 0);
    ck_assert_int_ne(memcmp(ld_ebm_params(m1), ld_ebm_params(m3), n * sizeof(float)), 0);
    for (size_t i = 0; i < ld_ebm_n_tensors(m1); i++) {
        const ld_ebm_tensor_t *t = ld_ebm_tensor(m1, i);
        const float *p = ld_ebm_params(m1) + t->offset;
        double s2 = 0, hi = 0;
        for (size_t k = 0; k < t->numel; k++) {
            s2 += (double)p[k] * p[k];
            hi = fmax(hi, fabs(p[k]));
        }
        double rms = sqrt(s2 / (double)t->numel);
        if (strcmp(t->name, "domain_embed.weight") == 0) {
            ck_assert_msg(fabs(rms - 0.1) < 0.03, "%s rms %g", t->name, rms);
            continue;
        }
        /* weight and bias share the weight's fan_in: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) */
        const ld_ebm_tensor_t *w = t->ndim > 1 ? t : ld_ebm_tensor(m1, i - 1);
        double bound = 1.0 / sqrt((double)(w->numel / (size_t)w->shape[0]));
        ck_assert_msg(hi <= bound, "%s max %g > bound %g", t->name, hi, bound);
        if (t->numel >= 64) /* rms of U(-b, b) is b/sqrt(3) */
            ck_assert_msg(fabs(rms - bound / sqrt(3.0)) < 0.25 * bound / sqrt(3.0), "%s rms %g", t->name, rms);
    }
    ld_ebm_t *c = NULL;
    ck_assert_int_eq(ld_ebm_clone(m1, &c), 0);
    ck_assert_int_eq(memcmp(ld_ebm_params(c), ld_ebm_params(m1), n * sizeof(float)), 0);
    ld_ebm_params(c)[0] += 1.0f;
    ck_assert_float_ne(ld_ebm_params(c)[0], ld_ebm_params(m1)[0]);
    ld_ebm_destroy(&c);
    ld_ebm_destroy(&m1);
    ld_ebm_destroy(&m2);
    ld_ebm_destroy(&m3);
}
END_TEST

/* ---------------- kernels ---------------- */

START_TEST(expf_and_silu_accuracy)
{
    double worst = 0;
    for (double x = -87.0; x <= 88.0; x += 0.0137) {
        double r = fabs((double)ld_expf((float)x) - exp((double)(float)x)) / exp((double)(float)x);
        worst = fmax(worst, r);
    }
    ck_assert_msg(worst < 4e-7, "expf max relative error %g", worst);
    ck_assert(ld_expf(-1000.0f) >= 0.0f && ld_expf(-1000.0f) < 1e-37f);
    ck_assert(isfinite(ld_expf(1000.0f)));
    ck_assert(isnan(ld_expf(NAN)));

    enum { N = 4001 };
    float a[N], s[N], d[N], s2[N], d2[N];
    for (int i = 0; i < N; i++)
        a[i] = (float)(-100.0 + 200.0 * i / (N - 1));
    ld_silu(a, s, d, N);
    ld_silu(a, s2, NULL, N);
    ld_silu(a, NULL, d2, N);
    for (int i = 0; i < N; i++) {
        double x = a[i];
        ck_assert_msg(fabs(s[i] - ld_test_silu(x)) <= 1e-6 * fmax(1.0, fabs(ld_test_silu(x))), "silu(%g) = %g", x,
                      s[i]);
        ck_assert_msg(fabs(d[i] - dsilu_d(x)) <= 1e-6, "silu'(%g) = %g vs %g", x, d[i], dsilu_d(x));
        /* the derivative is the derivative: central differences of silu in double */
        double fd = (ld_test_silu(x + 1e-5) - ld_test_silu(x - 1e-5)) / 2e-5;
        ck_assert_msg(fabs(d[i] - fd) <= 1e-5, "silu'(%g) = %g, finite differences %g", x, d[i], fd);
        ck_assert(s[i] == s2[i] && d[i] == d2[i]);
    }
}
END_TEST

START_TEST(avgpool_and_im2col)
{
    enum { C = 3, H = 6, W = 8 };
    float x[C * H * W], out[C * (H / 2) * (W / 2)];
    double xd[C * H * W], ref[C * (H / 2) * (W / 2)];
    ld_rng_t r;
    ld_rng_init(&r, 3, 0);
    for (int i = 0; i < C * H * W; i++)
        xd[i] = x[i] = (float)frand(&r);
    memset(out, 0, sizeof out);
    ld_avgpool2(x, H, W, 0, C, 0, H / 2, out);
    ld_test_ref_pool(xd, C, H, W, ref);
    for (int i = 0; i < C * (H / 2) * (W / 2); i++)
        ck_assert_msg(fabs(out[i] - ref[i]) < 1e-6, "pool %d", i);

    /* rows 2..5 of the im2col matrix */
    float col[C * 9 * 4 * W];
    ld_im2col3x3(x, C, H, W, 2, 6, col, 4 * W);
    for (int c = 0; c < C; c++)
        for (int k = 0; k < 9; k++)
            for (int y = 2; y < 6; y++)
                for (int xx = 0; xx < W; xx++) {
                    int sy = y + k / 3 - 1, sx = xx + k % 3 - 1;
                    float want = sy < 0 || sy >= H || sx < 0 || sx >= W ? 0.0f : x[(c * H + sy) * W + sx];
                    ck_assert_float_eq(col[(c * 9 + k) * 4 * W + (y - 2) * W + xx], want);
                }
}
END_TEST

/* Runs a Winograd F(m x m, 3x3) conv (transposed: the gradient to the input)
 * of x through the kernels with a plain GEMM loop, in bands of band_rows
 * tile rows, output mode MUL by ones (y itself). */
static void wino_conv(int m, const float *x, const float *w, int cin, int cout, int h, int wd, int transposed,
                      int band_rows, float *y)
{
    int E = ld_wino_elems(m), tw = (wd + m - 1) / m, th = (h + m - 1) / m;
    int in_c = transposed ? cout : cin, out_c = transposed ? cin : cout;
    float *u = malloc(sizeof(float) * (size_t)E * (size_t)cin * (size_t)cout);
    if (transposed)
        ld_wino_weights_t(m, w, cout, cin, 0, cin, u);
    else
        ld_wino_weights(m, w, cout, cin, 0, cout, u);
    size_t maxp = (size_t)band_rows * (size_t)tw;
    float *v = malloc(sizeof(float) * (size_t)E * (size_t)in_c * maxp);
    float *mm = malloc(sizeof(float) * (size_t)E * (size_t)out_c * maxp);
    float *ones = malloc(sizeof(float) * (size_t)out_c * (size_t)h * (size_t)wd);
    for (int i = 0; i < out_c * h * wd; i++)
        ones[i] = 1.0f;
    ld_wino_out_t o = { LD_WINO_OUT_MUL, NULL, y, NULL, ones, NULL };
    for (int ty0 = 0; ty0 < th; ty0 += band_rows) {
        int ty1 = ty0 + band_rows < th ? ty0 + band_rows : th;
        size_t P = (size_t)(ty1 - ty0) * (size_t)tw;
        ld_wino_input(m, x, h, wd, 0, in_c, ty0, ty1, v, (size_t)in_c * P, P);
        for (int e = 0; e < E; e++) {
            const float *ue = u + (size_t)e * (size_t)cin * (size_t)cout; /* [out_c][in_c] */
            for (int oc = 0; oc < out_c; oc++)
                for (size_t p = 0; p < P; p++) {
                    double acc = 0;
                    for (int ic = 0; ic < in_c; ic++)
                        acc += (double)ue[oc * in_c + ic] * v[(size_t)e * in_c * P + (size_t)ic * P + p];
                    mm[(size_t)e * out_c * P + (size_t)oc * P + p] = (float)acc;
                }
        }
        ld_wino_output(m, mm, (size_t)out_c * P, P, h, wd, 0, out_c, ty0, ty1, &o);
    }
    free(u);
    free(v);
    free(mm);
    free(ones);
}

START_TEST(winograd_conv3x3_matches_direct)
{
    /* 6 x 10: F(4x4) has partial border tiles */
    enum { CI = 5, CO = 7, H = 6, W = 10 };
    float x[CI * H * W], w[CO * CI * 9], y[CO * H * W], dy[CO * H * W], dx[CI * H * W];
    double xd[CI * H * W], ref[CO * H * W], dref[CI * H * W];
    ld_rng_t r;
    ld_rng_init(&r, 4, 0);
    for (int i = 0; i < CI * H * W; i++)
        xd[i] = x[i] = (float)frand(&r);
    for (int i = 0; i < CO * CI * 9; i++)
        w[i] = (float)frand(&r);
    for (int i = 0; i < CO * H * W; i++)
        dy[i] = (float)frand(&r);
    ld_test_ref_conv(xd, CI, H, W, w, NULL, CO, 3, ref);
    /* the transposed conv is the adjoint of the conv: the direct adjoint */
    for (int ci = 0; ci < CI; ci++)
        for (int yy = 0; yy < H; yy++)
            for (int xx = 0; xx < W; xx++) {
                double acc = 0;
                for (int co = 0; co < CO; co++)
                    for (int ky = 0; ky < 3; ky++)
                        for (int kx = 0; kx < 3; kx++) {
                            int oy = yy - ky + 1, ox = xx - kx + 1;
                            if (oy >= 0 && oy < H && ox >= 0 && ox < W)
                                acc += (double)w[((co * CI + ci) * 3 + ky) * 3 + kx] * dy[(co * H + oy) * W + ox];
                        }
                dref[(ci * H + yy) * W + xx] = acc;
            }
    for (int m = 2; m <= 4; m += 2)
        for (int band_rows = 1; band_rows <= 3; band_rows++) {
            wino_conv(m, x, w, CI, CO, H, W, 0, band_rows, y);
            for (int i = 0; i < CO * H * W; i++)
                ck_assert_msg(fabs(y[i] - ref[i]) < 3e-4, "F(%d): y[%d] = %g, direct %g", m, i, y[i], ref[i]);
            wino_conv(m, dy, w, CI, CO, H, W, 1, band_rows, dx);
            for (int i = 0; i < CI * H * W; i++)
                ck_assert_msg(fabs(dx[i] - dref[i]) < 3e-4, "F(%d): dx[%d] = %g vs %g", m, i, dx[i], dref[i]);
        }
}
END_TEST

START_TEST(winograd_output_modes)
{
    /* One channel, 2 x 2 tiles. Putting t_p at element e = 0 of tile p and 0
     * elsewhere gives y = t_p at the tile's origin and 0 elsewhere (column 0
     * of A^T is (1, 0, ..)); m = 4 on 6 x 6 also cuts the border tiles. */
    for (int m = 2; m <= 4; m += 2) {
        int H = m == 2 ? 4 : 6, W = H, E = ld_wino_elems(m), P = 4, tw = 2, pw = W / 2;
        float mm[36 * 4] = { 0 }, t[4], bias = 0.25f;
        float out[36], dout[36], pool[9], pool0[9], aux[36];
        for (int p = 0; p < P; p++)
            mm[p] = t[p] = (float)(p + 1) * 0.5f - 1.0f;
        (void)E;
        double val[36];
        for (int yy = 0; yy < H; yy++)
            for (int xx = 0; xx < W; xx++)
                val[yy * W + xx] = yy % m == 0 && xx % m == 0 ? t[(yy / m) * tw + xx / m] : 0.0;
        ld_wino_out_t silu = { LD_WINO_OUT_SILU, &bias, out, dout, NULL, NULL };
        ld_wino_output(m, mm, (size_t)P, (size_t)P, H, W, 0, 1, 0, 2, &silu);
        for (int i = 0; i < H * W; i++)
            ck_assert_msg(fabs(out[i] - ld_test_silu(val[i] + bias)) < 1e-6 &&
                              fabs(dout[i] - dsilu_d(val[i] + bias)) < 1e-6,
                          "F(%d) silu at %d", m, i);
        for (int i = 0; i < pw * pw; i++)
            pool[i] = pool0[i] = (float)i;
        ld_wino_out_t res = { LD_WINO_OUT_SILU_POOL_RES, &bias, NULL, dout, NULL, pool };
        ld_wino_output(m, mm, (size_t)P, (size_t)P, H, W, 0, 1, 0, 2, &res);
        for (int q = 0; q < pw * pw; q++) {
            int y0 = 2 * (q / pw), x0 = 2 * (q % pw);
            double mean = 0;
            for (int k = 0; k < 4; k++)
                mean += ld_test_silu(val[(y0 + k / 2) * W + x0 + k % 2] + bias) / 4;
            ck_assert_msg(fabs(pool[q] - (mean + pool0[q]) / sqrt(2.0)) < 1e-6, "F(%d) pool[%d] = %g", m, q, pool[q]);
        }
        ld_wino_out_t add = { LD_WINO_OUT_ADD_UNPOOL, NULL, aux, NULL, pool0, NULL };
        ld_wino_output(m, mm, (size_t)P, (size_t)P, H, W, 0, 1, 0, 2, &add);
        for (int i = 0; i < H * W; i++)
            ck_assert_float_eq_tol(aux[i], val[i] + pool0[(i / W / 2) * pw + (i % W) / 2] / 4, 1e-6);
    }
}
END_TEST

/* ---------------- whole network ---------------- */

START_TEST(energy_matches_naive_reference)
{
    static const struct {
        int C, K, S, D;
        const char *widths;
    } cfg[] = { { 3, 2, 16, 3, "4,6,8" }, { 1, 4, 8, 2, "5,7,3,9" }, { 4, 1, 16, 1, "8,16" } };
    for (size_t k = 0; k < sizeof cfg / sizeof cfg[0]; k++) {
        ld_ebm_arch_t a = make_arch(cfg[k].C, cfg[k].K, cfg[k].S, cfg[k].widths, cfg[k].D);
        ld_ebm_t *m = make_model(&a, 10 + k);
        ld_ebm_ws_t *ws = make_ws(&a, 3, 2);
        batch_t b = make_batch(&a, 3, 20 + k);
        ck_assert_int_eq(ld_ebm_energy(m, ws, 3, b.image, b.mask, b.target, b.energy, NULL), 0);
        size_t per = per_image(&a), q = (size_t)a.size * (size_t)a.size;
        for (int i = 0; i < 3; i++) {
            double want = ref_energy(m, b.image + i * per, b.mask + i * q, b.target[i]);
            ck_assert_msg(fabs(b.energy[i] - want) <= 1e-5 * fmax(1.0, fabs(want)), "config %zu sample %d: %.8g vs %.8g",
                          k, i, b.energy[i], want);
        }
        free_batch(&b);
        ld_ebm_ws_destroy(&ws);
        ck_assert_ptr_null(ws);
        ld_ebm_destroy(&m);
    }
}
END_TEST

START_TEST(zero_model_energy_is_head_bias)
{
    ld_ebm_arch_t a = make_arch(3, 2, 16, "4,6,8", 3);
    ld_ebm_t *m = NULL;
    ck_assert_int_eq(ld_ebm_new(&a, &m), 0);
    size_t head_bias;
    ck_assert(ld_ebm_find_tensor(m, "head.bias", &head_bias));
    ld_ebm_params(m)[ld_ebm_tensor(m, head_bias)->offset] = 1.5f;
    ld_ebm_ws_t *ws = make_ws(&a, 2, 1);
    batch_t b = make_batch(&a, 2, 1);
    ck_assert_int_eq(ld_ebm_energy(m, ws, 2, b.image, b.mask, b.target, b.energy, b.grad), 0);
    ck_assert_float_eq(b.energy[0], 1.5f);
    ck_assert_float_eq(b.energy[1], 1.5f);
    for (size_t i = 0; i < 2 * per_image(&a); i++)
        ck_assert_float_eq(b.grad[i], 0.0f);
    free_batch(&b);
    ld_ebm_ws_destroy(&ws);
    ld_ebm_destroy(&m);
}
END_TEST

static double energy_at(const ld_ebm_t *m, ld_ebm_ws_t *ws, batch_t *b, int sample)
{
    float e[8];
    ck_assert_int_eq(ld_ebm_energy(m, ws, b->n, b->image, b->mask, b->target, e, NULL), 0);
    return e[sample];
}

START_TEST(grad_input_matches_finite_differences)
{
    ld_ebm_arch_t a = make_arch(3, 2, 8, "4,6,8", 3);
    ld_ebm_t *m = make_model(&a, 31);
    ld_ebm_ws_t *ws = make_ws(&a, 2, 1);
    batch_t b = make_batch(&a, 2, 32);
    size_t per = per_image(&a);
    ck_assert_int_eq(ld_ebm_energy(m, ws, 2, b.image, b.mask, b.target, b.energy, b.grad), 0);
    double gmax = 0;
    for (size_t i = 0; i < 2 * per; i++)
        gmax = fmax(gmax, fabs(b.grad[i]));
    ck_assert(gmax > 0);
    /* entries */
    const double h = 1e-2;
    ld_rng_t r;
    ld_rng_init(&r, 33, 0);
    for (int t = 0; t < 40; t++) {
        int s = (int)ld_rng_below(&r, 2);
        size_t i = s * per + ld_rng_below(&r, (uint32_t)per);
        float x0 = b.image[i];
        b.image[i] = (float)(x0 + h);
        double ep = energy_at(m, ws, &b, s);
        b.image[i] = (float)(x0 - h);
        double em = energy_at(m, ws, &b, s);
        b.image[i] = x0;
        double fd = (ep - em) / (2 * h), g = b.grad[i];
        ck_assert_msg(fabs(fd - g) <= 2e-3 * gmax + 2e-2 * fabs(g), "dE/dx[%zu]: %g, finite differences %g", i, g, fd);
    }
    /* a random direction over both images (a larger, cleaner signal) */
    float *dir = malloc(2 * per * sizeof(float)), *x0 = malloc(2 * per * sizeof(float));
    memcpy(x0, b.image, 2 * per * sizeof(float));
    double dot[2] = { 0, 0 };
    for (size_t i = 0; i < 2 * per; i++) {
        dir[i] = (float)frand(&r);
        dot[i / per] += (double)dir[i] * b.grad[i];
    }
    double ep[2], em[2];
    for (int sign = -1; sign <= 1; sign += 2) {
        for (size_t i = 0; i < 2 * per; i++)
            b.image[i] = (float)(x0[i] + sign * h * dir[i]);
        ck_assert_int_eq(ld_ebm_energy(m, ws, 2, b.image, b.mask, b.target, b.energy, NULL), 0);
        for (int s = 0; s < 2; s++)
            (sign > 0 ? ep : em)[s] = b.energy[s];
    }
    for (int s = 0; s < 2; s++) {
        double fd = (ep[s] - em[s]) / (2 * h);
        ck_assert_msg(fabs(fd - dot[s]) <= 2e-3 * fabs(dot[s]) + 1e-4, "sample %d: <g, u> %g, finite differences %g", s,
                      dot[s], fd);
    }
    free(dir);
    free(x0);
    free_batch(&b);
    ld_ebm_ws_destroy(&ws);
    ld_ebm_destroy(&m);
}
END_TEST

static double weighted_energy(const ld_ebm_t *m, ld_ebm_ws_t *ws, batch_t *b, const float *coef)
{
    float e[8];
    ck_assert_int_eq(ld_ebm_energy(m, ws, b->n, b->image, b->mask, b->target, e, NULL), 0);
    double f = 0;
    for (int i = 0; i < b->n; i++)
        f += (double)coef[i] * e[i];
    return f;
}

START_TEST(grad_params_match_finite_differences)
{
    ld_ebm_arch_t a = make_arch(3, 2, 8, "4,6,8", 3);
    ld_ebm_t *m = make_model(&a, 41);
    ld_ebm_ws_t *ws = make_ws(&a, 3, 2);
    batch_t b = make_batch(&a, 3, 42);
    const float coef[3] = { 1.0f, -0.5f, 0.75f };
    size_t np = ld_ebm_numel(m);
    float *g = calloc(np, sizeof(float));
    float e[3];
    ck_assert_int_eq(ld_ebm_backward_params(m, ws, 3, b.image, b.mask, b.target, coef, e, g), 0);
    ck_assert_int_eq(ld_ebm_energy(m, ws, 3, b.image, b.mask, b.target, b.energy, NULL), 0);
    ck_assert_int_eq(memcmp(e, b.energy, sizeof e), 0);
    float *p = ld_ebm_params(m);
    ld_rng_t r;
    ld_rng_init(&r, 43, 0);
    const double h = 1e-2;
    for (size_t t = 0; t < ld_ebm_n_tensors(m); t++) {
        const ld_ebm_tensor_t *tt = ld_ebm_tensor(m, t);
        double gmax = 0;
        for (size_t k = 0; k < tt->numel; k++)
            gmax = fmax(gmax, fabs(g[tt->offset + k]));
        int checked_nonzero = 0;
        for (int k = 0; k < 6; k++) {
            size_t i = tt->offset + ld_rng_below(&r, (uint32_t)tt->numel);
            float p0 = p[i];
            p[i] = (float)(p0 + h);
            double fp = weighted_energy(m, ws, &b, coef);
            p[i] = (float)(p0 - h);
            double fm = weighted_energy(m, ws, &b, coef);
            p[i] = p0;
            double fd = (fp - fm) / (2 * h);
            ck_assert_msg(fabs(fd - g[i]) <= 2e-3 * gmax + 2e-2 * fabs(g[i]) + 1e-5,
                          "%s[%zu]: gradient %g, finite differences %g", tt->name, i - tt->offset, g[i], fd);
            checked_nonzero |= fabs(g[i]) > 1e-4;
        }
        ck_assert_msg(checked_nonzero || strcmp(tt->name, "domain_embed.weight") == 0, "%s: all sampled entries ~0",
                      tt->name);
    }
    /* Gradients add up: a second call on top doubles them. */
    float *g2 = calloc(np, sizeof(float));
    memcpy(g2, g, np * sizeof(float));
    ck_assert_int_eq(ld_ebm_backward_params(m, ws, 3, b.image, b.mask, b.target, coef, NULL, g2), 0);
    for (size_t i = 0; i < np; i++)
        ck_assert_msg(fabs(g2[i] - 2.0f * g[i]) <= 1e-5 * fabs(g[i]) + 1e-9, "%zu: %g vs 2 * %g", i, g2[i], g[i]);
    free(g);
    free(g2);
    free_batch(&b);
    ld_ebm_ws_destroy(&ws);
    ld_ebm_destroy(&m);
}
END_TEST

/* ---------------- determinism ---------------- */

/* A config whose convolutions run both as whole bands and split three ways
 * (checked by bands_of_det_arch). */
static ld_ebm_arch_t det_arch(void) { return make_arch(3, 2, 128, "16,32,32", 3); }

/* Input-transform calls of blocks.B.conv1 for one sample on one thread = its bands. */
static long long conv1_bands(const ld_ebm_arch_t *a, const ld_ebm_t *m, int block)
{
    ld_ebm_ws_t *ws = make_ws(a, 1, 1);
    batch_t b = make_batch(a, 1, 1);
    ld_ebm_ws_set_profiling(ws, 1);
    ck_assert_int_eq(ld_ebm_energy(m, ws, 1, b.image, b.mask, b.target, b.energy, NULL), 0);
    ld_ebm_prof_t prof[256];
    int n = ld_ebm_ws_profile(ws, prof, 256);
    char name[64];
    snprintf(name, sizeof name, "blocks.%d.conv1.fwd.in", block);
    long long calls = -1;
    for (int i = 0; i < n && i < 256; i++)
        if (strcmp(prof[i].name, name) == 0)
            calls = prof[i].calls;
    free_batch(&b);
    ld_ebm_ws_destroy(&ws);
    return calls;
}

START_TEST(bands_of_det_arch)
{
    ld_ebm_arch_t a = det_arch();
    ld_ebm_t *m = make_model(&a, 50);
    ck_assert_int_ge(conv1_bands(&a, m, 0), 2); /* several bands: shared out whole */
    ck_assert_int_eq(conv1_bands(&a, m, 1), 1); /* one band: split three ways */
    ld_ebm_destroy(&m);
}
END_TEST

START_TEST(bit_identical_across_threads_and_batches)
{
    ld_ebm_arch_t a = det_arch();
    ld_ebm_t *m = make_model(&a, 51);
    batch_t b = make_batch(&a, 5, 52);
    size_t per = per_image(&a), q = (size_t)a.size * (size_t)a.size;
    ld_ebm_ws_t *w1 = make_ws(&a, 5, 1), *w2 = make_ws(&a, 5, 2), *w3 = make_ws(&a, 5, 3);
    float e_ref[5], *g_ref = malloc(5 * per * sizeof(float));
    ck_assert_int_eq(ld_ebm_energy(m, w1, 5, b.image, b.mask, b.target, e_ref, g_ref), 0);
    ld_ebm_ws_t *wss[3] = { w1, w2, w3 };
    for (int t = 0; t < 3; t++) {
        for (int n = 1; n <= 5; n++) { /* batches 0..n-1 (solo, coop and mixed) */
            ck_assert_int_eq(ld_ebm_energy(m, wss[t], n, b.image, b.mask, b.target, b.energy, b.grad), 0);
            ck_assert_int_eq(memcmp(b.energy, e_ref, (size_t)n * sizeof(float)), 0);
            ck_assert_msg(memcmp(b.grad, g_ref, (size_t)n * per * sizeof(float)) == 0, "threads %d batch %d", t + 1, n);
        }
        /* sample 4 alone, and first in a reversed batch */
        ck_assert_int_eq(ld_ebm_energy(m, wss[t], 1, b.image + 4 * per, b.mask + 4 * q, b.target + 4, b.energy, b.grad),
                         0);
        ck_assert(b.energy[0] == e_ref[4] && memcmp(b.grad, g_ref + 4 * per, per * sizeof(float)) == 0);
        batch_t r = make_batch(&a, 5, 52);
        for (int i = 0; i < 5; i++) {
            memcpy(r.image + i * per, b.image + (4 - i) * per, per * sizeof(float));
            memcpy(r.mask + i * q, b.mask + (4 - i) * q, q);
            r.target[i] = b.target[4 - i];
        }
        ck_assert_int_eq(ld_ebm_energy(m, wss[t], 5, r.image, r.mask, r.target, r.energy, r.grad), 0);
        for (int i = 0; i < 5; i++)
            ck_assert(r.energy[i] == e_ref[4 - i] &&
                      memcmp(r.grad + i * per, g_ref + (4 - i) * per, per * sizeof(float)) == 0);
        free_batch(&r);
    }
    free(g_ref);
    free_batch(&b);
    ld_ebm_ws_destroy(&w1);
    ld_ebm_ws_destroy(&w2);
    ld_ebm_ws_destroy(&w3);
    ld_ebm_destroy(&m);
}
END_TEST

START_TEST(weight_gradients_reproducible_across_threads)
{
    ld_ebm_arch_t a = det_arch();
    ld_ebm_t *m = make_model(&a, 61);
    batch_t b = make_batch(&a, 5, 62);
    const float coef[5] = { 0.2f, -0.2f, 0.2f, -0.2f, 0.0f };
    size_t np = ld_ebm_numel(m);
    float *ref = NULL;
    for (int t = 1; t <= 3; t++) {
        ld_ebm_ws_t *ws = make_ws(&a, 5, t);
        float *g = calloc(np, sizeof(float));
        ck_assert_int_eq(ld_ebm_backward_params(m, ws, 5, b.image, b.mask, b.target, coef, NULL, g), 0);
        if (!ref)
            ref = g;
        else {
            ck_assert_msg(memcmp(g, ref, np * sizeof(float)) == 0, "threads %d differ from 1", t);
            free(g);
        }
        ld_ebm_ws_destroy(&ws);
    }
    free(ref);
    free_batch(&b);
    ld_ebm_destroy(&m);
}
END_TEST

START_TEST(workspace_follows_model_changes)
{
    ld_ebm_arch_t a = make_arch(3, 2, 16, "4,6,8", 3);
    ld_ebm_t *m1 = make_model(&a, 71), *m2 = make_model(&a, 72);
    batch_t b = make_batch(&a, 2, 73);
    ld_ebm_ws_t *ws = make_ws(&a, 2, 2), *fresh = make_ws(&a, 2, 2);
    float e1[2], e2[2], e[2];
    ck_assert_int_eq(ld_ebm_energy(m1, ws, 2, b.image, b.mask, b.target, e1, NULL), 0);
    ck_assert_int_eq(ld_ebm_energy(m2, ws, 2, b.image, b.mask, b.target, e2, NULL), 0);
    ck_assert(e1[0] != e2[0]);
    /* editing parameters in place is seen by the next evaluation */
    ld_ebm_params(m2)[ld_ebm_tensor(m2, 2)->offset] += 0.5f;
    ck_assert_int_eq(ld_ebm_energy(m2, ws, 2, b.image, b.mask, b.target, e, NULL), 0);
    ck_assert(e[0] != e2[0]);
    ck_assert_int_eq(ld_ebm_energy(m2, fresh, 2, b.image, b.mask, b.target, e2, NULL), 0);
    ck_assert_int_eq(memcmp(e, e2, sizeof e), 0);
    /* the reuse entry point recomputes when the model object changes */
    ck_assert_int_eq(ld_ebm_energy_reuse(m1, ws, 2, b.image, b.mask, b.target, e, NULL), 0);
    ck_assert_int_eq(memcmp(e, e1, sizeof e), 0);
    free_batch(&b);
    ld_ebm_ws_destroy(&ws);
    ld_ebm_ws_destroy(&fresh);
    ld_ebm_destroy(&m1);
    ld_ebm_destroy(&m2);
}
END_TEST

/* ---------------- validation ---------------- */

START_TEST(invalid_inputs_rejected)
{
    ld_ebm_arch_t a = make_arch(3, 2, 16, "4,6,8", 3);
    ld_ebm_t *m = make_model(&a, 81);
    ld_ebm_ws_t *ws = make_ws(&a, 3, 1);
    batch_t b = make_batch(&a, 3, 82);
    size_t q = (size_t)a.size * (size_t)a.size;
    float g = 0;
    b.mask[q + 37] = 2; /* sample 1, y 2, x 5 */
    ld_expect_err(ld_ebm_energy(m, ws, 3, b.image, b.mask, b.target, b.energy, NULL), LD_EINVAL);
    ck_assert_msg(strstr(ld_errdetail(), "sample 1") && strstr(ld_errdetail(), "mask value 2"), "%s", ld_errdetail());
    ld_expect_err(ld_ebm_backward_params(m, ws, 3, b.image, b.mask, b.target, b.energy, NULL, &g), LD_EINVAL);
    b.mask[q + 37] = 1;
    b.target[2] = 3;
    ld_expect_err(ld_ebm_energy(m, ws, 3, b.image, b.mask, b.target, b.energy, NULL), LD_EINVAL);
    ck_assert_msg(strstr(ld_errdetail(), "sample 2") && strstr(ld_errdetail(), "target"), "%s", ld_errdetail());
    b.target[2] = -1;
    ld_expect_err(ld_ebm_energy(m, ws, 3, b.image, b.mask, b.target, b.energy, NULL), LD_EINVAL);
    b.target[2] = 0;
    ld_expect_err(ld_ebm_energy(m, ws, 4, b.image, b.mask, b.target, b.energy, NULL), LD_EINVAL);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "max_batch"));
    ld_expect_err(ld_ebm_energy(m, ws, 3, b.image, b.mask, b.target, NULL, NULL), LD_EINVAL);
    ck_assert_int_eq(ld_ebm_energy(m, ws, 0, NULL, NULL, NULL, NULL, NULL), 0);
    ck_assert_int_eq(ld_ebm_energy(m, ws, 3, b.image, b.mask, b.target, b.energy, NULL), 0);

    ld_ebm_arch_t other = make_arch(3, 2, 16, "4,6,9", 3);
    ld_ebm_ws_t *ws2 = make_ws(&other, 3, 1);
    ld_expect_err(ld_ebm_energy(m, ws2, 3, b.image, b.mask, b.target, b.energy, NULL), LD_EINVAL);
    ck_assert_msg(strstr(ld_errdetail(), "architecture"), "%s", ld_errdetail());
    ld_ebm_ws_t *bad = NULL;
    ld_expect_err(ld_ebm_ws_new(&a, 0, 1, &bad), LD_EINVAL);
    ld_expect_err(ld_ebm_ws_new(&a, 1, 0, &bad), LD_EINVAL);
    ck_assert_ptr_null(bad);
    other.size = 10;
    ld_expect_err(ld_ebm_ws_new(&other, 1, 1, &bad), LD_ERANGE);
    ld_ebm_t *mb = NULL;
    ld_expect_err(ld_ebm_new(&other, &mb), LD_ERANGE);
    ck_assert_ptr_null(mb);
    free_batch(&b);
    ld_ebm_ws_destroy(&ws);
    ld_ebm_ws_destroy(&ws2);
    ld_ebm_destroy(&m);
}
END_TEST

/* ---------------- pool, parallel-for, profile ---------------- */

typedef struct {
    ld_threadpool_t *pool;
    int threads;
    atomic_int counter;
    int errors;
} pool_ctx_t;

static void pool_job(void *arg, int tid)
{
    pool_ctx_t *c = arg;
    (void)tid;
    for (int round = 1; round <= 300; round++) {
        atomic_fetch_add(&c->counter, 1);
        ld_threadpool_barrier(c->pool);
        if (atomic_load(&c->counter) != round * c->threads)
            c->errors++; /* only read after everyone added: a race shows here */
        ld_threadpool_barrier(c->pool);
    }
}

START_TEST(pool_barrier_and_jobs)
{
    for (int t = 1; t <= 4; t++) {
        pool_ctx_t c = { NULL, t, 0, 0 };
        ck_assert_int_eq(ld_threadpool_new(t, &c.pool), 0);
        ck_assert_int_eq(ld_threadpool_threads(c.pool), t);
        for (int job = 0; job < 5; job++) {
            atomic_store(&c.counter, 0);
            ld_threadpool_run(c.pool, pool_job, &c);
            ck_assert_int_eq(atomic_load(&c.counter), 300 * t);
        }
        ck_assert_int_eq(c.errors, 0);
        ld_threadpool_destroy(&c.pool);
        ck_assert_ptr_null(c.pool);
    }
    ld_threadpool_t *p = NULL;
    ld_expect_err(ld_threadpool_new(0, &p), LD_EINVAL);
    /* the tools' default: every online CPU, within 1..cap */
    const int cpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    ck_assert_int_eq(ld_threadpool_default_threads(1), 1);
    ck_assert_int_eq(ld_threadpool_default_threads(4096), cpus);
    ck_assert_int_eq(ld_threadpool_default_threads(cpus + 1), cpus);
}
END_TEST

static void mark_piece(void *ctx, int piece, int tid)
{
    atomic_int *hits = ctx;
    (void)tid;
    atomic_fetch_add(&hits[piece], 1);
}

START_TEST(parallel_for_and_profile)
{
    ld_ebm_arch_t a = make_arch(3, 2, 16, "4,6,8", 3);
    ld_ebm_ws_t *ws = make_ws(&a, 2, 2);
    ck_assert_int_eq(ld_ebm_ws_threads(ws), 2);
    atomic_int hits[37];
    for (int i = 0; i < 37; i++)
        atomic_init(&hits[i], 0);
    ld_ebm_ws_parallel(ws, 37, mark_piece, hits);
    for (int i = 0; i < 37; i++)
        ck_assert_int_eq(atomic_load(&hits[i]), 1);

    ld_ebm_t *m = make_model(&a, 91);
    batch_t b = make_batch(&a, 2, 92);
    ld_ebm_prof_t prof[256];
    ld_ebm_ws_set_profiling(ws, 1);
    ck_assert_int_eq(ld_ebm_energy(m, ws, 2, b.image, b.mask, b.target, b.energy, b.grad), 0);
    int n = ld_ebm_ws_profile(ws, prof, 256);
    ck_assert_int_gt(n, 6);
    int found = 0;
    for (int i = 0; i < n; i++)
        if (strcmp(prof[i].name, "blocks.1.conv2.bwd.gemm") == 0) {
            found = 1;
            ck_assert(prof[i].calls > 0 && prof[i].seconds > 0);
        }
    ck_assert(found);
    ld_ebm_ws_set_profiling(ws, 0);
    ck_assert_int_eq(ld_ebm_energy(m, ws, 2, b.image, b.mask, b.target, b.energy, b.grad), 0);
    ld_ebm_ws_profile(ws, prof, 256);
    for (int i = 0; i < n; i++)
        ck_assert(prof[i].calls == 0);
    free_batch(&b);
    ld_ebm_destroy(&m);
    ld_ebm_ws_destroy(&ws);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ebm");
    TCase *tc = ld_tcase("arch", 30);
    tcase_add_test(tc, arch_parsing_and_validation);
    tcase_add_test(tc, flops_of_reference_config);
    tcase_add_test(tc, tensor_table_matches_state_dict);
    tcase_add_test(tc, init_is_seeded_and_pytorch_like);
    suite_add_tcase(s, tc);
    tc = ld_tcase("kernels", 30);
    tcase_add_test(tc, expf_and_silu_accuracy);
    tcase_add_test(tc, avgpool_and_im2col);
    tcase_add_test(tc, winograd_conv3x3_matches_direct);
    tcase_add_test(tc, winograd_output_modes);
    tcase_add_test(tc, pool_barrier_and_jobs);
    suite_add_tcase(s, tc);
    tc = ld_tcase("network", 120);
    tcase_add_test(tc, energy_matches_naive_reference);
    tcase_add_test(tc, zero_model_energy_is_head_bias);
    tcase_add_test(tc, grad_input_matches_finite_differences);
    tcase_add_test(tc, grad_params_match_finite_differences);
    tcase_add_test(tc, bands_of_det_arch);
    tcase_add_test(tc, bit_identical_across_threads_and_batches);
    tcase_add_test(tc, weight_gradients_reproducible_across_threads);
    tcase_add_test(tc, workspace_follows_model_changes);
    tcase_add_test(tc, invalid_inputs_rejected);
    tcase_add_test(tc, parallel_for_and_profile);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
