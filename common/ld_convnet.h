/* ld_convnet: what the engine's convolutional networks (ld_ebm, ld_ae) are
 * built from: their parameter tables, the work buffers they carve, the way
 * their work is cut into pieces and run on a thread pool, 3x3 convolution
 * layers (Winograd forward and transposed, im2col weight gradients) and the
 * residual down block both networks use. The kernels are ld_conv's; the
 * GEMMs are OpenBLAS's, single-threaded (the networks own the cores).
 *
 * Parameters: a network's parameters are one flat float array, tensor after
 * tensor in PyTorch state_dict order, with a table (ld_cn_params_t) saying
 * where each tensor lives; model files (ld_model) read and write any such
 * table. Initialisation follows PyTorch's defaults, deterministically.
 *
 * Work: a network evaluates a batch sample by sample. A sample's work is a
 * fixed sequence of phases, each cut into pieces whose shapes depend only
 * on the architecture (tile-row bands, pooled-row chunks, channel chunks,
 * single Winograd elements). ld_cn_run hands samples to the threads of a
 * team:
 *   solo  (while at least `threads` samples remain) one thread runs all the
 *         pieces of a sample, in its own activation slot;
 *   coop  (the n % threads left over) every thread takes a share of each
 *         phase's pieces, with a barrier after each phase.
 * A piece computes the same arithmetic either way (OpenBLAS runs
 * single-threaded and sees the same shapes), so a sample's results are
 * bit-identical whatever its batch and the thread count. Weight gradients
 * are cut into row pieces of parameter tensors (ld_cn_wpiece_t); each piece
 * adds the samples of a group in sample order, so sums never depend on the
 * thread count either.
 *
 * Convolutions: a 3x3, pad 1, stride 1 convolution runs as Winograd
 * F(4x4,3x3) on maps of at least LD_CN_WINO4_MIN_SIZE pixels a side and
 * F(2x2,3x3) below, in bands of tile rows sized so that a band's transformed
 * input stays in cache: whole bands per thread when there are enough, else
 * every band split three ways (input channels, Winograd elements, output
 * channels). Its transpose (the gradient to the input) uses the transformed
 * flipped kernel. Transformed weights of a call are computed once per call
 * ("prep"). Weight gradients are GEMMs of the output gradient with im2col
 * chunks of the input.
 *
 * The down block ("resdown", w_in -> w_out on an h x h map):
 *   h1 = silu(conv1(x)); out = (avgpool2(silu(conv2(h1))) + avgpool2(skip1x1(x))) / sqrt(2)
 * (the skip pools before its 1x1 conv, which is the same linear map and 4x
 * cheaper). Its six tensors are conv1.weight [w_out,w_in,3,3], conv1.bias,
 * conv2.weight [w_out,w_out,3,3], conv2.bias, skip.weight [w_out,w_in,1,1],
 * skip.bias, consecutive in the parameter table.
 *
 * Memory: everything is carved from one arena when a workspace is made;
 * nothing here allocates. */
#ifndef LD_CONVNET_H
#define LD_CONVNET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ld_conv.h"
#include "ld_threadpool.h"

/* ---- parameter tables ---- */

#define LD_CN_NAME_MAX 32

typedef struct {
    const char *name;   /* "blocks.0.conv1.weight" (owned by the network) */
    int ndim;
    int64_t shape[4];
    size_t offset;      /* in floats, into the flat parameter array */
    size_t numel;
} ld_cn_tensor_t;

#define LD_CN_MAX_TENSORS 64

/* A network's parameters: the tensor table t[0..n) and the flat array of
 * numel floats it describes. */
typedef struct {
    size_t n, numel;
    float *params;
    ld_cn_tensor_t t[LD_CN_MAX_TENSORS];
    char names[LD_CN_MAX_TENSORS][LD_CN_NAME_MAX];
} ld_cn_params_t;

/* Appends a tensor to the table (its name copied) at offset numel; unused
 * trailing dims are ignored. Before ld_cn_params_alloc. */
void ld_cn_params_add(ld_cn_params_t *ps, const char *name, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3);
/* Allocates the zeroed parameter array; LD_ENOMEM with a detail naming `what`. */
int ld_cn_params_alloc(ld_cn_params_t *ps, const char *what);
void ld_cn_params_free(ld_cn_params_t *ps);
/* Tensor i, or NULL past the end. */
const ld_cn_tensor_t *ld_cn_params_tensor(const ld_cn_params_t *ps, size_t i);
/* Whether there is a tensor called name; if so *index = its index (else
 * *index is left as it was). */
bool ld_cn_params_find(const ld_cn_params_t *ps, const char *name, size_t *index);
/* Appends <prefix>.weight [cout, cin, k, k] and <prefix>.bias [cout]. */
void ld_cn_params_add_conv(ld_cn_params_t *ps, const char *prefix, int cout, int cin, int k);
/* PyTorch's default initialisation of tensor i (Conv2d/Linear weights
 * kaiming_uniform(a=sqrt(5)) and biases both U(-1/sqrt(fan_in),
 * 1/sqrt(fan_in))), drawn from stream i of seed. A weight (ndim > 1) sets
 * *bound from its fan_in; a bias uses the *bound of the weight before it. */
