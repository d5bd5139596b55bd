/* ld_ae: the aeconv autoencoder (see ld_ae.h): architecture, parameters,
 * the evaluation engine on ld_convnet's layers, and its model files.
 *
 * How one sample runs (buffers live in the thread's "slot"; i = sample):
 *   encoder forward   stem (BIAS) -> h0; down blocks -> eb[b].out;
 *                     latent conv (BIAS) -> z (the caller's buffer or the slot's)
 *   decoder forward   stem (BIAS) -> gst; per block k: u = upsample2(input),
 *                     up (BIAS) -> c, conv1 (SILU) -> t1, d1,
 *                     conv2 (SILU_RES with c) -> g, d2; out (TANH) -> y, dy
 *   decoder backward  da_out = gy * dy; out^T -> dg of the last block; per
 *                     block from the last: gs = dg / sqrt2, da2 = gs * d2,
 *                     conv2^T (MUL d1) -> da1, conv1^T (ADD gs) -> dc,
 *                     up^T (SUM_POOL: the upsample's adjoint) -> dg of the
 *                     block's input; stem^T -> dz
 *   encoder backward  latent^T (seed dz) -> dout of the last down block;
 *                     down blocks backward -> dh0; stem^T -> dimage
 *   weight gradients  per conv: its input and the gradient at its output
 *                     (da), row pieces summed in sample order.
 * The output modes are ld_conv.h's. Every phase is a set of pieces whose
 * shapes depend on the architecture only, so results are bit-identical for
 * any batch composition and thread count (ld_convnet.h).
 *
 * Memory: ld_ae_ws_new() carves everything from one arena: per thread a
 * slot (all activations of one sample, encoder and decoder) and a scratch;
 * the transformed weights of every conv. */
#include "ld_ae.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ld_text.h"
#include "ld_error.h"
#include "ld_model.h"

#define INV_SQRT2 0.70710678118654752440f
#define MAX_THREADS 256
#define FILE_FORMAT "langdaug-ae"
#define FILE_VERSION "1"
#define FILE_ARCH "aeconv"

/* ------------------------------------------------------------------ */
/* Architecture                                                        */
/* ------------------------------------------------------------------ */

static int levels(const ld_ae_arch_t *a) { return a->factor == 8 ? 3 : 2; }

int ld_ae_arch_validate(const ld_ae_arch_t *a)
{
    if (!a)
        return ld_seterr(LD_EINVAL, "autoencoder architecture: NULL");
    if (a->image_channels < 1 || a->image_channels > LD_AE_MAX_CHANNELS)
        return ld_seterr(LD_ERANGE, "autoencoder architecture: image_channels %d outside 1..%d", a->image_channels,
                         LD_AE_MAX_CHANNELS);
    if (a->factor != 4 && a->factor != 8)
        return ld_seterr(LD_ERANGE, "autoencoder architecture: factor %d is not 4 or 8", a->factor);
    for (int i = 0; i <= levels(a); i++)
        if (a->widths[i] < 1 || a->widths[i] > LD_AE_MAX_WIDTH)
            return ld_seterr(LD_ERANGE, "autoencoder architecture: widths[%d] = %d outside 1..%d", i, a->widths[i],
                             LD_AE_MAX_WIDTH);
    if (a->size < 1 || a->size > LD_AE_MAX_SIZE)
        return ld_seterr(LD_ERANGE, "autoencoder architecture: size %d outside 1..%d", a->size, LD_AE_MAX_SIZE);
    if (a->size % (2 * a->factor) != 0)
        return ld_seterr(LD_ERANGE, "autoencoder architecture: size %d is not a multiple of 2 x factor = %d",
                         a->size, 2 * a->factor);
    if (a->latent_channels < 1 || a->latent_channels > LD_AE_MAX_LATENT)
        return ld_seterr(LD_ERANGE, "autoencoder architecture: latent_channels %d outside 1..%d", a->latent_channels,
                         LD_AE_MAX_LATENT);
    if (!ld_colour_space_name(a->colour_space))
        return ld_seterr(LD_EINVAL, "autoencoder architecture: colour space %d is not rgb (0) or lab (1)",
                         (int)a->colour_space);
    if (a->colour_space == LD_COLOUR_LAB && a->image_channels != 3)
        return ld_seterr(LD_EINVAL, "autoencoder architecture: colour space lab needs 3 image channels, not %d",
                         a->image_channels);
    return 0;
}

int ld_ae_arch_set_widths(ld_ae_arch_t *arch, const char *csv)
{
    if (!arch || !csv)
        return ld_seterr(LD_EINVAL, "widths: NULL argument");
    int w[LD_AE_MAX_LEVELS + 1], n;
    int rc = ld_text_parse_int_list("widths", csv, 1, LD_AE_MAX_WIDTH, w, LD_AE_MAX_LEVELS + 1, &n);
    if (rc)
        return rc;
    if (n < 3)
        return ld_seterr(LD_ERANGE, "widths '%s': %d widths, need 3 (factor 4) or 4 (factor 8)", csv, n);
    memset(arch->widths, 0, sizeof arch->widths);
    memcpy(arch->widths, w, (size_t)n * sizeof *w);
    arch->factor = 1 << (n - 1);
    return 0;
}

