/* ld_ebm: the resdown energy network (see ld_ebm.h): architecture helpers,
 * parameters, and the evaluation engine (forward, backward to the image,
 * backward to the weights) on OpenBLAS GEMMs.
 *
 * How one sample is evaluated (every buffer named here lives in a "slot",
 * the per-sample activation store of the workspace):
 *   stem        h0 = Wstem_img * image + cls[mask]     (cls: per-class bias)
 *   block b     conv1 (Winograd)  -> h1 = silu(a1), d1 = silu'(a1)
 *               skip              -> px = avgpool(x), out = Wskip * px + bs
 *               conv2 (Winograd)  -> d2 = silu'(a2), out = (avgpool(silu(a2)) + out) / sqrt 2
 *   head        v = sum silu(out_L), E = head_b + <head_w + embed[t], v>
 *   backward    dout_L = (head_w + embed[t]) * silu'(out_L); per block, from the last:
 *               g = dout/sqrt2, da2 = g/4 (unpooled) * d2, dpx = Wskip^T g,
 *               da1 = conv2^T(da2) * d1, dx = conv1^T(da1) + dpx/4 (unpooled)
 *               dimage = Wstem_img^T dh0
 * (pooling before the skip 1x1 conv equals PyTorch's conv-then-pool: both are
 * linear; it is 4x cheaper.) The 3x3 convolutions run as Winograd
 * F(4x4,3x3) on layers of at least WINO4_MIN_SIZE pixels a side and
 * F(2x2,3x3) below (ld_conv.h), in bands of tile rows sized so that a band's
 * transformed input stays in cache; transposed convolutions use the
 * transformed flipped kernels, computed once per call ("prep", skipped by
 * ld_ebm_energy_reuse).
 *
 * Determinism: a sample's work is a fixed sequence of phases, each cut into
 * pieces whose shapes depend only on the architecture (tile-row bands,
 * pooled-row chunks, output-channel chunks, single Winograd elements).
 * Threads only choose which pieces they run:
 *   solo  (batch >= threads)  one thread runs all pieces of a sample;
 *   coop  (the n % threads remaining samples) all threads share a sample's
 *         pieces, with a barrier after each phase.
 * A piece computes the same arithmetic either way (OpenBLAS runs
 * single-threaded and sees the same shapes), so energies and gradients are
 * bit-identical for any batch composition and thread count. Weight
 * gradients are summed over samples in sample order, each parameter-row
 * chunk by one thread, never through per-thread partial sums.
 *
 * Memory: ld_ebm_ws_new() allocates everything (one slot per thread, one
 * scratch per thread, transformed weights); evaluations never allocate. */
#include "ld_ebm.h"

#include <cblas.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ld_conv.h"
#include "ld_error.h"
#include "ld_pool.h"
#include "ld_rng.h"

#define INV_SQRT2 0.70710678118654752440f
#define N_TENSORS_MAX (5 + 6 * LD_EBM_MAX_BLOCKS)
#define MAX_THREADS 256

/* Piece sizes. They fix arithmetic (GEMM shapes), so they depend only on
 * the architecture, never on batch or threads. */
#define BAND_FLOATS (768 * 1024) /* Winograd V (or M) buffer of one band: few, large GEMMs */
#define CHUNK_PIXELS 1024        /* stem and skip GEMM column chunks */
#define COL_FLOATS (256 * 1024)  /* im2col chunk for weight gradients */
#define WROWS 32                 /* output rows per weight-gradient piece */
#define WT_ROWS 16               /* output channels per weight-transform piece */
#define WINO4_MIN_SIZE 16        /* F(4x4,3x3) for layers at least this big, else F(2x2,3x3) */

/* ------------------------------------------------------------------ */
/* Architecture                                                        */
/* ------------------------------------------------------------------ */

static int valid_name(const char *s, size_t cap)
{
    size_t n = strnlen(s, cap);
    if (n == 0 || n >= cap)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!isalnum(c) && c != '_' && c != '.' && c != '-')
            return 0;
    }
    return 1;
}

int ld_ebm_arch_validate(const ld_ebm_arch_t *a)
{
    if (!a)
        return ld_seterr(LD_EINVAL, "architecture: NULL");
    if (a->image_channels < 1 || a->image_channels > LD_EBM_MAX_CHANNELS)
        return ld_seterr(LD_ERANGE, "architecture: image_channels %d outside 1..%d", a->image_channels,
                         LD_EBM_MAX_CHANNELS);
    if (a->mask_classes < 1 || a->mask_classes > LD_EBM_MAX_CLASSES)
        return ld_seterr(LD_ERANGE, "architecture: mask_classes %d outside 1..%d", a->mask_classes,
                         LD_EBM_MAX_CLASSES);
    if (a->n_blocks < 1 || a->n_blocks > LD_EBM_MAX_BLOCKS)
        return ld_seterr(LD_ERANGE, "architecture: n_blocks %d outside 1..%d", a->n_blocks, LD_EBM_MAX_BLOCKS);
    for (int i = 0; i <= a->n_blocks; i++)
        if (a->widths[i] < 1 || a->widths[i] > LD_EBM_MAX_WIDTH)
            return ld_seterr(LD_ERANGE, "architecture: widths[%d] = %d outside 1..%d", i, a->widths[i],
                             LD_EBM_MAX_WIDTH);
    int unit = 1 << a->n_blocks;
    if (a->size < 1 || a->size > LD_EBM_MAX_SIZE)
        return ld_seterr(LD_ERANGE, "architecture: size %d outside 1..%d", a->size, LD_EBM_MAX_SIZE);
    if (a->size % unit != 0)
        return ld_seterr(LD_ERANGE, "architecture: size %d is not a multiple of 2^n_blocks = %d", a->size, unit);
    if (a->n_domains < 1 || a->n_domains > LD_EBM_MAX_DOMAINS)
        return ld_seterr(LD_ERANGE, "architecture: n_domains %d outside 1..%d", a->n_domains,
                         LD_EBM_MAX_DOMAINS);
    for (int d = 0; d < a->n_domains; d++) {
        if (!valid_name(a->domains[d], LD_NAME_MAX))
            return ld_seterr(LD_EINVAL, "architecture: domain %d name is empty, too long or not [A-Za-z0-9_.-]+",
                             d);
        for (int e = 0; e < d; e++)
            if (strcmp(a->domains[d], a->domains[e]) == 0)
                return ld_seterr(LD_EINVAL, "architecture: domain '%s' appears twice", a->domains[d]);
    }
    if (!ld_colour_space_name(a->colour_space))
        return ld_seterr(LD_EINVAL, "architecture: colour space %d is not rgb (0) or lab (1)", (int)a->colour_space);
    if (a->colour_space == LD_COLOUR_LAB && a->image_channels != 3)
        return ld_seterr(LD_EINVAL, "architecture: colour space lab needs 3 image channels, not %d",
                         a->image_channels);
    return 0;
}

int ld_ebm_arch_set_widths(ld_ebm_arch_t *arch, const char *csv)
{
    if (!arch || !csv)
        return ld_seterr(LD_EINVAL, "widths: NULL argument");
    int w[LD_EBM_MAX_BLOCKS + 1];
    int count = 0;
    const char *p = csv;
    for (;;) {
        if (!isdigit((unsigned char)*p))
            return ld_seterr(LD_EINVAL, "widths '%s': expected a number at position %d", csv, (int)(p - csv));
        errno = 0;
        char *end;
        long v = strtol(p, &end, 10);
        if (errno || v < 1 || v > LD_EBM_MAX_WIDTH)
            return ld_seterr(LD_ERANGE, "widths '%s': width %.*s outside 1..%d", csv, (int)(end - p), p,
                             LD_EBM_MAX_WIDTH);
        if (count == LD_EBM_MAX_BLOCKS + 1)
            return ld_seterr(LD_ERANGE, "widths '%s': more than %d widths (at most %d blocks)", csv,
                             LD_EBM_MAX_BLOCKS + 1, LD_EBM_MAX_BLOCKS);
        w[count++] = (int)v;
        if (*end == '\0')
            break;
        if (*end != ',')
            return ld_seterr(LD_EINVAL, "widths '%s': unexpected '%c' at position %d", csv, *end,
                             (int)(end - csv));
        p = end + 1;
    }
    if (count < 2)
        return ld_seterr(LD_ERANGE, "widths '%s': need at least 2 widths (w0 and one block)", csv);
    arch->n_blocks = count - 1;
    for (int i = 0; i < count; i++)
        arch->widths[i] = w[i];
    return 0;
}

