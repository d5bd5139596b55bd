/* ldd_engine: what the daemon samples with: the loaded models, the source
 * dataset and the Langevin settings, built from one config.
 *
 * An engine is immutable once built and reference-counted: the loop holds
 * the current one, every chain job holds the one it was scheduled with, so a
 * reload (SIGHUP) swaps engines without stopping running chains, and the old
 * engine is freed when its last job finishes. Building one loads every file
 * and checks that models and dataset agree (channels, mask classes, size);
 * it runs on a libuv work thread and touches no loop state.
 *
 * Langevin settings: step_size / noise = auto take the value the models were
 * trained with (metadata train.step-size / train.noise), resolved by every
 * build; models that disagree fail the build, models without the key get
 * LDD_FALLBACK_*. The build logs the values in force and their source.
 *
 * Latent models (ld_latent.h): a model whose metadata names an autoencoder
 * is loaded with the autoencoder file next to it (same SHA-256, or the
 * build fails); its samples are images of the autoencoder's size and
 * channels (ldd_model_image), which are what every model of an engine and
 * the dataset must agree on.
 *
 * Colour: each model's chains run in its colour space (LAB models from
 * crops converted to LAB); samples are RGB either way (ld_langevin_sample).
 * keep = luminance needs 3-channel models: a build with grey models and that
 * setting fails.
 *
 * Routing: chains are asked for by (source, target) pair; a source is a
 * dataset domain, a target a domain some model declares. A model serves
 * (s, t) when t is one of its domains and either it has no train.pairs
 * metadata (or an empty one) and s != t, or (s, t) is one of its
 * train.pairs (ld_model_train_pairs; a malformed value fails the build).
 * The pair goes to the first model, in config order, that serves it. The
 * routes are built with the engine, so a reload swaps them with it. */
#ifndef LDD_ENGINE_H
#define LDD_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "ld_ae.h"
#include "ld_dataset.h"
#include "ld_ebm.h"
#include "ld_langevin.h"
#include "ldd_config.h"

/* A (source, target) pair routed to a model: dataset domain index, index
 * in the model's domains. */
typedef struct {
    int16_t source, target;
} ldd_served_t;

typedef struct {
    char path[4096];
    char hash[65];
    ld_ebm_t *ebm;
    ld_ae_t *ae;                           /* a latent model's autoencoder (ld_latent.h), else NULL */
    char ae_hash[65];                      /* its SHA-256: with hash, the model's identity */
    ld_ebm_pair_t pairs[LD_EBM_MAX_PAIRS]; /* its train.pairs; n_pairs = 0: every ordered pair */
    int n_pairs;
    ldd_served_t *served;                  /* the pairs routed to it, source-major */
    int n_served;
} ldd_model_t;

/* Where the chains of a pair run: model and target index in it (model -1:
 * no model serves the pair). */
typedef struct {
    int16_t model, index;
} ldd_route_t;

/* A target domain some model declares, with its route from every dataset
 * domain. */
typedef struct {
    char name[LD_NAME_MAX];
    ldd_route_t from[LD_EBM_MAX_DOMAINS];
    int n_sources;                         /* dataset domains it is served from */
} ldd_target_t;

/* One S x S tile of a dataset image: the set of tiles of a domain is what
 * epoch mode goes through once per epoch. */
typedef struct {
    int32_t item, x, y;
} ldd_tile_t;

typedef struct ldd_engine_s {
    _Atomic int refs;
    ldd_model_t models[LDD_MAX_MODELS];
    int n_models;
    ldd_target_t targets[LDD_MAX_MODELS * LD_EBM_MAX_DOMAINS]; /* in the order the models declare them */
    int n_targets;
    ld_dataset_t *dataset;
    int channels, classes, size;  /* C, K of the dataset, S of the crops */
    ld_langevin_params_t defaults; /* step size, noise, default snapshots (steps = last) */
    ld_keep_t keep;                /* the config's keep: what requests without one get */
    int max_steps;
    ldd_tile_t *tiles[LD_EBM_MAX_DOMAINS];  /* per dataset domain */
    int n_tiles[LD_EBM_MAX_DOMAINS];
} ldd_engine_t;

/* Loads models and dataset per cfg. Returns 0 and *out (refs = 1), or a
 * negative code with a detail naming the file and problem. */
int ldd_engine_load(const ldd_config_t *cfg, ldd_engine_t **out);
ldd_engine_t *ldd_engine_ref(ldd_engine_t *e);
/* Drops a reference and NULLs the pointer; frees on the last one. */
void ldd_engine_unref(ldd_engine_t **e_p);

/* Whether some model declares the target domain; if so *index = its
 * index in e->targets (else *index is left as it was). */
bool ldd_engine_find_target(const ldd_engine_t *e, const char *target, int *index);
/* Whether the dataset has the source domain; if so *index = its dataset
 * domain index (else *index is left as it was). */
bool ldd_engine_find_source(const ldd_engine_t *e, const char *source, int *index);

/* The samples' channels and side of a model: its own, or its autoencoder's
 * for a latent model. */
void ldd_model_image(const ldd_model_t *m, int *channels, int *size);

#endif
