/* ld_langevin: Langevin chains on the image channels, mask held fixed.
 *
 *   x_{k+1} = clamp(x_k - (eta/2) dE/dx(x_k) + sqrt(eta) * sigma * noise_k, -1, 1)
 *
 * noise_k for a chain comes from ld_noise_fill(seed, chain_id, k, ...), so a
 * chain's trajectory depends only on (model, start image, mask, target,
 * params, seed, chain id): not on the batch it ran in or on thread counts. */
#ifndef LD_LANGEVIN_H
#define LD_LANGEVIN_H

#include "ld_colour.h"
#include <stdatomic.h>

#include "ld_ae.h"
#include "ld_ebm.h"

#define LD_LANGEVIN_MAX_SNAPSHOTS 64

/* The step size and noise a sampler uses for a model that does not say what
 * it was trained with (no train.step-size / train.noise metadata): the noise
 * is `langdaug train`'s default. Plain literals, so that help texts can quote
 * them (LD_LANGEVIN_STR). */
#define LD_LANGEVIN_FALLBACK_STEP_SIZE 1
#define LD_LANGEVIN_FALLBACK_NOISE 0.005
#define LD_LANGEVIN_STR(x) LD_LANGEVIN_STR_(x)
#define LD_LANGEVIN_STR_(x) #x

typedef struct {
    float step_size;      /* eta > 0 */
    float noise;          /* sigma >= 0 */
    int steps;            /* K >= 1 */
    int n_snapshots;      /* 0..LD_LANGEVIN_MAX_SNAPSHOTS */
    int snapshots[LD_LANGEVIN_MAX_SNAPSHOTS]; /* strictly ascending, each in 0..K (0 = start) */
    uint64_t seed;
    int unbounded;        /* 0: states clamped to [-1,1] (images); 1: not clamped (latents) */
} ld_langevin_params_t;

/* Checks the parameters; LD_ERANGE with a detail naming the field. */
int ld_langevin_validate(const ld_langevin_params_t *p);
/* "10,20,40" -> snapshots (sorted, duplicates rejected). */
int ld_langevin_set_snapshots(ld_langevin_params_t *p, const char *csv);

/* Runs n <= ld_ebm_ws_max_batch(ws) chains for p->steps steps.
 * image [n,C,S,S]: start images, overwritten with the final state.
 * chain_id [n]: noise keys. snap_images [n_snapshots,n,C,S,S] and
 * snap_energy [n_snapshots,n] receive each snapshot and its energy (either
 * may be NULL). cancel: if non-NULL and set to non-zero by another thread,
 * the run stops between steps with LD_ECANCELED. Non-finite energies or
 * gradients stop it with LD_ENUMERIC. Uses ld_ebm_ws_scratch(ws). */
int ld_langevin_run(const ld_ebm_t *m, ld_ebm_ws_t *ws, const ld_langevin_params_t *p, int n,
                    float *image, const uint8_t *mask, const int32_t *target,
                    const uint64_t *chain_id, float *snap_images, float *snap_energy,
                    const atomic_int *cancel);

/* The samplers' chains (langdaug sample, langdaugd, training previews):
 * ld_langevin_run in the model's colour space (ld_ebm_arch(m)->colour_space)
 * from RGB crops, with RGB snapshots, and what the samples keep of their
 * source:
 *   start [n,C,S,S]: RGB start crops in [-1,1] as the dataset gives them
 *     (not modified); converted to the model's colour space for the chains;
 *   snap_images [n_snapshots,n,C,S,S] (required): every snapshot converted
 *     back to RGB (ld_colour_lab_to_rgb for LAB models); a step-0 snapshot
 *     is the start crop itself, bit for bit;
 *   keep = LD_KEEP_LUMINANCE (3-channel models only, else LD_EINVAL): every
 *     other snapshot gets the start's L* (ld_colour.h): for a LAB model its
 *     L' plane is copied from the converted start before going back to RGB,
 *     for an RGB model ld_colour_keep_luminance is applied in RGB;
 *   snap_energy (may be NULL): the energies of the chain states, as
 *     ld_langevin_run gives them (before keep);
 *   start_energy [n] (may be NULL): energies of the converted starts (one
 *     extra forward pass).
 * Allocates the chains' state (n*C*S*S floats, twice with keep on a LAB
 * model). Errors as ld_langevin_run. */
int ld_langevin_sample(const ld_ebm_t *m, ld_ebm_ws_t *ws, const ld_langevin_params_t *p, ld_keep_t keep, int n,
                       const float *start, const uint8_t *mask, const int32_t *target, const uint64_t *chain_id,
                       float *snap_images, float *snap_energy, float *start_energy, const atomic_int *cancel);
/* The same in latent mode (ld_latent.h): m is a latent model and ae its
 * autoencoder (ld_latent_check holds), ae_ws has room for n samples. start
 * [n,C,S,S] RGB crops and mask [n,S,S] at the autoencoder's side S; each
 * chain starts from the encoded start (in the autoencoder's colour space),
 * moves its latent without clamping (p->unbounded is implied) under the mask
 * on the latent grid (ld_latent_mask), and every snapshot but step 0 is
 * decoded, then goes back to RGB with keep applied as above:
 * snap_images [n_snapshots,n,C,S,S]. Energies are of the latents. */
int ld_langevin_sample_latent(const ld_ebm_t *m, ld_ebm_ws_t *ws, const ld_ae_t *ae, ld_ae_ws_t *ae_ws,
                              const ld_langevin_params_t *p, ld_keep_t keep, int n, const float *start,
                              const uint8_t *mask, const int32_t *target, const uint64_t *chain_id,
                              float *snap_images, float *snap_energy, float *start_energy,
                              const atomic_int *cancel);

#endif