int ld_ebm_arch_set_domains(ld_ebm_arch_t *arch, const char *csv)
{
    if (!arch || !csv)
        return ld_seterr(LD_EINVAL, "domains: NULL argument");
    char names[LD_EBM_MAX_DOMAINS][LD_NAME_MAX];
    int count = 0;
    const char *p = csv;
    for (;;) {
        size_t len = strcspn(p, ",");
        if (count == LD_EBM_MAX_DOMAINS)
            return ld_seterr(LD_ERANGE, "domains '%s': more than %d domains", csv, LD_EBM_MAX_DOMAINS);
        if (len == 0 || len >= LD_NAME_MAX)
            return ld_seterr(LD_EINVAL, "domains '%s': domain %d is empty or longer than %d characters", csv,
                             count, LD_NAME_MAX - 1);
        memcpy(names[count], p, len);
        names[count][len] = '\0';
        if (!valid_name(names[count], LD_NAME_MAX))
            return ld_seterr(LD_EINVAL, "domains '%s': domain '%s' is not [A-Za-z0-9_.-]+", csv, names[count]);
        for (int e = 0; e < count; e++)
            if (strcmp(names[e], names[count]) == 0)
                return ld_seterr(LD_EINVAL, "domains '%s': domain '%s' appears twice", csv, names[count]);
        count++;
        if (p[len] == '\0')
            break;
        p += len + 1;
    }
    arch->n_domains = count;
    memset(arch->domains, 0, sizeof arch->domains);
    for (int d = 0; d < count; d++)
        memcpy(arch->domains[d], names[d], LD_NAME_MAX);
    return 0;
}

int ld_ebm_arch_domain(const ld_ebm_arch_t *arch, const char *name)
{
    if (!arch || !name)
        return -1;
    for (int d = 0; d < arch->n_domains && d < LD_EBM_MAX_DOMAINS; d++)
        if (strncmp(arch->domains[d], name, LD_NAME_MAX) == 0)
            return d;
    return -1;
}

/* Nominal FLOPs: twice the forward convolutions as PyTorch computes them
 * (direct convolution, the skip 1x1 at full resolution), i.e. forward plus a
 * backward to the input of the same cost. Elementwise work is not counted;
 * the engine itself does less (Winograd, pooled skip). */
double ld_ebm_arch_flops(const ld_ebm_arch_t *a)
{
    double s = a->size, fwd = 2.0 * (a->image_channels + a->mask_classes) * a->widths[0] * s * s;
    for (int b = 0; b < a->n_blocks; b++) {
        double q = (double)(a->size >> b) * (double)(a->size >> b);
        double ci = a->widths[b], co = a->widths[b + 1];
        fwd += 2.0 * q * (9.0 * ci * co + 9.0 * co * co + ci * co);
    }
    fwd += 2.0 * a->widths[a->n_blocks];
    return 2.0 * fwd;
}

int ld_ebm_arch_same_shape(const ld_ebm_arch_t *a, const ld_ebm_arch_t *b)
{
    if (a->image_channels != b->image_channels || a->mask_classes != b->mask_classes || a->size != b->size ||
        a->n_blocks != b->n_blocks || a->n_domains != b->n_domains)
        return 0;
    for (int i = 0; i <= a->n_blocks; i++)
        if (a->widths[i] != b->widths[i])
            return 0;
    return 1;
}

static void arch_describe(const ld_ebm_arch_t *a, char *buf, size_t cap)
{
    int n = snprintf(buf, cap, "C=%d K=%d S=%d D=%d widths=", a->image_channels, a->mask_classes, a->size,
                     a->n_domains);
    for (int i = 0; i <= a->n_blocks && n > 0 && (size_t)n < cap; i++)
        n += snprintf(buf + n, cap - (size_t)n, i ? ",%d" : "%d", a->widths[i]);
}

/* ------------------------------------------------------------------ */
/* Model                                                               */
/* ------------------------------------------------------------------ */

struct ld_ebm_s {
    ld_ebm_arch_t arch;
    size_t numel;
    float *params;
    size_t n_tensors;
    ld_ebm_tensor_t tensors[N_TENSORS_MAX];
    char names[N_TENSORS_MAX][32];
};

/* Tensor indices in state_dict order. */
enum { T_STEM_W = 0, T_STEM_B = 1, T_BLOCK0 = 2 };
enum { B_CONV1_W, B_CONV1_B, B_CONV2_W, B_CONV2_B, B_SKIP_W, B_SKIP_B, B_TENSORS };
static int t_block(int b, int which) { return T_BLOCK0 + B_TENSORS * b + which; }
static int t_head_w(int L) { return T_BLOCK0 + B_TENSORS * L; }
static int t_head_b(int L) { return t_head_w(L) + 1; }
static int t_embed(int L) { return t_head_w(L) + 2; }

static void add_tensor(ld_ebm_t *m, const char *name, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3)
{
    size_t i = m->n_tensors++;
    ld_ebm_tensor_t *t = &m->tensors[i];
    snprintf(m->names[i], sizeof m->names[i], "%s", name);
    t->name = m->names[i];
    t->ndim = ndim;
    int64_t dims[4] = { d0, d1, d2, d3 };
    t->numel = 1;
    for (int k = 0; k < 4; k++) {
        t->shape[k] = k < ndim ? dims[k] : 0;
        if (k < ndim)
            t->numel *= (size_t)dims[k];
    }
    t->offset = m->numel;
    m->numel += t->numel;
}

static void build_tensors(ld_ebm_t *m)
{
    const ld_ebm_arch_t *a = &m->arch;
    int L = a->n_blocks, in = a->image_channels + a->mask_classes;
    char name[32];
    add_tensor(m, "stem.weight", 4, a->widths[0], in, 1, 1);
    add_tensor(m, "stem.bias", 1, a->widths[0], 0, 0, 0);
    for (int b = 0; b < L; b++) {
        int ci = a->widths[b], co = a->widths[b + 1];
        snprintf(name, sizeof name, "blocks.%d.conv1.weight", b);
        add_tensor(m, name, 4, co, ci, 3, 3);
        snprintf(name, sizeof name, "blocks.%d.conv1.bias", b);
        add_tensor(m, name, 1, co, 0, 0, 0);
        snprintf(name, sizeof name, "blocks.%d.conv2.weight", b);
        add_tensor(m, name, 4, co, co, 3, 3);
        snprintf(name, sizeof name, "blocks.%d.conv2.bias", b);
        add_tensor(m, name, 1, co, 0, 0, 0);
        snprintf(name, sizeof name, "blocks.%d.skip.weight", b);
        add_tensor(m, name, 4, co, ci, 1, 1);
        snprintf(name, sizeof name, "blocks.%d.skip.bias", b);
        add_tensor(m, name, 1, co, 0, 0, 0);
    }
    add_tensor(m, "head.weight", 2, 1, a->widths[L], 0, 0);
    add_tensor(m, "head.bias", 1, 1, 0, 0, 0);
    add_tensor(m, "domain_embed.weight", 2, a->n_domains, a->widths[L], 0, 0);
}

int ld_ebm_new(const ld_ebm_arch_t *arch, ld_ebm_t **out)
{
    *out = NULL;
    int rc = ld_ebm_arch_validate(arch);
    if (rc)
        return rc;
    ld_ebm_t *m = calloc(1, sizeof *m);
    if (!m)
        return ld_seterr(LD_ENOMEM, "model: out of memory");
    m->arch = *arch;
    build_tensors(m);
    m->params = calloc(m->numel, sizeof(float));
    if (!m->params) {
        size_t numel = m->numel;
        free(m);
        return ld_seterr(LD_ENOMEM, "model: out of memory for %zu parameters", numel);
    }
    *out = m;
    return 0;
}

void ld_ebm_destroy(ld_ebm_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->params);
    free(*self_p);
    *self_p = NULL;
}

int ld_ebm_clone(const ld_ebm_t *self, ld_ebm_t **out)
{
    int rc = ld_ebm_new(&self->arch, out);
    if (rc)
        return rc;
    memcpy((*out)->params, self->params, self->numel * sizeof(float));
    return 0;
}

const ld_ebm_arch_t *ld_ebm_arch(const ld_ebm_t *self) { return &self->arch; }
size_t ld_ebm_n_tensors(const ld_ebm_t *self) { return self->n_tensors; }
float *ld_ebm_params(ld_ebm_t *self) { return self->params; }
const float *ld_ebm_params_const(const ld_ebm_t *self) { return self->params; }
size_t ld_ebm_numel(const ld_ebm_t *self) { return self->numel; }

