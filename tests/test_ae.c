/* ld_ae: the aeconv autoencoder. Architecture checks, tensor table and
 * initialisation; encoder and decoder against a naive double-precision
 * forward written from ld_ae.h; the VJPs to the image and to the latent and
 * every weight tensor's gradient against central finite differences, on
 * sizes where both Winograd tile sizes run; bit-identical results across
 * thread counts and batch compositions; input validation; model files
 * (round trip, hostile files); parity with langdaug.torch.Autoencoder on the
 * same weights (tests/test_ae_parity.py computes the PyTorch side). */
#include "testutil.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ld_ae.h"
#include "ld_error.h"
#include "ld_model.h"
#include "ld_rng.h"
#include "ld_safetensors.h"

/* ---------------- fixtures ---------------- */

static ld_ae_arch_t make_arch(int C, int S, const char *widths, int Z)
{
    ld_ae_arch_t a;
    memset(&a, 0, sizeof a);
    a.image_channels = C;
    a.size = S;
    a.latent_channels = Z;
    ck_assert_int_eq(ld_ae_arch_set_widths(&a, widths), 0);
    ck_assert_msg(ld_ae_arch_validate(&a) == 0, "%s", ld_errdetail());
    return a;
}

static ld_ae_t *make_ae(const ld_ae_arch_t *a, uint64_t seed)
{
    ld_ae_t *ae = NULL;
    ck_assert_int_eq(ld_ae_new(a, &ae), 0);
    ld_ae_init_random(ae, seed);
    return ae;
}

static ld_ae_ws_t *make_ws(const ld_ae_arch_t *a, int max_batch, int threads)
{
    ld_ae_ws_t *ws = NULL;
    ck_assert_msg(ld_ae_ws_new(a, max_batch, threads, &ws) == 0, "%s", ld_errdetail());
    return ws;
}

static size_t img_numel(const ld_ae_arch_t *a) { return (size_t)a->image_channels * (size_t)a->size * (size_t)a->size; }
static size_t lat_numel(const ld_ae_arch_t *a) { return ld_ae_arch_latent_numel(a); }
static int n_levels(const ld_ae_arch_t *a) { return a->factor == 8 ? 3 : 2; }

/* n values uniform in [-1, 1]. */
static float *rand_floats(size_t n, uint64_t seed)
{
    float *x = malloc(n * sizeof *x);
    ld_rng_t r;
    ld_rng_init(&r, seed, 5);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(2.0 * ld_rng_uniform(&r) - 1.0);
    return x;
}

/* At initialisation the decoder's outputs are small (|y| ~ 0.05), where
 * tanh is nearly linear; the gradient and reference tests scale the output
 * conv so that y spans tanh's curved range. */
static void spread_output(ld_ae_t *ae)
{
    for (int k = 0; k < 2; k++) {
        ld_cn_params_t *ps = ld_ae_params(ae);
        const ld_cn_tensor_t *t = &ps->t[ps->n - 2 + (size_t)k];
        for (size_t i = 0; i < t->numel; i++)
            ps->params[t->offset + i] *= 20.0f;
    }
}

/* The configurations of the gradient tests: A has F(4x4) maps at 16 and
 * F(2x2) at 8 and 4; B (factor 8) F(4x4) at 32 and 16, F(2x2) at 8 and 4. */
static ld_ae_arch_t arch_a(void) { return make_arch(3, 16, "4,6,8", 3); }
static ld_ae_arch_t arch_b(void) { return make_arch(2, 32, "3,4,5,6", 2); }

/* ---------------- naive double-precision reference ---------------- */

