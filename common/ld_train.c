/* ld_train: contrastive-divergence training loop, checkpoints and previews.
 *
 * Invariants:
 *   - self->iteration iterations are fully applied to model, EMA, Adam, RNG
 *     and history; a step that fails leaves no partial iteration counted
 *     (after a divergence the weights may hold the bad update, which is why
 *     nothing is written from such a state);
 *   - every random number of the trajectory comes from self->rng (stream
 *     LD_TRAIN_STREAM_ITER of the seed); previews use their own stream and
 *     never touch it, so previews and checkpoints do not change the run. */
#include "ld_train.h"
#include "ld_adam.h"
#include "ld_text.h"
#include "ld_colour.h"
#include "ld_dataset.h"
#include "ld_error.h"
#include "ld_image.h"
#include "ld_langevin.h"
#include "ld_log.h"
#include "ld_latent.h"
#include "ld_model.h"
#include "ld_png.h"
#include "ld_rng.h"

#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LD_TRAIN_STREAM_ITER 1
#define LD_TRAIN_STREAM_PREVIEW 2
#define CHECKPOINT_FORMAT "langdaug-train-checkpoint"
#define CHECKPOINT_VERSION "1"
#define PREVIEW_SNAPSHOTS 4

/* ---- configuration table ------------------------------------------------- */

enum { KEY_STR, KEY_INT, KEY_U64, KEY_DBL, KEY_PAIR, KEY_COLOUR };

typedef struct {
    const char *key;
    int type;
    size_t off, size;
    double min, max;
    int trajectory;  /* 1: fixed for a run; 0: may change on resume; -1: not saved (machine-specific) */
    const char *help;
} config_key_t;

#define FIELD(f) offsetof(ld_train_config_t, f), sizeof(((ld_train_config_t *)0)->f)
static const config_key_t config_keys[] = {
    { "data", KEY_STR, FIELD(data), 0, 0, 0, "dataset root: ROOT/<domain>/[SUBDIR/]{image,mask}/*.png" },
    { "manifest", KEY_STR, FIELD(manifest), 0, 0, 0, "CSV manifest (domain,image,mask[,fov]) instead of --data" },
    { "subdir", KEY_STR, FIELD(subdir), 0, 0, 1, "folder inside each domain, e.g. train/ROIs" },
    { "domains", KEY_STR, FIELD(domains), 0, 0, 1, "domains to train on, comma-separated (default: all)" },
    { "pairs", KEY_STR, FIELD(pairs), 0, 0, 1,
      "ordered source:target pairs to train for, e.g. A:B,B:A (default: every ordered pair)" },
    { "maskmap", KEY_STR, FIELD(maskmap), 0, 0, 1, "mask value -> class rules, e.g. 0:0,*:1" },
    { "channels", KEY_INT, FIELD(channels), 0, LD_AE_MAX_CHANNELS, 1, "image channels 1 or 3 (0: from the data)" },
    { "scale", KEY_DBL, FIELD(scale), 1e-6, 16, 1, "working scale applied to every image" },
    { "colour-space", KEY_COLOUR, FIELD(colour_space), 0, 0, 1,
      "rgb, or lab: the model works in scaled CIE LAB (3-channel data)" },
    { "size", KEY_INT, FIELD(size), 1, LD_EBM_MAX_SIZE, 1, "crop side in working pixels" },
    { "whole-images", KEY_INT, FIELD(whole_images), 0, 1, 1,
      "1: every crop is a whole image, cut to its FOV's box, longer side --size, centred and padded (not --scale)" },
    { "latent", KEY_STR, FIELD(latent), 0, 0, 0,
      "autoencoder file (langdaug train-ae): train on its latents of the crops (latent mode)" },
    { "widths", KEY_STR, FIELD(widths), 0, 0, 1, "network widths w0,...,wL (L blocks)" },
    { "batch", KEY_INT, FIELD(batch), 1, 4096, 1, "positives (and negatives) per iteration" },
    { "lr", KEY_DBL, FIELD(lr), 1e-12, 1e9, 1, "Adam learning rate" },
    { "betas", KEY_PAIR, FIELD(betas), 0, 1, 1, "Adam beta1,beta2" },
    { "eps", KEY_DBL, FIELD(eps), 1e-30, 1, 1, "Adam epsilon" },
    { "alpha", KEY_DBL, FIELD(alpha), 0, 1e6, 1, "energy regularisation weight" },
    { "ema", KEY_DBL, FIELD(ema), 0, 1, 1, "EMA decay of the served weights (0: none)" },
    { "langevin-steps", KEY_INT, FIELD(langevin_steps), 1, 100000, 1, "Langevin steps K for negatives" },
    { "step-size", KEY_DBL, FIELD(step_size), 1e-12, 1e6, 1, "Langevin step size eta" },
    { "noise", KEY_DBL, FIELD(noise), 0, 1e6, 1, "Langevin noise sigma" },
    { "seed", KEY_U64, FIELD(seed), 0, 0, 1, "random seed" },
    { "max-energy", KEY_DBL, FIELD(max_energy), 1e-3, 1e30, 0, "|E| beyond this counts as divergence" },
    { "threads", KEY_INT, FIELD(threads), 1, 256, -1, "threads for every evaluation" },
};
#define N_CONFIG_KEYS (sizeof config_keys / sizeof config_keys[0])

/* Keys added after checkpoints were first written, with the value a
 * checkpoint without them was trained with. */
static const struct {
    const char *key, *value;
} keys_added[] = {
    { "colour-space", "rgb" },
    { "pairs", "" },
    { "latent", "" },
    { "whole-images", "0" },
};

void ld_train_config_defaults(ld_train_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->maskmap, sizeof cfg->maskmap, "%s", LD_MASKMAP_DEFAULT);
    cfg->scale = 1;
    cfg->size = 64;
    snprintf(cfg->widths, sizeof cfg->widths, "32,64,128");
    cfg->batch = 16;
    cfg->lr = 1e-3;
    cfg->betas[0] = 0.5;
    cfg->betas[1] = 0.999;
    cfg->eps = 1e-8;
    cfg->alpha = 0.1;
    cfg->ema = 0.999;
    cfg->langevin_steps = 40;
    cfg->step_size = 5;
    cfg->noise = 0.005;
    cfg->seed = 1;
    cfg->max_energy = 1e4;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    cfg->threads = cpus < 1 ? 1 : cpus > 64 ? 64 : (int)cpus;
}

static const config_key_t *find_key(const char *key)
{
    for (size_t i = 0; i < N_CONFIG_KEYS; i++)
        if (strcmp(config_keys[i].key, key) == 0)
            return &config_keys[i];
    return NULL;
}

static int set_pair(const char *what, const char *value, double min, double max, double out[2])
{
    const char *comma = strchr(value, ',');
    if (!comma || strchr(comma + 1, ','))
        return ld_seterr(LD_EINVAL, "%s: '%s' is not a pair 'a,b'", what, value);
    char first[64];
    size_t len = (size_t)(comma - value);
    if (len >= sizeof first)
        return ld_seterr(LD_EINVAL, "%s: '%s' is not a pair 'a,b'", what, value);
    memcpy(first, value, len);
    first[len] = '\0';
    double a, b;
    int rc = ld_text_parse_double(what, first, min, max, &a);
    if (!rc)
        rc = ld_text_parse_double(what, comma + 1, min, max, &b);
    if (rc)
        return rc;
    out[0] = a;
    out[1] = b;
    return LD_OK;
}