void ld_cn_params_init(ld_cn_params_t *ps, size_t i, uint64_t seed, double *bound);

/* ---- arenas ---- */

/* Hands out 64-byte aligned pieces of an arena; with a NULL base it only
 * counts, so the same code sizes and then carves the arena. */
typedef struct {
    char *base;
    size_t used;
} ld_cn_carver_t;

void *ld_cn_carve(ld_cn_carver_t *c, size_t bytes);
float *ld_cn_carve_f(ld_cn_carver_t *c, size_t n);

/* ---- teams and pieces ---- */

/* One thread's temporaries for the layers. */
typedef struct {
    float *v, *m;        /* a Winograd band's transformed input and products */
    float *col;          /* an im2col chunk */
    double *prof_s;      /* per profile entry: seconds, calls (when profiling) */
    long long *prof_n;
} ld_cn_scratch_t;

/* The threads that evaluate a network: the pool's threads, each with its
 * scratch (scr[tid]). Profile ids index the scratches' prof arrays. */
typedef struct {
    ld_threadpool_t *pool;
    int threads;
    ld_cn_scratch_t *scr;
    int profiling;       /* add piece times to prof_s/prof_n */
    int prof_wait;       /* profile id of time spent at barriers */
    int prof_wgrad;      /* profile id of weight-gradient pieces */
} ld_cn_team_t;

/* Who runs which pieces: this thread (tid) runs pieces part, part + parts, ... */
typedef struct {
    const ld_cn_team_t *team;
    int tid, part, parts;
    ld_cn_scratch_t *own;      /* this thread's scratch */
    ld_cn_scratch_t *shared;   /* the scratch all parts use (thread 0's in coop) */
} ld_cn_exec_t;

#define LD_CN_FOR_PIECES(ex, count, j) for (int j = (ex)->part; j < (count); j += (ex)->parts)

double ld_cn_prof_begin(const ld_cn_exec_t *ex);
void ld_cn_prof_end(const ld_cn_exec_t *ex, int id, double t0);
/* Ends a phase: a barrier when the sample's pieces are shared. */
void ld_cn_phase_end(const ld_cn_exec_t *ex);

/* Rows [r0, r1) of the weight gradient of one layer: `kind` and `layer`
 * are the network's to interpret. */
typedef struct {
    int kind, layer, r0, r1;
} ld_cn_wpiece_t;

/* Pieces of LD_CN_WROWS rows of a layer with `rows` output channels,
 * appended at wp[n] (wp NULL: only counted); returns the new count. */
int ld_cn_add_row_pieces(ld_cn_wpiece_t *wp, int n, int kind, int layer, int rows);

/* A batch for ld_cn_run. sample() runs one sample's phases with ex (solo or
 * coop) in activation slot `slot` (< threads). Without wpiece, solo samples
 * are claimed one at a time and the leftovers run coop in slot 0. With
 * wpiece, samples run in groups of `threads` (solo in slot tid, or coop in
 * slots 0.. for a short last group), then all threads share the pieces
 * wp[0..n_wp), each piece called for the group's samples in sample order. */
typedef struct {
    int n;
    void *ctx;
    void (*prep)(void *ctx, const ld_cn_exec_t *all); /* first, by all threads; may be NULL */
    void (*sample)(void *ctx, const ld_cn_exec_t *ex, int sample, int slot);
    const ld_cn_wpiece_t *wp;
    int n_wp;
    void (*wpiece)(void *ctx, const ld_cn_exec_t *ex, const ld_cn_wpiece_t *w, int sample, int slot);
} ld_cn_job_t;

void ld_cn_run(const ld_cn_team_t *team, const ld_cn_job_t *job);

/* ---- 3x3 convolution layers ---- */

#define LD_CN_WINO4_MIN_SIZE 16 /* F(4x4,3x3) for maps at least this big, else F(2x2,3x3) */
#define LD_CN_WT_ROWS 16        /* channels per weight-transform and elementwise piece */
#define LD_CN_WROWS 32          /* output rows per weight-gradient piece */
#define LD_CN_CHUNK_PIXELS 1024 /* GEMM column chunks of 1x1 convolutions */

enum { LD_CN_FWD, LD_CN_BWD };

typedef struct {
    int cin, cout, h, w;   /* forward channels; h x w input and output */
    int m, E;              /* Winograd F(m x m, 3x3), E = (m+2)^2 */
    int tw, th;            /* tiles per row and per column */
    int band_rows, n_bands;
    size_t u_off, ut_off;  /* transformed weights: forward, transposed */
    size_t w_off, b_off;   /* parameters: weight [cout][cin][3][3], bias [cout] */
    size_t kc_rows;        /* image rows per im2col chunk (weight gradient) */
} ld_cn_conv_t;

/* Plans a conv whose weight and bias are tensors w and w + 1; its
 * transformed weights take the next floats of the transform array at *u_off. */