static const float *param(const ld_ae_t *ae, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const float *param(const ld_ae_t *ae, const char *fmt, ...)
{
    char name[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const ld_cn_params_t *ps = ld_ae_params_const(ae);
    size_t i;
    ck_assert_msg(ld_cn_params_find(ps, name, &i), "no tensor %s", name);
    return ps->params + ps->t[i].offset;
}

/* y = conv3x3(x) + bias with the tensors <prefix>.weight and <prefix>.bias (malloc'ed). */
static double *ref_conv3(const ld_ae_t *ae, const char *prefix, const double *x, int cin, int side, int cout)
{
    double *y = malloc(sizeof(double) * (size_t)cout * (size_t)side * (size_t)side);
    ld_test_ref_conv(x, cin, side, side, param(ae, "%s.weight", prefix), param(ae, "%s.bias", prefix), cout, 3, y);
    return y;
}

static double *to_double(const float *x, size_t n)
{
    double *d = malloc(n * sizeof *d);
    for (size_t i = 0; i < n; i++)
        d[i] = x[i];
    return d;
}

/* The encoder as ld_ae.h documents it: z [Z][S/f][S/f]. */
static void ref_encode(const ld_ae_t *ae, const float *image, double *z)
{
    const ld_ae_arch_t *a = ld_ae_arch(ae);
    int L = n_levels(a), side = a->size;
    double *x = to_double(image, img_numel(a));
    double *h = ref_conv3(ae, "encoder.stem", x, a->image_channels, side, a->widths[0]);
    free(x);
    static const char *parts[6] = { "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "skip.weight",
                                    "skip.bias" };
    for (int b = 0; b < L; b++) {
        const float *t[6];
        for (int k = 0; k < 6; k++)
            t[k] = param(ae, "encoder.blocks.%d.%s", b, parts[k]);
        double *out = malloc(sizeof(double) * (size_t)a->widths[b + 1] * (size_t)(side / 2) * (size_t)(side / 2));
        ld_test_ref_down(h, a->widths[b], a->widths[b + 1], side, t, out);
        free(h);
        h = out;
        side /= 2;
    }
    double *zz = ref_conv3(ae, "encoder.latent", h, a->widths[L], side, a->latent_channels);
    memcpy(z, zz, lat_numel(a) * sizeof *z);
    free(zz);
    free(h);
}

/* The decoder as ld_ae.h documents it: y [C][S][S]. */
static void ref_decode(const ld_ae_t *ae, const float *latent, double *y)
{
    const ld_ae_arch_t *a = ld_ae_arch(ae);
    int L = n_levels(a), side = a->size / a->factor;
    double *z = to_double(latent, lat_numel(a));
    double *g = ref_conv3(ae, "decoder.stem", z, a->latent_channels, side, a->widths[L]);
    free(z);
    char name[64];
    for (int k = 0; k < L; k++) {
        int j = L - 1 - k, ci = a->widths[j + 1], co = a->widths[j], s2 = 2 * side;
        double *u = malloc(sizeof(double) * (size_t)ci * (size_t)s2 * (size_t)s2);
        for (int c = 0; c < ci; c++)
            for (int yy = 0; yy < s2; yy++)
                for (int xx = 0; xx < s2; xx++)
                    u[((size_t)c * s2 + yy) * s2 + xx] = g[((size_t)c * side + yy / 2) * side + xx / 2];
        snprintf(name, sizeof name, "decoder.blocks.%d.up", k);
        double *c = ref_conv3(ae, name, u, ci, s2, co);
        snprintf(name, sizeof name, "decoder.blocks.%d.conv1", k);
        double *r1 = ref_conv3(ae, name, c, co, s2, co);
        for (size_t i = 0; i < (size_t)co * s2 * s2; i++)
            r1[i] = ld_test_silu(r1[i]);
        snprintf(name, sizeof name, "decoder.blocks.%d.conv2", k);
        double *r2 = ref_conv3(ae, name, r1, co, s2, co);
        for (size_t i = 0; i < (size_t)co * s2 * s2; i++)
            r2[i] = (c[i] + ld_test_silu(r2[i])) / sqrt(2.0);
        free(g);
        free(u);
        free(c);
        free(r1);
        g = r2;
        side = s2;
    }
    double *out = ref_conv3(ae, "decoder.out", g, a->widths[0], side, a->image_channels);
    for (size_t i = 0; i < img_numel(a); i++)
        y[i] = tanh(out[i]);
    free(out);
    free(g);
}

/* ---------------- architecture, tensors, init ---------------- */

START_TEST(arch_parsing_and_validation)
{
    ld_ae_arch_t a = make_arch(3, 64, "32,64,128", 8);
    ck_assert_int_eq(a.factor, 4);
    ck_assert_uint_eq(ld_ae_arch_latent_numel(&a), 8 * 16 * 16);
    ld_ae_arch_t b = a;
    ck_assert_int_eq(ld_ae_arch_set_widths(&b, "32,64,128,256"), 0);
    ck_assert_int_eq(b.factor, 8);
    ck_assert_int_eq(ld_ae_arch_validate(&b), 0);
    ck_assert(!ld_ae_arch_same_shape(&a, &b));
    ck_assert_uint_eq(ld_ae_arch_latent_numel(&b), 8 * 8 * 8);
    ld_expect_err(ld_ae_arch_set_widths(&b, "32,64"), LD_ERANGE);
    ck_assert_msg(strstr(ld_errdetail(), "need 3 (factor 4) or 4 (factor 8)"), "%s", ld_errdetail());
    ld_expect_err(ld_ae_arch_set_widths(&b, "8,8,8,8,8"), LD_ERANGE);
    ld_expect_err(ld_ae_arch_set_widths(&b, "8,x,8"), LD_EINVAL);
    ld_expect_err(ld_ae_arch_set_widths(&b, "8,0,8"), LD_ERANGE);
    ck_assert_int_eq(b.factor, 8); /* failures leave the architecture alone */

    b = a;
    b.factor = 2;
    ld_expect_err(ld_ae_arch_validate(&b), LD_ERANGE);
    ck_assert_str_eq(ld_errdetail(), "autoencoder architecture: factor 2 is not 4 or 8");
    b = a;
    b.size = 68; /* a multiple of 4 but not of 8: the latent side would be odd */
    ld_expect_err(ld_ae_arch_validate(&b), LD_ERANGE);
    ck_assert_msg(strstr(ld_errdetail(), "size 68 is not a multiple of 2 x factor = 8"), "%s", ld_errdetail());
    b.size = 2048;
    ld_expect_err(ld_ae_arch_validate(&b), LD_ERANGE);
    b = a;
    b.latent_channels = 0;
    ld_expect_err(ld_ae_arch_validate(&b), LD_ERANGE);
    ck_assert_msg(strstr(ld_errdetail(), "latent_channels 0"), "%s", ld_errdetail());
    b.latent_channels = LD_AE_MAX_LATENT + 1;
    ld_expect_err(ld_ae_arch_validate(&b), LD_ERANGE);
    b = a;
    b.widths[2] = 0;
    ld_expect_err(ld_ae_arch_validate(&b), LD_ERANGE);
    ck_assert_msg(strstr(ld_errdetail(), "widths[2]"), "%s", ld_errdetail());
    b = a;
    b.image_channels = 5;
    ld_expect_err(ld_ae_arch_validate(&b), LD_ERANGE);
    b = a;
    b.colour_space = LD_COLOUR_LAB;
    ck_assert_int_eq(ld_ae_arch_validate(&b), 0);
    ck_assert(ld_ae_arch_same_shape(&a, &b)); /* one workspace serves both */
    b.image_channels = 1;
    ld_expect_err(ld_ae_arch_validate(&b), LD_EINVAL);
    ck_assert_str_eq(ld_errdetail(), "autoencoder architecture: colour space lab needs 3 image channels, not 1");
    b = a;
    b.colour_space = (ld_colour_space_t)7;
    ld_expect_err(ld_ae_arch_validate(&b), LD_EINVAL);
    ld_ae_t *m = (ld_ae_t *)1;
    ld_expect_err(ld_ae_new(&b, &m), LD_EINVAL);
    ck_assert_ptr_null(m);
}
END_TEST

START_TEST(tensor_table_matches_state_dict)
{
    ld_ae_arch_t a = make_arch(3, 16, "4,6,8", 5);
    ld_ae_t *m = make_ae(&a, 1);
    static const char *names[] = {
        "encoder.stem.weight",           "encoder.stem.bias",           "encoder.blocks.0.conv1.weight",
        "encoder.blocks.0.conv1.bias",   "encoder.blocks.0.conv2.weight", "encoder.blocks.0.conv2.bias",
        "encoder.blocks.0.skip.weight",  "encoder.blocks.0.skip.bias",  "encoder.blocks.1.conv1.weight",
        "encoder.blocks.1.conv1.bias",   "encoder.blocks.1.conv2.weight", "encoder.blocks.1.conv2.bias",
        "encoder.blocks.1.skip.weight",  "encoder.blocks.1.skip.bias",  "encoder.latent.weight",
        "encoder.latent.bias",           "decoder.stem.weight",         "decoder.stem.bias",
        "decoder.blocks.0.up.weight",    "decoder.blocks.0.up.bias",    "decoder.blocks.0.conv1.weight",
        "decoder.blocks.0.conv1.bias",   "decoder.blocks.0.conv2.weight", "decoder.blocks.0.conv2.bias",
        "decoder.blocks.1.up.weight",    "decoder.blocks.1.up.bias",    "decoder.blocks.1.conv1.weight",
        "decoder.blocks.1.conv1.bias",   "decoder.blocks.1.conv2.weight", "decoder.blocks.1.conv2.bias",
        "decoder.out.weight",            "decoder.out.bias",
    };
    static const int64_t shapes[][4] = {
        { 4, 3, 3, 3 }, { 4 }, { 6, 4, 3, 3 }, { 6 }, { 6, 6, 3, 3 }, { 6 }, { 6, 4, 1, 1 }, { 6 },
        { 8, 6, 3, 3 }, { 8 }, { 8, 8, 3, 3 }, { 8 }, { 8, 6, 1, 1 }, { 8 }, { 5, 8, 3, 3 }, { 5 },
        { 8, 5, 3, 3 }, { 8 }, { 6, 8, 3, 3 }, { 6 }, { 6, 6, 3, 3 }, { 6 }, { 6, 6, 3, 3 }, { 6 },
        { 4, 6, 3, 3 }, { 4 }, { 4, 4, 3, 3 }, { 4 }, { 4, 4, 3, 3 }, { 4 }, { 3, 4, 3, 3 }, { 3 },
    };
    ld_test_tensor_table(ld_ae_params_const(m), names, shapes, sizeof names / sizeof *names,
                         "decoder.blocks.2.up.weight");
    ld_ae_destroy(&m);
    ck_assert_ptr_null(m);
}
END_TEST

START_TEST(init_is_seeded_and_pytorch_like)
{
    ld_ae_arch_t a = make_arch(3, 32, "16,32,64", 8);
    ld_ae_t *m1 = make_ae(&a, 5), *m2 = make_ae(&a, 5), *m3 = make_ae(&a, 6);
    const ld_cn_params_t *p1 = ld_ae_params_const(m1);
    size_t n = p1->numel;
    ck_assert_int_eq(memcmp(p1->params, ld_ae_params(m2)->params, n * sizeof(float)), 0);
    ck_assert_int_ne(memcmp(p1->params, ld_ae_params(m3)->params, n * sizeof(float)), 0);
    for (size_t i = 0; i < p1->n; i++) {
        const ld_cn_tensor_t *t = &p1->t[i];
        const float *p = p1->params + t->offset;
        /* weight and bias share the weight's fan_in: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) */
        const ld_cn_tensor_t *w = t->ndim > 1 ? t : &p1->t[i - 1];
        double bound = 1.0 / sqrt((double)(w->numel / (size_t)w->shape[0])), s2 = 0, hi = 0;
        for (size_t k = 0; k < t->numel; k++) {
            s2 += (double)p[k] * p[k];
            hi = fmax(hi, fabs(p[k]));
        }
        ck_assert_msg(hi <= bound, "%s max %g > bound %g", t->name, hi, bound);
        if (t->numel >= 64) /* rms of U(-b, b) is b/sqrt(3) */
            ck_assert_msg(fabs(sqrt(s2 / (double)t->numel) - bound / sqrt(3.0)) < 0.25 * bound / sqrt(3.0), "%s rms",
                          t->name);
    }
    ld_ae_t *c = NULL;
    ck_assert_int_eq(ld_ae_clone(m1, &c), 0);
    ck_assert_int_eq(memcmp(ld_ae_params(c)->params, p1->params, n * sizeof(float)), 0);
    ld_ae_params(c)->params[0] += 1.0f;
    ck_assert_float_ne(ld_ae_params(c)->params[0], p1->params[0]);
    ld_ae_destroy(&c);
    ld_ae_destroy(&m1);
    ld_ae_destroy(&m2);
    ld_ae_destroy(&m3);
}
END_TEST

/* ---------------- the network ---------------- */

static double max_abs_d(const double *x, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs(x[i]));
    return m;
}

START_TEST(forward_matches_naive_reference)
{
    static const struct {
        int C, S, Z;
        const char *widths;
    } cfg[] = { { 3, 16, 5, "4,6,8" }, { 1, 32, 2, "3,5,4,6" }, { 4, 8, 3, "2,3,4" }, { 3, 48, 4, "8,8,16" } };
    for (size_t k = 0; k < sizeof cfg / sizeof *cfg; k++) {
        ld_ae_arch_t a = make_arch(cfg[k].C, cfg[k].S, cfg[k].widths, cfg[k].Z);
        ld_ae_t *m = make_ae(&a, 10 + k);
        spread_output(m);
        ld_ae_ws_t *ws = make_ws(&a, 3, 2);
        size_t pi = img_numel(&a), pz = lat_numel(&a);
        float *image = rand_floats(3 * pi, 20 + k), *latent = rand_floats(3 * pz, 30 + k);
        float *z = malloc(3 * pz * sizeof *z), *y = malloc(3 * pi * sizeof *y);
        ck_assert_int_eq(ld_ae_encode(m, ws, 3, image, z), 0);
        ck_assert_int_eq(ld_ae_decode(m, ws, 3, latent, y), 0);
        double *zr = malloc(pz * sizeof *zr), *yr = malloc(pi * sizeof *yr);
        for (int i = 0; i < 3; i++) {
            ref_encode(m, image + i * pi, zr);
            ref_decode(m, latent + i * pz, yr);
            double zs = fmax(1.0, max_abs_d(zr, pz));
            for (size_t q = 0; q < pz; q++)
                ck_assert_msg(fabs(z[i * pz + q] - zr[q]) <= 2e-5 * zs, "config %zu sample %d: z[%zu] %.8g vs %.8g", k,
                              i, q, z[i * pz + q], zr[q]);
            for (size_t q = 0; q < pi; q++) {
                ck_assert_msg(fabs(y[i * pi + q] - yr[q]) <= 2e-5, "config %zu sample %d: y[%zu] %.8g vs %.8g", k, i, q,
                              y[i * pi + q], yr[q]);
                ck_assert(y[i * pi + q] >= -1.0f && y[i * pi + q] <= 1.0f);
            }
        }
        free(zr), free(yr), free(image), free(latent), free(z), free(y);
        ld_ae_ws_destroy(&ws);
        ck_assert_ptr_null(ws);
        ld_ae_destroy(&m);
    }
}
END_TEST

/* ---- finite differences ----
 * F = sum over the batch of <w, f(x)> (in double) for f = encode, decode or
 * decode(encode(.)), as a function of whatever array p it reads (an input
 * or a parameter tensor). The engine is float32: F moves by rounding
 * wherever p moves, more where the outputs are many and large, so the
 * comparisons allow three times that noise, measured for each array as the
 * largest second difference |F(p + d) + F(p - d) - 2 F(p)| over 8 tiny steps
 * d (whose true value is ~0), as it passes into the difference quotient
 * below, on top of the relative tolerances.
 * Derivatives are Richardson-extrapolated central differences,
 * (4 D(h/2) - D(h)) / 3 with D(h) = (F(p + h u) - F(p - h u)) / 2h and
 * h = 2e-2, whose error is O(h^4): along some directions F curves enough
 * for plain central differences to be off by 20% at h = 1e-2. */
enum { F_ENCODE, F_DECODE, F_RECON };

typedef struct {
    const ld_ae_t *m;
    ld_ae_ws_t *ws;
    int n, kind;
    const float *x;    /* the batch input */
    const float *w;    /* weights of the outputs */
    float *z, *y;      /* scratch for the latent and the image */
} objective_t;

static double objective(const objective_t *o)
{
    const ld_ae_arch_t *a = ld_ae_arch(o->m);
    if (o->kind != F_DECODE)
        ck_assert_int_eq(ld_ae_encode(o->m, o->ws, o->n, o->x, o->z), 0);
    if (o->kind != F_ENCODE)
        ck_assert_int_eq(ld_ae_decode(o->m, o->ws, o->n, o->kind == F_DECODE ? o->x : o->z, o->y), 0);
    const float *out = o->kind == F_ENCODE ? o->z : o->y;
    size_t n = (size_t)o->n * (o->kind == F_ENCODE ? lat_numel(a) : img_numel(a));
    double f = 0;
    for (size_t i = 0; i < n; i++)
        f += (double)o->w[i] * out[i];
    return f;
}

static objective_t objective_new(const ld_ae_t *m, ld_ae_ws_t *ws, int n, int kind, const float *x, const float *w)
{
    const ld_ae_arch_t *a = ld_ae_arch(m);
    return (objective_t){ m, ws, n, kind, x, w, malloc((size_t)n * lat_numel(a) * 4),
                          malloc((size_t)n * img_numel(a) * 4) };
}

static void objective_free(objective_t *o) { free(o->z), free(o->y); }

#define FD_H 2e-2

/* The derivative of F along u over p[0..n) (u NULL: the entry p[0]). */
static double fd_dir(const objective_t *o, float *p, const float *u, size_t n)
{
    float *p0 = malloc(n * sizeof *p0);
    memcpy(p0, p, n * sizeof *p0);
    double d[2];
    for (int s = 0; s < 2; s++) {
        double h = s ? FD_H / 2 : FD_H, f[2];
        for (int k = 0; k < 2; k++) {
            for (size_t i = 0; i < n; i++)
                p[i] = (float)(p0[i] + (k ? -h : h) * (u ? u[i] : 1.0f));
            f[k] = objective(o);
        }
        d[s] = (f[0] - f[1]) / (2 * h);
    }
    memcpy(p, p0, n * sizeof *p0);
    free(p0);
    return (4 * d[1] - d[0]) / 3;
}

static double rounding_noise(const objective_t *o, float *p, size_t n, ld_rng_t *r)
{
    double f0 = objective(o), worst = 0;
    for (int k = 0; k < 8; k++) {
        size_t i = ld_rng_below(r, (uint32_t)n);
        float p0 = p[i], d = 1e-4f;
        p[i] = p0 + d;
        double fp = objective(o);
        p[i] = p0 - d;
        double fm = objective(o);
        p[i] = p0;
        worst = fmax(worst, fabs(fp + fm - 2 * f0));
    }
    return worst;
}

/* The gradient g of F to p[0..n) at `entries` random entries and along a
 * random direction. */
static void check_grad(const char *what, const objective_t *o, float *p, const float *g, size_t n, int entries,
                       uint64_t seed)
{
    ld_rng_t r;
    ld_rng_init(&r, seed, 0);
    /* with rounding noise s per F, fd_dir's noise is about 2 s / h, and the
     * second differences measure about 2.4 s: allow 4.5 of them over h */
    double gmax = 0, floor = 3 * 1.5 * rounding_noise(o, p, n, &r) / FD_H;
    for (size_t i = 0; i < n; i++)
        gmax = fmax(gmax, fabs(g[i]));
    ck_assert_msg(gmax > 1e-4, "%s: gradient ~0", what);
    for (int t = 0; t < entries; t++) {
        size_t i = ld_rng_below(&r, (uint32_t)n);
        double fd = fd_dir(o, p + i, NULL, 1);
        ck_assert_msg(fabs(fd - g[i]) <= 2e-3 * gmax + 2e-2 * fabs(g[i]) + floor,
                      "%s[%zu]: %g, finite differences %g (noise allowance %g)", what, i, g[i], fd, floor);
    }
    float *u = rand_floats(n, seed + 1);
    double dot = 0;
    for (size_t i = 0; i < n; i++)
        dot += (double)u[i] * g[i];
    double fd = fd_dir(o, p, u, n);
    ck_assert_msg(fabs(fd - dot) <= 2e-3 * fabs(dot) + floor,
                  "%s: <g, u> %g, finite differences %g (noise allowance %g)", what, dot, fd, floor);
    free(u);
}

/* The VJP of the encoder (to the image) or of the decoder (to the latent)
 * on configurations A and B, a batch of 2. */
static void check_vjp(int decode)
{
    ld_ae_arch_t cfgs[2] = { arch_a(), arch_b() };
    for (int k = 0; k < 2; k++) {
        const ld_ae_arch_t *a = &cfgs[k];
        ld_ae_t *m = make_ae(a, 40 + 10 * decode + k);
        if (decode)
            spread_output(m);
        ld_ae_ws_t *ws = make_ws(a, 2, 2);
        size_t pin = decode ? lat_numel(a) : img_numel(a), pout = decode ? img_numel(a) : lat_numel(a);
        float *x = rand_floats(2 * pin, 41), *w = rand_floats(2 * pout, 42), *g = malloc(2 * pin * sizeof *g);
        int rc = decode ? ld_ae_decode_vjp(m, ws, 2, x, w, g) : ld_ae_encode_vjp(m, ws, 2, x, w, g);
        ck_assert_int_eq(rc, 0);
        objective_t o = objective_new(m, ws, 2, decode ? F_DECODE : F_ENCODE, x, w);
        char what[64];
        snprintf(what, sizeof what, "%c: d<w, %s>", k ? 'B' : 'A', decode ? "decode(z)>/dz" : "encode(x)>/dx");
        check_grad(what, &o, x, g, 2 * pin, 30, 43);
        objective_free(&o);
        free(x), free(w), free(g);
        ld_ae_ws_destroy(&ws);
        ld_ae_destroy(&m);
    }
}

START_TEST(encode_vjp_matches_finite_differences) { check_vjp(0); }
END_TEST

START_TEST(decode_vjp_matches_finite_differences) { check_vjp(1); }
END_TEST

START_TEST(grad_params_match_finite_differences)
{
    ld_ae_arch_t cfgs[2] = { arch_a(), arch_b() };
    for (int k = 0; k < 2; k++) {
        const ld_ae_arch_t *a = &cfgs[k];
        ld_ae_t *m = make_ae(a, 60 + k);
        spread_output(m);
        ld_ae_ws_t *ws = make_ws(a, 3, 2);
        ld_cn_params_t *ps = ld_ae_params(m);
        size_t pi = img_numel(a), np = ps->numel;
        float *x = rand_floats(3 * pi, 61), *w = rand_floats(3 * pi, 62), *g = calloc(np, sizeof *g);
        ck_assert_int_eq(ld_ae_backward_params(m, ws, 3, x, w, g), 0);
        objective_t o = objective_new(m, ws, 3, F_RECON, x, w);
        char what[80];
        for (size_t t = 0; t < ps->n; t++) {
            const ld_cn_tensor_t *tt = &ps->t[t];
            snprintf(what, sizeof what, "config %d %s", k, tt->name);
            check_grad(what, &o, ps->params + tt->offset, g + tt->offset, tt->numel, 4, 63 + t);
        }
        objective_free(&o);
        /* gradients add up: a second call on top doubles them (up to the
         * rounding of sums that cancel, relative to the tensor's largest) */
        float *g2 = malloc(np * sizeof *g2);
        memcpy(g2, g, np * sizeof *g2);
        ck_assert_int_eq(ld_ae_backward_params(m, ws, 3, x, w, g2), 0);
        for (size_t t = 0; t < ps->n; t++) {
            const ld_cn_tensor_t *tt = &ps->t[t];
            double gmax = 0;
            for (size_t i = tt->offset; i < tt->offset + tt->numel; i++)
                gmax = fmax(gmax, fabs(g[i]));
            for (size_t i = tt->offset; i < tt->offset + tt->numel; i++)
                ck_assert_msg(fabs(g2[i] - 2.0f * g[i]) <= 1e-4 * gmax, "%s[%zu]: %g vs 2 * %g", tt->name,
                              i - tt->offset, g2[i], g[i]);
        }
        free(x), free(w), free(g), free(g2);
        ld_ae_ws_destroy(&ws);
        ld_ae_destroy(&m);
    }
}
END_TEST

/* ---------------- determinism ---------------- */

/* At S = 256 with 8 channels the full-size convs run in 2 bands and the
 * others in 1, so with 2 and 3 threads both ways of sharing a conv (whole
 * bands, or one band split three ways) run. */
static ld_ae_arch_t det_arch(void) { return make_arch(3, 256, "8,8,8", 4); }

/* Outputs of the four per-sample calls for samples [0, n) of in. */
typedef struct {
    float *z, *y, *gx, *gz;
} outs_t;

static outs_t outs_new(const ld_ae_arch_t *a, int n)
{
    size_t pi = (size_t)n * img_numel(a), pz = (size_t)n * lat_numel(a);
    return (outs_t){ malloc(pz * 4), malloc(pi * 4), malloc(pi * 4), malloc(pz * 4) };
}

static void outs_free(outs_t *o) { free(o->z), free(o->y), free(o->gx), free(o->gz); }

static void run_all(const ld_ae_t *m, ld_ae_ws_t *ws, int n, const float *x, const float *lat, const float *wz,
                    const float *wy, outs_t *o)
{
    ck_assert_int_eq(ld_ae_encode(m, ws, n, x, o->z), 0);
    ck_assert_int_eq(ld_ae_decode(m, ws, n, lat, o->y), 0);
    ck_assert_int_eq(ld_ae_encode_vjp(m, ws, n, x, wz, o->gx), 0);
    ck_assert_int_eq(ld_ae_decode_vjp(m, ws, n, lat, wy, o->gz), 0);
}

/* Sample i of got equals sample j of want in every output. */
static void same_sample(const ld_ae_arch_t *a, const outs_t *got, int i, const outs_t *want, int j, const char *what)
{
    size_t pi = img_numel(a), pz = lat_numel(a);
    ck_assert_msg(memcmp(got->z + i * pz, want->z + j * pz, pz * 4) == 0, "%s: encode", what);
    ck_assert_msg(memcmp(got->y + i * pi, want->y + j * pi, pi * 4) == 0, "%s: decode", what);
    ck_assert_msg(memcmp(got->gx + i * pi, want->gx + j * pi, pi * 4) == 0, "%s: encode_vjp", what);
    ck_assert_msg(memcmp(got->gz + i * pz, want->gz + j * pz, pz * 4) == 0, "%s: decode_vjp", what);
}

/* Reverses the n samples of x (per floats each) into a new buffer. */
static float *reversed(const float *x, int n, size_t per)
{
    float *r = malloc((size_t)n * per * sizeof *r);
    for (int i = 0; i < n; i++)
        memcpy(r + (size_t)i * per, x + (size_t)(n - 1 - i) * per, per * sizeof *r);
    return r;
}

START_TEST(bit_identical_across_threads_and_batches)
{
    ld_ae_arch_t a = det_arch();
    ld_ae_t *m = make_ae(&a, 70);
    size_t pi = img_numel(&a), pz = lat_numel(&a);
    float *x = rand_floats(5 * pi, 71), *lat = rand_floats(5 * pz, 72), *wz = rand_floats(5 * pz, 73),
          *wy = rand_floats(5 * pi, 74);
    float *rx = reversed(x, 5, pi), *rl = reversed(lat, 5, pz), *rwz = reversed(wz, 5, pz), *rwy = reversed(wy, 5, pi);
    outs_t ref = outs_new(&a, 5), got = outs_new(&a, 5);
    ld_ae_ws_t *w1 = make_ws(&a, 5, 1);
    run_all(m, w1, 5, x, lat, wz, wy, &ref);
    char what[64];
    for (int t = 1; t <= 3; t++) {
        ld_ae_ws_t *ws = t == 1 ? w1 : make_ws(&a, 5, t);
        for (int n = 4; n <= 5; n++) { /* solo and coop samples mixed */
            run_all(m, ws, n, x, lat, wz, wy, &got);
            for (int i = 0; i < n; i++) {
                snprintf(what, sizeof what, "threads %d batch %d sample %d", t, n, i);
                same_sample(&a, &got, i, &ref, i, what);
            }
        }
        run_all(m, ws, 1, x + 4 * pi, lat + 4 * pz, wz + 4 * pz, wy + 4 * pi, &got); /* sample 4 alone */
        snprintf(what, sizeof what, "threads %d, sample 4 alone", t);
        same_sample(&a, &got, 0, &ref, 4, what);
        run_all(m, ws, 5, rx, rl, rwz, rwy, &got);
        for (int i = 0; i < 5; i++) {
            snprintf(what, sizeof what, "threads %d, reversed batch, sample %d", t, i);
            same_sample(&a, &got, i, &ref, 4 - i, what);
        }
        if (ws != w1)
            ld_ae_ws_destroy(&ws);
    }
    outs_free(&ref), outs_free(&got);
    free(x), free(lat), free(wz), free(wy), free(rx), free(rl), free(rwz), free(rwy);
    ld_ae_ws_destroy(&w1);
    ld_ae_destroy(&m);
}
END_TEST

START_TEST(weight_gradients_reproducible_across_threads)
{
    ld_ae_arch_t a = det_arch();
    ld_ae_t *m = make_ae(&a, 80);
    size_t pi = img_numel(&a), np = ld_ae_params(m)->numel;
    float *x = rand_floats(5 * pi, 81), *wy = rand_floats(5 * pi, 82), *ref = NULL;
    for (int t = 1; t <= 3; t++) {
        ld_ae_ws_t *ws = make_ws(&a, 5, t);
        float *g = calloc(np, sizeof *g);
        ck_assert_int_eq(ld_ae_backward_params(m, ws, 5, x, wy, g), 0);
        if (!ref) {
            ref = g;
        } else {
            ck_assert_msg(memcmp(g, ref, np * sizeof *g) == 0, "threads %d differ from 1", t);
            free(g);
        }
        ld_ae_ws_destroy(&ws);
    }
    free(ref), free(x), free(wy);
    ld_ae_destroy(&m);
}
END_TEST

/* ---------------- validation ---------------- */

START_TEST(invalid_calls_rejected)
{
    ld_ae_arch_t a = arch_a();
    ld_ae_t *m = make_ae(&a, 90);
    ld_ae_ws_t *ws = make_ws(&a, 2, 1);
    size_t pi = img_numel(&a), pz = lat_numel(&a);
    float *x = rand_floats(3 * pi, 91), *z = rand_floats(3 * pz, 92), g = 0;
    ld_expect_err(ld_ae_encode(m, ws, 3, x, z), LD_EINVAL);
    ck_assert_str_eq(ld_errdetail(), "encode: batch of 3 samples outside 0..max_batch 2");
    ld_expect_err(ld_ae_decode(m, ws, -1, z, x), LD_EINVAL);
    ld_expect_err(ld_ae_decode(m, ws, 2, z, NULL), LD_EINVAL);
    ck_assert_str_eq(ld_errdetail(), "decode: NULL input or output buffer");
    ld_expect_err(ld_ae_encode_vjp(m, ws, 2, x, NULL, x), LD_EINVAL);
    ld_expect_err(ld_ae_decode_vjp(NULL, ws, 2, z, x, z), LD_EINVAL);
    ld_expect_err(ld_ae_backward_params(m, ws, 1, x, x, NULL), LD_EINVAL);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "backward_params"));
    ck_assert_int_eq(ld_ae_encode(m, ws, 0, NULL, NULL), 0);
    ck_assert_int_eq(ld_ae_backward_params(m, ws, 0, NULL, NULL, &g), 0);

    ld_ae_arch_t other = make_arch(3, 16, "4,6,9", 3);
    ld_ae_ws_t *ws2 = make_ws(&other, 2, 1);
    ld_expect_err(ld_ae_encode(m, ws2, 1, x, z), LD_EINVAL);
    ck_assert_str_eq(ld_errdetail(), "encode: workspace architecture (C=3 S=16 f=4 Z=3 widths=4,6,9) differs from the "
                                     "autoencoder's (C=3 S=16 f=4 Z=3 widths=4,6,8)");
    ld_ae_ws_t *bad = (ld_ae_ws_t *)1;
    ld_expect_err(ld_ae_ws_new(&a, 0, 1, &bad), LD_EINVAL);
    ck_assert_ptr_null(bad);
    ld_expect_err(ld_ae_ws_new(&a, 1, 0, &bad), LD_EINVAL);
    other.size = 20;
    ld_expect_err(ld_ae_ws_new(&other, 1, 1, &bad), LD_ERANGE);
    ck_assert_int_eq(ld_ae_ws_max_batch(ws), 2);
    ck_assert_int_eq(ld_ae_ws_threads(ws), 1);
    free(x), free(z);
    ld_ae_ws_destroy(&ws);
    ld_ae_ws_destroy(&ws2);
    ld_ae_destroy(&m);
}
END_TEST