int ld_train_config_set(ld_train_config_t *cfg, const char *key, const char *value)
{
    const config_key_t *k = find_key(key);
    if (!k)
        return ld_seterr(LD_ENOENT, "unknown training setting '%s'", key);
    char what[64];
    snprintf(what, sizeof what, "--%s", key);
    void *field = (char *)cfg + k->off;
    switch (k->type) {
    case KEY_STR:
        if (strlen(value) >= k->size)
            return ld_seterr(LD_ERANGE, "%s: value longer than %zu characters", what, k->size - 1);
        memcpy(field, value, strlen(value) + 1);
        return LD_OK;
    case KEY_INT:
        return ld_text_parse_int(what, value, (int)k->min, (int)k->max, field);
    case KEY_U64:
        return ld_text_parse_u64(what, value, field);
    case KEY_DBL:
        return ld_text_parse_double(what, value, k->min, k->max, field);
    case KEY_COLOUR:
        return ld_colour_space_parse(what, value, field);
    default:
        return set_pair(what, value, k->min, k->max, field);
    }
}

/* Shortest %g text that reads back as exactly v. */
static void format_double(double v, char *buf, size_t len)
{
    for (int prec = 6; prec <= 17; prec++) {
        snprintf(buf, len, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            return;
    }
}

int ld_train_config_get(const ld_train_config_t *cfg, const char *key, char *buf, size_t len)
{
    const config_key_t *k = find_key(key);
    if (!k)
        return ld_seterr(LD_ENOENT, "unknown training setting '%s'", key);
    const void *field = (const char *)cfg + k->off;
    char a[32], b[32];
    switch (k->type) {
    case KEY_STR:
        snprintf(buf, len, "%s", (const char *)field);
        break;
    case KEY_INT:
        snprintf(buf, len, "%d", *(const int *)field);
        break;
    case KEY_U64:
        snprintf(buf, len, "%" PRIu64, *(const uint64_t *)field);
        break;
    case KEY_DBL:
        format_double(*(const double *)field, buf, len);
        break;
    case KEY_COLOUR:
        snprintf(buf, len, "%s", ld_colour_space_name(*(const ld_colour_space_t *)field));
        break;
    default:
        format_double(((const double *)field)[0], a, sizeof a);
        format_double(((const double *)field)[1], b, sizeof b);
        snprintf(buf, len, "%s,%s", a, b);
        break;
    }
    return LD_OK;
}

size_t ld_train_config_n_keys(void)
{
    return N_CONFIG_KEYS;
}

const char *ld_train_config_key(size_t i, const char **help, int *trajectory)
{
    if (i >= N_CONFIG_KEYS)
        return NULL;
    if (help)
        *help = config_keys[i].help;
    if (trajectory)
        *trajectory = config_keys[i].trajectory > 0;
    return config_keys[i].key;
}

static void adam_params(const ld_train_config_t *cfg, ld_adam_params_t *p)
{
    p->lr = cfg->lr;
    p->beta1 = cfg->betas[0];
    p->beta2 = cfg->betas[1];
    p->eps = cfg->eps;
}

static void langevin_params(const ld_train_config_t *cfg, ld_langevin_params_t *p)
{
    memset(p, 0, sizeof *p);
    p->step_size = (float)cfg->step_size;
    p->noise = (float)cfg->noise;
    p->steps = cfg->langevin_steps;
}

int ld_train_config_validate(const ld_train_config_t *cfg)
{
    if (!cfg->data[0] == !cfg->manifest[0])
        return ld_seterr(LD_EINVAL, "training data: give exactly one of --data ROOT and --manifest CSV");
    if (cfg->channels != 0 && cfg->channels != 1 && cfg->channels != 3)
        return ld_seterr(LD_ERANGE, "--channels: %d is not 0, 1 or 3", cfg->channels);
    ld_maskmap_t mm;
    int rc = ld_maskmap_parse(cfg->maskmap, &mm);
    if (rc)
        return rc;
    ld_ebm_arch_t arch;
    memset(&arch, 0, sizeof arch);
    rc = ld_ebm_arch_set_widths(&arch, cfg->widths);
    if (rc)
        return rc;
    if (cfg->size % (1 << arch.n_blocks) != 0)
        return ld_seterr(LD_ERANGE, "--size: %d is not a multiple of 2^%d (one halving per block of --widths %s)",
                         cfg->size, arch.n_blocks, cfg->widths);
    ld_adam_params_t ap;
    adam_params(cfg, &ap);
    rc = ld_adam_validate(&ap);
    if (rc)
        return rc;
    if (!(cfg->ema < 1))
        return ld_seterr(LD_ERANGE, "--ema: %g must be below 1", cfg->ema);
    ld_langevin_params_t lp;
    langevin_params(cfg, &lp);
    return ld_langevin_validate(&lp);
}

int ld_train_config_to_meta(const ld_train_config_t *cfg, ld_meta_t *meta)
{
    char key[80], value[LD_TRAIN_PATH_MAX];
    for (size_t i = 0; i < N_CONFIG_KEYS; i++) {
        if (config_keys[i].trajectory < 0)
            continue;
        snprintf(key, sizeof key, "train.%s", config_keys[i].key);
        ld_train_config_get(cfg, config_keys[i].key, value, sizeof value);
        int rc = ld_meta_set(meta, key, value);
        if (rc)
            return rc;
    }
    return LD_OK;
}

/* ---- the training state --------------------------------------------------- */

struct ld_train_s {
    ld_train_config_t cfg;
    ld_dataset_t *ds;
    ld_ebm_arch_t arch;
    ld_ebm_pair_t pairs[LD_EBM_MAX_PAIRS]; /* cfg.pairs resolved; n_pairs = 0: every ordered pair */
    int n_pairs;
    ld_ebm_t *model, *ema;
    ld_adam_t *adam;
    ld_ebm_ws_t *ws;
    ld_ae_t *ae;               /* latent mode: the autoencoder (cfg.latent), else NULL */
    ld_ae_ws_t *ae_ws;
    char ae_hash[65];
    ld_rng_t rng;
    int64_t iteration;
    size_t numel;
    size_t img_len, mask_len;  /* floats / bytes per sample of the model's input (the latent in latent mode) */
    size_t crop_len, crop_mask_len; /* floats / bytes per dataset crop (= img_len, mask_len in pixel mode) */
    float *img;                /* [2n,C,S,S]: x+ then x- */
    uint8_t *mask;             /* [2n,S,S] */
    float *crop;               /* latent mode: [n,C,S,S] crops before encoding */
    uint8_t *crop_mask;        /* latent mode: [n,S,S] */
    int32_t *target;           /* [2n] */
    float *energy, *coef;      /* [2n] */
    uint64_t *chain;           /* [n] */
    float *grad;               /* [numel] */
    float *history;            /* [history_cap, LD_TRAIN_HISTORY_COLS] */
    int64_t history_cap;
};

void ld_train_destroy(ld_train_t **self_p)
{
    ld_train_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    ld_dataset_destroy(&self->ds);
    ld_ebm_destroy(&self->model);
    ld_ebm_destroy(&self->ema);
    ld_adam_destroy(&self->adam);
    ld_ebm_ws_destroy(&self->ws);
    ld_ae_destroy(&self->ae);
    ld_ae_ws_destroy(&self->ae_ws);
    free(self->crop);
    free(self->crop_mask);
    free(self->img);
    free(self->mask);
    free(self->target);
    free(self->energy);
    free(self->coef);
    free(self->chain);
    free(self->grad);
    free(self->history);
    free(self);
    *self_p = NULL;
}

static int open_data(ld_train_t *self)
{
    ld_train_config_t *cfg = &self->cfg;
    ld_dataset_opts_t o;
    memset(&o, 0, sizeof o);
    o.root = cfg->data[0] ? cfg->data : NULL;
    o.manifest = cfg->manifest[0] ? cfg->manifest : NULL;
    o.subdir = cfg->subdir[0] ? cfg->subdir : NULL;
    o.domains = cfg->domains[0] ? cfg->domains : NULL;
    o.maskmap = cfg->maskmap;
    o.channels = cfg->channels;
    o.scale = cfg->scale;
    o.fit = cfg->whole_images ? cfg->size : 0;
    int rc = ld_dataset_open(&o, &self->ds);
    if (rc)
        return rc;
    int d_count = ld_dataset_n_domains(self->ds);
    if (d_count < 2)
        return ld_seterr(LD_EINVAL, "training needs at least 2 domains; the data has %d%s%s", d_count,
                         d_count ? ": " : "", d_count ? ld_dataset_domain(self->ds, 0) : "");
    if (d_count > LD_EBM_MAX_DOMAINS)
        return ld_seterr(LD_ERANGE, "training data has %d domains, at most %d are supported", d_count,
                         LD_EBM_MAX_DOMAINS);
    /* Resolve "every domain" and "channels from the data" so that a resumed
     * run sees the same domains even if folders were added meanwhile. */
    size_t used = 0;
    for (int d = 0; d < d_count; d++) {
        int n = snprintf(cfg->domains + used, sizeof cfg->domains - used, "%s%s", d ? "," : "",
                         ld_dataset_domain(self->ds, d));
        if (n < 0 || (size_t)n >= sizeof cfg->domains - used)
            return ld_seterr(LD_ERANGE, "training data: domain names too long");
        used += (size_t)n;
    }
    cfg->channels = ld_dataset_channels(self->ds);
    if (cfg->colour_space == LD_COLOUR_LAB && cfg->channels != 3)
        return ld_seterr(LD_EINVAL, "--colour-space lab needs 3-channel (RGB) images; the data has %d channel(s)",
                         cfg->channels);
    for (int d = 0; d < d_count && !cfg->whole_images; d++) {
        int min_side = INT32_MAX;
        for (int i = 0; i < ld_dataset_n_items(self->ds, d); i++) {
            int w, h;
            ld_dataset_item_size(self->ds, d, i, &w, &h);
            min_side = w < min_side ? w : min_side;
            min_side = h < min_side ? h : min_side;
        }
        if (min_side < cfg->size)
            ld_warn("domain %s: smallest image side %d (at scale %g) is below --size %d; crops are padded",
                    ld_dataset_domain(self->ds, d), min_side, cfg->scale, cfg->size);
    }
    return LD_OK;
}

static int build_arch(ld_train_t *self)
{
    ld_ebm_arch_t *a = &self->arch;
    memset(a, 0, sizeof *a);
    const ld_ae_arch_t *ae = self->ae ? ld_ae_arch(self->ae) : NULL;
    a->image_channels = ae ? ae->latent_channels : self->cfg.channels;
    a->mask_classes = ld_dataset_n_classes(self->ds);
    a->size = ae ? ae->size / ae->factor : self->cfg.size;
    a->colour_space = self->cfg.colour_space;
    int rc = ld_ebm_arch_set_widths(a, self->cfg.widths);
    if (!rc)
        rc = ld_ebm_arch_set_domains(a, self->cfg.domains);
    if (!rc)
        rc = ld_ebm_arch_validate(a);
    if (rc && ae)
        return ld_seterr(rc, "the energy model on the latent (%d channels, side %d): %s", a->image_channels, a->size,
                         ld_errdetail());
    return rc;
}

/* Latent mode: the autoencoder of --latent, which must encode the crops
 * the data gives (channels, --size, --colour-space). */
static int open_autoencoder(ld_train_t *self)
{
    const ld_train_config_t *cfg = &self->cfg;
    if (!cfg->latent[0])
        return LD_OK;
    int rc = ld_ae_load(cfg->latent, &self->ae, NULL, self->ae_hash);
    if (rc)
        return ld_seterr(rc, "--latent: %s", ld_errdetail());
    const ld_ae_arch_t *a = ld_ae_arch(self->ae);
    if (a->image_channels != cfg->channels)
        return ld_seterr(LD_EINVAL, "--latent %s encodes %d-channel images; the data has %d channel(s)", cfg->latent,
                         a->image_channels, cfg->channels);
    if (a->size != cfg->size)
        return ld_seterr(LD_EINVAL, "--latent %s encodes %d px images; give --size %d (not %d)", cfg->latent,
                         a->size, a->size, cfg->size);
    if (a->colour_space != cfg->colour_space)
        return ld_seterr(LD_EINVAL, "--latent %s works in %s; give --colour-space %s", cfg->latent,
                         ld_colour_space_name(a->colour_space), ld_colour_space_name(a->colour_space));
    return ld_ae_ws_new(a, 2 * cfg->batch, cfg->threads, &self->ae_ws);
}

static int resolve_pairs(ld_train_t *self)
{
    if (ld_ebm_arch_parse_pairs(&self->arch, self->cfg.pairs, self->pairs, &self->n_pairs) != LD_OK)
        return ld_seterr(LD_EINVAL, "--pairs: %s", ld_errdetail());
    return LD_OK;
}

/* Whether iterations draw (s, t): a listed pair, or any s != t. */
static int trained_pair(const ld_train_t *self, int s, int t)
{
    if (!self->n_pairs)
        return s != t;
    for (int k = 0; k < self->n_pairs; k++)
        if (self->pairs[k].source == s && self->pairs[k].target == t)
            return 1;
    return 0;
}

static int alloc_buffers(ld_train_t *self)
{
    size_t n = (size_t)self->cfg.batch, s = (size_t)self->cfg.size, side = (size_t)self->arch.size;
    self->img_len = (size_t)self->arch.image_channels * side * side;
    self->mask_len = side * side;
    self->crop_len = (size_t)self->cfg.channels * s * s;
    self->crop_mask_len = s * s;
    if (self->ae && (!(self->crop = malloc(n * self->crop_len * sizeof *self->crop)) ||
                     !(self->crop_mask = malloc(n * self->crop_mask_len))))
        return LD_ENOMEM;
    self->img = malloc(2 * n * self->img_len * sizeof *self->img);
    self->mask = malloc(2 * n * self->mask_len);
    self->target = malloc(2 * n * sizeof *self->target);
    self->energy = malloc(2 * n * sizeof *self->energy);
    self->coef = malloc(2 * n * sizeof *self->coef);
    self->chain = malloc(n * sizeof *self->chain);
    self->grad = malloc(self->numel * sizeof *self->grad);
    if (!self->img || !self->mask || !self->target || !self->energy || !self->coef || !self->chain ||
        !self->grad)
        return LD_ENOMEM;
    return LD_OK;
}

/* Everything but the weights' values: data, architecture, zero models,
 * optimiser, workspace and buffers. */
static int train_setup(const ld_train_config_t *cfg, ld_train_t **out)
{
    *out = NULL;
    int rc = ld_train_config_validate(cfg);
    if (rc)
        return rc;
    ld_train_t *self = calloc(1, sizeof *self);
    if (!self)
        return LD_ENOMEM;
    self->cfg = *cfg;
    ld_adam_params_t ap;
    adam_params(cfg, &ap);
    if ((rc = open_data(self)) || (rc = open_autoencoder(self)) || (rc = build_arch(self)) ||
        (rc = resolve_pairs(self)) ||
        (rc = ld_ebm_new(&self->arch, &self->model)) || (rc = ld_ebm_new(&self->arch, &self->ema)))
        goto fail;
    self->numel = ld_ebm_numel(self->model);
    if ((rc = ld_adam_new(self->numel, &ap, &self->adam)) ||
        (rc = ld_ebm_ws_new(&self->arch, 2 * cfg->batch, cfg->threads, &self->ws)) ||
        (rc = alloc_buffers(self)))
        goto fail;
    ld_rng_init(&self->rng, cfg->seed, LD_TRAIN_STREAM_ITER);
    *out = self;
    return LD_OK;
fail:
    ld_train_destroy(&self);
    return rc;
}

int ld_train_new(const ld_train_config_t *cfg, ld_train_t **out)
{
    int rc = train_setup(cfg, out);
    if (rc)
        return rc;
    ld_train_t *self = *out;
    ld_ebm_init_random(self->model, cfg->seed);
    memcpy(ld_ebm_params(self->ema), ld_ebm_params_const(self->model), self->numel * sizeof(float));
    return LD_OK;
}

const ld_train_config_t *ld_train_config(const ld_train_t *self)
{
    return &self->cfg;
}

int64_t ld_train_iteration(const ld_train_t *self)
{
    return self->iteration;
}

const ld_ebm_t *ld_train_model(const ld_train_t *self)
{
    return self->model;
}

const ld_ebm_t *ld_train_ema(const ld_train_t *self)
{
    return self->ema;
}

const struct ld_dataset_s *ld_train_dataset(const ld_train_t *self)
{
    return self->ds;
}

const float *ld_train_history(const ld_train_t *self, int64_t *n_rows)
{
    *n_rows = self->iteration;
    return self->history;
}

/* ---- one iteration ---------------------------------------------------------- */

static int diverged(int64_t iteration, const char *what)
{
    return ld_seterr(LD_ENUMERIC,
                     "training diverged at iteration %" PRId64 ": %s; the last checkpoint is kept "
                     "(lower --lr or --step-size, or raise --alpha)",
                     iteration, what);
}

/* n random crops of domain d into samples [first, first+n), in the model's
 * colour space; in latent mode drawn into the crop buffers, then encoded
 * with their masks taken to the latent grid. */
static int draw_crops(ld_train_t *self, int domain, int first, int n)
{
    float *img = self->ae ? self->crop : self->img + (size_t)first * self->img_len;
    uint8_t *mask = self->ae ? self->crop_mask : self->mask + (size_t)first * self->mask_len;
    for (int i = 0; i < n; i++) {
        ld_crop_t crop;
        float *x = img + (size_t)i * self->crop_len;
        int rc = ld_dataset_random_crop(self->ds, domain, -1, self->cfg.size, &self->rng, &crop);
        if (!rc)
            rc = ld_dataset_extract(self->ds, &crop, x, mask + (size_t)i * self->crop_mask_len);
        if (rc)
            return rc;
        if (!self->ae && self->cfg.colour_space == LD_COLOUR_LAB)
            ld_colour_rgb_to_lab(x, x, self->crop_mask_len);
    }
    if (!self->ae)
        return LD_OK;
    ld_latent_mask(ld_ae_arch(self->ae), n, mask, self->mask + (size_t)first * self->mask_len);
    return ld_latent_encode_rgb(self->ae, self->ae_ws, n, img, img, self->img + (size_t)first * self->img_len);
}

static int grow_history(ld_train_t *self, int64_t rows)
{
    if (rows <= self->history_cap)
        return LD_OK;
    int64_t cap = self->history_cap ? self->history_cap : 1024;
    while (cap < rows)
        cap *= 2;
    float *h = realloc(self->history, (size_t)cap * LD_TRAIN_HISTORY_COLS * sizeof *h);
    if (!h)
        return LD_ENOMEM;
    self->history = h;
    self->history_cap = cap;
    return LD_OK;
}

static int all_finite(const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return 0;
    return 1;
}

/* Negatives: crops of s walked toward t under the current weights. */
static int make_negatives(ld_train_t *self, int n, const atomic_int *cancel)
{
    ld_langevin_params_t lp;
    langevin_params(&self->cfg, &lp);
    lp.seed = ld_rng_u64(&self->rng);
    lp.unbounded = self->ae != NULL;
    for (int i = 0; i < n; i++)
        self->chain[i] = (uint64_t)i;
    return ld_langevin_run(self->model, self->ws, &lp, n, self->img + (size_t)n * self->img_len,
                           self->mask + (size_t)n * self->mask_len, self->target + n, self->chain, NULL,
                           NULL, cancel);
}

/* Energies of x+ and x-, their checks, the loss and the per-sample
 * coefficients of its gradient. */
static int energies_and_coefs(ld_train_t *self, int n, int64_t it, ld_train_stats_t *st)
{
    int rc = ld_ebm_energy(self->model, self->ws, 2 * n, self->img, self->mask, self->target, self->energy,
                           NULL);
    if (rc)
        return rc;
    double sum_pos = 0, sum_neg = 0, sq_pos = 0, sq_neg = 0;
    for (int i = 0; i < 2 * n; i++) {
        double e = self->energy[i];
        if (!isfinite(e) || fabs(e) > self->cfg.max_energy) {
            char what[160];
            snprintf(what, sizeof what, "energy %g of a %s sample exceeds --max-energy %g", e,
                     i < n ? "positive" : "negative", self->cfg.max_energy);
            return diverged(it, what);
        }
        if (i < n) {
            sum_pos += e;
            sq_pos += e * e;
        } else {
            sum_neg += e;
            sq_neg += e * e;
        }
    }
    const double alpha = self->cfg.alpha;
    st->e_pos = sum_pos / n;
    st->e_neg = sum_neg / n;
    st->loss = st->e_pos - st->e_neg + alpha * (sq_pos / n + sq_neg / n);
    for (int i = 0; i < 2 * n; i++)
        self->coef[i] = (float)(((i < n) ? 1.0 : -1.0) / n + 2.0 * alpha * self->energy[i] / n);
    return LD_OK;
}

static int update_weights(ld_train_t *self, int n, int64_t it, ld_train_stats_t *st)
{
    memset(self->grad, 0, self->numel * sizeof *self->grad);
    int rc = ld_ebm_backward_params(self->model, self->ws, 2 * n, self->img, self->mask, self->target,
                                    self->coef, NULL, self->grad);
    if (rc)
        return rc;
    double sq = 0;
    for (size_t i = 0; i < self->numel; i++)
        sq += (double)self->grad[i] * self->grad[i];
    st->grad_norm = sqrt(sq);
    if (!isfinite(st->grad_norm))
        return diverged(it, "the parameter gradient is not finite");
    float *p = ld_ebm_params(self->model);
    ld_adam_step(self->adam, p, self->grad);
    if (!all_finite(p, self->numel))
        return diverged(it, "a weight became NaN/Inf after the Adam step");
    /* EMA warm-up as in TensorFlow's ExponentialMovingAverage(num_updates):
     * early averages do not drag the random initialisation along. */
    double warm = (1.0 + (double)it) / (10.0 + (double)it);
    double decay = self->cfg.ema < warm ? self->cfg.ema : warm;
    ld_ema_update(ld_ebm_params(self->ema), p, self->numel, decay);
    return LD_OK;
}

int ld_train_step(ld_train_t *self, ld_train_stats_t *stats, const atomic_int *cancel)
{
    const ld_rng_t saved = self->rng;
    const int n = self->cfg.batch, d_count = self->arch.n_domains;
    const int64_t it = self->iteration + 1;
    ld_train_stats_t st;
    memset(&st, 0, sizeof st);
    st.iteration = it;
    if (self->n_pairs) {
        const ld_ebm_pair_t *p = &self->pairs[ld_rng_below(&self->rng, (uint32_t)self->n_pairs)];
        st.source = p->source;
        st.target = p->target;
    } else {
        st.source = (int)ld_rng_below(&self->rng, (uint32_t)d_count);
        st.target = (int)ld_rng_below(&self->rng, (uint32_t)d_count - 1);
        st.target += st.target >= st.source;
    }
    int rc = grow_history(self, it);
    if (!rc)
        rc = draw_crops(self, st.target, 0, n);
    if (!rc)
        rc = draw_crops(self, st.source, n, n);
    if (rc)
        goto undo;
    for (int i = 0; i < 2 * n; i++)
        self->target[i] = st.target;
    rc = make_negatives(self, n, cancel);
    if (rc == LD_ENUMERIC) {
        char what[600];
        snprintf(what, sizeof what, "Langevin chain toward %s: %s", self->arch.domains[st.target],
                 ld_errdetail());
        return diverged(it, what);
    }
    if (rc)
        goto undo;
    if ((rc = energies_and_coefs(self, n, it, &st)) || (rc = update_weights(self, n, it, &st)))
        return rc;
    float *h = self->history + (size_t)(it - 1) * LD_TRAIN_HISTORY_COLS;
    h[0] = (float)st.loss;
    h[1] = (float)st.e_pos;
    h[2] = (float)st.e_neg;
    self->iteration = it;
    if (stats)
        *stats = st;
    return LD_OK;
undo:
    self->rng = saved;
    return rc;
}

/* ---- checkpoints --------------------------------------------------------------- */

typedef struct {
    const char *prefix;
    float *data;
} param_set_t;

static void param_sets(ld_train_t *self, param_set_t sets[4])
{
    sets[0] = (param_set_t){ "params.", ld_ebm_params(self->model) };
    sets[1] = (param_set_t){ "ema.", ld_ebm_params(self->ema) };
    sets[2] = (param_set_t){ "adam_m.", ld_adam_m(self->adam) };
    sets[3] = (param_set_t){ "adam_v.", ld_adam_v(self->adam) };
}

typedef struct {
    uint64_t iteration, adam_step, rng64[3];
    uint32_t rng32[5];
} scalar_state_t;

static void data_fingerprint(const ld_train_t *self, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int d = 0; d < ld_dataset_n_domains(self->ds) && used < len; d++) {
        int n = snprintf(buf + used, len - used, "%s%s:%d", d ? "," : "", ld_dataset_domain(self->ds, d),
                         ld_dataset_n_items(self->ds, d));
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

static int add_checkpoint_tensors(ld_train_t *self, ld_st_writer_t *w, const scalar_state_t *ss)
{
    param_set_t sets[4];
    param_sets(self, sets);
    char name[160];
    int rc = LD_OK;
    for (int s = 0; s < 4 && !rc; s++) {
        for (size_t i = 0; i < ld_ebm_n_tensors(self->model) && !rc; i++) {
            const ld_ebm_tensor_t *t = ld_ebm_tensor(self->model, i);
            snprintf(name, sizeof name, "%s%s", sets[s].prefix, t->name);
            rc = ld_st_writer_add(w, name, LD_DT_F32, t->ndim, t->shape, sets[s].data + t->offset);
        }
    }
    const int64_t one = 1, three = 3, five = 5;
    const int64_t hist_shape[2] = { self->iteration, LD_TRAIN_HISTORY_COLS };
    if (!rc)
        rc = ld_st_writer_add(w, "state.iteration", LD_DT_U64, 1, &one, &ss->iteration);
    if (!rc)
        rc = ld_st_writer_add(w, "state.adam_step", LD_DT_U64, 1, &one, &ss->adam_step);
    if (!rc)
        rc = ld_st_writer_add(w, "state.rng_u64", LD_DT_U64, 1, &three, ss->rng64);
    if (!rc)
        rc = ld_st_writer_add(w, "state.rng_u32", LD_DT_U32, 1, &five, ss->rng32);
    if (!rc)
        rc = ld_st_writer_add(w, "state.history", LD_DT_F32, 2, hist_shape, self->history);
    return rc;
}

static int add_checkpoint_meta(ld_train_t *self, ld_st_writer_t *w)
{
    ld_meta_t *meta = NULL;
    char buf[LD_TRAIN_LIST_MAX + 64];
    int rc = ld_meta_new(&meta);
    if (!rc)
        rc = ld_meta_set(meta, "format", CHECKPOINT_FORMAT);
    if (!rc)
        rc = ld_meta_set(meta, "version", CHECKPOINT_VERSION);
    snprintf(buf, sizeof buf, "%" PRId64, self->iteration);
    if (!rc)
        rc = ld_meta_set(meta, "iteration", buf);
    data_fingerprint(self, buf, sizeof buf);
    if (!rc)
        rc = ld_meta_set(meta, "data_items", buf);
    if (!rc)
        rc = ld_train_config_to_meta(&self->cfg, meta);
    if (!rc && self->ae)
        rc = ld_latent_set_meta(meta, self->cfg.latent, self->ae_hash);
    if (!rc)
        rc = ld_st_writer_merge_meta(w, meta);
    ld_meta_destroy(&meta);
    return rc;
}

int ld_train_save_checkpoint(ld_train_t *self, const char *path)
{
    scalar_state_t ss = {
        .iteration = (uint64_t)self->iteration,
        .adam_step = ld_adam_steps(self->adam),
        .rng64 = { self->rng.seed, self->rng.stream, self->rng.counter },
        .rng32 = { self->rng.buf[0], self->rng.buf[1], self->rng.buf[2], self->rng.buf[3], self->rng.used },
    };
    ld_st_writer_t *w = NULL;
    int rc = ld_st_writer_new(&w);
    if (!rc)
        rc = add_checkpoint_meta(self, w);
    if (!rc)
        rc = add_checkpoint_tensors(self, w, &ss);
    if (!rc)
        rc = ld_st_writer_write(w, path, NULL);
    ld_st_writer_destroy(&w);
    return rc;
}

/* The tensor `name` of the checkpoint, checked to hold numel values of
 * dtype dt. */
static int checkpoint_tensor(const ld_st_t *st, const char *name, ld_dtype_t dt, size_t numel,
                             const ld_st_tensor_t **out)
{
    const ld_st_tensor_t *t = ld_st_find(st, name);
    if (!t)
        return ld_seterr(LD_EFORMAT, "%s: checkpoint has no tensor '%s'", ld_st_path(st), name);
    if (t->dtype != dt || t->numel != numel)
        return ld_seterr(LD_EFORMAT, "%s: tensor '%s' is %s with %zu values, expected %s with %zu",
                         ld_st_path(st), name, ld_dtype_name(t->dtype), t->numel, ld_dtype_name(dt), numel);
    *out = t;
    return LD_OK;
}

static int load_params(ld_train_t *self, const ld_st_t *st)
{
    param_set_t sets[4];
    param_sets(self, sets);
    char name[160];
    for (int s = 0; s < 4; s++) {
        for (size_t i = 0; i < ld_ebm_n_tensors(self->model); i++) {
            const ld_ebm_tensor_t *t = ld_ebm_tensor(self->model, i);
            const ld_st_tensor_t *ct;
            snprintf(name, sizeof name, "%s%s", sets[s].prefix, t->name);
            int rc = checkpoint_tensor(st, name, LD_DT_F32, t->numel, &ct);
            if (rc)
                return rc;
            if (ct->ndim != t->ndim || memcmp(ct->shape, t->shape, (size_t)t->ndim * sizeof t->shape[0]))
                return ld_seterr(LD_EFORMAT, "%s: tensor '%s' has another shape than the model's",
                                 ld_st_path(st), name);
            memcpy(sets[s].data + t->offset, ct->data, ct->nbytes);
        }
    }
    return LD_OK;
}

static int load_state(ld_train_t *self, const ld_st_t *st)
{
    const ld_st_tensor_t *t;
    scalar_state_t ss;
    int rc;
    if ((rc = checkpoint_tensor(st, "state.iteration", LD_DT_U64, 1, &t)))
        return rc;
    memcpy(&ss.iteration, t->data, t->nbytes);
    if ((rc = checkpoint_tensor(st, "state.adam_step", LD_DT_U64, 1, &t)))
        return rc;
    memcpy(&ss.adam_step, t->data, t->nbytes);
    if ((rc = checkpoint_tensor(st, "state.rng_u64", LD_DT_U64, 3, &t)))
        return rc;
    memcpy(ss.rng64, t->data, t->nbytes);
    if ((rc = checkpoint_tensor(st, "state.rng_u32", LD_DT_U32, 5, &t)))
        return rc;
    memcpy(ss.rng32, t->data, t->nbytes);
    if (ss.iteration > (uint64_t)INT32_MAX * 1024 || ss.rng32[4] > 4 || ss.rng64[0] != self->cfg.seed ||
        ss.rng64[1] != LD_TRAIN_STREAM_ITER)
        return ld_seterr(LD_EFORMAT, "%s: inconsistent training state (iteration %" PRIu64 ")", ld_st_path(st),
                         ss.iteration);
    self->iteration = (int64_t)ss.iteration;
    if ((rc = checkpoint_tensor(st, "state.history", LD_DT_F32,
                                (size_t)self->iteration * LD_TRAIN_HISTORY_COLS, &t)) ||
        (rc = grow_history(self, self->iteration)))
        return rc;
    if (t->nbytes)
        memcpy(self->history, t->data, t->nbytes);
    ld_adam_set_steps(self->adam, ss.adam_step);
    self->rng.seed = ss.rng64[0];
    self->rng.stream = ss.rng64[1];
    self->rng.counter = ss.rng64[2];
    memcpy(self->rng.buf, ss.rng32, sizeof self->rng.buf);
    self->rng.used = ss.rng32[4];
    return LD_OK;
}

/* The checkpoint's configuration with the command line's overrides. */
static int resume_config(const ld_st_t *st, const ld_meta_t *overrides, ld_train_config_t *cfg)
{
    const ld_meta_t *meta = ld_st_meta(st);
    const char *format = ld_meta_get(meta, "format"), *version = ld_meta_get(meta, "version");
    if (!format || strcmp(format, CHECKPOINT_FORMAT) != 0)
        return ld_seterr(LD_EFORMAT, "%s: not a langdaug training checkpoint (format '%s')", ld_st_path(st),
                         format ? format : "");
    if (!version || strcmp(version, CHECKPOINT_VERSION) != 0)
        return ld_seterr(LD_ENOTSUP, "%s: checkpoint version '%s' is not supported", ld_st_path(st),
                         version ? version : "");
    ld_train_config_defaults(cfg);
    char key[80];
    for (size_t i = 0; i < N_CONFIG_KEYS; i++) {
        if (config_keys[i].trajectory < 0)
            continue;
        snprintf(key, sizeof key, "train.%s", config_keys[i].key);
        const char *v = ld_meta_get(meta, key);
        for (size_t a = 0; !v && a < sizeof keys_added / sizeof keys_added[0]; a++)
            if (strcmp(keys_added[a].key, config_keys[i].key) == 0)
                v = keys_added[a].value;
        if (!v)
            return ld_seterr(LD_EFORMAT, "%s: checkpoint metadata lacks '%s'", ld_st_path(st), key);
        if (ld_train_config_set(cfg, config_keys[i].key, v))
            return ld_seterr(LD_EFORMAT, "%s: metadata '%s': %s", ld_st_path(st), key, ld_errdetail());
    }
    for (size_t i = 0; overrides && i < ld_meta_count(overrides); i++) {
        const char *k = ld_meta_key(overrides, i), *v = ld_meta_value(overrides, i);
        const config_key_t *ck = find_key(k);
        ld_train_config_t changed = *cfg;
        int rc = ld_train_config_set(&changed, k, v);
        if (rc)
            return rc;
        char was[LD_TRAIN_PATH_MAX], now[LD_TRAIN_PATH_MAX];
        ld_train_config_get(cfg, k, was, sizeof was);
        ld_train_config_get(&changed, k, now, sizeof now);
        if (ck->trajectory > 0 && strcmp(was, now) != 0)
            return ld_seterr(LD_EINVAL,
                             "--%s %s differs from the checkpoint's %s; a resumed run keeps the settings "
                             "it started with",
                             k, now, was);
        if (strcmp(k, "data") == 0)
            changed.manifest[0] = '\0';
        if (strcmp(k, "manifest") == 0)
            changed.data[0] = '\0';
        *cfg = changed;
    }
    return LD_OK;
}

/* A resumed latent run goes on with the very autoencoder it started with. */
static int same_autoencoder(const ld_train_t *self, const ld_st_t *st)
{
    const char *was = ld_meta_get(ld_st_meta(st), LD_LATENT_META_HASH);
    if (!was && !self->ae)
        return LD_OK;
    if (!was || !self->ae)
        return ld_seterr(LD_EINVAL, "%s: the checkpoint is of a %s run; --latent cannot be %s on resume",
                         ld_st_path(st), was ? "latent" : "pixel", was ? "dropped" : "added");
    if (strcmp(was, self->ae_hash) != 0)
        return ld_seterr(LD_EINVAL, "--latent %s has SHA-256 %.12s..., the checkpoint's run used %.12s...",
                         self->cfg.latent, self->ae_hash, was);
    return LD_OK;
}

int ld_train_resume(const char *checkpoint, const ld_meta_t *overrides, ld_train_t **out)
{
    *out = NULL;
    ld_st_t *st = NULL;
    ld_train_t *self = NULL;
    ld_train_config_t cfg;
    int rc = ld_st_open(checkpoint, &st);
    if (!rc)
        rc = resume_config(st, overrides, &cfg);
    if (!rc)
        rc = train_setup(&cfg, &self);
    if (!rc)
        rc = same_autoencoder(self, st);
    if (!rc)
        rc = load_params(self, st);
    if (!rc)
        rc = load_state(self, st);
    if (rc)
        goto fail;
    char now[LD_TRAIN_LIST_MAX + 64];
    const char *was = ld_meta_get(ld_st_meta(st), "data_items");
    data_fingerprint(self, now, sizeof now);
    if (was && strcmp(was, now) != 0)
        ld_warn("%s: the data changed since the checkpoint (items then %s, now %s): the run will not repeat "
                "exactly",
                checkpoint, was, now);
    ld_st_close(&st);
    *out = self;
    return LD_OK;
fail:
    ld_st_close(&st);
    ld_train_destroy(&self);
    return rc;
}

/* ---- model file --------------------------------------------------------------- */

int ld_train_save_model(ld_train_t *self, const char *path, const ld_meta_t *provenance, char hash_out[65])
{
    ld_meta_t *meta = NULL;
    char buf[64];
    int rc = provenance ? ld_meta_clone(provenance, &meta) : ld_meta_new(&meta);
    if (!rc)
        rc = ld_meta_set(meta, "maskmap", self->cfg.maskmap);
    snprintf(buf, sizeof buf, "%" PRId64, self->iteration);
    if (!rc)
        rc = ld_meta_set(meta, "iterations", buf);
    snprintf(buf, sizeof buf, "%" PRIu64, self->cfg.seed);
    if (!rc)
        rc = ld_meta_set(meta, "seed", buf);
    if (!rc)
        rc = ld_train_config_to_meta(&self->cfg, meta);
    if (!rc && self->ae)
        rc = ld_latent_set_meta(meta, self->cfg.latent, self->ae_hash);
    if (!rc)
        rc = ld_model_save(path, self->ema, meta, hash_out);
    ld_meta_destroy(&meta);
    return rc;
}

/* ---- preview grid ------------------------------------------------------------- */

#define TILE_GAP 2

typedef struct {
    ld_train_t *self;
    ld_image_t grid;
    int tile;                 /* S + gap */
    int d_count;
    int row[LD_EBM_MAX_DOMAINS]; /* grid row of each source domain, -1 = not a source of a trained pair */
    int n_rows, max_blocks;   /* rows; most trained targets of one source */
    float *src_img;           /* [D, C,S,S]: one source crop per domain */
    uint8_t *src_mask;        /* [D, S,S] */
    float *real_img;          /* [D, C,S,S]: one real crop per domain */
    uint8_t *real_mask;
    float *chain_img;         /* [D, C,S,S] chains of one target */
    uint8_t *chain_mask;
    int32_t *chain_target;
    uint64_t *chain_id;
    float *snaps;             /* [PREVIEW_SNAPSHOTS, D, C,S,S] */
} preview_t;

/* Marks in green, on the RGB grid at (x0, y0), every labelled pixel of the
 * s x s mask that has a 4-neighbour of another class: the mask's outline. */
static void draw_outline(ld_image_t *grid, int x0, int y0, const uint8_t *mask, int s)
{
    for (int y = 0; y < s; y++) {
        for (int x = 0; x < s; x++) {
            uint8_t v = mask[y * s + x];
            int edge = (x > 0 && mask[y * s + x - 1] != v) || (x + 1 < s && mask[y * s + x + 1] != v) ||
                       (y > 0 && mask[(y - 1) * s + x] != v) || (y + 1 < s && mask[(y + 1) * s + x] != v);
            if (!v || !edge || x0 + x >= grid->width || y0 + y >= grid->height)
                continue;
            uint8_t *px = ld_image_at(grid, x0 + x, y0 + y);
            px[0] = 0;
            px[1] = 255;
            px[2] = 0;
        }
    }
}

/* One crop into the grid, in column col of source domain d's row; mask
 * (may be NULL) outlined over it. */
static void put_tile(preview_t *pv, int col, int d, const float *chw, const uint8_t *mask)
{
    const int s = pv->self->cfg.size, c = pv->self->cfg.channels;
    const int x = col * pv->tile, y = pv->row[d] * pv->tile;
    ld_image_t tile = { 0 };
    if (ld_image_alloc(&tile, s, s, c) != LD_OK)
        return;
    ld_image_put_float(&tile, 0, 0, chw, c, s);
    ld_image_paste(&pv->grid, x, y, &tile);
    ld_image_free(&tile);
    if (mask)
        draw_outline(&pv->grid, x, y, mask, s);
}

static void preview_free(preview_t *pv)
{
    ld_image_free(&pv->grid);
    free(pv->src_img);
    free(pv->src_mask);
    free(pv->real_img);
    free(pv->real_mask);
    free(pv->chain_img);
    free(pv->chain_mask);
    free(pv->chain_target);
    free(pv->chain_id);
    free(pv->snaps);
}

/* Column block of target t in source s's row: the trained targets of s in
 * domain order. */
static int preview_block(const preview_t *pv, int s, int t)
{
    int b = 0;
    for (int u = 0; u < t; u++)
        b += trained_pair(pv->self, s, u);
    return b;
}

/* Rows and columns: one row per source of a trained pair. */
static void preview_layout(preview_t *pv)
{
    for (int s = 0; s < pv->d_count; s++) {
        int blocks = preview_block(pv, s, pv->d_count);
        pv->row[s] = blocks ? pv->n_rows++ : -1;
        pv->max_blocks = blocks > pv->max_blocks ? blocks : pv->max_blocks;
    }
}

static int preview_alloc(preview_t *pv)
{
    ld_train_t *self = pv->self;
    size_t d = (size_t)pv->d_count, il = self->crop_len, ml = self->crop_mask_len;
    pv->tile = self->cfg.size + TILE_GAP;
    int cols = 1 + pv->max_blocks * (PREVIEW_SNAPSHOTS + 1);
    pv->src_img = malloc(d * il * sizeof(float));
    pv->real_img = malloc(d * il * sizeof(float));
    pv->chain_img = malloc(d * il * sizeof(float));
    pv->snaps = malloc(PREVIEW_SNAPSHOTS * d * il * sizeof(float));
    pv->src_mask = malloc(d * ml);
    pv->real_mask = malloc(d * ml);
    pv->chain_mask = malloc(d * ml);
    pv->chain_target = malloc(d * sizeof(int32_t));
    pv->chain_id = malloc(d * sizeof(uint64_t));
    if (!pv->src_img || !pv->real_img || !pv->chain_img || !pv->snaps || !pv->src_mask || !pv->real_mask ||
        !pv->chain_mask || !pv->chain_target || !pv->chain_id)
        return LD_ENOMEM;
    return ld_image_alloc(&pv->grid, cols * pv->tile, pv->n_rows * pv->tile, 3);
}

static int preview_crops(preview_t *pv, ld_rng_t *rng)
{
    ld_train_t *self = pv->self;
    for (int d = 0; d < pv->d_count; d++) {
        ld_crop_t a, b;
        int rc = ld_dataset_random_crop(self->ds, d, -1, self->cfg.size, rng, &a);
        if (!rc)
            rc = ld_dataset_extract(self->ds, &a, pv->src_img + d * self->crop_len,
                                    pv->src_mask + d * self->crop_mask_len);
        if (!rc)
            rc = ld_dataset_random_crop(self->ds, d, -1, self->cfg.size, rng, &b);
        if (!rc)
            rc = ld_dataset_extract(self->ds, &b, pv->real_img + d * self->crop_len,
                                    pv->real_mask + d * self->crop_mask_len);
        if (rc)
            return rc;
    }
    return LD_OK;
}

/* Chains toward target t from the source crop of every domain trained
 * toward t, in chunks of the workspace's batch; snapshots drawn into the
 * column block of t. */
static int preview_target(preview_t *pv, int t, const ld_langevin_params_t *lp)
{
    ld_train_t *self = pv->self;
    const size_t il = self->crop_len, ml = self->crop_mask_len;
    int rows[LD_EBM_MAX_DOMAINS], n = 0;
    for (int s = 0; s < pv->d_count; s++) {
        if (!trained_pair(self, s, t))
            continue;
        rows[n] = s;
        memcpy(pv->chain_img + n * il, pv->src_img + s * il, il * sizeof(float));
        memcpy(pv->chain_mask + n * ml, pv->src_mask + s * ml, ml);
        pv->chain_target[n] = t;
        pv->chain_id[n] = (uint64_t)(s * LD_EBM_MAX_DOMAINS + t);
        n++;
    }
    const int max_batch = ld_ebm_ws_max_batch(self->ws);
    for (int first = 0; first < n; first += max_batch) {
        int m = n - first < max_batch ? n - first : max_batch;
        const float *start = pv->chain_img + first * il;
        const uint8_t *mask = pv->chain_mask + first * ml;
        int rc = self->ae ? ld_langevin_sample_latent(self->ema, self->ws, self->ae, self->ae_ws, lp, LD_KEEP_NONE, m,
                                                      start, mask, pv->chain_target + first, pv->chain_id + first,
                                                      pv->snaps, NULL, NULL, NULL)
                          : ld_langevin_sample(self->ema, self->ws, lp, LD_KEEP_NONE, m, start, mask,
                                               pv->chain_target + first, pv->chain_id + first, pv->snaps, NULL,
                                               NULL, NULL);
        if (rc)
            return rc;
        for (int j = 0; j < m; j++) {
            int s = rows[first + j];
            int col0 = 1 + preview_block(pv, s, t) * (PREVIEW_SNAPSHOTS + 1);
            for (int k = 0; k < lp->n_snapshots; k++)
                put_tile(pv, col0 + k, s, pv->snaps + ((size_t)k * m + j) * il, NULL);
            put_tile(pv, col0 + PREVIEW_SNAPSHOTS, s, pv->real_img + t * il, pv->real_mask + t * ml);
        }
    }
    return LD_OK;
}

int ld_train_preview(ld_train_t *self, const char *path)
{
    preview_t pv;
    memset(&pv, 0, sizeof pv);
    pv.self = self;
    pv.d_count = self->arch.n_domains;
    ld_rng_t rng;
    ld_rng_init(&rng, self->cfg.seed, LD_TRAIN_STREAM_PREVIEW);
    ld_langevin_params_t lp;
    langevin_params(&self->cfg, &lp);
    lp.seed = ld_rng_u64(&rng);
    const int k = self->cfg.langevin_steps;
    for (int i = 0; i < PREVIEW_SNAPSHOTS; i++) {
        int step = (int)(((int64_t)k * (i + 1)) / PREVIEW_SNAPSHOTS);
        lp.snapshots[lp.n_snapshots] = step;
        /* short chains repeat a step: keep the list strictly ascending */
        lp.n_snapshots += lp.n_snapshots == 0 || step > lp.snapshots[lp.n_snapshots - 1];
    }
    preview_layout(&pv);
    int rc = preview_alloc(&pv);
    if (!rc)
        rc = preview_crops(&pv, &rng);
    for (int d = 0; d < pv.d_count && !rc; d++)
        if (pv.row[d] >= 0)
            put_tile(&pv, 0, d, pv.src_img + d * self->crop_len, pv.src_mask + d * self->crop_mask_len);
    for (int t = 0; t < pv.d_count && !rc; t++)
        rc = preview_target(&pv, t, &lp);
    if (!rc)
        rc = ld_png_write(path, &pv.grid);
    preview_free(&pv);
    return rc;
}

/* ---- run loop --------------------------------------------------------------------- */

static int checkpoint_if(ld_train_t *self, const ld_train_run_opts_t *opts, int64_t *saved_at)
{
    if (!opts->checkpoint || *saved_at == self->iteration)
        return LD_OK;
    int rc = ld_train_save_checkpoint(self, opts->checkpoint);
    if (rc)
        return rc;
    *saved_at = self->iteration;
    ld_info("checkpoint %s at iteration %" PRId64, opts->checkpoint, self->iteration);
    return LD_OK;
}

static int preview_now(ld_train_t *self, const ld_train_run_opts_t *opts)
{
    char path[LD_TRAIN_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/preview_%08" PRId64 ".png", opts->preview_dir, self->iteration);
    int rc = ld_train_preview(self, path);
    if (rc)
        return rc;
    ld_info("preview %s", path);
    return LD_OK;
}

static int due(int64_t iteration, int64_t every)
{
    return every > 0 && iteration % every == 0;
}

int ld_train_run(ld_train_t *self, const ld_train_run_opts_t *opts)
{
    int64_t saved_at = self->iteration;
    int rc = LD_OK;
    while (self->iteration < opts->iters) {
        if (opts->cancel && atomic_load(opts->cancel)) {
            rc = LD_ECANCELED;
            break;
        }
        ld_train_stats_t st;
        rc = ld_train_step(self, &st, opts->cancel);
        if (rc)
            break;
        if (opts->progress)
            opts->progress(&st, opts->user);
        if (due(self->iteration, opts->checkpoint_every) && (rc = checkpoint_if(self, opts, &saved_at)))
            return rc;
        if (opts->preview_dir && due(self->iteration, opts->preview_every) && (rc = preview_now(self, opts)))
            return rc;
    }
    if (rc && rc != LD_ECANCELED)
        return rc; /* divergence or failure: the last checkpoint stays as it is */
    int save_rc = checkpoint_if(self, opts, &saved_at);
    if (save_rc)
        return save_rc;
    if (rc == LD_ECANCELED)
        return ld_seterr(LD_ECANCELED, "interrupted after iteration %" PRId64 "%s%s", self->iteration,
                         opts->checkpoint ? "; checkpoint " : "", opts->checkpoint ? opts->checkpoint : "");
    return LD_OK;
}
