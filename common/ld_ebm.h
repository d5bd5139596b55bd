/* ld_ebm: the "resdown" energy network E(image, mask, target domain).
 *
 * Architecture (C image channels, K mask classes, side S, widths w0..wL, D domains):
 *   x     = concat(image in [-1,1] (C ch), onehot(mask) mapped to {-1,+1} (K ch))
 *   h0    = stem(x)                         conv1x1 (C+K)->w0, bias
 *   block i = 0..L-1, w_i -> w_{i+1}:
 *           h = silu(conv3x3(x, pad 1)); h = silu(conv3x3(h, pad 1)); h = avgpool2x2(h)
 *           s = avgpool2x2(conv1x1(x));   out = (h + s) / sqrt(2)
 *   v     = sum over space of silu(out_L)   (a w_L vector)
 *   E     = head(v) + <domain_embed[t], v>  (low energy = looks like domain t)
 *
 * Parameters live in one contiguous float array in PyTorch state_dict order:
 *   stem.weight [w0,C+K,1,1], stem.bias [w0],
 *   blocks.{i}.conv1.weight [w_{i+1},w_i,3,3], blocks.{i}.conv1.bias,
 *   blocks.{i}.conv2.weight [w_{i+1},w_{i+1},3,3], blocks.{i}.conv2.bias,
 *   blocks.{i}.skip.weight [w_{i+1},w_i,1,1], blocks.{i}.skip.bias,
 *   head.weight [1,w_L], head.bias [1], domain_embed.weight [D,w_L].
 *
 * Ownership: ld_ebm_t owns its parameters. ld_ebm_ws_t owns every work buffer
 * and its helper threads; it is sized once for (architecture, max batch,
 * threads) so that no evaluation allocates. A workspace is used by one
 * thread at a time; a model may be shared read-only by many workspaces.
 *
 * Determinism: the energy and gradients of a sample are bit-identical
 * whatever the batch size, the other samples in the batch, or the thread
 * count (work is cut into fixed per-sample pieces, whichever thread runs them). */
#ifndef LD_EBM_H
#define LD_EBM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ld_colour.h"
#include "ld_convnet.h"

#define LD_EBM_MAX_BLOCKS 8
#define LD_EBM_MAX_DOMAINS 32
#define LD_EBM_MAX_CLASSES 16
#define LD_EBM_MAX_CHANNELS 64 /* latent models: the latent channels of an autoencoder (LD_AE_MAX_LATENT) */
#define LD_EBM_MAX_IMAGE_CHANNELS 4 /* pixel models: the channels of an image */
#define LD_EBM_MAX_WIDTH 4096
#define LD_EBM_MAX_SIZE 1024
#define LD_NAME_MAX 64

typedef struct {
    int image_channels;                 /* C: 1..LD_EBM_MAX_CHANNELS */
    int mask_classes;                   /* K: 1..LD_EBM_MAX_CLASSES */
    int size;                           /* S: multiple of 2^n_blocks, <= LD_EBM_MAX_SIZE */
    int n_blocks;                       /* L: 1..LD_EBM_MAX_BLOCKS */
    int widths[LD_EBM_MAX_BLOCKS + 1];  /* w0..wL: 1..LD_EBM_MAX_WIDTH */
    int n_domains;                      /* D: 1..LD_EBM_MAX_DOMAINS */
    char domains[LD_EBM_MAX_DOMAINS][LD_NAME_MAX]; /* distinct, [A-Za-z0-9_.-]+ */
    /* The colour space of the image input (0 = RGB, the zero-initialised
     * default): the network computes the same either way; whoever feeds it
     * converts (ld_langevin_sample, ld_train). LAB needs C = 3. */
    ld_colour_space_t colour_space;
} ld_ebm_arch_t;

/* Checks every field; LD_ERANGE/LD_EINVAL with a detail naming the field. */
int ld_ebm_arch_validate(const ld_ebm_arch_t *arch);
/* "32,64,128" -> widths and n_blocks = count - 1. */
int ld_ebm_arch_set_widths(ld_ebm_arch_t *arch, const char *csv);
/* "DRIVE,STARE" -> domains and n_domains. */
int ld_ebm_arch_set_domains(ld_ebm_arch_t *arch, const char *csv);
/* Whether name is one of the architecture's domains; if so *index = its
 * index (else *index is left as it was). */
bool ld_ebm_arch_domain(const ld_ebm_arch_t *arch, const char *name, int *index);
/* An ordered domain pair (source -> target) as indices of an architecture's
 * domains: what a model trained for chosen pairs was trained for. */
typedef struct {
    int source, target;
} ld_ebm_pair_t;
#define LD_EBM_MAX_PAIRS (LD_EBM_MAX_DOMAINS * (LD_EBM_MAX_DOMAINS - 1))
/* "A:B,C:D" (ordered source:target, names of arch's domains) -> pairs in
 * the order given and *n; "" -> *n = 0 (which callers read as every ordered
 * pair). pairs holds LD_EBM_MAX_PAIRS. LD_EINVAL with a detail naming the
 * pair when one is not source:target, names a domain arch does not have,
 * has source == target, or repeats an earlier one. */
int ld_ebm_arch_parse_pairs(const ld_ebm_arch_t *arch, const char *text, ld_ebm_pair_t *pairs, int *n);
/* 1 when a and b have the same tensor shapes (C, K, S, widths, D): a
 * workspace made for one serves the other. Domain names and colour spaces
 * do not matter. */
int ld_ebm_arch_same_shape(const ld_ebm_arch_t *a, const ld_ebm_arch_t *b);
/* FLOPs (2 per multiply-add) of one forward + backward-to-input image-step. */
double ld_ebm_arch_flops(const ld_ebm_arch_t *arch);

