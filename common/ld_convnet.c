/* ld_convnet: parameter tables, arenas, the piece runner, 3x3 convolution
 * layers and the down block of the engine's networks (see ld_convnet.h).
 *
 * Invariants: the shape of every piece (bands, chunks, row ranges) is a
 * function of the layer's plan alone, never of the batch or the thread
 * count; a GEMM always sees the same shapes for the same piece; nothing
 * allocates. */
#include "ld_convnet.h"

#include <cblas.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ld_error.h"
#include "ld_rng.h"

#define INV_SQRT2 0.70710678118654752440f

/* Piece sizes. They fix arithmetic (GEMM shapes), so they depend only on
 * the architecture, never on batch or threads. */
#define BAND_FLOATS (768 * 1024) /* Winograd V (or M) buffer of one band: few, large GEMMs */
#define COL_FLOATS (256 * 1024)  /* im2col chunk for weight gradients */

/* ------------------------------------------------------------------ */
/* Parameter tables                                                    */
/* ------------------------------------------------------------------ */

void ld_cn_params_add(ld_cn_params_t *ps, const char *name, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3)
{
    size_t i = ps->n++;
    ld_cn_tensor_t *ti = &ps->t[i];
    snprintf(ps->names[i], LD_CN_NAME_MAX, "%s", name);
    ti->name = ps->names[i];
    ti->ndim = ndim;
    int64_t dims[4] = { d0, d1, d2, d3 };
    ti->numel = 1;
    for (int k = 0; k < 4; k++) {
        ti->shape[k] = k < ndim ? dims[k] : 0;
        if (k < ndim)
            ti->numel *= (size_t)dims[k];
    }
    ti->offset = ps->numel;
    ps->numel += ti->numel;
}

void ld_cn_params_add_conv(ld_cn_params_t *ps, const char *prefix, int cout, int cin, int k)
{
    char name[LD_CN_NAME_MAX];
    snprintf(name, sizeof name, "%s.weight", prefix);
    ld_cn_params_add(ps, name, 4, cout, cin, k, k);
    snprintf(name, sizeof name, "%s.bias", prefix);
    ld_cn_params_add(ps, name, 1, cout, 0, 0, 0);
}

int ld_cn_params_alloc(ld_cn_params_t *ps, const char *what)
{
    ps->params = calloc(ps->numel, sizeof(float));
    if (!ps->params)
        return ld_seterr(LD_ENOMEM, "%s: out of memory for %zu parameters", what, ps->numel);
    return 0;
}

void ld_cn_params_free(ld_cn_params_t *ps)
{
    free(ps->params);
    ps->params = NULL;
}

const ld_cn_tensor_t *ld_cn_params_tensor(const ld_cn_params_t *ps, size_t i)
{
    return i < ps->n ? &ps->t[i] : NULL;
}

bool ld_cn_params_find(const ld_cn_params_t *ps, const char *name, size_t *index)
{
    for (size_t i = 0; i < ps->n; i++)
        if (strcmp(ps->t[i].name, name) == 0) {
            *index = i;
            return true;
        }
    return false;
}

void ld_cn_params_init(ld_cn_params_t *ps, size_t i, uint64_t seed, double *bound)
{
    const ld_cn_tensor_t *ti = &ps->t[i];
    float *p = ps->params + ti->offset;
    ld_rng_t rng;
    ld_rng_init(&rng, seed, i);
    if (ti->ndim > 1) /* a weight: fan_in = numel / out_features; its bias follows */
        *bound = 1.0 / sqrt((double)(ti->numel / (size_t)ti->shape[0]));
    for (size_t k = 0; k < ti->numel; k++)
        p[k] = (float)((2.0 * ld_rng_uniform(&rng) - 1.0) * *bound);
}

/* ------------------------------------------------------------------ */
/* Arenas                                                              */
/* ------------------------------------------------------------------ */

void *ld_cn_carve(ld_cn_carver_t *c, size_t bytes)
{
    void *p = c->base ? c->base + c->used : NULL;
    c->used += (bytes + 63) & ~(size_t)63;
    return p;
}