const ld_ebm_tensor_t *ld_ebm_tensor(const ld_ebm_t *self, size_t i)
{
    return i < self->n_tensors ? &self->tensors[i] : NULL;
}

int ld_ebm_find_tensor(const ld_ebm_t *self, const char *name)
{
    for (size_t i = 0; i < self->n_tensors; i++)
        if (strcmp(self->tensors[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* PyTorch defaults: Conv2d/Linear weights kaiming_uniform(a=sqrt(5)) and
 * biases both come out as U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the domain
 * embedding is N(0, 1) scaled by 0.1 so that at initialisation the domain
 * term is small next to the head. Tensor i draws from stream i of the seed. */
void ld_ebm_init_random(ld_ebm_t *self, uint64_t seed)
{
    int embed = t_embed(self->arch.n_blocks);
    double bound = 1.0;
    for (size_t i = 0; i < self->n_tensors; i++) {
        const ld_ebm_tensor_t *t = &self->tensors[i];
        float *p = self->params + t->offset;
        ld_rng_t rng;
        ld_rng_init(&rng, seed, i);
        if ((int)i == embed) {
            for (size_t k = 0; k < t->numel; k++)
                p[k] = (float)(0.1 * ld_rng_normal(&rng));
            continue;
        }
        if (t->ndim > 1) /* a weight: fan_in = numel / out_features; its bias follows */
            bound = 1.0 / sqrt((double)(t->numel / (size_t)t->shape[0]));
        for (size_t k = 0; k < t->numel; k++)
            p[k] = (float)((2.0 * ld_rng_uniform(&rng) - 1.0) * bound);
    }
}

/* ------------------------------------------------------------------ */
/* Workspace                                                           */
/* ------------------------------------------------------------------ */

enum { FWD, BWD };

typedef struct {
    int cin, cout, h, w;   /* forward channels; h x w input and output */
    int m, E;              /* Winograd F(m x m, 3x3), E = (m+2)^2 */
    int tw, th;            /* tiles per row and per column */
    int band_rows, n_bands;
    size_t u_off, ut_off;  /* transformed weights in ws->u: forward, transposed */
    size_t w_off, b_off;   /* parameters */
    size_t kc_rows;        /* image rows per im2col chunk (weight gradient) */
} conv_plan_t;

typedef struct {
    conv_plan_t conv1, conv2;
    int cin, cout, h, w;   /* block input */
    int pw, pq;            /* pooled width, pooled plane size */
    int chunk_rows, n_chunks; /* pooled rows per skip chunk */
    size_t skip_w, skip_b;
} block_plan_t;

typedef struct {           /* one sample's activations */
    float *h0, *dh0, *v;
    struct {
        float *h1, *d1, *d2, *px, *out, *dout, *g, *da2, *da1, *dpx;
    } b[LD_EBM_MAX_BLOCKS];
} slot_t;

typedef struct {           /* one thread's temporaries */
    float *v, *m, *col, *xin, *tmp;
    double *prof_s;
    long long *prof_n;
} scratch_t;

/* Weight-gradient pieces: rows [r0, r1) of one parameter group. */
enum { WP_STEM, WP_CONV1, WP_CONV2, WP_SKIP, WP_HEAD };
typedef struct {
    int kind, block, r0, r1;
} wpiece_t;

/* Profile entries: globals, then PB_N per block. */
enum { PR_PREP, PR_STEM_FWD, PR_HEAD, PR_STEM_BWD, PR_WAIT, PR_WGRAD, PR_GLOBAL };
enum {
    PB_CONV1_FWD = 0,   /* +0 in, +1 gemm, +2 out */
    PB_SKIP_FWD = 3,
    PB_CONV2_FWD = 4,
    PB_SKIP_BWD = 7,
    PB_CONV2_BWD = 8,
    PB_CONV1_BWD = 11,
    PB_N = 14
};

struct ld_ebm_ws_s {
    ld_ebm_arch_t arch;
    int max_batch, threads;
    ld_pool_t *pool;
    int stem_rows, stem_chunks;     /* image rows per stem chunk */
    block_plan_t blk[LD_EBM_MAX_BLOCKS];
    size_t u_numel;
    float *u;                       /* Winograd weights of every conv */
    float *cls;                     /* [w0][K] stem bias per mask class */
    slot_t slots[MAX_THREADS];
    scratch_t scr[MAX_THREADS];
    float *user_scratch;
    float *energy_tmp;              /* [max_batch] when the caller wants no energies */
    wpiece_t *wp;
    int n_wp;
    void *arena;
    const ld_ebm_t *prepared;       /* model whose weights u and cls hold */
    int profiling, n_prof;
    char (*prof_names)[48];
    ld_ebm_prof_t *prof_out;
};

static size_t round16(size_t n) { return (n + 15) & ~(size_t)15; }

/* Hands out 64-byte aligned pieces of the arena; with a NULL base it only
 * counts, so the same function sizes and then carves the arena. */
typedef struct {
    char *base;
    size_t used;
} carver_t;

static void *carve(carver_t *c, size_t bytes)
{
    void *p = c->base ? c->base + c->used : NULL;
    c->used += (bytes + 63) & ~(size_t)63;
    return p;
}

static float *carve_f(carver_t *c, size_t n) { return carve(c, n * sizeof(float)); }

static void plan_conv(conv_plan_t *cp, int cin, int cout, int h, int w, size_t *u_off)
{
    cp->cin = cin;
    cp->cout = cout;
    cp->h = h;
    cp->w = w;
    cp->m = h >= WINO4_MIN_SIZE && w >= WINO4_MIN_SIZE ? 4 : 2;
    cp->E = ld_wino_elems(cp->m);
    cp->tw = (w + cp->m - 1) / cp->m;
    cp->th = (h + cp->m - 1) / cp->m;
    int cmax = cin > cout ? cin : cout;
    long rows = BAND_FLOATS / ((long)cp->E * cmax * cp->tw);
    cp->band_rows = rows < 1 ? 1 : rows > cp->th ? cp->th : (int)rows;
    cp->n_bands = (cp->th + cp->band_rows - 1) / cp->band_rows;
    cp->u_off = *u_off;
    *u_off += round16((size_t)cp->E * (size_t)cin * (size_t)cout);
    cp->ut_off = *u_off;
    *u_off += round16((size_t)cp->E * (size_t)cin * (size_t)cout);
    long kc = COL_FLOATS / ((long)cin * 9 * w);
    cp->kc_rows = kc < 1 ? 1 : kc > h ? (size_t)h : (size_t)kc;
}

static size_t band_floats(const conv_plan_t *cp)
{
    int cmax = cp->cin > cp->cout ? cp->cin : cp->cout;
    return (size_t)cp->E * (size_t)cmax * (size_t)cp->band_rows * (size_t)cp->tw;
}

static size_t col_floats(const conv_plan_t *cp)
{
    return (size_t)cp->cin * 9 * cp->kc_rows * (size_t)cp->w;
}

static void plan(ld_ebm_ws_t *ws, const ld_ebm_t *m)
{
    const ld_ebm_arch_t *a = &ws->arch;
    int S = a->size;
    ws->stem_rows = CHUNK_PIXELS / S < 1 ? 1 : CHUNK_PIXELS / S;
    ws->stem_chunks = (S + ws->stem_rows - 1) / ws->stem_rows;
    size_t u_off = 0;
    for (int b = 0; b < a->n_blocks; b++) {
        block_plan_t *bp = &ws->blk[b];
        bp->cin = a->widths[b];
        bp->cout = a->widths[b + 1];
        bp->h = bp->w = S >> b;
        bp->pw = bp->w / 2;
        bp->pq = bp->pw * (bp->h / 2);
        bp->chunk_rows = CHUNK_PIXELS / bp->pw < 1 ? 1 : CHUNK_PIXELS / bp->pw;
        if (bp->chunk_rows > bp->h / 2)
            bp->chunk_rows = bp->h / 2;
        bp->n_chunks = (bp->h / 2 + bp->chunk_rows - 1) / bp->chunk_rows;
        plan_conv(&bp->conv1, bp->cin, bp->cout, bp->h, bp->w, &u_off);
        plan_conv(&bp->conv2, bp->cout, bp->cout, bp->h, bp->w, &u_off);
        bp->conv1.w_off = m->tensors[t_block(b, B_CONV1_W)].offset;
        bp->conv1.b_off = m->tensors[t_block(b, B_CONV1_B)].offset;
        bp->conv2.w_off = m->tensors[t_block(b, B_CONV2_W)].offset;
        bp->conv2.b_off = m->tensors[t_block(b, B_CONV2_B)].offset;
        bp->skip_w = m->tensors[t_block(b, B_SKIP_W)].offset;
        bp->skip_b = m->tensors[t_block(b, B_SKIP_B)].offset;
    }
    ws->u_numel = u_off;
}

static void carve_slot(carver_t *c, const ld_ebm_ws_t *ws, slot_t *s)
{
    const ld_ebm_arch_t *a = &ws->arch;
    size_t q0 = (size_t)a->size * (size_t)a->size;
    s->h0 = carve_f(c, (size_t)a->widths[0] * q0);
    s->dh0 = carve_f(c, (size_t)a->widths[0] * q0);
    s->v = carve_f(c, (size_t)a->widths[a->n_blocks]);
    for (int b = 0; b < a->n_blocks; b++) {
        const block_plan_t *bp = &ws->blk[b];
        size_t full = (size_t)bp->cout * (size_t)bp->h * (size_t)bp->w;
        size_t pooled_out = (size_t)bp->cout * (size_t)bp->pq, pooled_in = (size_t)bp->cin * (size_t)bp->pq;
        s->b[b].h1 = carve_f(c, full);
        s->b[b].d1 = carve_f(c, full);
        s->b[b].d2 = carve_f(c, full);
        s->b[b].da2 = carve_f(c, full);
        s->b[b].da1 = carve_f(c, full);
        s->b[b].px = carve_f(c, pooled_in);
        s->b[b].dpx = carve_f(c, pooled_in);
        s->b[b].out = carve_f(c, pooled_out);
        s->b[b].dout = carve_f(c, pooled_out);
        s->b[b].g = carve_f(c, pooled_out);
    }
}

static void carve_scratch(carver_t *c, const ld_ebm_ws_t *ws, scratch_t *s)
{
    const ld_ebm_arch_t *a = &ws->arch;
    size_t band = 0, col = 0;
    for (int b = 0; b < a->n_blocks; b++) {
        const conv_plan_t *cps[2] = { &ws->blk[b].conv1, &ws->blk[b].conv2 };
        for (int k = 0; k < 2; k++) {
            if (band_floats(cps[k]) > band)
                band = band_floats(cps[k]);
            if (col_floats(cps[k]) > col)
                col = col_floats(cps[k]);
        }
    }
    int L = a->n_blocks;
    size_t qL = (size_t)(a->size >> L) * (size_t)(a->size >> L);
    s->v = carve_f(c, band);
    s->m = carve_f(c, band);
    s->col = carve_f(c, col);
    s->xin = carve_f(c, (size_t)(a->image_channels + a->mask_classes) * (size_t)ws->stem_rows * (size_t)a->size);
    s->tmp = carve_f(c, (size_t)a->widths[L] * qL);
    s->prof_s = carve(c, (size_t)ws->n_prof * sizeof(double));
    s->prof_n = carve(c, (size_t)ws->n_prof * sizeof(long long));
}

static void carve_all(carver_t *c, ld_ebm_ws_t *ws)
{
    const ld_ebm_arch_t *a = &ws->arch;
    ws->u = carve_f(c, ws->u_numel);
    ws->cls = carve_f(c, (size_t)a->widths[0] * (size_t)a->mask_classes);
    ws->user_scratch = carve_f(c, (size_t)ws->max_batch * (size_t)a->image_channels * (size_t)a->size *
                                      (size_t)a->size);
    ws->energy_tmp = carve_f(c, (size_t)ws->max_batch);
    for (int t = 0; t < ws->threads; t++) {
        carve_slot(c, ws, &ws->slots[t]);
        carve_scratch(c, ws, &ws->scr[t]);
    }
    ws->prof_names = carve(c, (size_t)ws->n_prof * sizeof *ws->prof_names);
    ws->prof_out = carve(c, (size_t)ws->n_prof * sizeof *ws->prof_out);
    ws->wp = carve(c, (size_t)ws->n_wp * sizeof *ws->wp);
}

static int add_row_pieces(wpiece_t *wp, int n, int kind, int block, int rows)
{
    for (int r = 0; r < rows; r += WROWS) {
        if (wp)
            wp[n] = (wpiece_t){ kind, block, r, r + WROWS < rows ? r + WROWS : rows };
        n++;
    }
    return n;
}

/* Biggest pieces first so that the last pieces to be claimed are small. */
static int list_wpieces(const ld_ebm_ws_t *ws, wpiece_t *wp)
{
    int n = 0;
    for (int b = ws->arch.n_blocks - 1; b >= 0; b--) {
        n = add_row_pieces(wp, n, WP_CONV2, b, ws->blk[b].cout);
        n = add_row_pieces(wp, n, WP_CONV1, b, ws->blk[b].cout);
    }
    for (int b = ws->arch.n_blocks - 1; b >= 0; b--)
        n = add_row_pieces(wp, n, WP_SKIP, b, ws->blk[b].cout);
    n = add_row_pieces(wp, n, WP_STEM, 0, ws->arch.widths[0]);
    if (wp)
        wp[n] = (wpiece_t){ WP_HEAD, 0, 0, 1 };
    return n + 1;
}

static void name_profile(ld_ebm_ws_t *ws)
{
    static const char *globals[PR_GLOBAL] = { "prep", "stem.fwd", "head", "stem.bwd", "wait", "wgrad" };
    static const char *per_block[PB_N] = { "conv1.fwd.in", "conv1.fwd.gemm", "conv1.fwd.out", "skip.fwd",
                                           "conv2.fwd.in", "conv2.fwd.gemm", "conv2.fwd.out", "skip.bwd",
                                           "conv2.bwd.in", "conv2.bwd.gemm", "conv2.bwd.out", "conv1.bwd.in",
                                           "conv1.bwd.gemm", "conv1.bwd.out" };
    for (int i = 0; i < PR_GLOBAL; i++)
        snprintf(ws->prof_names[i], sizeof ws->prof_names[i], "%s", globals[i]);
    for (int b = 0; b < ws->arch.n_blocks; b++)
        for (int k = 0; k < PB_N; k++)
            snprintf(ws->prof_names[PR_GLOBAL + b * PB_N + k], sizeof ws->prof_names[0], "blocks.%d.%s", b,
                     per_block[k]);
}

int ld_ebm_ws_new(const ld_ebm_arch_t *arch, int max_batch, int threads, ld_ebm_ws_t **out)
{
    *out = NULL;
    int rc = ld_ebm_arch_validate(arch);
    if (rc)
        return rc;
    if (max_batch < 1)
        return ld_seterr(LD_EINVAL, "workspace: max_batch %d < 1", max_batch);
    if (threads < 1 || threads > MAX_THREADS)
        return ld_seterr(LD_EINVAL, "workspace: threads %d outside 1..%d", threads, MAX_THREADS);
    /* The engine owns the cores: OpenBLAS must not start threads of its own
     * under ours (see ld_ebm.h). */
    openblas_set_num_threads(1);
    ld_ebm_ws_t *ws = calloc(1, sizeof *ws);
    if (!ws)
        return ld_seterr(LD_ENOMEM, "workspace: out of memory");
    ws->arch = *arch;
    ws->max_batch = max_batch;
    ws->threads = threads;
    ld_ebm_t shape = { .arch = *arch }; /* tensor offsets only, no parameters */
    build_tensors(&shape);
    plan(ws, &shape);
    ws->n_prof = PR_GLOBAL + PB_N * arch->n_blocks;
    ws->n_wp = list_wpieces(ws, NULL);
    carver_t sizer = { NULL, 0 };
    carve_all(&sizer, ws);
    ws->arena = aligned_alloc(64, sizer.used);
    if (!ws->arena) {
        rc = ld_seterr(LD_ENOMEM, "workspace: out of memory (%zu MB for batch %d, %d threads)", sizer.used >> 20,
                       max_batch, threads);
        goto fail;
    }
    memset(ws->arena, 0, sizer.used);
    carver_t carver = { ws->arena, 0 };
    carve_all(&carver, ws);
    list_wpieces(ws, ws->wp);
    name_profile(ws);
    rc = ld_pool_new(threads, &ws->pool);
    if (rc)
        goto fail;
    *out = ws;
    return 0;
fail:
    ld_ebm_ws_destroy(&ws);
    return rc;
}

void ld_ebm_ws_destroy(ld_ebm_ws_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ld_pool_destroy(&(*self_p)->pool);
    free((*self_p)->arena);
    free(*self_p);
    *self_p = NULL;
}

int ld_ebm_ws_max_batch(const ld_ebm_ws_t *self) { return self->max_batch; }
int ld_ebm_ws_threads(const ld_ebm_ws_t *self) { return self->threads; }
float *ld_ebm_ws_scratch(ld_ebm_ws_t *self) { return self->user_scratch; }

void ld_ebm_ws_set_profiling(ld_ebm_ws_t *self, int on)
{
    self->profiling = on != 0;
    for (int t = 0; t < self->threads; t++) {
        memset(self->scr[t].prof_s, 0, (size_t)self->n_prof * sizeof(double));
        memset(self->scr[t].prof_n, 0, (size_t)self->n_prof * sizeof(long long));
    }
}

int ld_ebm_ws_profile(const ld_ebm_ws_t *self, ld_ebm_prof_t *out, int max)
{
    for (int i = 0; i < self->n_prof && i < max; i++) {
        out[i] = (ld_ebm_prof_t){ self->prof_names[i], 0, 0 };
        for (int t = 0; t < self->threads; t++) {
            out[i].seconds += self->scr[t].prof_s[i];
            out[i].calls += self->scr[t].prof_n[i];
        }
    }
    return self->n_prof;
}

/* ------------------------------------------------------------------ */
/* Evaluation                                                          */
/* ------------------------------------------------------------------ */

typedef struct {
    const ld_ebm_t *m;
    ld_ebm_ws_t *ws;
    int n;
    const float *image;
    const uint8_t *mask;
    const int32_t *target;
    float *energy, *grad;     /* grad: dE/dimage or NULL */
    int backward;             /* run the backward pass */
    int reuse;                /* u and cls are current: skip prep */
    const float *coef;        /* weight gradients: per-sample coefficients */
    float *gparams;
    atomic_int next;          /* next sample / piece to claim */
} job_t;

/* Who runs which pieces of the current sample. */
typedef struct {
    job_t *job;
    ld_ebm_ws_t *ws;
    const float *p;           /* parameters */
    int part, parts;          /* this thread's share: pieces part, part+parts, ... */
    scratch_t *own;           /* this thread's scratch */
    scratch_t *shared;        /* scratch all parts see (thread 0's in coop mode) */
    slot_t *slot;
} exec_t;

#define FOR_PIECES(ex, count, j) for (int j = (ex)->part; j < (count); j += (ex)->parts)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double prof_begin(const exec_t *ex) { return ex->ws->profiling ? now_s() : 0.0; }

static void prof_end(const exec_t *ex, int id, double t0)
{
    if (ex->ws->profiling) {
        ex->own->prof_s[id] += now_s() - t0;
        ex->own->prof_n[id]++;
    }
}

static void barrier(const exec_t *ex)
{
    double t0 = prof_begin(ex);
    ld_pool_barrier(ex->ws->pool);
    prof_end(ex, PR_WAIT, t0);
}

static void phase_end(const exec_t *ex)
{
    if (ex->parts > 1)
        barrier(ex);
}

static int prof_block(int b, int k) { return PR_GLOBAL + b * PB_N + k; }

/* --- weight preparation (once per call) --- */

static int prep_pieces(const ld_ebm_ws_t *ws)
{
    int n = 1; /* the stem class table */
    for (int b = 0; b < ws->arch.n_blocks; b++) {
        const block_plan_t *bp = &ws->blk[b];
        n += 3 * ((bp->cout + WT_ROWS - 1) / WT_ROWS) + (bp->cin + WT_ROWS - 1) / WT_ROWS;
    }
    return n;
}

static void prep_stem(const ld_ebm_ws_t *ws, const float *p)
{
    const ld_ebm_arch_t *a = &ws->arch;
    int C = a->image_channels, K = a->mask_classes, in = C + K;
    const float *w = p, *bias = p + (size_t)a->widths[0] * (size_t)in;
    for (int o = 0; o < a->widths[0]; o++)
        for (int k = 0; k < K; k++) {
            float acc = bias[o];
            for (int j = 0; j < K; j++)
                acc += j == k ? w[o * in + C + j] : -w[o * in + C + j];
            ws->cls[o * K + k] = acc;
        }
}

static void prep_piece(ld_ebm_ws_t *ws, const float *p, int piece)
{
    if (piece == 0) {
        prep_stem(ws, p);
        return;
    }
    piece--;
    for (int b = 0; b < ws->arch.n_blocks; b++) {
        const conv_plan_t *cps[2] = { &ws->blk[b].conv1, &ws->blk[b].conv2 };
        for (int k = 0; k < 2; k++) {
            const conv_plan_t *cp = cps[k];
            int chunks = (cp->cout + WT_ROWS - 1) / WT_ROWS;
            if (piece < chunks) { /* forward: rows are output channels */
                int r0 = piece * WT_ROWS, r1 = r0 + WT_ROWS < cp->cout ? r0 + WT_ROWS : cp->cout;
                ld_wino_weights(cp->m, p + cp->w_off, cp->cout, cp->cin, r0, r1, ws->u + cp->u_off);
                return;
            }
            piece -= chunks;
            chunks = (cp->cin + WT_ROWS - 1) / WT_ROWS;
            if (piece < chunks) { /* transposed: rows are input channels */
                int r0 = piece * WT_ROWS, r1 = r0 + WT_ROWS < cp->cin ? r0 + WT_ROWS : cp->cin;
                ld_wino_weights_t(cp->m, p + cp->w_off, cp->cout, cp->cin, r0, r1, ws->u + cp->ut_off);
                return;
            }
            piece -= chunks;
        }
    }
}

static void prep(exec_t *ex)
{
    double t0 = prof_begin(ex);
    int n = prep_pieces(ex->ws);
    FOR_PIECES(ex, n, j)
    prep_piece(ex->ws, ex->p, j);
    prof_end(ex, PR_PREP, t0);
    phase_end(ex);
}

/* --- Winograd convolution --- */

typedef struct {
    const conv_plan_t *cp;
    int dir;
    const float *in;
    ld_wino_out_t out;
    int prof;                /* profile id of the .in part; +1 gemm, +2 out */
} conv_call_t;

static void band_range(const conv_plan_t *cp, int band, int *ty0, int *ty1, size_t *tiles)
{
    *ty0 = band * cp->band_rows;
    *ty1 = *ty0 + cp->band_rows < cp->th ? *ty0 + cp->band_rows : cp->th;
    *tiles = (size_t)(*ty1 - *ty0) * (size_t)cp->tw;
}

static void conv_channels(const conv_call_t *cc, int *cin, int *cout)
{
    *cin = cc->dir == FWD ? cc->cp->cin : cc->cp->cout;
    *cout = cc->dir == FWD ? cc->cp->cout : cc->cp->cin;
}

static void conv_input(const exec_t *ex, const conv_call_t *cc, scratch_t *s, int band, int c0, int c1)
{
    int ty0, ty1, cin, cout;
    size_t P;
    double t0 = prof_begin(ex);
    band_range(cc->cp, band, &ty0, &ty1, &P);
    conv_channels(cc, &cin, &cout);
    ld_wino_input(cc->cp->m, cc->in, cc->cp->h, cc->cp->w, c0, c1, ty0, ty1, s->v, (size_t)cin * P, P);
    prof_end(ex, cc->prof, t0);
}

static void conv_gemm(const exec_t *ex, const conv_call_t *cc, scratch_t *s, int band, int e)
{
    int ty0, ty1, cin, cout;
    size_t P;
    double t0 = prof_begin(ex);
    band_range(cc->cp, band, &ty0, &ty1, &P);
    conv_channels(cc, &cin, &cout);
    const conv_plan_t *cp = cc->cp;
    const float *u = ex->ws->u + (cc->dir == FWD ? cp->u_off : cp->ut_off);
    size_t usz = (size_t)cp->cout * (size_t)cp->cin;
    /* forward U[e] is [cout][cin], transposed Ut[e] is [cin][cout]: [out][in] either way */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cout, (int)P, cin, 1.0f, u + (size_t)e * usz, cin,
                s->v + (size_t)e * (size_t)cin * P, (int)P, 0.0f, s->m + (size_t)e * (size_t)cout * P, (int)P);
    prof_end(ex, cc->prof + 1, t0);
}

static void conv_output(const exec_t *ex, const conv_call_t *cc, scratch_t *s, int band, int c0, int c1)
{
    int ty0, ty1, cin, cout;
    size_t P;
    double t0 = prof_begin(ex);
    band_range(cc->cp, band, &ty0, &ty1, &P);
    conv_channels(cc, &cin, &cout);
    ld_wino_output(cc->cp->m, s->m, (size_t)cout * P, P, cc->cp->h, cc->cp->w, c0, c1, ty0, ty1, &cc->out);
    prof_end(ex, cc->prof + 2, t0);
}

/* Whole bands per thread when there are enough of them, otherwise every
 * band is split three ways (channels, Winograd elements, channels). */
static void conv_run(const exec_t *ex, const conv_call_t *cc)
{
    const conv_plan_t *cp = cc->cp;
    int cin, cout;
    conv_channels(cc, &cin, &cout);
    if (ex->parts == 1 || cp->n_bands >= 2 * ex->parts || cp->n_bands % ex->parts == 0) {
        FOR_PIECES(ex, cp->n_bands, band) {
            conv_input(ex, cc, ex->own, band, 0, cin);
            for (int e = 0; e < cp->E; e++)
                conv_gemm(ex, cc, ex->own, band, e);
            conv_output(ex, cc, ex->own, band, 0, cout);
        }
        phase_end(ex);
        return;
    }
    for (int band = 0; band < cp->n_bands; band++) {
        conv_input(ex, cc, ex->shared, band, cin * ex->part / ex->parts, cin * (ex->part + 1) / ex->parts);
        phase_end(ex);
        FOR_PIECES(ex, cp->E, e)
        conv_gemm(ex, cc, ex->shared, band, e);
        phase_end(ex);
        conv_output(ex, cc, ex->shared, band, cout * ex->part / ex->parts, cout * (ex->part + 1) / ex->parts);
        phase_end(ex);
    }
}

/* --- forward --- */

static void stem_forward_piece(const exec_t *ex, int sample, int chunk)
{
    const ld_ebm_ws_t *ws = ex->ws;
    const ld_ebm_arch_t *a = &ws->arch;
    int C = a->image_channels, K = a->mask_classes, in = C + K;
    size_t Q = (size_t)a->size * (size_t)a->size;
    size_t p0 = (size_t)chunk * (size_t)ws->stem_rows * (size_t)a->size;
    size_t p1 = p0 + (size_t)ws->stem_rows * (size_t)a->size < Q ? p0 + (size_t)ws->stem_rows * (size_t)a->size : Q;
    const float *img = ex->job->image + (size_t)sample * (size_t)C * Q;
    const uint8_t *mask = ex->job->mask + (size_t)sample * Q;
    for (int o = 0; o < a->widths[0]; o++) {
        float *h = ex->slot->h0 + (size_t)o * Q;
        const float *cls = ws->cls + (size_t)o * (size_t)K;
        for (size_t q = p0; q < p1; q++)
            h[q] = cls[mask[q]];
        for (int c = 0; c < C; c++) {
            float wv = ex->p[o * in + c];
            const float *x = img + (size_t)c * Q;
            for (size_t q = p0; q < p1; q++)
                h[q] = h[q] + wv * x[q];
        }
    }
}

static void stem_forward(const exec_t *ex, int sample)
{
    FOR_PIECES(ex, ex->ws->stem_chunks, j) {
        double t0 = prof_begin(ex);
        stem_forward_piece(ex, sample, j);
        prof_end(ex, PR_STEM_FWD, t0);
    }
    phase_end(ex);
}

static const float *block_input(const slot_t *s, int b) { return b == 0 ? s->h0 : s->b[b - 1].out; }

static void pooled_rows(const block_plan_t *bp, int chunk, int *r0, int *r1)
{
    *r0 = chunk * bp->chunk_rows;
    *r1 = *r0 + bp->chunk_rows < bp->h / 2 ? *r0 + bp->chunk_rows : bp->h / 2;
}

/* px = avgpool(x), out = Wskip px + bs over pooled rows of one chunk. */
static void skip_forward_piece(const exec_t *ex, int b, int chunk)
{
    const block_plan_t *bp = &ex->ws->blk[b];
    int r0, r1;
    pooled_rows(bp, chunk, &r0, &r1);
    float *px = ex->slot->b[b].px, *out = ex->slot->b[b].out;
    ld_avgpool2(block_input(ex->slot, b), bp->h, bp->w, 0, bp->cin, r0, r1, px);
    size_t q0 = (size_t)r0 * (size_t)bp->pw, nq = (size_t)(r1 - r0) * (size_t)bp->pw;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bp->cout, (int)nq, bp->cin, 1.0f, ex->p + bp->skip_w,
                bp->cin, px + q0, bp->pq, 0.0f, out + q0, bp->pq);
    const float *bias = ex->p + bp->skip_b;
    for (int co = 0; co < bp->cout; co++) {
        float *o = out + (size_t)co * (size_t)bp->pq + q0;
        for (size_t q = 0; q < nq; q++)
            o[q] = o[q] + bias[co];
    }
}

static void block_forward(const exec_t *ex, int b)
{
    const block_plan_t *bp = &ex->ws->blk[b];
    slot_t *s = ex->slot;
    conv_call_t c1 = { &bp->conv1, FWD, block_input(s, b),
                       { LD_WINO_OUT_SILU, ex->p + bp->conv1.b_off, s->b[b].h1, s->b[b].d1, NULL, NULL },
                       prof_block(b, PB_CONV1_FWD) };
    conv_run(ex, &c1);
    FOR_PIECES(ex, bp->n_chunks, j) {
        double t0 = prof_begin(ex);
        skip_forward_piece(ex, b, j);
        prof_end(ex, prof_block(b, PB_SKIP_FWD), t0);
    }
    phase_end(ex);
    conv_call_t c2 = { &bp->conv2, FWD, s->b[b].h1,
                       { LD_WINO_OUT_SILU_POOL_RES, ex->p + bp->conv2.b_off, NULL, s->b[b].d2, NULL, s->b[b].out },
                       prof_block(b, PB_CONV2_FWD) };
    conv_run(ex, &c2);
}

/* v = sum silu(out_L); E = head_b + <head_w + embed[t], v>; and the
 * gradient seed dout_L = (head_w + embed[t]) * silu'(out_L). */
static void head_piece(const exec_t *ex, int sample)
{
    const ld_ebm_arch_t *a = &ex->ws->arch;
    const ld_ebm_t *m = ex->job->m;
    int L = a->n_blocks, wL = a->widths[L];
    size_t qL = (size_t)(a->size >> L) * (size_t)(a->size >> L);
    const float *hw = ex->p + m->tensors[t_head_w(L)].offset;
    float hb = ex->p[m->tensors[t_head_b(L)].offset];
    const float *emb = ex->p + m->tensors[t_embed(L)].offset + (size_t)ex->job->target[sample] * (size_t)wL;
    const float *out = ex->slot->b[L - 1].out;
    float *tmp = ex->own->tmp;
    ld_silu(out, tmp, NULL, (size_t)wL * qL);
    double e = hb;
    for (int c = 0; c < wL; c++) {
        double acc = 0;
        for (size_t q = 0; q < qL; q++)
            acc += tmp[(size_t)c * qL + q];
        ex->slot->v[c] = (float)acc;
        e += (double)(hw[c] + emb[c]) * (double)ex->slot->v[c];
    }
    ex->job->energy[sample] = (float)e;
    if (!ex->job->backward)
        return;
    float *dout = ex->slot->b[L - 1].dout;
    ld_silu(out, NULL, dout, (size_t)wL * qL);
    for (int c = 0; c < wL; c++) {
        float dv = hw[c] + emb[c];
        for (size_t q = 0; q < qL; q++)
            dout[(size_t)c * qL + q] = dv * dout[(size_t)c * qL + q];
    }
}

static void forward(const exec_t *ex, int sample)
{
    stem_forward(ex, sample);
    for (int b = 0; b < ex->ws->arch.n_blocks; b++)
        block_forward(ex, b);
    FOR_PIECES(ex, 1, j) {
        double t0 = prof_begin(ex);
        head_piece(ex, sample);
        prof_end(ex, PR_HEAD, t0);
    }
    phase_end(ex);
}

/* --- backward to the input --- */

/* Pieces 0..cout-chunks-1: da2 = dout/sqrt2/4 (unpooled) * d2 for a channel
 * range; the next n_chunks pieces: g = dout/sqrt2 and dpx = Wskip^T g over
 * pooled rows. */
static int skip_bwd_channel_pieces(const block_plan_t *bp) { return (bp->cout + WT_ROWS - 1) / WT_ROWS; }

static void skip_backward_piece(const exec_t *ex, int b, int piece)
{
    const block_plan_t *bp = &ex->ws->blk[b];
    slot_t *s = ex->slot;
    int nch = skip_bwd_channel_pieces(bp);
    if (piece < nch) {
        int c0 = piece * WT_ROWS, c1 = c0 + WT_ROWS < bp->cout ? c0 + WT_ROWS : bp->cout;
        for (int c = c0; c < c1; c++) {
            const float *dout = s->b[b].dout + (size_t)c * (size_t)bp->pq;
            const float *d2 = s->b[b].d2 + (size_t)c * (size_t)bp->h * (size_t)bp->w;
            float *da2 = s->b[b].da2 + (size_t)c * (size_t)bp->h * (size_t)bp->w;
            for (int y = 0; y < bp->h; y++) {
                const float *gr = dout + (size_t)(y / 2) * (size_t)bp->pw;
                const float *dr = d2 + (size_t)y * (size_t)bp->w;
                float *ar = da2 + (size_t)y * (size_t)bp->w;
                for (int q = 0; q < bp->pw; q++) {
                    float gq = gr[q] * (0.25f * INV_SQRT2);
                    ar[2 * q] = gq * dr[2 * q];
                    ar[2 * q + 1] = gq * dr[2 * q + 1];
                }
            }
        }
        return;
    }
    int r0, r1;
    pooled_rows(bp, piece - nch, &r0, &r1);
    size_t q0 = (size_t)r0 * (size_t)bp->pw, nq = (size_t)(r1 - r0) * (size_t)bp->pw;
    for (int c = 0; c < bp->cout; c++) {
        const float *dout = s->b[b].dout + (size_t)c * (size_t)bp->pq + q0;
        float *g = s->b[b].g + (size_t)c * (size_t)bp->pq + q0;
        for (size_t q = 0; q < nq; q++)
            g[q] = dout[q] * INV_SQRT2;
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bp->cin, (int)nq, bp->cout, 1.0f, ex->p + bp->skip_w,
                bp->cin, s->b[b].g + q0, bp->pq, 0.0f, s->b[b].dpx + q0, bp->pq);
}

static void block_backward(const exec_t *ex, int b)
{
    const block_plan_t *bp = &ex->ws->blk[b];
    slot_t *s = ex->slot;
    int pieces = skip_bwd_channel_pieces(bp) + bp->n_chunks;
    FOR_PIECES(ex, pieces, j) {
        double t0 = prof_begin(ex);
        skip_backward_piece(ex, b, j);
        prof_end(ex, prof_block(b, PB_SKIP_BWD), t0);
    }
    phase_end(ex);
    conv_call_t c2 = { &bp->conv2, BWD, s->b[b].da2, { LD_WINO_OUT_MUL, NULL, s->b[b].da1, NULL, s->b[b].d1, NULL },
                       prof_block(b, PB_CONV2_BWD) };
    conv_run(ex, &c2);
    float *dx = b == 0 ? s->dh0 : s->b[b - 1].dout;
    conv_call_t c1 = { &bp->conv1, BWD, s->b[b].da1, { LD_WINO_OUT_ADD_UNPOOL, NULL, dx, NULL, s->b[b].dpx, NULL },
                       prof_block(b, PB_CONV1_BWD) };
    conv_run(ex, &c1);
}

static void stem_backward_piece(const exec_t *ex, int sample, int chunk)
{
    const ld_ebm_ws_t *ws = ex->ws;
    const ld_ebm_arch_t *a = &ws->arch;
    int C = a->image_channels, in = C + a->mask_classes;
    int Q = a->size * a->size;
    int p0 = chunk * ws->stem_rows * a->size;
    int np = p0 + ws->stem_rows * a->size < Q ? ws->stem_rows * a->size : Q - p0;
    float *grad = ex->job->grad + (size_t)sample * (size_t)C * (size_t)Q;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, np, a->widths[0], 1.0f, ex->p, in, ex->slot->dh0 + p0, Q,
                0.0f, grad + p0, Q);
}

static void backward(const exec_t *ex, int sample)
{
    for (int b = ex->ws->arch.n_blocks - 1; b >= 0; b--)
        block_backward(ex, b);
    if (!ex->job->grad)
        return;
    FOR_PIECES(ex, ex->ws->stem_chunks, j) {
        double t0 = prof_begin(ex);
        stem_backward_piece(ex, sample, j);
        prof_end(ex, PR_STEM_BWD, t0);
    }
    phase_end(ex);
}

static void run_sample(const exec_t *ex, int sample)
{
    forward(ex, sample);
    if (ex->job->backward)
        backward(ex, sample);
}

static exec_t solo_exec(job_t *job, int tid, int slot)
{
    ld_ebm_ws_t *ws = job->ws;
    return (exec_t){ job, ws, job->m->params, 0, 1, &ws->scr[tid], &ws->scr[tid], &ws->slots[slot] };
}

static exec_t coop_exec(job_t *job, int tid, int slot)
{
    ld_ebm_ws_t *ws = job->ws;
    return (exec_t){ job, ws, job->m->params, tid, ws->threads, &ws->scr[tid], &ws->scr[0], &ws->slots[slot] };
}

/* Solo samples are claimed one at a time; the n % threads left over are
 * run by all threads together. */
static void energy_job(void *ctx, int tid)
{
    job_t *job = ctx;
    int T = job->ws->threads;
    exec_t all = coop_exec(job, tid, 0);
    if (!job->reuse)
        prep(&all);
    int n_solo = job->n - job->n % T;
    exec_t solo = solo_exec(job, tid, tid);
    for (int i; (i = atomic_fetch_add(&job->next, 1)) < n_solo;)
        run_sample(&solo, i);
    if (n_solo == job->n)
        return;
    phase_end(&all);
    for (int i = n_solo; i < job->n; i++)
        run_sample(&all, i);
}

/* --- validation --- */

static int check_call(const ld_ebm_t *m, const ld_ebm_ws_t *ws, int n, const float *image, const uint8_t *mask,
                      const int32_t *target, const float *energy_out)
{
    if (!m || !ws)
        return ld_seterr(LD_EINVAL, "energy: NULL model or workspace");
    if (!ld_ebm_arch_same_shape(&m->arch, &ws->arch)) {
        char am[160], aw[160];
        arch_describe(&m->arch, am, sizeof am);
        arch_describe(&ws->arch, aw, sizeof aw);
        return ld_seterr(LD_EINVAL, "energy: workspace architecture (%s) differs from the model's (%s)", aw, am);
    }
    if (n < 0 || n > ws->max_batch)
        return ld_seterr(LD_EINVAL, "energy: batch of %d samples outside 0..max_batch %d", n, ws->max_batch);
    if (n > 0 && (!image || !mask || !target || !energy_out))
        return ld_seterr(LD_EINVAL, "energy: NULL image, mask, target or output buffer");
    const ld_ebm_arch_t *a = &m->arch;
    size_t Q = (size_t)a->size * (size_t)a->size;
    for (int i = 0; i < n; i++) {
        if (target[i] < 0 || target[i] >= a->n_domains)
            return ld_seterr(LD_EINVAL, "energy: sample %d: target domain %d outside 0..%d", i, (int)target[i],
                             a->n_domains - 1);
        const uint8_t *mk = mask + (size_t)i * Q;
        uint8_t hi = 0;
        for (size_t q = 0; q < Q; q++)
            hi = mk[q] > hi ? mk[q] : hi;
        if (hi < a->mask_classes)
            continue;
        for (size_t q = 0; q < Q; q++)
            if (mk[q] >= a->mask_classes)
                return ld_seterr(LD_EINVAL, "energy: sample %d: mask value %d at (y %zu, x %zu) >= mask_classes %d",
                                 i, mk[q], q / (size_t)a->size, q % (size_t)a->size, a->mask_classes);
    }
    return 0;
}

static int energy(const ld_ebm_t *m, ld_ebm_ws_t *ws, int n, const float *image, const uint8_t *mask,
                  const int32_t *target, float *energy_out, float *grad_out, int reuse)
{
    int rc = check_call(m, ws, n, image, mask, target, energy_out);
    if (rc || n == 0)
        return rc;
    job_t job = { .m = m, .ws = ws, .n = n, .image = image, .mask = mask, .target = target,
                  .energy = energy_out, .grad = grad_out, .backward = grad_out != NULL,
                  .reuse = reuse && ws->prepared == m };
    atomic_init(&job.next, 0);
    ws->prepared = m;
    ld_pool_run(ws->pool, energy_job, &job);
    return 0;
}

int ld_ebm_energy(const ld_ebm_t *m, ld_ebm_ws_t *ws, int n, const float *image, const uint8_t *mask,
                  const int32_t *target, float *energy_out, float *grad_out)
{
    return energy(m, ws, n, image, mask, target, energy_out, grad_out, 0);
}

int ld_ebm_energy_reuse(const ld_ebm_t *m, ld_ebm_ws_t *ws, int n, const float *image, const uint8_t *mask,
                        const int32_t *target, float *energy_out, float *grad_out)
{
    return energy(m, ws, n, image, mask, target, energy_out, grad_out, 1);
}

/* --- backward to the weights --- */

static void add_bias_grad(float *gb, const float *da, int r0, int r1, size_t q, float coef)
{
    for (int r = r0; r < r1; r++) {
        double acc = 0;
        const float *row = da + (size_t)r * q;
        for (size_t k = 0; k < q; k++)
            acc += row[k];
        gb[r] += (float)((double)coef * acc);
    }
}

/* dW[r0:r1] += coef * dA[r0:r1] (cout x h*w) * im2col(x)^T, in fixed chunks of image rows. */
static void conv_wgrad(const exec_t *ex, const conv_plan_t *cp, const float *x, const float *da, int r0, int r1,
                       float coef)
{
    float *gw = ex->job->gparams + cp->w_off + (size_t)r0 * (size_t)cp->cin * 9;
    size_t Q = (size_t)cp->h * (size_t)cp->w;
    for (int y0 = 0; y0 < cp->h; y0 += (int)cp->kc_rows) {
        int y1 = y0 + (int)cp->kc_rows < cp->h ? y0 + (int)cp->kc_rows : cp->h;
        int np = (y1 - y0) * cp->w;
        ld_im2col3x3(x, cp->cin, cp->h, cp->w, y0, y1, ex->own->col, (size_t)np);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, cp->cin * 9, np, coef,
                    da + (size_t)r0 * Q + (size_t)y0 * (size_t)cp->w, (int)Q, ex->own->col, np, 1.0f, gw,
                    cp->cin * 9);
    }
    add_bias_grad(ex->job->gparams + cp->b_off, da, r0, r1, Q, coef);
}