typedef struct ld_ebm_s ld_ebm_t;

/* name, ndim, shape, offset (in floats, into ld_ebm_params()) and numel of
 * a parameter tensor (see ld_convnet.h). */
typedef ld_cn_tensor_t ld_ebm_tensor_t;

/* New model with all parameters zero. Caller owns *out. */
int ld_ebm_new(const ld_ebm_arch_t *arch, ld_ebm_t **out);
void ld_ebm_destroy(ld_ebm_t **self_p);
/* Deep copy (for EMA weights). Caller owns *out. */
int ld_ebm_clone(const ld_ebm_t *self, ld_ebm_t **out);
const ld_ebm_arch_t *ld_ebm_arch(const ld_ebm_t *self);
/* PyTorch-default initialisation (kaiming-uniform a=sqrt(5) weights, uniform
 * biases; domain_embed N(0,1)*0.1...), deterministic in seed. */
void ld_ebm_init_random(ld_ebm_t *self, uint64_t seed);

size_t ld_ebm_n_tensors(const ld_ebm_t *self);
/* The table and the parameters together (ld_convnet.h), for code shared
 * between networks (model files). */
ld_cn_params_t *ld_ebm_parameters(ld_ebm_t *self);
const ld_cn_params_t *ld_ebm_parameters_const(const ld_ebm_t *self);
const ld_ebm_tensor_t *ld_ebm_tensor(const ld_ebm_t *self, size_t i);
/* Whether the model has a tensor called name; if so *index = its index. */
bool ld_ebm_find_tensor(const ld_ebm_t *self, const char *name, size_t *index);
float *ld_ebm_params(ld_ebm_t *self);
const float *ld_ebm_params_const(const ld_ebm_t *self);
size_t ld_ebm_numel(const ld_ebm_t *self);

typedef struct ld_ebm_ws_s ld_ebm_ws_t;

/* Work buffers for up to max_batch samples and `threads` threads (the
 * calling thread plus threads-1 helpers owned by the workspace).
 * Caller owns *out. */
int ld_ebm_ws_new(const ld_ebm_arch_t *arch, int max_batch, int threads, ld_ebm_ws_t **out);
void ld_ebm_ws_destroy(ld_ebm_ws_t **self_p);
int ld_ebm_ws_max_batch(const ld_ebm_ws_t *self);
/* A scratch buffer of max_batch*C*S*S floats for the caller (Langevin uses
 * it for gradients); untouched by the ld_ebm_* functions. */
float *ld_ebm_ws_scratch(ld_ebm_ws_t *self);

/* Energies, and dE/dimage when grad_out != NULL, of n <= max_batch samples.
 * image [n,C,S,S] float32, mask [n,S,S] class ids < K, target [n] < D,
 * energy_out [n], grad_out [n,C,S,S]. The architecture of ws must equal the
 * model's. LD_EINVAL (detail names the sample) on a bad mask or target. */
int ld_ebm_energy(const ld_ebm_t *m, ld_ebm_ws_t *ws, int n,
                  const float *image, const uint8_t *mask, const int32_t *target,
                  float *energy_out, float *grad_out);

/* Adds d(sum_i coef[i] * E_i)/d(params) into grad_params (ld_ebm_numel
 * floats, layout of ld_ebm_params) and writes the energies to energy_out
 * (may be NULL). */
int ld_ebm_backward_params(const ld_ebm_t *m, ld_ebm_ws_t *ws, int n,
                           const float *image, const uint8_t *mask, const int32_t *target,
                           const float *coef, float *energy_out, float *grad_params);

/* ---- Workspace extras (added by the engine) ----
 * Thread use: the workspace owns its threads and the cores they run on.
 * ld_ebm_ws_new() sets OpenBLAS to one thread for the whole process
 * (openblas_set_num_threads(1)): every GEMM runs on the engine thread that
 * calls it, so `threads` is the whole CPU budget of the engine. */

/* As ld_ebm_energy, but reuses the weight transforms of the previous
 * evaluation on ws when that was of the same model object: the caller
 * guarantees the parameters did not change in between (ld_langevin_run
 * calls this for every step after its first). Otherwise as ld_ebm_energy. */
int ld_ebm_energy_reuse(const ld_ebm_t *m, ld_ebm_ws_t *ws, int n,
                        const float *image, const uint8_t *mask, const int32_t *target,
                        float *energy_out, float *grad_out);

/* Threads of the workspace, the calling thread included. */
int ld_ebm_ws_threads(const ld_ebm_ws_t *self);

/* Runs fn(ctx, piece, tid) for every piece in 0..pieces-1 on the
 * workspace's threads (tid in 0..threads-1, each piece exactly once) and
 * returns when all are done. For callers' per-chain work (Langevin
 * updates); pieces must not depend on which thread runs them. */
typedef void (*ld_ebm_task_fn)(void *ctx, int piece, int tid);
void ld_ebm_ws_parallel(ld_ebm_ws_t *self, int pieces, ld_ebm_task_fn fn, void *ctx);

/* Per-layer time profile. Enabling clears the counters; while enabled each
 * evaluation adds the thread-seconds spent in each part (summed over
 * threads; "wait" is time spent at barriers). Costs two clock reads per
 * piece when enabled, nothing when disabled. */
typedef struct {
    const char *name;   /* "blocks.0.conv1.fwd.gemm" (owned by the workspace) */
    double seconds;
    long long calls;
} ld_ebm_prof_t;
void ld_ebm_ws_set_profiling(ld_ebm_ws_t *self, int on);
/* Copies up to max entries; returns the number of entries. */
int ld_ebm_ws_profile(const ld_ebm_ws_t *self, ld_ebm_prof_t *out, int max);

#endif