float *ld_cn_carve_f(ld_cn_carver_t *c, size_t n) { return ld_cn_carve(c, n * sizeof(float)); }

/* ------------------------------------------------------------------ */
/* Teams and pieces                                                    */
/* ------------------------------------------------------------------ */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double ld_cn_prof_begin(const ld_cn_exec_t *ex) { return ex->team->profiling ? now_s() : 0.0; }

void ld_cn_prof_end(const ld_cn_exec_t *ex, int id, double t0)
{
    if (ex->team->profiling) {
        ex->own->prof_s[id] += now_s() - t0;
        ex->own->prof_n[id]++;
    }
}

void ld_cn_phase_end(const ld_cn_exec_t *ex)
{
    if (ex->parts > 1) {
        double t0 = ld_cn_prof_begin(ex);
        ld_threadpool_barrier(ex->team->pool);
        ld_cn_prof_end(ex, ex->team->prof_wait, t0);
    }
}

int ld_cn_add_row_pieces(ld_cn_wpiece_t *wp, int n, int kind, int layer, int rows)
{
    for (int r = 0; r < rows; r += LD_CN_WROWS) {
        if (wp)
            wp[n] = (ld_cn_wpiece_t){ kind, layer, r, r + LD_CN_WROWS < rows ? r + LD_CN_WROWS : rows };
        n++;
    }
    return n;
}

typedef struct {
    const ld_cn_team_t *team;
    const ld_cn_job_t *job;
    atomic_int next; /* next sample / piece to claim */
} run_t;

static ld_cn_exec_t solo_exec(const ld_cn_team_t *team, int tid)
{
    return (ld_cn_exec_t){ team, tid, 0, 1, &team->scr[tid], &team->scr[tid] };
}

static ld_cn_exec_t coop_exec(const ld_cn_team_t *team, int tid)
{
    return (ld_cn_exec_t){ team, tid, tid, team->threads, &team->scr[tid], &team->scr[0] };
}

/* Solo samples are claimed one at a time; the n % threads left over are
 * run by all threads together. */
static void samples_job(void *ctx, int tid)
{
    run_t *r = ctx;
    const ld_cn_job_t *job = r->job;
    int T = r->team->threads;
    ld_cn_exec_t all = coop_exec(r->team, tid), solo = solo_exec(r->team, tid);
    if (job->prep)
        job->prep(job->ctx, &all);
    int n_solo = job->n - job->n % T;
    for (int i; (i = atomic_fetch_add(&r->next, 1)) < n_solo;)
        job->sample(job->ctx, &solo, i, tid);
    if (n_solo == job->n)
        return;
    ld_cn_phase_end(&all);
    for (int i = n_solo; i < job->n; i++)
        job->sample(job->ctx, &all, i, 0);
}

/* Groups of `threads` samples: forward+backward (one sample per thread, or
 * all threads on each sample of a short last group), then every piece of
 * the weight gradient adds the group's samples in sample order. */
static void params_job(void *ctx, int tid)
{
    run_t *r = ctx;
    const ld_cn_job_t *job = r->job;
    int T = r->team->threads;
    ld_cn_exec_t all = coop_exec(r->team, tid);
    if (job->prep)
        job->prep(job->ctx, &all);
    for (int g0 = 0; g0 < job->n; g0 += T) {
        int count = job->n - g0 < T ? job->n - g0 : T;
        if (count == T) {
            ld_cn_exec_t solo = solo_exec(r->team, tid);
            job->sample(job->ctx, &solo, g0 + tid, tid);
        } else {
            for (int j = 0; j < count; j++)
                job->sample(job->ctx, &all, g0 + j, j);
        }
        if (tid == 0)
            atomic_store(&r->next, 0);
        ld_cn_phase_end(&all);
        double t0 = ld_cn_prof_begin(&all);
        for (int k; (k = atomic_fetch_add(&r->next, 1)) < job->n_wp;)
            for (int j = 0; j < count; j++)
                job->wpiece(job->ctx, &all, &job->wp[k], g0 + j, j);
        ld_cn_prof_end(&all, r->team->prof_wgrad, t0);
        ld_cn_phase_end(&all);
    }
}

