/* ld_latent: latent mode, the authors' design: the energy model lives on the
 * latents of an autoencoder (ld_ae), chains move latents, snapshots are
 * decoded to images. This module owns the rules that tie the two models
 * together; the chains themselves are ld_langevin's.
 *
 * Pairing (ld_latent_check): the energy model's image input is the latent:
 *   ebm.image_channels = ae.latent_channels (Z), ebm.size = ae.size / f,
 *   ebm.colour_space = ae.colour_space (the space of the decoded images).
 * Labels: the mask at the image side S conditions the energy on the latent
 * grid S/f through ld_latent_mask: a cell takes the most frequent
 * non-background class among its f x f pixels, background only when all of
 * them are (for a binary vessel mask: max pooling), so that structures
 * thinner than a cell keep a label.
 * Identity: a latent energy model names its autoencoder in its metadata:
 *   latent.autoencoder      = the autoencoder file's SHA-256 (lowercase hex),
 *   latent.autoencoder_file = its file name, looked up next to the model
 *                             when the caller gives no path.
 * The pair is one model: loading refuses an autoencoder whose hash differs.
 *
 * Ownership: functions here borrow every model and buffer; none allocates
 * except ld_latent_load_ae (the autoencoder it returns). */
#ifndef LD_LATENT_H
#define LD_LATENT_H

#include <stdint.h>

#include "ld_ae.h"
#include "ld_ebm.h"
#include "ld_safetensors.h"

#define LD_LATENT_META_HASH "latent.autoencoder"
#define LD_LATENT_META_FILE "latent.autoencoder_file"

/* 0 when the energy model can run on the autoencoder's latents (see above);
 * LD_EINVAL with a detail naming the mismatch otherwise. */
int ld_latent_check(const ld_ae_arch_t *ae, const ld_ebm_arch_t *ebm);

/* masks [n,S,S] (S = ae->size) -> out [n,S/f,S/f] by the rule above. */
void ld_latent_mask(const ld_ae_arch_t *ae, int n, const uint8_t *mask, uint8_t *out);

/* RGB images [n,C,S,S] in [-1,1] (as the dataset gives them) -> latents
 * [n,Z,S/f,S/f]: converted to the autoencoder's colour space in tmp
 * ([n,C,S,S] floats, may be rgb itself), then encoded in pieces of at most
 * ld_ae_ws_max_batch(ws). */
int ld_latent_encode_rgb(const ld_ae_t *ae, ld_ae_ws_t *ws, int n, const float *rgb, float *tmp, float *latent);

/* latents [n,Z,S/f,S/f] -> images [n,C,S,S] in the autoencoder's colour
 * space, in pieces of at most ld_ae_ws_max_batch(ws). */
int ld_latent_decode(const ld_ae_t *ae, ld_ae_ws_t *ws, int n, const float *latent, float *image);

/* 1 when model metadata names an autoencoder (a latent model), else 0. */
int ld_latent_is_latent(const ld_meta_t *model_meta);

/* The autoencoder of a latent model: ae_path, or (NULL) the file named by
 * the metadata in model_path's folder; loaded, its hash compared with the
 * metadata's and the pair checked (ld_latent_check). *ae_out: caller owns.
 * LD_EINVAL/LD_EFORMAT/LD_ENOENT with a detail naming both files and the
 * problem; LD_EINVAL when the model is not a latent model. */
int ld_latent_load_ae(const char *model_path, const ld_meta_t *model_meta, const ld_ebm_arch_t *ebm,
                      const char *ae_path, ld_ae_t **ae_out, char hash_out[65]);

/* Adds the identity keys of autoencoder file ae_path (its hash) to a
 * latent model's metadata. */
int ld_latent_set_meta(ld_meta_t *model_meta, const char *ae_path, const char ae_hash[65]);

#endif