int ld_ae_arch_same_shape(const ld_ae_arch_t *a, const ld_ae_arch_t *b)
{
    if (a->image_channels != b->image_channels || a->size != b->size || a->factor != b->factor ||
        a->latent_channels != b->latent_channels)
        return 0;
    for (int i = 0; i <= levels(a); i++)
        if (a->widths[i] != b->widths[i])
            return 0;
    return 1;
}

size_t ld_ae_arch_latent_numel(const ld_ae_arch_t *a)
{
    size_t side = (size_t)(a->size / a->factor);
    return (size_t)a->latent_channels * side * side;
}

static void arch_describe(const ld_ae_arch_t *a, char *buf, size_t cap)
{
    int n = snprintf(buf, cap, "C=%d S=%d f=%d Z=%d widths=", a->image_channels, a->size, a->factor,
                     a->latent_channels);
    for (int i = 0; i <= levels(a) && n > 0 && (size_t)n < cap; i++)
        n += snprintf(buf + n, cap - (size_t)n, i ? ",%d" : "%d", a->widths[i]);
}

/* ------------------------------------------------------------------ */
/* Model                                                               */
/* ------------------------------------------------------------------ */

struct ld_ae_s {
    ld_ae_arch_t arch;
    ld_cn_params_t ps;
};

/* Tensor indices in state_dict order (weights; each bias follows its weight). */
static int t_eblock(int b) { return 2 + 6 * b; }
static int t_elatent(int L) { return 2 + 6 * L; }
static int t_dstem(int L) { return t_elatent(L) + 2; }
static int t_dblock(int L, int k) { return t_dstem(L) + 2 + 6 * k; } /* up, conv1, conv2 */
static int t_dout(int L) { return t_dblock(L, L); }

static void build_tensors(ld_ae_t *m)
{
    const ld_ae_arch_t *a = &m->arch;
    ld_cn_params_t *ps = &m->ps;
    int L = levels(a), C = a->image_channels, Z = a->latent_channels;
    char name[LD_CN_NAME_MAX];
    ld_cn_params_add_conv(ps, "encoder.stem", a->widths[0], C, 3);
    for (int b = 0; b < L; b++) {
        snprintf(name, sizeof name, "encoder.blocks.%d", b);
        ld_cn_down_add_tensors(ps, name, a->widths[b], a->widths[b + 1]);
    }
    ld_cn_params_add_conv(ps, "encoder.latent", Z, a->widths[L], 3);
    ld_cn_params_add_conv(ps, "decoder.stem", a->widths[L], Z, 3);
    for (int k = 0; k < L; k++) {
        static const char *convs[3] = { "up", "conv1", "conv2" };
        int j = L - 1 - k;
        for (int c = 0; c < 3; c++) {
            snprintf(name, sizeof name, "decoder.blocks.%d.%s", k, convs[c]);
            ld_cn_params_add_conv(ps, name, a->widths[j], c == 0 ? a->widths[j + 1] : a->widths[j], 3);
        }
    }
    ld_cn_params_add_conv(ps, "decoder.out", C, a->widths[0], 3);
}