/* ---------------- model files ---------------- */

static char *dir; /* a fresh directory per test of the files case */

static void setup(void) { dir = ld_test_tmpdir(); }

static void teardown(void)
{
    ld_test_rmtree(dir);
    free(dir);
}

START_TEST(save_load_roundtrip)
{
    char *p = ld_test_path(dir, "ae.safetensors");
    ld_ae_arch_t a = make_arch(3, 16, "4,6,8", 5);
    a.colour_space = LD_COLOUR_LAB;
    ld_ae_t *m = make_ae(&a, 100), *back;
    ld_meta_t *extra, *meta;
    ck_assert_int_eq(ld_meta_new(&extra), 0);
    ck_assert_int_eq(ld_meta_set(extra, "created", "test"), 0);
    char h_save[65], h_load[65], h_file[65];
    ck_assert_msg(ld_ae_save(p, m, extra, h_save) == 0, "%s", ld_errdetail());
    ck_assert_msg(ld_ae_load(p, &back, &meta, h_load) == 0, "%s", ld_errdetail());
    const ld_cn_params_t *pb = ld_ae_params_const(back), *pm = ld_ae_params_const(m);
    ck_assert_uint_eq(pb->numel, pm->numel);
    ck_assert_int_eq(memcmp(pb->params, pm->params, pm->numel * sizeof(float)), 0);
    ck_assert(ld_ae_arch_same_shape(ld_ae_arch(back), &a));
    ck_assert_int_eq(ld_ae_arch(back)->colour_space, LD_COLOUR_LAB);
    static const char *keys[][2] = { { "format", "langdaug-ae" }, { "version", "1" },    { "arch", "aeconv" },
                                     { "image_channels", "3" },   { "size", "16" },      { "widths", "4,6,8" },
                                     { "latent_channels", "5" },  { "factor", "4" },     { "colour_space", "lab" },
                                     { "created", "test" } };
    ck_assert_uint_eq(ld_meta_count(meta), sizeof keys / sizeof *keys);
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        ck_assert_str_eq(ld_meta_key(meta, i), keys[i][0]);
        ck_assert_str_eq(ld_meta_value(meta, i), keys[i][1]);
    }
    size_t len;
    char *raw = ld_test_read_file(p, &len);
    ld_sha256_hex(raw, len, h_file);
    ck_assert_str_eq(h_save, h_load);
    ck_assert_str_eq(h_save, h_file);
    ld_ae_destroy(&back);
    ck_assert_int_eq(ld_ae_load(p, &back, NULL, NULL), 0); /* NULL meta/hash outputs are allowed */
    /* the loaded model computes what the saved one did */
    ld_ae_ws_t *ws = make_ws(&a, 1, 1);
    float *x = rand_floats(img_numel(&a), 101), *z1 = malloc(lat_numel(&a) * 4), *z2 = malloc(lat_numel(&a) * 4);
    ck_assert_int_eq(ld_ae_encode(m, ws, 1, x, z1), 0);
    ck_assert_int_eq(ld_ae_encode(back, ws, 1, x, z2), 0);
    ck_assert_int_eq(memcmp(z1, z2, lat_numel(&a) * 4), 0);
    free(x), free(z1), free(z2), free(raw);
    ld_ae_ws_destroy(&ws);
    ld_ae_destroy(&back);
    ld_meta_destroy(&meta);
    ld_meta_destroy(&extra);
    ld_ae_destroy(&m);
    free(p);
}
END_TEST

