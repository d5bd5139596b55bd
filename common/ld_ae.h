/* ld_ae: the "aeconv" convolutional autoencoder: an encoder from images to
 * a small latent map and a decoder back, with forward passes, vector-Jacobian
 * products to the inputs and the weight gradient, on the engine's layers
 * (ld_convnet: Winograd 3x3 convolutions over OpenBLAS, the thread pool).
 *
 * Architecture (C image channels, side S, factor f = 2^L with L = 2 or 3
 * levels, widths w0..wL, Z latent channels; every conv 3x3 with pad 1 and a
 * bias unless said otherwise):
 *   encoder  h0 = stem(x)                                 C -> w0, no activation
 *            level i = 0..L-1, w_i -> w_{i+1}, side S/2^i -> S/2^(i+1): the
 *            resdown block of ld_convnet.h (as the energy network's):
 *              h = silu(conv1(h)); h = silu(conv2(h));
 *              out = (avgpool2(h) + avgpool2(skip1x1(input))) / sqrt(2)
 *            z = latent(h_L)                              w_L -> Z at S/f, no activation
 *   decoder  g = stem(z)                                  Z -> w_L at S/f, no activation
 *            block k = 0..L-1 (level j = L-1-k, w_{j+1} -> w_j, side S/2^(j+1) -> S/2^j):
 *              c = up(upsample2_nearest(g))               w_{j+1} -> w_j
 *              r = silu(conv1(c)); r = silu(conv2(r));    w_j -> w_j
 *              g = (c + r) / sqrt(2)
 *            y = tanh(out(g))                             w0 -> C, in [-1, 1]
 * The image x is in [-1, 1] like the energy network's (RGB, or scaled LAB
 * for colour_space lab: the network computes the same either way, whoever
 * feeds it converts). The latent is unconstrained.
 *
 * Parameters live in one contiguous float array in PyTorch state_dict order
 * (langdaug.torch.Autoencoder has the same names), the encoder's first:
 *   encoder.stem.weight [w0,C,3,3], encoder.stem.bias [w0],
 *   encoder.blocks.{i}.{conv1,conv2,skip}.{weight,bias} (ld_convnet.h's down block),
 *   encoder.latent.weight [Z,wL,3,3], encoder.latent.bias [Z],
 *   decoder.stem.weight [wL,Z,3,3], decoder.stem.bias [wL],
 *   decoder.blocks.{k}.up.weight [w_j,w_{j+1},3,3], .up.bias [w_j],
 *   decoder.blocks.{k}.conv1.weight [w_j,w_j,3,3], .conv1.bias,
 *   decoder.blocks.{k}.conv2.weight [w_j,w_j,3,3], .conv2.bias   (j = L-1-k),
 *   decoder.out.weight [C,w0,3,3], decoder.out.bias [C].
 *
 * Evaluation: a sample's encoding, decoding and gradients are bit-identical
 * whatever the batch size, the other samples in the batch, or the thread
 * count: the work is cut into pieces fixed by the architecture and weight
 * gradients are summed in sample order (ld_convnet.h). The VJP and gradient
 * calls run the forward pass again (activations are kept per thread, not per
 * sample), so a training step is encode + decode (the loss gradient needs
 * the output) then ld_ae_backward_params.
 *
 * Ownership: ld_ae_t owns its parameters; ld_ae_ws_t owns every work buffer
 * and its helper threads, sized once for (architecture, max batch, threads);
 * calls never allocate. A workspace is used by one thread at a time; a model
 * may be shared read-only by many workspaces. As for ld_ebm, making a
 * workspace sets OpenBLAS to one thread for the process.
 *
 * Model files: safetensors with __metadata__ format=langdaug-ae, version=1,
 * arch=aeconv, image_channels, size, widths (w0..wL), latent_channels,
 * factor (must agree with the number of widths), colour_space (rgb or lab;
 * required), plus any extra keys, kept and handed back. Loading validates as
 * ld_model.h does for energy models: keys, bounds, dtypes, shapes, every
 * tensor present and no other, finite weights; saving is atomic. */
#ifndef LD_AE_H
#define LD_AE_H

#include <stddef.h>
#include <stdint.h>

#include "ld_colour.h"
#include "ld_convnet.h"
#include "ld_safetensors.h"

#define LD_AE_MAX_LEVELS 3 /* factor 8 */
#define LD_AE_MAX_CHANNELS 4
#define LD_AE_MAX_WIDTH 4096
#define LD_AE_MAX_LATENT 64
#define LD_AE_MAX_SIZE 1024

typedef struct {
    int image_channels;                /* C: 1..LD_AE_MAX_CHANNELS */
    int size;                          /* S: a multiple of 2f, <= LD_AE_MAX_SIZE (the latent side S/f is even) */
    int factor;                        /* f: 4 or 8; L = log2 f levels */
    int widths[LD_AE_MAX_LEVELS + 1];  /* w0..wL: 1..LD_AE_MAX_WIDTH */
    int latent_channels;               /* Z: 1..LD_AE_MAX_LATENT */
    ld_colour_space_t colour_space;    /* of the image; LAB needs C = 3 */
} ld_ae_arch_t;

