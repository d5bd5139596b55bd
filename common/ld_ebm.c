/* ld_ebm: the resdown energy network (see ld_ebm.h): architecture helpers,
 * parameters, and the evaluation engine (forward, backward to the image,
 * backward to the weights), built from ld_convnet's layers on OpenBLAS GEMMs.
 *
 * How one sample is evaluated (every buffer named here lives in a "slot",
 * the per-sample activation store of the workspace):
 *   stem        h0 = Wstem_img * image + cls[mask]     (cls: per-class bias)
 *   block b     the down block of ld_convnet.h:
 *               conv1 (Winograd)  -> h1 = silu(a1), d1 = silu'(a1)
 *               skip              -> px = avgpool(x), out = Wskip * px + bs
 *               conv2 (Winograd)  -> d2 = silu'(a2), out = (avgpool(silu(a2)) + out) / sqrt 2
 *   head        v = sum silu(out_L), E = head_b + <head_w + embed[t], v>
 *   backward    dout_L = (head_w + embed[t]) * silu'(out_L); per block, from the last:
 *               g = dout/sqrt2, da2 = g/4 (unpooled) * d2, dpx = Wskip^T g,
 *               da1 = conv2^T(da2) * d1, dx = conv1^T(da1) + dpx/4 (unpooled)
 *               dimage = Wstem_img^T dh0
 * Transposed convolutions use the transformed flipped kernels, computed once
 * per call ("prep", skipped by ld_ebm_energy_reuse).
 *
 * Determinism: as ld_convnet.h describes (fixed pieces, solo and coop
 * samples, weight gradients summed in sample order), so energies and
 * gradients are bit-identical for any batch composition and thread count.
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

#include "ld_error.h"
#include "ld_rng.h"

#define MAX_THREADS 256

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

bool ld_ebm_arch_domain(const ld_ebm_arch_t *arch, const char *name, int *index)
{
    if (!arch || !name)
        return false;
    for (int d = 0; d < arch->n_domains && d < LD_EBM_MAX_DOMAINS; d++)
        if (strncmp(arch->domains[d], name, LD_NAME_MAX) == 0) {
            *index = d;
            return true;
        }
    return false;
}

/* Index of the domain named by the len characters at name, or -1. */
static int domain_n(const ld_ebm_arch_t *arch, const char *name, size_t len)
{
    for (int d = 0; d < arch->n_domains && d < LD_EBM_MAX_DOMAINS; d++)
        if (len < LD_NAME_MAX && strncmp(arch->domains[d], name, len) == 0 && arch->domains[d][len] == '\0')
            return d;
    return -1;
}

/* Names in the details are cut at PAIR_SHOWN characters: the text may come
 * from a hostile file. */
#define PAIR_SHOWN 130

int ld_ebm_arch_parse_pairs(const ld_ebm_arch_t *arch, const char *text, ld_ebm_pair_t *pairs, int *n_out)
{
    if (!arch || !text || !pairs || !n_out)
        return ld_seterr(LD_EINVAL, "pairs: NULL argument");
    *n_out = 0;
    if (!*text)
        return 0;
    char names[LD_EBM_MAX_DOMAINS * LD_NAME_MAX] = "";
    for (int d = 0, used = 0; d < arch->n_domains && d < LD_EBM_MAX_DOMAINS; d++)
        used += snprintf(names + used, sizeof names - (size_t)used, "%s%s", d ? "," : "", arch->domains[d]);
    int n = 0;
    for (const char *p = text;; p++) {
        size_t len = strcspn(p, ","), colon = strcspn(p, ":,");
        int shown = len < PAIR_SHOWN ? (int)len : PAIR_SHOWN;
        if (colon >= len || memchr(p + colon + 1, ':', len - colon - 1))
            return ld_seterr(LD_EINVAL, "pair '%.*s' is not source:target (pairs are A:B,C:D)", shown, p);
        int s = domain_n(arch, p, colon), t = domain_n(arch, p + colon + 1, len - colon - 1);
        if (s < 0 || t < 0) {
            const char *bad = s < 0 ? p : p + colon + 1;
            int bad_len = (int)(s < 0 ? colon : len - colon - 1);
            return ld_seterr(LD_EINVAL, "pair '%.*s': '%.*s' is not one of the domains %s", shown, p,
                             bad_len < PAIR_SHOWN ? bad_len : PAIR_SHOWN, bad, names);
        }
        if (s == t)
            return ld_seterr(LD_EINVAL, "pair '%.*s': source and target are the same domain", shown, p);
        for (int k = 0; k < n; k++)
            if (pairs[k].source == s && pairs[k].target == t)
                return ld_seterr(LD_EINVAL, "pair '%.*s' is listed twice", shown, p);
        pairs[n++] = (ld_ebm_pair_t){ s, t };
        p += len;
        if (!*p)
            break;
    }
    *n_out = n;
    return 0;
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
    ld_cn_params_t ps;
};