START_TEST(save_refuses_bad_input)
{
    char *p = ld_test_path(dir, "ae.safetensors");
    ld_ae_arch_t a = arch_a();
    ld_ae_t *m = make_ae(&a, 110);
    ld_meta_t *extra;
    ck_assert_int_eq(ld_meta_new(&extra), 0);
    ck_assert_int_eq(ld_meta_set(extra, "factor", "8"), 0);
    ld_expect_err(ld_ae_save(p, m, extra, NULL), LD_EINVAL);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "'factor'"));
    ld_ae_params(m)->params[ld_ae_params(m)->t[31].offset + 1] = INFINITY;
    ld_expect_err(ld_ae_save(p, m, NULL, NULL), LD_ENUMERIC);
    ck_assert_msg(strstr(ld_errdetail(), "tensor 'decoder.out.bias' element 1 is not finite"), "%s", ld_errdetail());
    ck_assert_int_eq(ld_test_count_entries(dir), 0);
    ld_meta_destroy(&extra);
    ld_ae_destroy(&m);
    free(p);
}
END_TEST

/* ld_test_load_rejects' loader: a failed load leaves no autoencoder and no metadata. */
static int load_ae(const char *path)
{
    ld_ae_t *back = (ld_ae_t *)1;
    ld_meta_t *meta = (ld_meta_t *)1;
    int rc = ld_ae_load(path, &back, &meta, NULL);
    if (rc) {
        ck_assert_ptr_null(back);
        ck_assert_ptr_null(meta);
    }
    ld_ae_destroy(&back);
    ld_meta_destroy(&meta);
    return rc;
}