/* Checks every field; LD_ERANGE/LD_EINVAL with a detail naming the field. */
int ld_ae_arch_validate(const ld_ae_arch_t *arch);
/* "32,64,128" -> widths, and factor = 2^(count - 1) (3 widths: 4, 4 widths: 8). */
int ld_ae_arch_set_widths(ld_ae_arch_t *arch, const char *csv);
/* 1 when a and b have the same tensor shapes (C, S, f, widths, Z): a
 * workspace made for one serves the other. */
int ld_ae_arch_same_shape(const ld_ae_arch_t *a, const ld_ae_arch_t *b);
/* Floats of one sample's latent: Z * (S/f)^2. */
size_t ld_ae_arch_latent_numel(const ld_ae_arch_t *arch);

typedef struct ld_ae_s ld_ae_t;

/* New autoencoder with all parameters zero. Caller owns *out. */
int ld_ae_new(const ld_ae_arch_t *arch, ld_ae_t **out);
void ld_ae_destroy(ld_ae_t **self_p);
/* Deep copy. Caller owns *out. */
int ld_ae_clone(const ld_ae_t *self, ld_ae_t **out);
const ld_ae_arch_t *ld_ae_arch(const ld_ae_t *self);
/* PyTorch-default initialisation (ld_cn_params_init), deterministic in seed. */
void ld_ae_init_random(ld_ae_t *self, uint64_t seed);

/* The parameters (ld_convnet.h): ps->params, ps->numel floats in the order
 * above, described by the tensor table ps->t[0..ps->n) (ld_cn_params_find
 * looks a name up). Owned by the autoencoder; the table is fixed. */
ld_cn_params_t *ld_ae_params(ld_ae_t *self);
const ld_cn_params_t *ld_ae_params_const(const ld_ae_t *self);

typedef struct ld_ae_ws_s ld_ae_ws_t;

/* Work buffers for up to max_batch samples and `threads` threads (the
 * calling thread plus threads-1 helpers owned by the workspace). Caller owns *out. */
int ld_ae_ws_new(const ld_ae_arch_t *arch, int max_batch, int threads, ld_ae_ws_t **out);
void ld_ae_ws_destroy(ld_ae_ws_t **self_p);
int ld_ae_ws_max_batch(const ld_ae_ws_t *self);
int ld_ae_ws_threads(const ld_ae_ws_t *self);

/* Shapes: image [n,C,S,S], latent [n,Z,S/f,S/f], float32; n <= max_batch;
 * the architecture of ws must equal the model's. LD_EINVAL naming the call
 * and the problem otherwise. */

/* latent_out = encoder(image). */
int ld_ae_encode(const ld_ae_t *ae, ld_ae_ws_t *ws, int n, const float *image, float *latent_out);
/* image_out = decoder(latent). */
int ld_ae_decode(const ld_ae_t *ae, ld_ae_ws_t *ws, int n, const float *latent, float *image_out);
/* grad_image_out = (d encoder / d image)^T grad_latent, per sample: the
 * gradient to the image of sum <grad_latent, encoder(image)>. */
int ld_ae_encode_vjp(const ld_ae_t *ae, ld_ae_ws_t *ws, int n, const float *image, const float *grad_latent,
                     float *grad_image_out);
/* grad_latent_out = (d decoder / d latent)^T grad_image, per sample (for
 * Langevin chains in the latent: grad_image = dE/dimage of the decoding). */
int ld_ae_decode_vjp(const ld_ae_t *ae, ld_ae_ws_t *ws, int n, const float *latent, const float *grad_image,
                     float *grad_latent_out);
/* Adds d(sum_i <grad_output_i, decoder(encoder(image_i))>)/d(params) into
 * grad_params (numel floats in the layout of ld_ae_params): with
 * grad_output = dL/doutput, the gradient of the loss L to every weight. */
int ld_ae_backward_params(const ld_ae_t *ae, ld_ae_ws_t *ws, int n, const float *image, const float *grad_output,
                          float *grad_params);

/* Loads an autoencoder file (see above). *ae_out: caller owns. meta_out (may
 * be NULL): the whole __metadata__, caller owns. hash_out (may be NULL):
 * lowercase hex SHA-256 of the file. LD_EFORMAT with a detail naming the
 * file and the problem for a bad file. */
int ld_ae_load(const char *path, ld_ae_t **ae_out, ld_meta_t **meta_out, char hash_out[65]);
/* Writes the autoencoder atomically: the architecture keys are generated and
 * the keys of extra (may be NULL) added (a collision is LD_EINVAL);
 * non-finite weights are refused (LD_ENUMERIC). */
int ld_ae_save(const char *path, const ld_ae_t *ae, const ld_meta_t *extra, char hash_out[65]);

#endif