/* Tensor indices in state_dict order. */
enum { T_STEM_W = 0, T_STEM_B = 1, T_BLOCK0 = 2 };
enum { B_TENSORS = 6 }; /* a down block's tensors (ld_convnet.h) */
static int t_block(int b) { return T_BLOCK0 + B_TENSORS * b; }
static int t_head_w(int L) { return T_BLOCK0 + B_TENSORS * L; }
static int t_head_b(int L) { return t_head_w(L) + 1; }
static int t_embed(int L) { return t_head_w(L) + 2; }

static void build_tensors(ld_ebm_t *m)
{
    const ld_ebm_arch_t *a = &m->arch;
    int L = a->n_blocks;
    char name[32];
    ld_cn_params_add_conv(&m->ps, "stem", a->widths[0], a->image_channels + a->mask_classes, 1);
    for (int b = 0; b < L; b++) {
        snprintf(name, sizeof name, "blocks.%d", b);
        ld_cn_down_add_tensors(&m->ps, name, a->widths[b], a->widths[b + 1]);
    }
    ld_cn_params_add(&m->ps, "head.weight", 2, 1, a->widths[L], 0, 0);
    ld_cn_params_add(&m->ps, "head.bias", 1, 1, 0, 0, 0);
    ld_cn_params_add(&m->ps, "domain_embed.weight", 2, a->n_domains, a->widths[L], 0, 0);
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
    if ((rc = ld_cn_params_alloc(&m->ps, "model"))) {
        free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void ld_ebm_destroy(ld_ebm_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ld_cn_params_free(&(*self_p)->ps);
    free(*self_p);
    *self_p = NULL;
}

int ld_ebm_clone(const ld_ebm_t *self, ld_ebm_t **out)
{
    int rc = ld_ebm_new(&self->arch, out);
    if (rc)
        return rc;
    memcpy((*out)->ps.params, self->ps.params, self->ps.numel * sizeof(float));
    return 0;
}

const ld_ebm_arch_t *ld_ebm_arch(const ld_ebm_t *self) { return &self->arch; }
size_t ld_ebm_n_tensors(const ld_ebm_t *self) { return self->ps.n; }
float *ld_ebm_params(ld_ebm_t *self) { return self->ps.params; }
const float *ld_ebm_params_const(const ld_ebm_t *self) { return self->ps.params; }
size_t ld_ebm_numel(const ld_ebm_t *self) { return self->ps.numel; }
const ld_ebm_tensor_t *ld_ebm_tensor(const ld_ebm_t *self, size_t i) { return ld_cn_params_tensor(&self->ps, i); }
bool ld_ebm_find_tensor(const ld_ebm_t *self, const char *name, size_t *index)
{
    return ld_cn_params_find(&self->ps, name, index);
}
ld_cn_params_t *ld_ebm_parameters(ld_ebm_t *self) { return &self->ps; }
const ld_cn_params_t *ld_ebm_parameters_const(const ld_ebm_t *self) { return &self->ps; }

/* PyTorch defaults (ld_cn_params_init); the domain embedding is N(0, 1)
 * scaled by 0.1 so that at initialisation the domain term is small next to
 * the head. Tensor i draws from stream i of the seed. */
void ld_ebm_init_random(ld_ebm_t *self, uint64_t seed)
{
    int embed = t_embed(self->arch.n_blocks);
    double bound = 1.0;
    for (size_t i = 0; i < self->ps.n; i++) {
        if ((int)i != embed) {
            ld_cn_params_init(&self->ps, i, seed, &bound);
            continue;
        }
        const ld_ebm_tensor_t *t = &self->ps.t[i];
        float *p = self->ps.params + t->offset;
        ld_rng_t rng;
        ld_rng_init(&rng, seed, i);
        for (size_t k = 0; k < t->numel; k++)
            p[k] = (float)(0.1 * ld_rng_normal(&rng));
    }
}

/* ------------------------------------------------------------------ */
/* Workspace                                                           */
/* ------------------------------------------------------------------ */

typedef struct {           /* one sample's activations */
    float *h0, *dh0, *v;
    ld_cn_down_buf_t b[LD_EBM_MAX_BLOCKS];
} slot_t;

typedef struct {           /* one thread's temporaries besides the layers' */
    float *xin, *tmp;
} scratch_t;

/* Weight-gradient pieces (ld_cn_wpiece_t kinds): rows of one parameter group. */
enum { WP_STEM, WP_CONV1, WP_CONV2, WP_SKIP, WP_HEAD };

/* Profile entries: globals, then LD_CN_PB_N per block. */
enum { PR_PREP, PR_STEM_FWD, PR_HEAD, PR_STEM_BWD, PR_WAIT, PR_WGRAD, PR_GLOBAL };

struct ld_ebm_ws_s {
    ld_ebm_arch_t arch;
    int max_batch, threads;
    ld_threadpool_t *pool;
    ld_cn_team_t team;
    int stem_rows, stem_chunks;     /* image rows per stem chunk */
    ld_cn_down_t blk[LD_EBM_MAX_BLOCKS];
    const ld_cn_conv_t *convs[2 * LD_EBM_MAX_BLOCKS];
    size_t u_numel;
    float *u;                       /* Winograd weights of every conv */
    float *cls;                     /* [w0][K] stem bias per mask class */
    slot_t slots[MAX_THREADS];
    ld_cn_scratch_t cscr[MAX_THREADS];
    scratch_t scr[MAX_THREADS];
    float *user_scratch;
    float *energy_tmp;              /* [max_batch] when the caller wants no energies */
    ld_cn_wpiece_t *wp;
    int n_wp;
    void *arena;
    const ld_ebm_t *prepared;       /* model whose weights u and cls hold */
    int n_prof;
    char (*prof_names)[48];
    ld_ebm_prof_t *prof_out;
};

static void plan(ld_ebm_ws_t *ws, const ld_ebm_t *m)
{
    const ld_ebm_arch_t *a = &ws->arch;
    int S = a->size;
    ws->stem_rows = LD_CN_CHUNK_PIXELS / S < 1 ? 1 : LD_CN_CHUNK_PIXELS / S;
    ws->stem_chunks = (S + ws->stem_rows - 1) / ws->stem_rows;
    size_t u_off = 0;
    for (int b = 0; b < a->n_blocks; b++) {
        ld_cn_down_plan(&ws->blk[b], a->widths[b], a->widths[b + 1], S >> b, &m->ps.t[t_block(b)], &u_off);
        ws->convs[2 * b] = &ws->blk[b].conv1;
        ws->convs[2 * b + 1] = &ws->blk[b].conv2;
    }
    ws->u_numel = u_off;
}

static void carve_slot(ld_cn_carver_t *c, const ld_ebm_ws_t *ws, slot_t *s)
{
    const ld_ebm_arch_t *a = &ws->arch;
    size_t q0 = (size_t)a->size * (size_t)a->size;
    s->h0 = ld_cn_carve_f(c, (size_t)a->widths[0] * q0);
    s->dh0 = ld_cn_carve_f(c, (size_t)a->widths[0] * q0);
    s->v = ld_cn_carve_f(c, (size_t)a->widths[a->n_blocks]);
    for (int b = 0; b < a->n_blocks; b++)
        ld_cn_down_carve(c, &ws->blk[b], &s->b[b]);
}

static void carve_scratch(ld_cn_carver_t *c, const ld_ebm_ws_t *ws, scratch_t *s)
{
    const ld_ebm_arch_t *a = &ws->arch;
    int L = a->n_blocks;
    size_t qL = (size_t)(a->size >> L) * (size_t)(a->size >> L);
    s->xin = ld_cn_carve_f(c, (size_t)(a->image_channels + a->mask_classes) * (size_t)ws->stem_rows * (size_t)a->size);
    s->tmp = ld_cn_carve_f(c, (size_t)a->widths[L] * qL);
}

static void carve_all(ld_cn_carver_t *c, ld_ebm_ws_t *ws)
{
    const ld_ebm_arch_t *a = &ws->arch;
    ws->u = ld_cn_carve_f(c, ws->u_numel);
    ws->cls = ld_cn_carve_f(c, (size_t)a->widths[0] * (size_t)a->mask_classes);
    ws->user_scratch = ld_cn_carve_f(c, (size_t)ws->max_batch * (size_t)a->image_channels * (size_t)a->size *
                                            (size_t)a->size);
    ws->energy_tmp = ld_cn_carve_f(c, (size_t)ws->max_batch);
    for (int t = 0; t < ws->threads; t++) {
        carve_slot(c, ws, &ws->slots[t]);
        ld_cn_scratch_carve(c, &ws->cscr[t], ws->convs, 2 * a->n_blocks, ws->n_prof);
        carve_scratch(c, ws, &ws->scr[t]);
    }
    ws->prof_names = ld_cn_carve(c, (size_t)ws->n_prof * sizeof *ws->prof_names);
    ws->prof_out = ld_cn_carve(c, (size_t)ws->n_prof * sizeof *ws->prof_out);
    ws->wp = ld_cn_carve(c, (size_t)ws->n_wp * sizeof *ws->wp);
}

/* Biggest pieces first so that the last pieces to be claimed are small. */
static int list_wpieces(const ld_ebm_ws_t *ws, ld_cn_wpiece_t *wp)
{
    int n = 0;
    for (int b = ws->arch.n_blocks - 1; b >= 0; b--) {
        n = ld_cn_add_row_pieces(wp, n, WP_CONV2, b, ws->blk[b].cout);
        n = ld_cn_add_row_pieces(wp, n, WP_CONV1, b, ws->blk[b].cout);
    }
    for (int b = ws->arch.n_blocks - 1; b >= 0; b--)
        n = ld_cn_add_row_pieces(wp, n, WP_SKIP, b, ws->blk[b].cout);
    n = ld_cn_add_row_pieces(wp, n, WP_STEM, 0, ws->arch.widths[0]);
    if (wp)
        wp[n] = (ld_cn_wpiece_t){ WP_HEAD, 0, 0, 1 };
    return n + 1;
}

static void name_profile(ld_ebm_ws_t *ws)
{
    static const char *globals[PR_GLOBAL] = { "prep", "stem.fwd", "head", "stem.bwd", "wait", "wgrad" };
    for (int i = 0; i < PR_GLOBAL; i++)
        snprintf(ws->prof_names[i], sizeof ws->prof_names[i], "%s", globals[i]);
    for (int b = 0; b < ws->arch.n_blocks; b++)
        for (int k = 0; k < LD_CN_PB_N; k++)
            snprintf(ws->prof_names[PR_GLOBAL + b * LD_CN_PB_N + k], sizeof ws->prof_names[0], "blocks.%d.%s", b,
                     ld_cn_down_prof_name(k));
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
    ws->n_prof = PR_GLOBAL + LD_CN_PB_N * arch->n_blocks;
    ws->n_wp = list_wpieces(ws, NULL);
    ld_cn_carver_t sizer = { NULL, 0 };
    carve_all(&sizer, ws);
    ws->arena = aligned_alloc(64, sizer.used);
    if (!ws->arena) {
        rc = ld_seterr(LD_ENOMEM, "workspace: out of memory (%zu MB for batch %d, %d threads)", sizer.used >> 20,
                       max_batch, threads);
        goto fail;
    }
    memset(ws->arena, 0, sizer.used);
    ld_cn_carver_t carver = { ws->arena, 0 };
    carve_all(&carver, ws);
    list_wpieces(ws, ws->wp);
    name_profile(ws);
    rc = ld_threadpool_new(threads, &ws->pool);
    if (rc)
        goto fail;
    ws->team = (ld_cn_team_t){ ws->pool, threads, ws->cscr, 0, PR_WAIT, PR_WGRAD };
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
    ld_threadpool_destroy(&(*self_p)->pool);
    free((*self_p)->arena);
    free(*self_p);
    *self_p = NULL;
}

int ld_ebm_ws_max_batch(const ld_ebm_ws_t *self) { return self->max_batch; }
int ld_ebm_ws_threads(const ld_ebm_ws_t *self) { return self->threads; }
float *ld_ebm_ws_scratch(ld_ebm_ws_t *self) { return self->user_scratch; }

void ld_ebm_ws_set_profiling(ld_ebm_ws_t *self, int on)
{
    self->team.profiling = on != 0;
    for (int t = 0; t < self->threads; t++) {
        memset(self->cscr[t].prof_s, 0, (size_t)self->n_prof * sizeof(double));
        memset(self->cscr[t].prof_n, 0, (size_t)self->n_prof * sizeof(long long));
    }
}

int ld_ebm_ws_profile(const ld_ebm_ws_t *self, ld_ebm_prof_t *out, int max)
{
    for (int i = 0; i < self->n_prof && i < max; i++) {
        out[i] = (ld_ebm_prof_t){ self->prof_names[i], 0, 0 };
        for (int t = 0; t < self->threads; t++) {
            out[i].seconds += self->cscr[t].prof_s[i];
            out[i].calls += self->cscr[t].prof_n[i];
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
    const float *image;
    const uint8_t *mask;
    const int32_t *target;
    float *energy, *grad;     /* grad: dE/dimage or NULL */
    int backward;             /* run the backward pass */
    const float *coef;        /* weight gradients: per-sample coefficients */
    float *gparams;
} job_t;

/* A thread's view of the current sample: its pieces (cn), the job, and the
 * sample's slot. */
typedef struct {
    ld_cn_exec_t cn;
    job_t *job;
    ld_ebm_ws_t *ws;
    const float *p;           /* parameters */
    scratch_t *own;           /* this thread's scratch */
    slot_t *slot;
} exec_t;

static exec_t make_exec(job_t *job, const ld_cn_exec_t *cn, int slot)
{
    ld_ebm_ws_t *ws = job->ws;
    return (exec_t){ *cn, job, ws, job->m->ps.params, &ws->scr[cn->tid], &ws->slots[slot] };
}

#define FOR_PIECES(ex, count, j) LD_CN_FOR_PIECES(&(ex)->cn, count, j)

static int prof_block(int b) { return PR_GLOBAL + b * LD_CN_PB_N; }

/* --- weight preparation (once per call) --- */

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

/* Piece 0 is the stem class table, the others the conv weight transforms. */
static void prep(void *ctx, const ld_cn_exec_t *all)
{
    job_t *job = ctx;
    ld_ebm_ws_t *ws = job->ws;
    int n_convs = 2 * ws->arch.n_blocks;
    double t0 = ld_cn_prof_begin(all);
    LD_CN_FOR_PIECES(all, 1 + ld_cn_prep_pieces(ws->convs, n_convs, 1), j) {
        if (j == 0)
            prep_stem(ws, job->m->ps.params);
        else
            ld_cn_prep_piece(ws->convs, n_convs, 1, job->m->ps.params, ws->u, j - 1);
    }
    ld_cn_prof_end(all, PR_PREP, t0);
    ld_cn_phase_end(all);
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
        double t0 = ld_cn_prof_begin(&ex->cn);
        stem_forward_piece(ex, sample, j);
        ld_cn_prof_end(&ex->cn, PR_STEM_FWD, t0);
    }
    ld_cn_phase_end(&ex->cn);
}

static const float *block_input(const slot_t *s, int b) { return b == 0 ? s->h0 : s->b[b - 1].out; }

/* v = sum silu(out_L); E = head_b + <head_w + embed[t], v>; and the
 * gradient seed dout_L = (head_w + embed[t]) * silu'(out_L). */
static void head_piece(const exec_t *ex, int sample)
{
    const ld_ebm_arch_t *a = &ex->ws->arch;
    const ld_ebm_t *m = ex->job->m;
    int L = a->n_blocks, wL = a->widths[L];
    size_t qL = (size_t)(a->size >> L) * (size_t)(a->size >> L);
    const float *hw = ex->p + m->ps.t[t_head_w(L)].offset;
    float hb = ex->p[m->ps.t[t_head_b(L)].offset];
    const float *emb = ex->p + m->ps.t[t_embed(L)].offset + (size_t)ex->job->target[sample] * (size_t)wL;
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
        ld_cn_down_forward(&ex->cn, &ex->ws->blk[b], ex->p, ex->ws->u, block_input(ex->slot, b), &ex->slot->b[b],
                           prof_block(b));
    FOR_PIECES(ex, 1, j) {
        double t0 = ld_cn_prof_begin(&ex->cn);
        head_piece(ex, sample);
        ld_cn_prof_end(&ex->cn, PR_HEAD, t0);
    }
    ld_cn_phase_end(&ex->cn);
}

/* --- backward to the input --- */

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
        ld_cn_down_backward(&ex->cn, &ex->ws->blk[b], ex->p, ex->ws->u, &ex->slot->b[b],
                            b == 0 ? ex->slot->dh0 : ex->slot->b[b - 1].dout, prof_block(b));
    if (!ex->job->grad)
        return;
    FOR_PIECES(ex, ex->ws->stem_chunks, j) {
        double t0 = ld_cn_prof_begin(&ex->cn);
        stem_backward_piece(ex, sample, j);
        ld_cn_prof_end(&ex->cn, PR_STEM_BWD, t0);
    }
    ld_cn_phase_end(&ex->cn);
}

static void run_sample(void *ctx, const ld_cn_exec_t *cn, int sample, int slot)
{
    exec_t ex = make_exec(ctx, cn, slot);
    forward(&ex, sample);
    if (ex.job->backward)
        backward(&ex, sample);
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
    job_t job = { .m = m, .ws = ws, .image = image, .mask = mask, .target = target, .energy = energy_out,
                  .grad = grad_out, .backward = grad_out != NULL };
    ld_cn_job_t run = { .n = n, .ctx = &job, .prep = reuse && ws->prepared == m ? NULL : prep, .sample = run_sample };
    ws->prepared = m;
    ld_cn_run(&ws->team, &run);
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
    ld_cn_bias_grad(ex->job->gparams + (size_t)a->widths[0] * (size_t)in, s->dh0, r0, r1, (size_t)Q, coef);
}

static void head_wgrad(const exec_t *ex, const slot_t *s, int sample, float coef)
{
    const ld_ebm_t *m = ex->job->m;
    int L = m->arch.n_blocks, wL = m->arch.widths[L];
    float *gp = ex->job->gparams;
    float *gh = gp + m->ps.t[t_head_w(L)].offset;
    float *ge = gp + m->ps.t[t_embed(L)].offset + (size_t)ex->job->target[sample] * (size_t)wL;
    for (int c = 0; c < wL; c++) {
        gh[c] += coef * s->v[c];
        ge[c] += coef * s->v[c];
    }
    gp[m->ps.t[t_head_b(L)].offset] += coef;
}

static void wpiece_run(void *ctx, const ld_cn_exec_t *cn, const ld_cn_wpiece_t *w, int sample, int slot)
{
    exec_t ex = make_exec(ctx, cn, slot);
    float coef = ex.job->coef[sample];
    if (coef == 0.0f)
        return;
    const slot_t *s = ex.slot;
    switch (w->kind) {
    case WP_CONV1:
    case WP_CONV2:
    case WP_SKIP: {
        static const int layer[] = { [WP_CONV1] = LD_CN_DOWN_CONV1, [WP_CONV2] = LD_CN_DOWN_CONV2,
                                     [WP_SKIP] = LD_CN_DOWN_SKIP };
        ld_cn_down_wgrad(cn, &ex.ws->blk[w->layer], layer[w->kind], block_input(s, w->layer), &s->b[w->layer], w->r0,
                         w->r1, coef, ex.job->gparams);
        break;
    }
    case WP_STEM:
        stem_wgrad(&ex, s, sample, w->r0, w->r1, coef);
        break;
    default:
        head_wgrad(&ex, s, sample, coef);
        break;
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
    job_t job = { .m = m, .ws = ws, .image = image, .mask = mask, .target = target,
                  .energy = energy_out ? energy_out : ws->energy_tmp, .backward = 1, .coef = coef,
                  .gparams = grad_params };
    ld_cn_job_t run = { .n = n, .ctx = &job, .prep = prep, .sample = run_sample, .wp = ws->wp, .n_wp = ws->n_wp,
                        .wpiece = wpiece_run };
    ws->prepared = m;
    ld_cn_run(&ws->team, &run);
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
    ld_threadpool_run(self->pool, task_job, &tj);
}