void ld_cn_run(const ld_cn_team_t *team, const ld_cn_job_t *job)
{
    run_t r = { team, job, 0 };
    atomic_init(&r.next, 0);
    ld_threadpool_run(team->pool, job->wpiece ? params_job : samples_job, &r);
}

/* ------------------------------------------------------------------ */
/* 3x3 convolution layers                                              */
/* ------------------------------------------------------------------ */

static size_t round16(size_t n) { return (n + 15) & ~(size_t)15; }

void ld_cn_conv_plan(ld_cn_conv_t *cp, int cin, int cout, int h, int w, const ld_cn_tensor_t *wt, size_t *u_off)
{
    cp->cin = cin;
    cp->cout = cout;
    cp->h = h;
    cp->w = w;
    cp->m = h >= LD_CN_WINO4_MIN_SIZE && w >= LD_CN_WINO4_MIN_SIZE ? 4 : 2;
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
    cp->w_off = wt[0].offset;
    cp->b_off = wt[1].offset;
}

size_t ld_cn_conv_band_floats(const ld_cn_conv_t *cp)
{
    int cmax = cp->cin > cp->cout ? cp->cin : cp->cout;
    return (size_t)cp->E * (size_t)cmax * (size_t)cp->band_rows * (size_t)cp->tw;
}

size_t ld_cn_conv_col_floats(const ld_cn_conv_t *cp)
{
    return (size_t)cp->cin * 9 * cp->kc_rows * (size_t)cp->w;
}

void ld_cn_scratch_carve(ld_cn_carver_t *c, ld_cn_scratch_t *s, const ld_cn_conv_t *const *convs, int n, int n_prof)
{
    size_t band = 0, col = 0;
    for (int k = 0; k < n; k++) {
        if (ld_cn_conv_band_floats(convs[k]) > band)
            band = ld_cn_conv_band_floats(convs[k]);
        if (ld_cn_conv_col_floats(convs[k]) > col)
            col = ld_cn_conv_col_floats(convs[k]);
    }
    s->v = ld_cn_carve_f(c, band);
    s->m = ld_cn_carve_f(c, band);
    s->col = ld_cn_carve_f(c, col);
    s->prof_s = ld_cn_carve(c, (size_t)n_prof * sizeof(double));
    s->prof_n = ld_cn_carve(c, (size_t)n_prof * sizeof(long long));
}

static int chunks(int rows) { return (rows + LD_CN_WT_ROWS - 1) / LD_CN_WT_ROWS; }

static int conv_prep_pieces(const ld_cn_conv_t *cp, int with_t)
{
    return chunks(cp->cout) + (with_t ? chunks(cp->cin) : 0);
}

int ld_cn_prep_pieces(const ld_cn_conv_t *const *convs, int n, int with_t)
{
    int pieces = 0;
    for (int k = 0; k < n; k++)
        pieces += conv_prep_pieces(convs[k], with_t);
    return pieces;
}

void ld_cn_prep_piece(const ld_cn_conv_t *const *convs, int n, int with_t, const float *params, float *u, int piece)
{
    for (int k = 0; k < n; k++) {
        const ld_cn_conv_t *cp = convs[k];
        int fwd = chunks(cp->cout);
        if (piece < fwd) { /* forward: rows are output channels */
            int r0 = piece * LD_CN_WT_ROWS, r1 = r0 + LD_CN_WT_ROWS < cp->cout ? r0 + LD_CN_WT_ROWS : cp->cout;
            ld_wino_weights(cp->m, params + cp->w_off, cp->cout, cp->cin, r0, r1, u + cp->u_off);
            return;
        }
        if (piece < conv_prep_pieces(cp, with_t)) { /* transposed: rows are input channels */
            int r0 = (piece - fwd) * LD_CN_WT_ROWS, r1 = r0 + LD_CN_WT_ROWS < cp->cin ? r0 + LD_CN_WT_ROWS : cp->cin;
            ld_wino_weights_t(cp->m, params + cp->w_off, cp->cout, cp->cin, r0, r1, u + cp->ut_off);
            return;
        }
        piece -= conv_prep_pieces(cp, with_t);
    }
}