void ld_cn_conv_plan(ld_cn_conv_t *cp, int cin, int cout, int h, int w, const ld_cn_tensor_t *wt, size_t *u_off);
/* Scratch floats the conv needs in v and m, and in col. */
size_t ld_cn_conv_band_floats(const ld_cn_conv_t *cp);
size_t ld_cn_conv_col_floats(const ld_cn_conv_t *cp);
/* Carves a thread's scratch big enough for every conv in convs[0..n) and
 * n_prof profile entries. */
void ld_cn_scratch_carve(ld_cn_carver_t *c, ld_cn_scratch_t *s, const ld_cn_conv_t *const *convs, int n, int n_prof);

/* Weight transforms of convs[0..n): per conv, one piece per LD_CN_WT_ROWS
 * output channels (forward) and, with_t, per LD_CN_WT_ROWS input channels
 * (transposed). Pieces are independent. */
int ld_cn_prep_pieces(const ld_cn_conv_t *const *convs, int n, int with_t);
void ld_cn_prep_piece(const ld_cn_conv_t *const *convs, int n, int with_t, const float *params, float *u, int piece);

typedef struct {
    const ld_cn_conv_t *cp;
    int dir;             /* LD_CN_FWD, or LD_CN_BWD: the transpose, cout -> cin channels */
    const float *in;     /* [channels in][h][w] */
    const float *u;      /* the transform array */
    ld_wino_out_t out;   /* what the output transform does (ld_conv.h) */
    int prof;            /* profile id of the input transform; +1 GEMMs, +2 output transform */
} ld_cn_conv_call_t;

/* One phase: the whole convolution of one sample. */
void ld_cn_conv_run(const ld_cn_exec_t *ex, const ld_cn_conv_call_t *cc);

/* gparams[weight rows r0..r1) += coef * da (cout x h*w) * im2col(x)^T, and
 * the bias rows += coef * sums of da (in double); x is the conv's input,
 * da the gradient at its output (before any activation). */
void ld_cn_conv_wgrad(const ld_cn_exec_t *ex, const ld_cn_conv_t *cp, const float *x, const float *da, int r0,
                      int r1, float coef, float *gparams);
/* gb[r] += coef * sum over q of da[r][q] (in double), r in [r0, r1). */
void ld_cn_bias_grad(float *gb, const float *da, int r0, int r1, size_t q, float coef);

/* ---- the down block ---- */

/* Profile entries of a block, from its base id. */
enum {
    LD_CN_PB_CONV1_FWD = 0, /* +0 in, +1 gemm, +2 out */
    LD_CN_PB_SKIP_FWD = 3,
    LD_CN_PB_CONV2_FWD = 4,
    LD_CN_PB_SKIP_BWD = 7,
    LD_CN_PB_CONV2_BWD = 8,
    LD_CN_PB_CONV1_BWD = 11,
    LD_CN_PB_N = 14
};
/* "conv1.fwd.in", ... for entries 0..LD_CN_PB_N-1. */
const char *ld_cn_down_prof_name(int k);

typedef struct {
    ld_cn_conv_t conv1, conv2;
    int cin, cout, h, w;       /* block input */
    int pw, pq;                /* pooled width, pooled plane size */
    int chunk_rows, n_chunks;  /* pooled rows per skip chunk */
    size_t skip_w, skip_b;
} ld_cn_down_t;

/* One sample's activations of a block: conv1 output h1 and silu' d1, d2;
 * pooled input px; out; gradients dout (seeded by the caller), g, da2, da1, dpx. */
typedef struct {
    float *h1, *d1, *d2, *px, *out, *dout, *g, *da2, *da1, *dpx;
} ld_cn_down_buf_t;

/* Appends the block's six tensors, named <prefix>.conv1.weight etc. */
void ld_cn_down_add_tensors(ld_cn_params_t *ps, const char *prefix, int cin, int cout);
/* t: the block's six tensors (above). */
void ld_cn_down_plan(ld_cn_down_t *bp, int cin, int cout, int size, const ld_cn_tensor_t *t, size_t *u_off);
void ld_cn_down_carve(ld_cn_carver_t *c, const ld_cn_down_t *bp, ld_cn_down_buf_t *s);
/* out = block(x). p: parameters, u: transforms, prof: the block's base id. */
void ld_cn_down_forward(const ld_cn_exec_t *ex, const ld_cn_down_t *bp, const float *p, const float *u,
                        const float *x, ld_cn_down_buf_t *s, int prof);
/* From s->dout: the gradients inside the block and dx (the input's). */
void ld_cn_down_backward(const ld_cn_exec_t *ex, const ld_cn_down_t *bp, const float *p, const float *u,
                         ld_cn_down_buf_t *s, float *dx, int prof);
enum { LD_CN_DOWN_CONV1, LD_CN_DOWN_CONV2, LD_CN_DOWN_SKIP };
/* Weight-gradient rows [r0, r1) of one of the block's layers (x: the block's input). */
void ld_cn_down_wgrad(const ld_cn_exec_t *ex, const ld_cn_down_t *bp, int layer, const float *x,
                      const ld_cn_down_buf_t *s, int r0, int r1, float coef, float *gparams);

#endif