START_TEST(load_rejects_defects)
{
    static const ld_test_defect_t cases[] = {
        { .needle = "tensor 'decoder.out.bias' is missing", .drop = "decoder.out.bias" },
        { .needle = "tensor 'encoder.blocks.1.skip.weight' is missing", .drop = "encoder.blocks.1.skip.weight" },
        { .needle = "tensor 'encoder.latent.bias' has dtype F64, expected F32", .as_f64 = "encoder.latent.bias" },
        { .needle = "tensor 'decoder.stem.bias' has shape [2,4], expected [8]", .reshape = "decoder.stem.bias" },
        { .needle = "tensor 'decoder.blocks.0.conv2.weight' element 0 is NaN",
          .nan_in = "decoder.blocks.0.conv2.weight" },
        { .needle = "unexpected tensor 'decoder.blocks.2.up.weight'", .add = "decoder.blocks.2.up.weight" },
        { .needle = "metadata 'format' is 'langdaug-ebm', expected 'langdaug-ae'", .meta_key = "format",
          .meta_value = "langdaug-ebm" },
        { .needle = "metadata key 'format' is missing", .meta_key = "format" },
        { .needle = "metadata 'version' is '2', expected '1'", .meta_key = "version", .meta_value = "2" },
        { .needle = "metadata 'arch' is 'resdown', expected 'aeconv'", .meta_key = "arch", .meta_value = "resdown" },
        { .needle = "metadata 'factor' is 8 but widths '4,6,8' make factor 4", .meta_key = "factor",
          .meta_value = "8" },
        { .needle = "metadata 'factor' is 6 but widths '4,6,8' make factor 4", .meta_key = "factor",
          .meta_value = "6" },
        { .needle = "metadata 'factor' is not an integer: 'x4'", .meta_key = "factor", .meta_value = "x4" },
        { .needle = "metadata key 'factor' is missing", .meta_key = "factor" },
        { .needle = "metadata 'factor' is 4 but widths '4,6,8,8' make factor 8", .meta_key = "widths",
          .meta_value = "4,6,8,8" },
        { .needle = "metadata 'widths': widths '4,6': 2 widths, need 3", .meta_key = "widths", .meta_value = "4,6" },
        { .needle = "metadata 'widths': widths: '4,,8' has an empty item", .meta_key = "widths", .meta_value = "4,,8" },
        { .needle = "invalid autoencoder: autoencoder architecture: latent_channels 0 outside 1..64",
          .meta_key = "latent_channels", .meta_value = "0" },
        { .needle = "latent_channels 65 outside", .meta_key = "latent_channels", .meta_value = "65" },
        { .needle = "size 20 is not a multiple of 2 x factor = 8", .meta_key = "size", .meta_value = "20" },
        { .needle = "metadata key 'latent_channels' is missing", .meta_key = "latent_channels" },
        { .needle = "metadata key 'colour_space' is missing", .meta_key = "colour_space" },
        { .needle = "metadata 'colour_space': 'LAB' is not rgb or lab", .meta_key = "colour_space",
          .meta_value = "LAB" },
        /* a consistent-looking header for another shape: the tensors disagree */
        { .needle = "tensor 'encoder.stem.weight' has shape [4,3,3,3], expected [4,1,3,3]",
          .meta_key = "image_channels", .meta_value = "1" },
        { .needle = "tensor 'encoder.latent.weight' has shape [5,8,3,3], expected [4,8,3,3]",
          .meta_key = "latent_channels", .meta_value = "4" },
    };
    char *good = ld_test_path(dir, "good.safetensors"), *bad = ld_test_path(dir, "bad.safetensors");
    ld_ae_arch_t a = make_arch(3, 16, "4,6,8", 5);
    ld_ae_t *m = make_ae(&a, 120), *back;
    ck_assert_int_eq(ld_ae_save(good, m, NULL, NULL), 0);
    ld_test_load_rejects(good, bad, cases, sizeof cases / sizeof *cases, load_ae);

    /* an energy model is not an autoencoder, and the other way round */
    ld_ebm_t *ebm;
    ld_expect_err(ld_model_load(good, &ebm, NULL, NULL), LD_EFORMAT);
    ck_assert_msg(strstr(ld_errdetail(), "metadata 'format' is 'langdaug-ae', expected 'langdaug-ebm'"), "%s",
                  ld_errdetail());
    ld_ebm_arch_t ea;
    memset(&ea, 0, sizeof ea);
    ea.image_channels = 3, ea.mask_classes = 2, ea.size = 16;
    ck_assert_int_eq(ld_ebm_arch_set_widths(&ea, "4,8"), 0);
    ck_assert_int_eq(ld_ebm_arch_set_domains(&ea, "A,B"), 0);
    ck_assert_int_eq(ld_ebm_new(&ea, &ebm), 0);
    ck_assert_int_eq(ld_model_save(bad, ebm, NULL, NULL), 0);
    ld_expect_err(ld_ae_load(bad, &back, NULL, NULL), LD_EFORMAT);
    ck_assert_msg(strstr(ld_errdetail(), "metadata 'format' is 'langdaug-ebm', expected 'langdaug-ae'"), "%s",
                  ld_errdetail());
    ld_test_write_file(bad, "hello, world", 12);
    ld_expect_err(ld_ae_load(bad, &back, NULL, NULL), LD_EFORMAT);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), bad));
    ld_expect_err(ld_ae_load("/nonexistent-langdaug/ae.safetensors", &back, NULL, NULL), LD_ENOENT);
    ck_assert_ptr_null(back);
    ld_ebm_destroy(&ebm);
    ld_ae_destroy(&m);
    free(good);
    free(bad);
}
END_TEST