int ld_ae_new(const ld_ae_arch_t *arch, ld_ae_t **out)
{
    *out = NULL;
    int rc = ld_ae_arch_validate(arch);
    if (rc)
        return rc;
    ld_ae_t *m = calloc(1, sizeof *m);
    if (!m)
        return ld_seterr(LD_ENOMEM, "autoencoder: out of memory");
    m->arch = *arch;
    build_tensors(m);
    if ((rc = ld_cn_params_alloc(&m->ps, "autoencoder"))) {
        free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void ld_ae_destroy(ld_ae_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ld_cn_params_free(&(*self_p)->ps);
    free(*self_p);
    *self_p = NULL;
}

int ld_ae_clone(const ld_ae_t *self, ld_ae_t **out)
{
    int rc = ld_ae_new(&self->arch, out);
    if (rc)
        return rc;
    memcpy((*out)->ps.params, self->ps.params, self->ps.numel * sizeof(float));
    return 0;
}

const ld_ae_arch_t *ld_ae_arch(const ld_ae_t *self) { return &self->arch; }
ld_cn_params_t *ld_ae_params(ld_ae_t *self) { return &self->ps; }
const ld_cn_params_t *ld_ae_params_const(const ld_ae_t *self) { return &self->ps; }

void ld_ae_init_random(ld_ae_t *self, uint64_t seed)
{
    double bound = 1.0;
    for (size_t i = 0; i < self->ps.n; i++)
        ld_cn_params_init(&self->ps, i, seed, &bound);
}

/* ------------------------------------------------------------------ */
/* Workspace                                                           */
/* ------------------------------------------------------------------ */

typedef struct {           /* a decoder block's convs */
    ld_cn_conv_t up, conv1, conv2;
} up_plan_t;

typedef struct {           /* a decoder block's activations, at its output side */
    float *u, *c, *t1, *d1, *d2, *g;   /* forward */
    float *dg, *gs, *da2, *da1, *dc;   /* backward */
} up_buf_t;

typedef struct {           /* one sample's activations */
    float *h0, *dh0;
    ld_cn_down_buf_t eb[LD_AE_MAX_LEVELS];
    float *z, *dz;          /* the latent and its gradient, when the caller's buffers are not used */
    float *gst, *dgst;      /* decoder stem output and its gradient */
    up_buf_t db[LD_AE_MAX_LEVELS];
    float *y, *dy, *da_out; /* output, tanh', gradient at the out conv */
} slot_t;

/* Weight-gradient pieces (ld_cn_wpiece_t kinds); layer = block index. */
enum {
    WK_E_STEM, WK_E_DOWN1, WK_E_DOWN2, WK_E_SKIP, WK_E_LATENT,
    WK_D_STEM, WK_D_UP, WK_D_CONV1, WK_D_CONV2, WK_D_OUT
};

struct ld_ae_ws_s {
    ld_ae_arch_t arch;
    int max_batch, threads, levels;
    ld_threadpool_t *pool;
    ld_cn_team_t team;
    ld_cn_conv_t e_stem, e_latent, d_stem, d_out;
    ld_cn_down_t eblk[LD_AE_MAX_LEVELS];
    up_plan_t dblk[LD_AE_MAX_LEVELS];
    const ld_cn_conv_t *convs[4 + 5 * LD_AE_MAX_LEVELS]; /* the encoder's n_enc, then the decoder's n_dec */
    int n_enc, n_dec;
    size_t u_numel;
    float *u;                       /* Winograd weights of every conv */
    slot_t slots[MAX_THREADS];
    ld_cn_scratch_t scr[MAX_THREADS];
    ld_cn_wpiece_t *wp;
    int n_wp;
    void *arena;
};

/* Side of decoder block k's output. */
static int dside(const ld_ae_ws_t *ws, int k) { return ws->arch.size >> (ws->levels - 1 - k); }

static void plan(ld_ae_ws_t *ws, const ld_ae_t *m)
{
    const ld_ae_arch_t *a = &ws->arch;
    int L = ws->levels, S = a->size, C = a->image_channels, Z = a->latent_channels, s = S / a->factor;
    const ld_cn_tensor_t *t = m->ps.t;
    size_t u_off = 0;
    int n = 0;
    ld_cn_conv_plan(&ws->e_stem, C, a->widths[0], S, S, &t[0], &u_off);
    ws->convs[n++] = &ws->e_stem;
    for (int b = 0; b < L; b++) {
        ld_cn_down_plan(&ws->eblk[b], a->widths[b], a->widths[b + 1], S >> b, &t[t_eblock(b)], &u_off);
        ws->convs[n++] = &ws->eblk[b].conv1;
        ws->convs[n++] = &ws->eblk[b].conv2;
    }
    ld_cn_conv_plan(&ws->e_latent, a->widths[L], Z, s, s, &t[t_elatent(L)], &u_off);
    ws->convs[n++] = &ws->e_latent;
    ws->n_enc = n;
    ld_cn_conv_plan(&ws->d_stem, Z, a->widths[L], s, s, &t[t_dstem(L)], &u_off);
    ws->convs[n++] = &ws->d_stem;
    for (int k = 0; k < L; k++) {
        int j = L - 1 - k, side = dside(ws, k), ci = a->widths[j + 1], co = a->widths[j];
        up_plan_t *up = &ws->dblk[k];
        ld_cn_conv_plan(&up->up, ci, co, side, side, &t[t_dblock(L, k)], &u_off);
        ld_cn_conv_plan(&up->conv1, co, co, side, side, &t[t_dblock(L, k) + 2], &u_off);
        ld_cn_conv_plan(&up->conv2, co, co, side, side, &t[t_dblock(L, k) + 4], &u_off);
        ws->convs[n++] = &up->up;
        ws->convs[n++] = &up->conv1;
        ws->convs[n++] = &up->conv2;
    }
    ld_cn_conv_plan(&ws->d_out, a->widths[0], C, S, S, &t[t_dout(L)], &u_off);
    ws->convs[n++] = &ws->d_out;
    ws->n_dec = n - ws->n_enc;
    ws->u_numel = u_off;
}

static void carve_slot(ld_cn_carver_t *c, const ld_ae_ws_t *ws, slot_t *s)
{
    const ld_ae_arch_t *a = &ws->arch;
    int L = ws->levels;
    size_t Q = (size_t)a->size * (size_t)a->size, qs = ld_ae_arch_latent_numel(a) / (size_t)a->latent_channels;
    s->h0 = ld_cn_carve_f(c, (size_t)a->widths[0] * Q);
    s->dh0 = ld_cn_carve_f(c, (size_t)a->widths[0] * Q);
    for (int b = 0; b < L; b++)
        ld_cn_down_carve(c, &ws->eblk[b], &s->eb[b]);
    s->z = ld_cn_carve_f(c, ld_ae_arch_latent_numel(a));
    s->dz = ld_cn_carve_f(c, ld_ae_arch_latent_numel(a));
    s->gst = ld_cn_carve_f(c, (size_t)a->widths[L] * qs);
    s->dgst = ld_cn_carve_f(c, (size_t)a->widths[L] * qs);
    for (int k = 0; k < L; k++) {
        const up_plan_t *up = &ws->dblk[k];
        size_t q = (size_t)dside(ws, k) * (size_t)dside(ws, k), full = (size_t)up->up.cout * q;
        up_buf_t *d = &s->db[k];
        d->u = ld_cn_carve_f(c, (size_t)up->up.cin * q);
        float **bufs[] = { &d->c, &d->t1, &d->d1, &d->d2, &d->g, &d->dg, &d->gs, &d->da2, &d->da1, &d->dc };
        for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
            *bufs[i] = ld_cn_carve_f(c, full);
    }
    s->y = ld_cn_carve_f(c, (size_t)a->image_channels * Q);
    s->dy = ld_cn_carve_f(c, (size_t)a->image_channels * Q);
    s->da_out = ld_cn_carve_f(c, (size_t)a->image_channels * Q);
}

static void carve_all(ld_cn_carver_t *c, ld_ae_ws_t *ws)
{
    ws->u = ld_cn_carve_f(c, ws->u_numel);
    for (int t = 0; t < ws->threads; t++) {
        carve_slot(c, ws, &ws->slots[t]);
        ld_cn_scratch_carve(c, &ws->scr[t], ws->convs, ws->n_enc + ws->n_dec, 0);
    }
    ws->wp = ld_cn_carve(c, (size_t)ws->n_wp * sizeof *ws->wp);
}

/* Full-resolution layers first, so that the last pieces claimed are small. */
static int list_wpieces(const ld_ae_ws_t *ws, ld_cn_wpiece_t *wp)
{
    int n = 0, L = ws->levels;
    for (int lv = 0; lv < L; lv++) { /* lv = 0: the largest maps */
        int k = L - 1 - lv;
        n = ld_cn_add_row_pieces(wp, n, WK_D_CONV2, k, ws->dblk[k].conv2.cout);
        n = ld_cn_add_row_pieces(wp, n, WK_D_CONV1, k, ws->dblk[k].conv1.cout);
        n = ld_cn_add_row_pieces(wp, n, WK_E_DOWN2, lv, ws->eblk[lv].cout);
        n = ld_cn_add_row_pieces(wp, n, WK_E_DOWN1, lv, ws->eblk[lv].cout);
        n = ld_cn_add_row_pieces(wp, n, WK_D_UP, k, ws->dblk[k].up.cout);
    }
    n = ld_cn_add_row_pieces(wp, n, WK_E_STEM, 0, ws->e_stem.cout);
    n = ld_cn_add_row_pieces(wp, n, WK_D_OUT, 0, ws->d_out.cout);
    for (int b = 0; b < L; b++)
        n = ld_cn_add_row_pieces(wp, n, WK_E_SKIP, b, ws->eblk[b].cout);
    n = ld_cn_add_row_pieces(wp, n, WK_E_LATENT, 0, ws->e_latent.cout);
    return ld_cn_add_row_pieces(wp, n, WK_D_STEM, 0, ws->d_stem.cout);
}

int ld_ae_ws_new(const ld_ae_arch_t *arch, int max_batch, int threads, ld_ae_ws_t **out)
{
    *out = NULL;
    int rc = ld_ae_arch_validate(arch);
    if (rc)
        return rc;
    if (max_batch < 1)
        return ld_seterr(LD_EINVAL, "autoencoder workspace: max_batch %d < 1", max_batch);
    if (threads < 1 || threads > MAX_THREADS)
        return ld_seterr(LD_EINVAL, "autoencoder workspace: threads %d outside 1..%d", threads, MAX_THREADS);
    openblas_set_num_threads(1); /* the engine owns the cores (ld_ebm.h) */
    ld_ae_ws_t *ws = calloc(1, sizeof *ws);
    if (!ws)
        return ld_seterr(LD_ENOMEM, "autoencoder workspace: out of memory");
    ws->arch = *arch;
    ws->max_batch = max_batch;
    ws->threads = threads;
    ws->levels = levels(arch);
    ld_ae_t shape = { .arch = *arch }; /* tensor offsets only, no parameters */
    build_tensors(&shape);
    plan(ws, &shape);
    ws->n_wp = list_wpieces(ws, NULL);
    ld_cn_carver_t sizer = { NULL, 0 };
    carve_all(&sizer, ws);
    ws->arena = aligned_alloc(64, sizer.used);
    if (!ws->arena) {
        rc = ld_seterr(LD_ENOMEM, "autoencoder workspace: out of memory (%zu MB for %d threads)", sizer.used >> 20,
                       threads);
        goto fail;
    }
    memset(ws->arena, 0, sizer.used);
    ld_cn_carver_t carver = { ws->arena, 0 };
    carve_all(&carver, ws);
    list_wpieces(ws, ws->wp);
    if ((rc = ld_threadpool_new(threads, &ws->pool)))
        goto fail;
    ws->team = (ld_cn_team_t){ ws->pool, threads, ws->scr, 0, 0, 0 };
    *out = ws;
    return 0;
fail:
    ld_ae_ws_destroy(&ws);
    return rc;
}

void ld_ae_ws_destroy(ld_ae_ws_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ld_threadpool_destroy(&(*self_p)->pool);
    free((*self_p)->arena);
    free(*self_p);
    *self_p = NULL;
}

int ld_ae_ws_max_batch(const ld_ae_ws_t *self) { return self->max_batch; }
int ld_ae_ws_threads(const ld_ae_ws_t *self) { return self->threads; }

/* ------------------------------------------------------------------ */
/* Evaluation                                                          */
/* ------------------------------------------------------------------ */

/* What a call runs, and where its inputs and outputs are ([n][...] arrays;
 * NULL: the slot's buffer). */
typedef struct {
    const ld_ae_t *ae;
    ld_ae_ws_t *ws;
    int enc, dec, dec_bwd, enc_bwd;  /* passes to run, in this order */
    const float *image;              /* encoder input */
    float *latent_out;               /* encoder output */
    const float *latent;             /* decoder input (NULL: the encoder's output) */
    float *image_out;                /* decoder output */
    const float *grad_image;         /* decoder backward seed */
    float *grad_latent_out;          /* decoder backward output */
    const float *grad_latent;        /* encoder backward seed (NULL: the decoder backward's output) */
    float *grad_image_out;           /* encoder backward output (NULL: not computed) */
    float *gparams;                  /* weight gradients (params mode) */
} job_t;

static size_t image_numel(const ld_ae_arch_t *a)
{
    return (size_t)a->image_channels * (size_t)a->size * (size_t)a->size;
}

static const float *at_c(const float *base, size_t per, int i) { return base ? base + (size_t)i * per : NULL; }
static float *at(float *base, size_t per, int i) { return base ? base + (size_t)i * per : NULL; }

/* Sample i's buffers of a job. */
typedef struct {
    const float *image, *zin, *gy, *gz;
    float *z, *y, *dz, *gimage;
} io_t;

static io_t sample_io(const job_t *job, slot_t *s, int i)
{
    const ld_ae_arch_t *a = &job->ws->arch;
    size_t pi = image_numel(a), pz = ld_ae_arch_latent_numel(a);
    io_t io;
    io.image = at_c(job->image, pi, i);
    io.z = job->latent_out ? at(job->latent_out, pz, i) : s->z;
    io.zin = job->latent ? at_c(job->latent, pz, i) : io.z;
    io.y = job->image_out ? at(job->image_out, pi, i) : s->y;
    io.gy = at_c(job->grad_image, pi, i);
    io.dz = job->grad_latent_out ? at(job->grad_latent_out, pz, i) : s->dz;
    io.gz = job->grad_latent ? at_c(job->grad_latent, pz, i) : io.dz;
    io.gimage = at(job->grad_image_out, pi, i);
    return io;
}

static void conv(const ld_cn_exec_t *ex, const job_t *job, const ld_cn_conv_t *cp, int dir, const float *in,
                 ld_wino_out_t out)
{
    ld_cn_conv_call_t cc = { cp, dir, in, job->ws->u, out, 0 };
    ld_cn_conv_run(ex, &cc);
}

static ld_wino_out_t out_mode(int mode, const float *bias, float *out, float *dout, const float *aux, float *pool)
{
    return (ld_wino_out_t){ mode, bias, out, dout, aux, pool };
}

/* Elementwise phases, in pieces of LD_CN_WT_ROWS channels of planes of q floats. */
enum { EW_UPSAMPLE, EW_MUL, EW_RES_BWD };
typedef struct {
    int op, channels, side;    /* side: of the input (UPSAMPLE) or of the planes */
    const float *a, *b;
    float *out, *out2;
} ew_t;

static void ew_run(const ld_cn_exec_t *ex, const ew_t *e)
{
    size_t q = (size_t)e->side * (size_t)e->side;
    LD_CN_FOR_PIECES(ex, (e->channels + LD_CN_WT_ROWS - 1) / LD_CN_WT_ROWS, j) {
        int c0 = j * LD_CN_WT_ROWS, c1 = c0 + LD_CN_WT_ROWS < e->channels ? c0 + LD_CN_WT_ROWS : e->channels;
        size_t i0 = (size_t)c0 * q, i1 = (size_t)c1 * q;
        switch (e->op) {
        case EW_UPSAMPLE: /* out = upsample2(a) */
            ld_upsample2(e->a, e->side, e->side, c0, c1, e->out);
            break;
        case EW_MUL: /* out = a * b */
            for (size_t i = i0; i < i1; i++)
                e->out[i] = e->a[i] * e->b[i];
            break;
        default: /* EW_RES_BWD: out = a / sqrt2 (the gradient to both branches), out2 = out * b */
            for (size_t i = i0; i < i1; i++) {
                e->out[i] = e->a[i] * INV_SQRT2;
                e->out2[i] = e->out[i] * e->b[i];
            }
            break;
        }
    }
    ld_cn_phase_end(ex);
}

static const float *eblock_input(const slot_t *s, int b) { return b == 0 ? s->h0 : s->eb[b - 1].out; }
static const float *dblock_input(const slot_t *s, int k) { return k == 0 ? s->gst : s->db[k - 1].g; }

static void encoder_forward(const ld_cn_exec_t *ex, const job_t *job, slot_t *s, const io_t *io)
{
    const ld_ae_ws_t *ws = job->ws;
    const float *p = job->ae->ps.params;
    conv(ex, job, &ws->e_stem, LD_CN_FWD, io->image,
         out_mode(LD_WINO_OUT_BIAS, p + ws->e_stem.b_off, s->h0, NULL, NULL, NULL));
    for (int b = 0; b < ws->levels; b++)
        ld_cn_down_forward(ex, &ws->eblk[b], p, ws->u, eblock_input(s, b), &s->eb[b], 0);
    conv(ex, job, &ws->e_latent, LD_CN_FWD, s->eb[ws->levels - 1].out,
         out_mode(LD_WINO_OUT_BIAS, p + ws->e_latent.b_off, io->z, NULL, NULL, NULL));
}

static void decoder_forward(const ld_cn_exec_t *ex, const job_t *job, slot_t *s, const io_t *io)
{
    const ld_ae_ws_t *ws = job->ws;
    const float *p = job->ae->ps.params;
    int L = ws->levels;
    conv(ex, job, &ws->d_stem, LD_CN_FWD, io->zin,
         out_mode(LD_WINO_OUT_BIAS, p + ws->d_stem.b_off, s->gst, NULL, NULL, NULL));
    for (int k = 0; k < L; k++) {
        const up_plan_t *up = &ws->dblk[k];
        up_buf_t *d = &s->db[k];
        ew_t e = { EW_UPSAMPLE, up->up.cin, dside(ws, k) / 2, dblock_input(s, k), NULL, d->u, NULL };
        ew_run(ex, &e);
        conv(ex, job, &up->up, LD_CN_FWD, d->u, out_mode(LD_WINO_OUT_BIAS, p + up->up.b_off, d->c, NULL, NULL, NULL));
        conv(ex, job, &up->conv1, LD_CN_FWD, d->c,
             out_mode(LD_WINO_OUT_SILU, p + up->conv1.b_off, d->t1, d->d1, NULL, NULL));
        conv(ex, job, &up->conv2, LD_CN_FWD, d->t1,
             out_mode(LD_WINO_OUT_SILU_RES, p + up->conv2.b_off, d->g, d->d2, d->c, NULL));
    }
    conv(ex, job, &ws->d_out, LD_CN_FWD, s->db[L - 1].g,
         out_mode(LD_WINO_OUT_TANH, p + ws->d_out.b_off, io->y, s->dy, NULL, NULL));
}

static void decoder_backward(const ld_cn_exec_t *ex, const job_t *job, slot_t *s, const io_t *io)
{
    const ld_ae_ws_t *ws = job->ws;
    int L = ws->levels;
    ew_t e = { EW_MUL, ws->arch.image_channels, ws->arch.size, io->gy, s->dy, s->da_out, NULL };
    ew_run(ex, &e);
    conv(ex, job, &ws->d_out, LD_CN_BWD, s->da_out,
         out_mode(LD_WINO_OUT_BIAS, NULL, s->db[L - 1].dg, NULL, NULL, NULL));
    for (int k = L - 1; k >= 0; k--) {
        const up_plan_t *up = &ws->dblk[k];
        up_buf_t *d = &s->db[k];
        ew_t r = { EW_RES_BWD, up->up.cout, dside(ws, k), d->dg, d->d2, d->gs, d->da2 };
        ew_run(ex, &r);
        conv(ex, job, &up->conv2, LD_CN_BWD, d->da2, out_mode(LD_WINO_OUT_MUL, NULL, d->da1, NULL, d->d1, NULL));
        conv(ex, job, &up->conv1, LD_CN_BWD, d->da1, out_mode(LD_WINO_OUT_ADD, NULL, d->dc, NULL, d->gs, NULL));
        conv(ex, job, &up->up, LD_CN_BWD, d->dc,
             out_mode(LD_WINO_OUT_SUM_POOL, NULL, NULL, NULL, NULL, k == 0 ? s->dgst : s->db[k - 1].dg));
    }
    conv(ex, job, &ws->d_stem, LD_CN_BWD, s->dgst, out_mode(LD_WINO_OUT_BIAS, NULL, io->dz, NULL, NULL, NULL));
}

static void encoder_backward(const ld_cn_exec_t *ex, const job_t *job, slot_t *s, const io_t *io)
{
    const ld_ae_ws_t *ws = job->ws;
    const float *p = job->ae->ps.params;
    int L = ws->levels;
    conv(ex, job, &ws->e_latent, LD_CN_BWD, io->gz,
         out_mode(LD_WINO_OUT_BIAS, NULL, s->eb[L - 1].dout, NULL, NULL, NULL));
    for (int b = L - 1; b >= 0; b--)
        ld_cn_down_backward(ex, &ws->eblk[b], p, ws->u, &s->eb[b], b == 0 ? s->dh0 : s->eb[b - 1].dout, 0);
    if (io->gimage)
        conv(ex, job, &ws->e_stem, LD_CN_BWD, s->dh0, out_mode(LD_WINO_OUT_BIAS, NULL, io->gimage, NULL, NULL, NULL));
}

static void run_sample(void *ctx, const ld_cn_exec_t *ex, int sample, int slot)
{
    job_t *job = ctx;
    slot_t *s = &job->ws->slots[slot];
    io_t io = sample_io(job, s, sample);
    if (job->enc)
        encoder_forward(ex, job, s, &io);
    if (job->dec)
        decoder_forward(ex, job, s, &io);
    if (job->dec_bwd)
        decoder_backward(ex, job, s, &io);
    if (job->enc_bwd)
        encoder_backward(ex, job, s, &io);
}

/* The weight transforms of the convs the job runs (transposed ones too
 * when it runs a backward pass). */
static void prep(void *ctx, const ld_cn_exec_t *all)
{
    job_t *job = ctx;
    ld_ae_ws_t *ws = job->ws;
    const ld_cn_conv_t *const *convs = job->enc ? ws->convs : ws->convs + ws->n_enc;
    int n = (job->enc ? ws->n_enc : 0) + (job->dec ? ws->n_dec : 0), with_t = job->dec_bwd || job->enc_bwd;
    LD_CN_FOR_PIECES(all, ld_cn_prep_pieces(convs, n, with_t), j)
    ld_cn_prep_piece(convs, n, with_t, job->ae->ps.params, ws->u, j);
    ld_cn_phase_end(all);
}

static void wpiece_run(void *ctx, const ld_cn_exec_t *ex, const ld_cn_wpiece_t *w, int sample, int slot)
{
    job_t *job = ctx;
    const ld_ae_ws_t *ws = job->ws;
    slot_t *s = &job->ws->slots[slot];
    io_t io = sample_io(job, s, sample);
    const ld_cn_conv_t *cp;
    const float *x, *da;
    int k = w->layer;
    switch (w->kind) {
    case WK_E_DOWN1:
    case WK_E_DOWN2:
    case WK_E_SKIP: {
        static const int layer[] = { [WK_E_DOWN1] = LD_CN_DOWN_CONV1, [WK_E_DOWN2] = LD_CN_DOWN_CONV2,
                                     [WK_E_SKIP] = LD_CN_DOWN_SKIP };
        ld_cn_down_wgrad(ex, &ws->eblk[k], layer[w->kind], eblock_input(s, k), &s->eb[k], w->r0, w->r1, 1.0f,
                         job->gparams);
        return;
    }
    case WK_E_STEM:
        cp = &ws->e_stem, x = io.image, da = s->dh0;
        break;
    case WK_E_LATENT:
        cp = &ws->e_latent, x = s->eb[ws->levels - 1].out, da = io.gz;
        break;
    case WK_D_STEM:
        cp = &ws->d_stem, x = io.zin, da = s->dgst;
        break;
    case WK_D_UP:
        cp = &ws->dblk[k].up, x = s->db[k].u, da = s->db[k].dc;
        break;
    case WK_D_CONV1:
        cp = &ws->dblk[k].conv1, x = s->db[k].c, da = s->db[k].da1;
        break;
    case WK_D_CONV2:
        cp = &ws->dblk[k].conv2, x = s->db[k].t1, da = s->db[k].da2;
        break;
    default: /* WK_D_OUT */
        cp = &ws->d_out, x = s->db[ws->levels - 1].g, da = s->da_out;
        break;
    }
    ld_cn_conv_wgrad(ex, cp, x, da, w->r0, w->r1, 1.0f, job->gparams);
}

static int check_call(const char *what, const ld_ae_t *ae, const ld_ae_ws_t *ws, int n, const void *in,
                      const void *in2, const void *out)
{
    if (!ae || !ws)
        return ld_seterr(LD_EINVAL, "%s: NULL autoencoder or workspace", what);
    if (!ld_ae_arch_same_shape(&ae->arch, &ws->arch)) {
        char am[160], aw[160];
        arch_describe(&ae->arch, am, sizeof am);
        arch_describe(&ws->arch, aw, sizeof aw);
        return ld_seterr(LD_EINVAL, "%s: workspace architecture (%s) differs from the autoencoder's (%s)", what, aw,
                         am);
    }
    if (n < 0 || n > ws->max_batch)
        return ld_seterr(LD_EINVAL, "%s: batch of %d samples outside 0..max_batch %d", what, n, ws->max_batch);
    if (n > 0 && (!in || !in2 || !out))
        return ld_seterr(LD_EINVAL, "%s: NULL input or output buffer", what);
    return 0;
}

static int run(const char *what, job_t *job, int n, const void *in, const void *in2, const void *out)
{
    int rc = check_call(what, job->ae, job->ws, n, in, in2, out);
    if (rc || n == 0)
        return rc;
    ld_cn_job_t r = { .n = n, .ctx = job, .prep = prep, .sample = run_sample };
    if (job->gparams)
        r.wp = job->ws->wp, r.n_wp = job->ws->n_wp, r.wpiece = wpiece_run;
    ld_cn_run(&job->ws->team, &r);
    return 0;
}

int ld_ae_encode(const ld_ae_t *ae, ld_ae_ws_t *ws, int n, const float *image, float *latent_out)
{
    job_t job = { .ae = ae, .ws = ws, .enc = 1, .image = image, .latent_out = latent_out };
    return run("encode", &job, n, image, image, latent_out);
}

int ld_ae_decode(const ld_ae_t *ae, ld_ae_ws_t *ws, int n, const float *latent, float *image_out)
{
    job_t job = { .ae = ae, .ws = ws, .dec = 1, .latent = latent, .image_out = image_out };
    return run("decode", &job, n, latent, latent, image_out);
}

int ld_ae_encode_vjp(const ld_ae_t *ae, ld_ae_ws_t *ws, int n, const float *image, const float *grad_latent,
                     float *grad_image_out)
{
    job_t job = { .ae = ae, .ws = ws, .enc = 1, .enc_bwd = 1, .image = image, .grad_latent = grad_latent,
                  .grad_image_out = grad_image_out };
    return run("encode_vjp", &job, n, image, grad_latent, grad_image_out);
}

int ld_ae_decode_vjp(const ld_ae_t *ae, ld_ae_ws_t *ws, int n, const float *latent, const float *grad_image,
                     float *grad_latent_out)
{
    job_t job = { .ae = ae, .ws = ws, .dec = 1, .dec_bwd = 1, .latent = latent, .grad_image = grad_image,
                  .grad_latent_out = grad_latent_out };
    return run("decode_vjp", &job, n, latent, grad_image, grad_latent_out);
}

int ld_ae_backward_params(const ld_ae_t *ae, ld_ae_ws_t *ws, int n, const float *image, const float *grad_output,
                          float *grad_params)
{
    job_t job = { .ae = ae, .ws = ws, .enc = 1, .dec = 1, .dec_bwd = 1, .enc_bwd = 1, .image = image,
                  .grad_image = grad_output, .gparams = grad_params };
    return run("backward_params", &job, n, image, grad_output, grad_params);
}

/* ------------------------------------------------------------------ */
/* Model files                                                         */
/* ------------------------------------------------------------------ */

/* ld_model_make_fn: ctx is an ld_ae_t **. */
static int ae_make(void *ctx, const char *path, const ld_meta_t *m, ld_cn_params_t **ps)
{
    ld_ae_arch_t a;
    memset(&a, 0, sizeof a);
    const char *widths, *space;
    int factor, rc;
    if ((rc = ld_model_meta_int(path, m, "image_channels", &a.image_channels)) ||
        (rc = ld_model_meta_int(path, m, "size", &a.size)) || (rc = ld_model_meta_string(path, m, "widths", &widths)) ||
        (rc = ld_model_meta_int(path, m, "latent_channels", &a.latent_channels)) ||
        (rc = ld_model_meta_int(path, m, "factor", &factor)) ||
        (rc = ld_model_meta_string(path, m, "colour_space", &space)))
        return rc;
    if (ld_ae_arch_set_widths(&a, widths) != LD_OK)
        return ld_model_bad(path, "metadata 'widths'");
    if (factor != a.factor)
        return ld_seterr(LD_EFORMAT, "%s: metadata 'factor' is %d but widths '%.64s' make factor %d", path, factor,
                         widths, a.factor);
    if (ld_colour_space_parse("metadata 'colour_space'", space, &a.colour_space) != LD_OK)
        return ld_seterr(LD_EFORMAT, "%s: %s", path, ld_errdetail());
    if (ld_ae_arch_validate(&a) != LD_OK)
        return ld_model_bad(path, "metadata describes an invalid autoencoder");
    ld_ae_t **ae = ctx;
    if ((rc = ld_ae_new(&a, ae)))
        return rc;
    *ps = &(*ae)->ps;
    return LD_OK;
}

static void ae_unmake(void *ctx) { ld_ae_destroy(ctx); }

int ld_ae_load(const char *path, ld_ae_t **ae_out, ld_meta_t **meta_out, char hash_out[65])
{
    *ae_out = NULL;
    return ld_model_read(path, FILE_FORMAT, FILE_VERSION, FILE_ARCH, ae_make, ae_unmake, ae_out, meta_out, hash_out);
}

/* ld_model_meta_fn of an autoencoder. */
static int generated_meta(ld_meta_t *m, const void *arch)
{
    const ld_ae_arch_t *a = arch;
    char widths[(LD_AE_MAX_LEVELS + 1) * 12];
    int rc;
    if ((rc = ld_model_join_ints(widths, sizeof widths, a->widths, levels(a) + 1)) ||
        (rc = ld_meta_set(m, "format", FILE_FORMAT)) || (rc = ld_meta_set(m, "version", FILE_VERSION)) ||
        (rc = ld_meta_set(m, "arch", FILE_ARCH)) || (rc = ld_model_set_int(m, "image_channels", a->image_channels)) ||
        (rc = ld_model_set_int(m, "size", a->size)) || (rc = ld_meta_set(m, "widths", widths)) ||
        (rc = ld_model_set_int(m, "latent_channels", a->latent_channels)) ||
        (rc = ld_model_set_int(m, "factor", a->factor)) ||
        (rc = ld_meta_set(m, "colour_space", ld_colour_space_name(a->colour_space))))
        return rc;
    return LD_OK;
}

int ld_ae_save(const char *path, const ld_ae_t *ae, const ld_meta_t *extra, char hash_out[65])
{
    return ld_model_write(path, generated_meta, &ae->arch, extra, &ae->ps, hash_out);
}