/* Tile rows [ty0, ty1) and tiles P of a band; channels in and out of the call. */
typedef struct {
    int ty0, ty1, cin, cout;
    size_t P;
} band_t;

static band_t band_of(const ld_cn_conv_call_t *cc, int band)
{
    const ld_cn_conv_t *cp = cc->cp;
    band_t b;
    b.ty0 = band * cp->band_rows;
    b.ty1 = b.ty0 + cp->band_rows < cp->th ? b.ty0 + cp->band_rows : cp->th;
    b.P = (size_t)(b.ty1 - b.ty0) * (size_t)cp->tw;
    b.cin = cc->dir == LD_CN_FWD ? cp->cin : cp->cout;
    b.cout = cc->dir == LD_CN_FWD ? cp->cout : cp->cin;
    return b;
}

static void conv_input(const ld_cn_exec_t *ex, const ld_cn_conv_call_t *cc, ld_cn_scratch_t *s, int band, int c0,
                       int c1)
{
    double t0 = ld_cn_prof_begin(ex);
    band_t b = band_of(cc, band);
    ld_wino_input(cc->cp->m, cc->in, cc->cp->h, cc->cp->w, c0, c1, b.ty0, b.ty1, s->v, (size_t)b.cin * b.P, b.P);
    ld_cn_prof_end(ex, cc->prof, t0);
}

static void conv_gemm(const ld_cn_exec_t *ex, const ld_cn_conv_call_t *cc, ld_cn_scratch_t *s, int band, int e)
{
    double t0 = ld_cn_prof_begin(ex);
    band_t b = band_of(cc, band);
    const ld_cn_conv_t *cp = cc->cp;
    const float *u = cc->u + (cc->dir == LD_CN_FWD ? cp->u_off : cp->ut_off);
    size_t usz = (size_t)cp->cout * (size_t)cp->cin;
    /* forward U[e] is [cout][cin], transposed Ut[e] is [cin][cout]: [out][in] either way */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, b.cout, (int)b.P, b.cin, 1.0f, u + (size_t)e * usz, b.cin,
                s->v + (size_t)e * (size_t)b.cin * b.P, (int)b.P, 0.0f, s->m + (size_t)e * (size_t)b.cout * b.P,
                (int)b.P);
    ld_cn_prof_end(ex, cc->prof + 1, t0);
}

static void conv_output(const ld_cn_exec_t *ex, const ld_cn_conv_call_t *cc, ld_cn_scratch_t *s, int band, int c0,
                        int c1)
{
    double t0 = ld_cn_prof_begin(ex);
    band_t b = band_of(cc, band);
    ld_wino_output(cc->cp->m, s->m, (size_t)b.cout * b.P, b.P, cc->cp->h, cc->cp->w, c0, c1, b.ty0, b.ty1, &cc->out);
    ld_cn_prof_end(ex, cc->prof + 2, t0);
}

/* Whole bands per thread when there are enough of them, otherwise every
 * band is split three ways (channels, Winograd elements, channels). */