static void skip_wgrad(const exec_t *ex, const slot_t *s, int b, int r0, int r1, float coef)
{
    const block_plan_t *bp = &ex->ws->blk[b];
    float *gw = ex->job->gparams + bp->skip_w + (size_t)r0 * (size_t)bp->cin;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, bp->cin, bp->pq, coef,
                s->b[b].g + (size_t)r0 * (size_t)bp->pq, bp->pq, s->b[b].px, bp->pq, 1.0f, gw, bp->cin);
    add_bias_grad(ex->job->gparams + bp->skip_b, s->b[b].g, r0, r1, (size_t)bp->pq, coef);
}

static void stem_wgrad(const exec_t *ex, const slot_t *s, int sample, int r0, int r1, float coef)
{
    const ld_ebm_arch_t *a = &ex->ws->arch;
    int C = a->image_channels, K = a->mask_classes, in = C + K, S = a->size;
    int Q = S * S;
    const float *img = ex->job->image + (size_t)sample * (size_t)C * (size_t)Q;
    const uint8_t *mask = ex->job->mask + (size_t)sample * (size_t)Q;
    float *xin = ex->own->xin;
    for (int c0 = 0; c0 < ex->ws->stem_chunks; c0++) {
        int p0 = c0 * ex->ws->stem_rows * S;
        int np = p0 + ex->ws->stem_rows * S < Q ? ex->ws->stem_rows * S : Q - p0;
        for (int c = 0; c < C; c++)
            memcpy(xin + (size_t)c * (size_t)np, img + (size_t)c * (size_t)Q + p0, (size_t)np * sizeof(float));
        for (int k = 0; k < K; k++)
            for (int q = 0; q < np; q++)
                xin[(size_t)(C + k) * (size_t)np + (size_t)q] = mask[p0 + q] == k ? 1.0f : -1.0f;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, in, np, coef,
                    s->dh0 + (size_t)r0 * (size_t)Q + p0, Q, xin, np, 1.0f, ex->job->gparams + (size_t)r0 * (size_t)in,
                    in);
    }
    add_bias_grad(ex->job->gparams + (size_t)a->widths[0] * (size_t)in, s->dh0, r0, r1, (size_t)Q, coef);
}