/* ---------------- parity with PyTorch ---------------- */

/* max |got - want| / max |want| over n values (want in double, from the reference file). */
static double max_rel(const float *got, const ld_st_tensor_t *want, size_t n)
{
    ck_assert_msg(want->dtype == LD_DT_F64 && want->numel == n, "reference '%s': %s with %zu values, expected F64 %zu",
                  want->name, ld_dtype_name(want->dtype), want->numel, n);
    double scale = 0, err = 0;
    for (size_t i = 0; i < n; i++) {
        double w;
        memcpy(&w, (const char *)want->data + 8 * i, 8);
        scale = fmax(scale, fabs(w));
        err = fmax(err, fabs((double)got[i] - w));
    }
    return err / (scale > 0 ? scale : 1.0);
}

static const ld_st_tensor_t *ref_tensor(const ld_st_t *st, const char *name)
{
    const ld_st_tensor_t *t = ld_st_find(st, name);
    ck_assert_msg(t != NULL, "reference file has no '%s'", name);
    return t;
}

static void check_rel(const char *cfg, const char *what, const float *got, const ld_st_t *st, const char *name,
                      size_t n, double tol, double *worst)
{
    double err = max_rel(got, ref_tensor(st, name), n);
    *worst = fmax(*worst, err);
    ck_assert_msg(err <= tol, "%s: %s differs from PyTorch by %.3g (relative to its largest value; tolerance %g)", cfg,
                  what, err, tol);
}

