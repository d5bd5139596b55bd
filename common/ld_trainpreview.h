/* ld_trainpreview: the preview grid of an energy-model training run (a PNG
 * to look at while it trains).
 *
 * For one source crop of every domain s that is the source of a trained
 * pair (crops and chain noise drawn from the caller's preview stream, so
 * the same crops every time), a row with the crop, then for each target t
 * of a trained pair (s, t), in domain order, the model's Langevin snapshots
 * toward t (K/4, K/2, 3K/4, K) next to a real crop of t (rows with fewer
 * such targets end early); masks outlined in green on the source and real
 * crops (the snapshots share the source's mask and stay clean to show the
 * vessels). Tiles are S px with a 2 px gap. Chains run in the model's
 * colour space (through the autoencoder in latent mode) and are shown in
 * RGB.
 *
 * Nothing here touches the training state: the model is only read, the
 * workspaces are scratch. */
#ifndef LD_TRAINPREVIEW_H
#define LD_TRAINPREVIEW_H

#include <stdint.h>

#include "ld_ae.h"
#include "ld_dataset.h"
#include "ld_ebm.h"
#include "ld_langevin.h"
#include "ld_rng.h"

#define LD_TRAINPREVIEW_SNAPSHOTS 4

typedef struct {
    const ld_ebm_t *model;          /* the weights shown (the EMA) */
    ld_ebm_ws_t *ws;                /* scratch workspace for model */
    const ld_ae_t *ae;              /* latent mode: the autoencoder, else NULL */
    ld_ae_ws_t *ae_ws;              /* its scratch workspace */
    const ld_dataset_t *ds;         /* the crops come from here */
    int size;                       /* crop side S (image space) */
    const ld_langevin_params_t *lp; /* step size, noise and steps K of the chains */
    const ld_ebm_pair_t *pairs;     /* the trained pairs; n_pairs 0: every ordered pair */
    int n_pairs;
} ld_trainpreview_t;

/* Writes the grid to path (atomically), drawing crops and noise from rng. */
int ld_trainpreview_write(const ld_trainpreview_t *p, ld_rng_t *rng, const char *path);

#endif