static void head_wgrad(const exec_t *ex, const slot_t *s, int sample, float coef)
{
    const ld_ebm_t *m = ex->job->m;
    int L = m->arch.n_blocks, wL = m->arch.widths[L];
    float *gp = ex->job->gparams;
    float *gh = gp + m->tensors[t_head_w(L)].offset;
    float *ge = gp + m->tensors[t_embed(L)].offset + (size_t)ex->job->target[sample] * (size_t)wL;
    for (int c = 0; c < wL; c++) {
        gh[c] += coef * s->v[c];
        ge[c] += coef * s->v[c];
    }
    gp[m->tensors[t_head_b(L)].offset] += coef;
}

static void wpiece_run(const exec_t *ex, const wpiece_t *w, int sample, const slot_t *s)
{
    float coef = ex->job->coef[sample];
    if (coef == 0.0f)
        return;
    const block_plan_t *bp = &ex->ws->blk[w->block];
    switch (w->kind) {
    case WP_CONV1:
        conv_wgrad(ex, &bp->conv1, block_input(s, w->block), s->b[w->block].da1, w->r0, w->r1, coef);
        break;
    case WP_CONV2:
        conv_wgrad(ex, &bp->conv2, s->b[w->block].h1, s->b[w->block].da2, w->r0, w->r1, coef);
        break;
    case WP_SKIP:
        skip_wgrad(ex, s, w->block, w->r0, w->r1, coef);
        break;
    case WP_STEM:
        stem_wgrad(ex, s, sample, w->r0, w->r1, coef);
        break;
    default:
        head_wgrad(ex, s, sample, coef);
        break;
    }
}