void ld_cn_conv_run(const ld_cn_exec_t *ex, const ld_cn_conv_call_t *cc)
{
    const ld_cn_conv_t *cp = cc->cp;
    band_t b0 = band_of(cc, 0);
    int cin = b0.cin, cout = b0.cout;
    if (ex->parts == 1 || cp->n_bands >= 2 * ex->parts || cp->n_bands % ex->parts == 0) {
        LD_CN_FOR_PIECES(ex, cp->n_bands, band) {
            conv_input(ex, cc, ex->own, band, 0, cin);
            for (int e = 0; e < cp->E; e++)
                conv_gemm(ex, cc, ex->own, band, e);
            conv_output(ex, cc, ex->own, band, 0, cout);
        }
        ld_cn_phase_end(ex);
        return;
    }
    for (int band = 0; band < cp->n_bands; band++) {
        conv_input(ex, cc, ex->shared, band, cin * ex->part / ex->parts, cin * (ex->part + 1) / ex->parts);
        ld_cn_phase_end(ex);
        LD_CN_FOR_PIECES(ex, cp->E, e)
        conv_gemm(ex, cc, ex->shared, band, e);
        ld_cn_phase_end(ex);
        conv_output(ex, cc, ex->shared, band, cout * ex->part / ex->parts, cout * (ex->part + 1) / ex->parts);
        ld_cn_phase_end(ex);
    }
}

void ld_cn_bias_grad(float *gb, const float *da, int r0, int r1, size_t q, float coef)
{
    for (int r = r0; r < r1; r++) {
        double acc = 0;
        const float *row = da + (size_t)r * q;
        for (size_t k = 0; k < q; k++)
            acc += row[k];
        gb[r] += (float)((double)coef * acc);
    }
}

/* In fixed chunks of image rows. */
void ld_cn_conv_wgrad(const ld_cn_exec_t *ex, const ld_cn_conv_t *cp, const float *x, const float *da, int r0,
                      int r1, float coef, float *gparams)
{
    float *gw = gparams + cp->w_off + (size_t)r0 * (size_t)cp->cin * 9;
    size_t Q = (size_t)cp->h * (size_t)cp->w;
    for (int y0 = 0; y0 < cp->h; y0 += (int)cp->kc_rows) {
        int y1 = y0 + (int)cp->kc_rows < cp->h ? y0 + (int)cp->kc_rows : cp->h;
        int np = (y1 - y0) * cp->w;
        ld_im2col3x3(x, cp->cin, cp->h, cp->w, y0, y1, ex->own->col, (size_t)np);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, cp->cin * 9, np, coef,
                    da + (size_t)r0 * Q + (size_t)y0 * (size_t)cp->w, (int)Q, ex->own->col, np, 1.0f, gw,
                    cp->cin * 9);
    }
    ld_cn_bias_grad(gparams + cp->b_off, da, r0, r1, Q, coef);
}

/* ------------------------------------------------------------------ */
/* The down block                                                      */
/* ------------------------------------------------------------------ */

const char *ld_cn_down_prof_name(int k)
{
    static const char *names[LD_CN_PB_N] = { "conv1.fwd.in", "conv1.fwd.gemm", "conv1.fwd.out", "skip.fwd",
                                             "conv2.fwd.in", "conv2.fwd.gemm", "conv2.fwd.out", "skip.bwd",
                                             "conv2.bwd.in", "conv2.bwd.gemm", "conv2.bwd.out", "conv1.bwd.in",
                                             "conv1.bwd.gemm", "conv1.bwd.out" };
    return k >= 0 && k < LD_CN_PB_N ? names[k] : "?";
}

void ld_cn_down_add_tensors(ld_cn_params_t *ps, const char *prefix, int cin, int cout)
{
    static const char *convs[3] = { "conv1", "conv2", "skip" };
    char name[LD_CN_NAME_MAX];
    for (int k = 0; k < 3; k++) {
        snprintf(name, sizeof name, "%s.%s", prefix, convs[k]);
        ld_cn_params_add_conv(ps, name, cout, k == 1 ? cout : cin, k == 2 ? 1 : 3);
    }
}