static void add_f32(ld_st_writer_t *w, const char *name, const float *x, int n, int c, int side)
{
    int64_t shape[4] = { n, c, side, side };
    ck_assert_int_eq(ld_st_writer_add(w, name, LD_DT_F32, 4, shape, x), 0);
}

START_TEST(parity_with_pytorch)
{
    const char *py = getenv("LD_PY") ? getenv("LD_PY") : "/usr/bin/python3";
    if (ld_test_system("%s -c 'import torch, numpy' >/dev/null 2>&1", py) != 0)
        LD_SKIP("%s has no torch/numpy", py);
    ck_assert_msg(access("tests/test_ae_parity.py", R_OK) == 0,
                  "tests/test_ae_parity.py not found: run from the repository root (tests/run does)");
    static const struct {
        int C, S, Z, N;
        const char *widths;
    } cfg[] = { { 3, 64, 8, 2, "32,64,128" }, { 3, 16, 5, 3, "4,6,8" }, { 1, 32, 4, 2, "8,12,16,16" } };
    double worst_fwd = 0, worst_grad = 0, worst_py = 0;
    for (size_t k = 0; k < sizeof cfg / sizeof *cfg; k++) {
        char name[64], desc[96];
        snprintf(desc, sizeof desc, "C=%d S=%d widths %s Z=%d", cfg[k].C, cfg[k].S, cfg[k].widths, cfg[k].Z);
        ld_ae_arch_t a = make_arch(cfg[k].C, cfg[k].S, cfg[k].widths, cfg[k].Z);
        int N = cfg[k].N, s = a.size / a.factor;
        size_t pi = img_numel(&a), pz = lat_numel(&a);
        ld_ae_t *m = make_ae(&a, 200 + k);
        char *model = ld_test_path(dir, "model.safetensors"), *io = ld_test_path(dir, "io.safetensors");
        char *ref = ld_test_path(dir, "ref.safetensors"), *pym = ld_test_path(dir, "py_model.safetensors");
        ck_assert_int_eq(ld_ae_save(model, m, NULL, NULL), 0);
        float *x = rand_floats(N * pi, 210 + k), *lat = rand_floats(N * pz, 220 + k);
        float *wy = rand_floats(N * pi, 230 + k), *wz = rand_floats(N * pz, 240 + k);
        ld_st_writer_t *w;
        ck_assert_int_eq(ld_st_writer_new(&w), 0);
        add_f32(w, "image", x, N, a.image_channels, a.size);
        add_f32(w, "latent", lat, N, a.latent_channels, s);
        add_f32(w, "grad_output", wy, N, a.image_channels, a.size);
        add_f32(w, "grad_latent", wz, N, a.latent_channels, s);
        ck_assert_int_eq(ld_st_writer_write(w, io, NULL), 0);
        ld_st_writer_destroy(&w);
        ck_assert_msg(ld_test_system("PYTHONPATH=client/python${PYTHONPATH:+:$PYTHONPATH} %s tests/test_ae_parity.py "
                                     "reference %s %d",
                                     py, dir, (int)(300 + k)) == 0,
                      "%s: the PyTorch reference failed", desc);

        ld_ae_ws_t *ws = make_ws(&a, N, 2);
        outs_t o = outs_new(&a, N);
        run_all(m, ws, N, x, lat, wz, wy, &o);
        const ld_cn_params_t *ps = ld_ae_params_const(m);
        float *gp = calloc(ps->numel, sizeof *gp);
        ck_assert_int_eq(ld_ae_backward_params(m, ws, N, x, wy, gp), 0);
        ld_st_t *st;
        ck_assert_msg(ld_st_open(ref, &st) == 0, "%s", ld_errdetail());
        check_rel(desc, "encode", o.z, st, "latent", N * pz, 1e-4, &worst_fwd);
        check_rel(desc, "decode", o.y, st, "recon", N * pi, 1e-4, &worst_fwd);
        check_rel(desc, "encode_vjp", o.gx, st, "grad_image", N * pi, 1e-3, &worst_grad);
        check_rel(desc, "decode_vjp", o.gz, st, "grad_latent", N * pz, 1e-3, &worst_grad);
        for (size_t t = 0; t < ps->n; t++) {
            const ld_cn_tensor_t *tt = &ps->t[t];
            snprintf(name, sizeof name, "grad.%s", tt->name);
            check_rel(desc, name, gp + tt->offset, st, name, tt->numel, 1e-3, &worst_grad);
        }
        /* a model initialised and saved by PyTorch loads here and computes the same */
        ld_ae_t *pm;
        ck_assert_msg(ld_ae_load(pym, &pm, NULL, NULL) == 0, "%s", ld_errdetail());
        ck_assert_int_eq(ld_ae_encode(pm, ws, N, x, o.z), 0);
        ck_assert_int_eq(ld_ae_decode(pm, ws, N, lat, o.y), 0);
        check_rel(desc, "encode (PyTorch's model)", o.z, st, "py.latent", N * pz, 1e-4, &worst_py);
        check_rel(desc, "decode (PyTorch's model)", o.y, st, "py.recon", N * pi, 1e-4, &worst_py);
        ld_ae_destroy(&pm);
        ld_st_close(&st);
        outs_free(&o);
        free(gp), free(x), free(lat), free(wy), free(wz), free(model), free(io), free(ref), free(pym);
        ld_ae_ws_destroy(&ws);
        ld_ae_destroy(&m);
    }
    printf("parity: encode/decode max rel err %.3g, gradients %.3g, PyTorch-initialised model %.3g\n", worst_fwd,
           worst_grad, worst_py);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ae");
    TCase *tc = ld_tcase("arch", 30);
    tcase_add_test(tc, arch_parsing_and_validation);
    tcase_add_test(tc, tensor_table_matches_state_dict);
    tcase_add_test(tc, init_is_seeded_and_pytorch_like);
    suite_add_tcase(s, tc);
    tc = ld_tcase("network", 300);
    tcase_add_test(tc, forward_matches_naive_reference);
    tcase_add_test(tc, encode_vjp_matches_finite_differences);
    tcase_add_test(tc, decode_vjp_matches_finite_differences);
    tcase_add_test(tc, grad_params_match_finite_differences);
    tcase_add_test(tc, bit_identical_across_threads_and_batches);
    tcase_add_test(tc, weight_gradients_reproducible_across_threads);
    tcase_add_test(tc, invalid_calls_rejected);
    suite_add_tcase(s, tc);
    tc = ld_tcase("files", 300);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, save_load_roundtrip);
    tcase_add_test(tc, save_refuses_bad_input);
    tcase_add_test(tc, load_rejects_defects);
    tcase_add_test(tc, parity_with_pytorch);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