/* Groups of `threads` samples: forward+backward (one sample per thread, or
 * all threads on each sample of a short last group), then every piece of
 * the weight gradient adds the group's samples in sample order. */
static void params_job(void *ctx, int tid)
{
    job_t *job = ctx;
    ld_ebm_ws_t *ws = job->ws;
    int T = ws->threads;
    exec_t all = coop_exec(job, tid, 0);
    prep(&all);
    for (int g0 = 0; g0 < job->n; g0 += T) {
        int count = job->n - g0 < T ? job->n - g0 : T;
        if (count == T) {
            exec_t solo = solo_exec(job, tid, tid);
            run_sample(&solo, g0 + tid);
        } else {
            for (int j = 0; j < count; j++) {
                exec_t coop = coop_exec(job, tid, j);
                run_sample(&coop, g0 + j);
            }
        }
        if (tid == 0)
            atomic_store(&job->next, 0);
        phase_end(&all);
        double t0 = prof_begin(&all);
        for (int k; (k = atomic_fetch_add(&job->next, 1)) < ws->n_wp;)
            for (int j = 0; j < count; j++)
                wpiece_run(&all, &ws->wp[k], g0 + j, &ws->slots[j]);
        prof_end(&all, PR_WGRAD, t0);
        phase_end(&all);
    }
}