void ld_cn_down_plan(ld_cn_down_t *bp, int cin, int cout, int size, const ld_cn_tensor_t *t, size_t *u_off)
{
    bp->cin = cin;
    bp->cout = cout;
    bp->h = bp->w = size;
    bp->pw = bp->w / 2;
    bp->pq = bp->pw * (bp->h / 2);
    bp->chunk_rows = LD_CN_CHUNK_PIXELS / bp->pw < 1 ? 1 : LD_CN_CHUNK_PIXELS / bp->pw;
    if (bp->chunk_rows > bp->h / 2)
        bp->chunk_rows = bp->h / 2;
    bp->n_chunks = (bp->h / 2 + bp->chunk_rows - 1) / bp->chunk_rows;
    ld_cn_conv_plan(&bp->conv1, cin, cout, bp->h, bp->w, t, u_off);
    ld_cn_conv_plan(&bp->conv2, cout, cout, bp->h, bp->w, t + 2, u_off);
    bp->skip_w = t[4].offset;
    bp->skip_b = t[5].offset;
}

void ld_cn_down_carve(ld_cn_carver_t *c, const ld_cn_down_t *bp, ld_cn_down_buf_t *s)
{
    size_t full = (size_t)bp->cout * (size_t)bp->h * (size_t)bp->w;
    size_t pooled_out = (size_t)bp->cout * (size_t)bp->pq, pooled_in = (size_t)bp->cin * (size_t)bp->pq;
    s->h1 = ld_cn_carve_f(c, full);
    s->d1 = ld_cn_carve_f(c, full);
    s->d2 = ld_cn_carve_f(c, full);
    s->da2 = ld_cn_carve_f(c, full);
    s->da1 = ld_cn_carve_f(c, full);
    s->px = ld_cn_carve_f(c, pooled_in);
    s->dpx = ld_cn_carve_f(c, pooled_in);
    s->out = ld_cn_carve_f(c, pooled_out);
    s->dout = ld_cn_carve_f(c, pooled_out);
    s->g = ld_cn_carve_f(c, pooled_out);
}

static void pooled_rows(const ld_cn_down_t *bp, int chunk, int *r0, int *r1)
{
    *r0 = chunk * bp->chunk_rows;
    *r1 = *r0 + bp->chunk_rows < bp->h / 2 ? *r0 + bp->chunk_rows : bp->h / 2;
}

/* px = avgpool(x), out = Wskip px + bs over pooled rows of one chunk. */
static void skip_forward_piece(const ld_cn_down_t *bp, const float *p, const float *x, ld_cn_down_buf_t *s,
                               int chunk)
{
    int r0, r1;
    pooled_rows(bp, chunk, &r0, &r1);
    ld_avgpool2(x, bp->h, bp->w, 0, bp->cin, r0, r1, s->px);
    size_t q0 = (size_t)r0 * (size_t)bp->pw, nq = (size_t)(r1 - r0) * (size_t)bp->pw;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bp->cout, (int)nq, bp->cin, 1.0f, p + bp->skip_w,
                bp->cin, s->px + q0, bp->pq, 0.0f, s->out + q0, bp->pq);
    const float *bias = p + bp->skip_b;
    for (int co = 0; co < bp->cout; co++) {
        float *o = s->out + (size_t)co * (size_t)bp->pq + q0;
        for (size_t q = 0; q < nq; q++)
            o[q] = o[q] + bias[co];
    }
}

void ld_cn_down_forward(const ld_cn_exec_t *ex, const ld_cn_down_t *bp, const float *p, const float *u,
                        const float *x, ld_cn_down_buf_t *s, int prof)
{
    ld_cn_conv_call_t c1 = { &bp->conv1, LD_CN_FWD, x, u,
                             { LD_WINO_OUT_SILU, p + bp->conv1.b_off, s->h1, s->d1, NULL, NULL },
                             prof + LD_CN_PB_CONV1_FWD };
    ld_cn_conv_run(ex, &c1);
    LD_CN_FOR_PIECES(ex, bp->n_chunks, j) {
        double t0 = ld_cn_prof_begin(ex);
        skip_forward_piece(bp, p, x, s, j);
        ld_cn_prof_end(ex, prof + LD_CN_PB_SKIP_FWD, t0);
    }
    ld_cn_phase_end(ex);
    ld_cn_conv_call_t c2 = { &bp->conv2, LD_CN_FWD, s->h1, u,
                             { LD_WINO_OUT_SILU_POOL_RES, p + bp->conv2.b_off, NULL, s->d2, NULL, s->out },
                             prof + LD_CN_PB_CONV2_FWD };
    ld_cn_conv_run(ex, &c2);
}

/* Pieces 0..channel chunks-1: da2 = dout/sqrt2/4 (unpooled) * d2 for a
 * channel range; the next n_chunks pieces: g = dout/sqrt2 and dpx = Wskip^T g
 * over pooled rows. */
static void skip_backward_piece(const ld_cn_down_t *bp, const float *p, ld_cn_down_buf_t *s, int piece)
{
    int nch = chunks(bp->cout);
    if (piece < nch) {
        int c0 = piece * LD_CN_WT_ROWS, c1 = c0 + LD_CN_WT_ROWS < bp->cout ? c0 + LD_CN_WT_ROWS : bp->cout;
        for (int c = c0; c < c1; c++) {
            const float *dout = s->dout + (size_t)c * (size_t)bp->pq;
            const float *d2 = s->d2 + (size_t)c * (size_t)bp->h * (size_t)bp->w;
            float *da2 = s->da2 + (size_t)c * (size_t)bp->h * (size_t)bp->w;
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
        const float *dout = s->dout + (size_t)c * (size_t)bp->pq + q0;
        float *g = s->g + (size_t)c * (size_t)bp->pq + q0;
        for (size_t q = 0; q < nq; q++)
            g[q] = dout[q] * INV_SQRT2;
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bp->cin, (int)nq, bp->cout, 1.0f, p + bp->skip_w, bp->cin,
                s->g + q0, bp->pq, 0.0f, s->dpx + q0, bp->pq);
}

void ld_cn_down_backward(const ld_cn_exec_t *ex, const ld_cn_down_t *bp, const float *p, const float *u,
                         ld_cn_down_buf_t *s, float *dx, int prof)
{
    int pieces = chunks(bp->cout) + bp->n_chunks;
    LD_CN_FOR_PIECES(ex, pieces, j) {
        double t0 = ld_cn_prof_begin(ex);
        skip_backward_piece(bp, p, s, j);
        ld_cn_prof_end(ex, prof + LD_CN_PB_SKIP_BWD, t0);
    }
    ld_cn_phase_end(ex);
    ld_cn_conv_call_t c2 = { &bp->conv2, LD_CN_BWD, s->da2, u, { LD_WINO_OUT_MUL, NULL, s->da1, NULL, s->d1, NULL },
                             prof + LD_CN_PB_CONV2_BWD };
    ld_cn_conv_run(ex, &c2);
    ld_cn_conv_call_t c1 = { &bp->conv1, LD_CN_BWD, s->da1, u,
                             { LD_WINO_OUT_ADD_UNPOOL, NULL, dx, NULL, s->dpx, NULL }, prof + LD_CN_PB_CONV1_BWD };
    ld_cn_conv_run(ex, &c1);
}

void ld_cn_down_wgrad(const ld_cn_exec_t *ex, const ld_cn_down_t *bp, int layer, const float *x,
                      const ld_cn_down_buf_t *s, int r0, int r1, float coef, float *gparams)
{
    if (layer == LD_CN_DOWN_CONV1) {
        ld_cn_conv_wgrad(ex, &bp->conv1, x, s->da1, r0, r1, coef, gparams);
    } else if (layer == LD_CN_DOWN_CONV2) {
        ld_cn_conv_wgrad(ex, &bp->conv2, s->h1, s->da2, r0, r1, coef, gparams);
    } else {
        float *gw = gparams + bp->skip_w + (size_t)r0 * (size_t)bp->cin;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, bp->cin, bp->pq, coef,
                    s->g + (size_t)r0 * (size_t)bp->pq, bp->pq, s->px, bp->pq, 1.0f, gw, bp->cin);
        ld_cn_bias_grad(gparams + bp->skip_b, s->g, r0, r1, (size_t)bp->pq, coef);
    }
}