int ld_ebm_backward_params(const ld_ebm_t *m, ld_ebm_ws_t *ws, int n, const float *image, const uint8_t *mask,
                           const int32_t *target, const float *coef, float *energy_out, float *grad_params)
{
    int rc = check_call(m, ws, n, image, mask, target, coef);
    if (rc || n == 0)
        return rc;
    if (!grad_params)
        return ld_seterr(LD_EINVAL, "backward_params: NULL gradient buffer");
    float *energy = energy_out ? energy_out : ws->energy_tmp;
    job_t job = { .m = m, .ws = ws, .n = n, .image = image, .mask = mask, .target = target, .energy = energy,
                  .backward = 1, .coef = coef, .gparams = grad_params };
    atomic_init(&job.next, 0);
    ws->prepared = m;
    ld_pool_run(ws->pool, params_job, &job);
    return 0;
}

/* --- parallel-for for callers --- */

typedef struct {
    ld_ebm_task_fn fn;
    void *ctx;
    int pieces;
    atomic_int next;
} task_job_t;

static void task_job(void *ctx, int tid)
{
    task_job_t *tj = ctx;
    for (int k; (k = atomic_fetch_add(&tj->next, 1)) < tj->pieces;)
        tj->fn(tj->ctx, k, tid);
}

void ld_ebm_ws_parallel(ld_ebm_ws_t *self, int pieces, ld_ebm_task_fn fn, void *ctx)
{
    if (pieces <= 0)
        return;
    task_job_t tj = { fn, ctx, pieces, 0 };
    atomic_init(&tj.next, 0);
    ld_pool_run(self->pool, task_job, &tj);
}
