/* ld_aetrain: autoencoder training, held-out evaluation, checkpoints and
 * previews (see ld_aetrain.h).
 *
 * Invariants:
 *   - self->iteration iterations are fully applied to the weights, Adam,
 *     RNG and history; a step that fails before the update leaves the RNG
 *     as it was; one that fails after (divergence) marks the run diverged,
 *     after which nothing is written from it;
 *   - every random number of the trajectory comes from self->rng (stream
 *     LD_AETRAIN_STREAM_ITER of the seed); the split, the evaluation crops
 *     and previews never touch it;
 *   - the evaluation crops are held in RGB; the training crops in the
 *     model's colour space. */
#include "ld_aetrain.h"
#include "ld_error.h"
#include "ld_image.h"
#include "ld_log.h"
#include "ld_png.h"
#include "ld_quality.h"
#include "ld_threadpool.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PREVIEW_PAIRS 4
#define TILE_GAP 2

/* ---- settings ------------------------------------------------------------ */

#define F(f) LD_SETTING_FIELD(ld_aetrain_config_t, f)
static const ld_setting_t rows[] = {
    LD_TRAINDATA_ROWS(ld_aetrain_config_t, data),
    { "size", LD_SET_INT, F(size), 16, LD_AE_MAX_SIZE, 1, NULL, "crop side S (a multiple of 2 x factor)" },
    { "widths", LD_SET_STR, F(widths), 0, 0, 1, NULL, "widths w0,w1,w2 (factor 4) or w0,...,w3 (factor 8)" },
    { "latent-channels", LD_SET_INT, F(latent), 1, LD_AE_MAX_LATENT, 1, NULL, "latent channels Z" },
    { "val-fraction", LD_SET_DBL, F(val_fraction), 0.01, 0.9, 1, NULL,
      "share of each domain's images held out for evaluation" },
    { "eval-crops", LD_SET_INT, F(eval_crops), 1, 4096, 1, NULL, "fixed held-out crops per domain for evaluation" },
    { "batch", LD_SET_INT, F(batch), 1, 4096, 1, NULL, "crops per iteration" },
    LD_SETTINGS_ADAM_ROWS(ld_aetrain_config_t, adam),
    { "mse", LD_SET_DBL, F(mse), 0, 1e6, 1, NULL, "weight of the mean squared error" },
    { "l1", LD_SET_DBL, F(l1), 0, 1e6, 1, NULL, "weight of the mean absolute error" },
    { "grad-diff", LD_SET_DBL, F(grad_diff), 0, 1e6, 1, NULL,
      "weight of the gradient-difference term (keeps thin structures)" },
    { "seed", LD_SET_U64, F(seed), 0, 0, 1, NULL, "random seed" },
    { "threads", LD_SET_INT, F(threads), 1, 256, -1, NULL, "threads for every evaluation" },
};
#undef F

static const ld_settings_t settings = {
    .rows = rows,
    .n = sizeof rows / sizeof rows[0],
    .cfg_size = sizeof(ld_aetrain_config_t),
    .what = "autoencoder training setting",
    .prefix = "train_ae.",
};

const ld_settings_t *ld_aetrain_settings(void)
{
    return &settings;
}

void ld_aetrain_config_defaults(ld_aetrain_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    ld_traindata_defaults(&cfg->data);
    cfg->size = 64;
    snprintf(cfg->widths, sizeof cfg->widths, "32,64,128");
    cfg->latent = 8;
    cfg->val_fraction = 0.2;
    cfg->eval_crops = 16;
    cfg->batch = 8;
    cfg->adam = (ld_settings_adam_t){ 1e-3, { 0.9, 0.999 }, 1e-8 };
    cfg->mse = 1;
    cfg->l1 = 1;
    cfg->seed = 1;
    cfg->threads = ld_threadpool_default_threads(64);
}

/* The architecture of cfg; channels as resolved (for checks made before
 * the data is open, 0 reads as 3 for LAB, else 1). */
static int config_arch(const ld_aetrain_config_t *cfg, ld_ae_arch_t *a)
{
    memset(a, 0, sizeof *a);
    a->image_channels = cfg->data.channels ? cfg->data.channels : cfg->data.colour_space == LD_COLOUR_LAB ? 3 : 1;
    a->size = cfg->size;
    a->latent_channels = cfg->latent;
    a->colour_space = cfg->data.colour_space;
    if (ld_ae_arch_set_widths(a, cfg->widths))
        return ld_seterr(LD_EINVAL, "--widths %s: %s", cfg->widths, ld_errdetail());
    if (cfg->size % (2 * a->factor) != 0)
        return ld_seterr(LD_ERANGE, "--size: %d is not a multiple of %d (2 x the factor %d of --widths %s)",
                         cfg->size, 2 * a->factor, a->factor, cfg->widths);
    return ld_ae_arch_validate(a);
}

int ld_aetrain_config_validate(const ld_aetrain_config_t *cfg)
{
    int rc = ld_traindata_validate(&cfg->data);
    if (rc)
        return rc;
    ld_ae_arch_t a;
    if ((rc = config_arch(cfg, &a)))
        return rc;
    ld_adam_params_t ap;
    if ((rc = ld_settings_adam_params(&cfg->adam, &ap)))
        return rc;
    if (!(cfg->mse > 0 || cfg->l1 > 0))
        return ld_seterr(LD_EINVAL, "--mse and --l1 are both 0: the reconstruction would not be trained");
    return LD_OK;
}

/* ---- the training state ----------------------------------------------------- */

struct ld_aetrain_s {
    ld_aetrain_config_t cfg;
    ld_dataset_t *ds;
    int n_domains;
    int *items;                 /* per domain: its item indices, validation first (shuffled) */
    int *first_item;            /* [D+1]: domain d's items at items[first_item[d]..first_item[d+1]) */
    int *n_val;                 /* [D] */
    ld_ae_arch_t arch;
    ld_ae_t *model;
    ld_adam_t *adam;
    ld_ae_ws_t *ws;
    ld_rng_t rng;
    int64_t iteration;
    int diverged;
    size_t numel, img_len, lat_len;
    float *x, *y, *grad_y, *latent; /* [batch, ...] */
    uint8_t *mask;              /* [S,S]: where crops' masks are extracted to (the loss ignores them) */
    float *grad;                /* [numel] */
    float *eval_img;            /* [D, eval_crops, C,S,S], RGB */
    uint8_t *eval_mask;         /* [D, eval_crops, S,S] */
    ld_ckpt_rows_t history;     /* LD_AETRAIN_HISTORY_COLS */
    ld_ckpt_rows_t evals;       /* iteration, then psnr, ssim and vessel contrast ratio per domain */
};

void ld_aetrain_destroy(ld_aetrain_t **self_p)
{
    ld_aetrain_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    ld_dataset_destroy(&self->ds);
    ld_ae_destroy(&self->model);
    ld_adam_destroy(&self->adam);
    ld_ae_ws_destroy(&self->ws);
    free(self->items);
    free(self->first_item);
    free(self->n_val);
    free(self->x);
    free(self->y);
    free(self->grad_y);
    free(self->latent);
    free(self->mask);
    free(self->grad);
    free(self->eval_img);
    free(self->eval_mask);
    ld_ckpt_rows_free(&self->history);
    ld_ckpt_rows_free(&self->evals);
    free(self);
    *self_p = NULL;
}

/* Shuffles each domain's items by the seed and holds out the first
 * max(1, round(fraction * n)) of them. */
static int split_items(ld_aetrain_t *self)
{
    const int d_count = self->n_domains;
    int total = 0;
    for (int d = 0; d < d_count; d++)
        total += ld_dataset_n_items(self->ds, d);
    self->items = malloc((size_t)total * sizeof *self->items);
    self->first_item = malloc((size_t)(d_count + 1) * sizeof *self->first_item);
    self->n_val = malloc((size_t)d_count * sizeof *self->n_val);
    if (!self->items || !self->first_item || !self->n_val)
        return ld_seterr(LD_ENOMEM, "autoencoder training: out of memory for the data split");
    ld_rng_t rng;
    ld_rng_init(&rng, self->cfg.seed, LD_AETRAIN_STREAM_SPLIT);
    self->first_item[0] = 0;
    for (int d = 0; d < d_count; d++) {
        int n = ld_dataset_n_items(self->ds, d), *it = self->items + self->first_item[d];
        for (int i = 0; i < n; i++)
            it[i] = i;
        for (int i = n - 1; i > 0; i--) {
            int j = (int)ld_rng_below(&rng, (uint32_t)i + 1), t = it[i];
            it[i] = it[j];
            it[j] = t;
        }
        int v = (int)lround(self->cfg.val_fraction * n);
        self->n_val[d] = v < 1 ? 1 : v;
        if (self->n_val[d] >= n)
            return ld_seterr(LD_EINVAL,
                             "domain %s has %d image%s: holding out %d for --val-fraction %g leaves none to "
                             "train on",
                             ld_dataset_domain(self->ds, d), n, n == 1 ? "" : "s", self->n_val[d],
                             self->cfg.val_fraction);
        self->first_item[d + 1] = self->first_item[d] + n;
    }
    return LD_OK;
}

/* The fixed evaluation crops, in RGB: crop k of domain d from its
 * validation image k mod n_val. */
static int eval_crops(ld_aetrain_t *self)
{
    const int e = self->cfg.eval_crops;
    const size_t pixels = (size_t)self->cfg.size * (size_t)self->cfg.size;
    self->eval_img = malloc((size_t)self->n_domains * e * self->img_len * sizeof(float));
    self->eval_mask = malloc((size_t)self->n_domains * e * pixels);
    if (!self->eval_img || !self->eval_mask)
        return ld_seterr(LD_ENOMEM, "autoencoder training: out of memory for the evaluation crops");
    ld_rng_t rng;
    ld_rng_init(&rng, self->cfg.seed, LD_AETRAIN_STREAM_EVAL);
    for (int d = 0; d < self->n_domains; d++) {
        for (int k = 0; k < e; k++) {
            int item = ld_aetrain_val_items(self, d)[k % self->n_val[d]];
            ld_crop_t crop;
            int rc = ld_dataset_random_crop(self->ds, d, item, self->cfg.size, &rng, &crop);
            if (!rc)
                rc = ld_dataset_extract(self->ds, &crop, self->eval_img + ((size_t)d * e + k) * self->img_len,
                                        self->eval_mask + ((size_t)d * e + k) * pixels);
            if (rc)
                return rc;
        }
    }
    return LD_OK;
}

static int alloc_buffers(ld_aetrain_t *self)
{
    const size_t n = (size_t)self->cfg.batch, s = (size_t)self->cfg.size;
    self->img_len = (size_t)self->arch.image_channels * s * s;
    self->lat_len = ld_ae_arch_latent_numel(&self->arch);
    self->x = malloc(n * self->img_len * sizeof(float));
    self->y = malloc(n * self->img_len * sizeof(float));
    self->grad_y = malloc(n * self->img_len * sizeof(float));
    self->latent = malloc(n * self->lat_len * sizeof(float));
    self->mask = malloc(s * s);
    self->grad = malloc(self->numel * sizeof(float));
    if (!self->x || !self->y || !self->grad_y || !self->latent || !self->mask || !self->grad)
        return ld_seterr(LD_ENOMEM, "autoencoder training: out of memory for a batch of %zu", n);
    self->history.cols = LD_AETRAIN_HISTORY_COLS;
    self->evals.cols = 1 + LD_AETRAIN_EVAL_COLS * self->n_domains;
    return LD_OK;
}

/* Everything but the weights' values. */
static int setup(const ld_aetrain_config_t *cfg, ld_aetrain_t **out)
{
    *out = NULL;
    int rc = ld_aetrain_config_validate(cfg);
    if (rc)
        return rc;
    ld_aetrain_t *self = calloc(1, sizeof *self);
    if (!self)
        return ld_seterr(LD_ENOMEM, "autoencoder training: out of memory");
    self->cfg = *cfg;
    ld_adam_params_t ap;
    ld_settings_adam_params(&cfg->adam, &ap); /* validated above */
    if ((rc = ld_traindata_open(&self->cfg.data, 1, LD_AETRAIN_MAX_DOMAINS, cfg->size, &self->ds)))
        goto fail;
    self->n_domains = ld_dataset_n_domains(self->ds);
    if ((rc = config_arch(&self->cfg, &self->arch)) || (rc = ld_ae_new(&self->arch, &self->model)))
        goto fail;
    self->numel = ld_ae_params(self->model)->numel;
    if ((rc = ld_adam_new(self->numel, &ap, &self->adam)) ||
        (rc = ld_ae_ws_new(&self->arch, cfg->batch, cfg->threads, &self->ws)) || (rc = alloc_buffers(self)) ||
        (rc = split_items(self)) || (rc = eval_crops(self)))
        goto fail;
    ld_rng_init(&self->rng, cfg->seed, LD_AETRAIN_STREAM_ITER);
    *out = self;
    return LD_OK;
fail:
    ld_aetrain_destroy(&self);
    return rc;
}

int ld_aetrain_new(const ld_aetrain_config_t *cfg, ld_aetrain_t **out)
{
    int rc = setup(cfg, out);
    if (!rc)
        ld_ae_init_random((*out)->model, cfg->seed);
    return rc;
}

const ld_aetrain_config_t *ld_aetrain_config(const ld_aetrain_t *self) { return &self->cfg; }
int64_t ld_aetrain_iteration(const ld_aetrain_t *self) { return self->iteration; }
const ld_ae_t *ld_aetrain_model(const ld_aetrain_t *self) { return self->model; }
const ld_dataset_t *ld_aetrain_dataset(const ld_aetrain_t *self) { return self->ds; }
int ld_aetrain_n_val(const ld_aetrain_t *self, int d) { return self->n_val[d]; }
const int *ld_aetrain_val_items(const ld_aetrain_t *self, int d) { return self->items + self->first_item[d]; }

const float *ld_aetrain_batch(const ld_aetrain_t *self)
{
    return self->x;
}

const float *ld_aetrain_history(const ld_aetrain_t *self, int64_t *n_rows)
{
    *n_rows = self->history.n;
    return self->history.v;
}

/* ---- loss ------------------------------------------------------------------- */

static double sign(double v)
{
    return (v > 0) - (v < 0);
}

/* Gradient-difference term over the horizontal (dx = 1) or vertical
 * (dx = s) neighbours of n*c planes; adds w * its gradient to grad. */
static double grad_diff_term(int planes, int s, int dx, const float *x, const float *y, double w, float *grad)
{
    const int nx = dx == 1 ? s - 1 : s, ny = dx == 1 ? s : s - 1;
    const double count = (double)planes * nx * ny;
    double sum = 0;
    for (int p = 0; p < planes; p++) {
        const size_t base = (size_t)p * s * s;
        for (int r = 0; r < ny; r++)
            for (int c = 0; c < nx; c++) {
                size_t i = base + (size_t)r * s + c, j = i + (size_t)dx;
                double d = ((double)y[j] - x[j]) - ((double)y[i] - x[i]);
                sum += fabs(d);
                if (grad) {
                    float g = (float)(w * sign(d) / count);
                    grad[j] += g;
                    grad[i] -= g;
                }
            }
    }
    return sum / count;
}

void ld_aetrain_loss(const ld_aetrain_config_t *cfg, int n, int c, int s, const float *x, const float *y,
                     ld_aetrain_loss_t *out, float *grad_out)
{
    const size_t total = (size_t)n * c * s * s;
    double sq = 0, ab = 0;
    for (size_t i = 0; i < total; i++) {
        double e = (double)y[i] - x[i];
        sq += e * e;
        ab += fabs(e);
        if (grad_out)
            grad_out[i] = (float)((cfg->mse * 2 * e + cfg->l1 * sign(e)) / (double)total);
    }
    out->mse = sq / (double)total;
    out->l1 = ab / (double)total;
    out->grad_diff = 0;
    if (cfg->grad_diff > 0)
        out->grad_diff = grad_diff_term(n * c, s, 1, x, y, cfg->grad_diff, grad_out) +
                         grad_diff_term(n * c, s, s, x, y, cfg->grad_diff, grad_out);
    out->loss = cfg->mse * out->mse + cfg->l1 * out->l1 + cfg->grad_diff * out->grad_diff;
}

/* ---- one iteration ---------------------------------------------------------- */

static int diverged(ld_aetrain_t *self, int64_t iteration, const char *what)
{
    self->diverged = 1;
    return ld_seterr(LD_ENUMERIC,
                     "training diverged at iteration %" PRId64 ": %s; nothing was written after the last "
                     "checkpoint (lower --lr)",
                     iteration, what);
}

/* The batch: crops of training images, in the model's colour space. */
static int draw_batch(ld_aetrain_t *self)
{
    const size_t pixels = (size_t)self->cfg.size * self->cfg.size;
    for (int i = 0; i < self->cfg.batch; i++) {
        int d = (int)ld_rng_below(&self->rng, (uint32_t)self->n_domains);
        int n_train = self->first_item[d + 1] - self->first_item[d] - self->n_val[d];
        int item = self->items[self->first_item[d] + self->n_val[d] + (int)ld_rng_below(&self->rng, (uint32_t)n_train)];
        float *img = self->x + (size_t)i * self->img_len;
        ld_crop_t crop;
        int rc = ld_dataset_random_crop(self->ds, d, item, self->cfg.size, &self->rng, &crop);
        if (!rc)
            rc = ld_dataset_extract(self->ds, &crop, img, self->mask);
        if (rc)
            return rc;
        if (self->arch.colour_space == LD_COLOUR_LAB)
            ld_colour_rgb_to_lab(img, img, pixels);
    }
    return LD_OK;
}

/* y = decode(encode(x)) for the first n samples of x. */
static int reconstruct(ld_aetrain_t *self, int n, const float *x, float *y)
{
    int rc = ld_ae_encode(self->model, self->ws, n, x, self->latent);
    if (!rc)
        rc = ld_ae_decode(self->model, self->ws, n, self->latent, y);
    return rc;
}

static int update(ld_aetrain_t *self, int64_t it, ld_aetrain_stats_t *st)
{
    memset(self->grad, 0, self->numel * sizeof *self->grad);
    int rc = ld_ae_backward_params(self->model, self->ws, self->cfg.batch, self->x, self->grad_y, self->grad);
    if (rc)
        return rc;
    if (ld_adam_step_checked(self->adam, ld_ae_params(self->model)->params, self->grad, &st->grad_norm))
        return diverged(self, it, ld_errdetail());
    return LD_OK;
}

int ld_aetrain_step(ld_aetrain_t *self, ld_aetrain_stats_t *stats)
{
    if (self->diverged)
        return ld_seterr(LD_ESTATE, "autoencoder training diverged at iteration %" PRId64, self->iteration + 1);
    const ld_rng_t saved = self->rng;
    const int64_t it = self->iteration + 1;
    ld_aetrain_stats_t st;
    memset(&st, 0, sizeof st);
    st.iteration = it;
    int rc = ld_ckpt_rows_reserve(&self->history, it);
    if (!rc)
        rc = draw_batch(self);
    if (!rc)
        rc = reconstruct(self, self->cfg.batch, self->x, self->y);
    if (rc) {
        self->rng = saved;
        return rc;
    }
    ld_aetrain_loss(&self->cfg, self->cfg.batch, self->arch.image_channels, self->cfg.size, self->x, self->y,
                    &st.loss, self->grad_y);
    if (!isfinite(st.loss.loss)) {
        char what[64];
        snprintf(what, sizeof what, "the loss is %g", st.loss.loss);
        return diverged(self, it, what);
    }
    if ((rc = update(self, it, &st)))
        return rc;
    const float row[LD_AETRAIN_HISTORY_COLS] = { (float)st.loss.loss, (float)st.loss.mse, (float)st.loss.l1,
                                                 (float)st.loss.grad_diff };
    ld_ckpt_rows_append(&self->history, row); /* room reserved above */
    self->iteration = it;
    if (stats)
        *stats = st;
    return LD_OK;
}

/* ---- evaluation ----------------------------------------------------------------- */

/* Reconstructions, in RGB, of the n crops at src (RGB) into y. */
static int reconstruct_rgb(ld_aetrain_t *self, int n, const float *src, float *y)
{
    const size_t pixels = (size_t)self->cfg.size * self->cfg.size;
    memcpy(self->x, src, (size_t)n * self->img_len * sizeof(float));
    for (int i = 0; self->arch.colour_space == LD_COLOUR_LAB && i < n; i++)
        ld_colour_rgb_to_lab(self->x + (size_t)i * self->img_len, self->x + (size_t)i * self->img_len, pixels);
    int rc = reconstruct(self, n, self->x, y);
    for (int i = 0; !rc && self->arch.colour_space == LD_COLOUR_LAB && i < n; i++)
        ld_colour_lab_to_rgb(y + (size_t)i * self->img_len, y + (size_t)i * self->img_len, pixels);
    return rc;
}

/* PSNR, SSIM and vessel contrast ratio of domain d's evaluation crops. */
static int evaluate_domain(ld_aetrain_t *self, int d, double out[LD_AETRAIN_EVAL_COLS])
{
    const int e = self->cfg.eval_crops, batch = self->cfg.batch, c = self->arch.image_channels, s = self->cfg.size;
    const float *crops = self->eval_img + (size_t)d * e * self->img_len;
    const uint8_t *masks = self->eval_mask + (size_t)d * e * (size_t)s * (size_t)s;
    double sse = 0, ssim_sum = 0, orig[4] = { 0 }, rec[4] = { 0 };
    for (int first = 0; first < e; first += batch) {
        int n = e - first < batch ? e - first : batch;
        const float *src = crops + (size_t)first * self->img_len;
        int rc = reconstruct_rgb(self, n, src, self->y);
        for (int i = 0; !rc && i < n; i++) {
            double one;
            const size_t off = (size_t)i * self->img_len;
            const uint8_t *mask = masks + (size_t)(first + i) * (size_t)s * (size_t)s;
            sse += ld_quality_sse(self->y + off, src + off, self->img_len);
            rc = ld_quality_ssim(self->y + off, src + off, c, s, &one);
            ssim_sum += one;
            ld_quality_vessel_sums(src + off, mask, c, s, orig);
            ld_quality_vessel_sums(self->y + off, mask, c, s, rec);
        }
        if (rc)
            return rc;
    }
    out[0] = ld_quality_psnr(sse / ((double)e * self->img_len));
    out[1] = ssim_sum / e;
    out[2] = ld_quality_vessel_contrast(rec) / ld_quality_vessel_contrast(orig);
    return LD_OK;
}

void ld_aetrain_eval_at(const ld_aetrain_t *self, size_t i, ld_aetrain_eval_t *out)
{
    const float *row = self->evals.v + i * (size_t)self->evals.cols;
    memset(out, 0, sizeof *out);
    out->iteration = (int64_t)row[0];
    out->n_domains = self->n_domains;
    for (int d = 0; d < self->n_domains; d++) {
        out->psnr[d] = row[1 + LD_AETRAIN_EVAL_COLS * d];
        out->ssim[d] = row[2 + LD_AETRAIN_EVAL_COLS * d];
        out->contrast[d] = row[3 + LD_AETRAIN_EVAL_COLS * d];
    }
}

size_t ld_aetrain_n_evals(const ld_aetrain_t *self)
{
    return (size_t)self->evals.n;
}

/* 1 when the last recorded evaluation is of the current weights. */
static int evaluated_now(const ld_aetrain_t *self)
{
    return self->evals.n > 0 &&
           (int64_t)self->evals.v[(size_t)(self->evals.n - 1) * self->evals.cols] == self->iteration;
}

int ld_aetrain_evaluate(ld_aetrain_t *self, ld_aetrain_eval_t *out)
{
    if (evaluated_now(self)) {
        ld_aetrain_eval_at(self, (size_t)self->evals.n - 1, out);
        return LD_OK;
    }
    float row[1 + LD_AETRAIN_EVAL_COLS * LD_AETRAIN_MAX_DOMAINS];
    row[0] = (float)self->iteration;
    for (int d = 0; d < self->n_domains; d++) {
        double v[LD_AETRAIN_EVAL_COLS];
        int rc = evaluate_domain(self, d, v);
        if (rc)
            return rc;
        for (int k = 0; k < LD_AETRAIN_EVAL_COLS; k++)
            row[1 + LD_AETRAIN_EVAL_COLS * d + k] = (float)v[k];
    }
    int rc = ld_ckpt_rows_append(&self->evals, row);
    if (rc)
        return rc;
    ld_aetrain_eval_at(self, (size_t)self->evals.n - 1, out);
    return LD_OK;
}

/* ---- checkpoints ----------------------------------------------------------------- */

static int refuse_if_diverged(const ld_aetrain_t *self, const char *what)
{
    if (!self->diverged)
        return LD_OK;
    return ld_seterr(LD_ESTATE, "%s: the run diverged after iteration %" PRId64 "; nothing is written from it",
                     what, self->iteration);
}

static void config_defaults(void *cfg)
{
    ld_aetrain_config_defaults(cfg);
}

static const ld_ckpt_kind_t kind = {
    .format = "langdaug-ae-train-checkpoint",
    .version = "1",
    .what = "langdaug autoencoder training checkpoint",
    .settings = &settings,
    .defaults = config_defaults,
    .stream = LD_AETRAIN_STREAM_ITER,
};

static void ckpt_parts(ld_aetrain_t *self, ld_ckpt_parts_t *p)
{
    *p = (ld_ckpt_parts_t){
        .table = ld_ae_params(self->model),
        .sets = { { "params.", ld_ae_params(self->model)->params }, { "adam_m.", ld_adam_m(self->adam) },
                  { "adam_v.", ld_adam_v(self->adam) } },
        .n_sets = 3,
        .iteration = &self->iteration,
        .adam = self->adam,
        .rng = &self->rng,
        .seed = self->cfg.seed,
        .history = &self->history,
        .evals = &self->evals,
        .cfg = &self->cfg,
        .ds = self->ds,
    };
}

int ld_aetrain_save_checkpoint(ld_aetrain_t *self, const char *path)
{
    int rc = refuse_if_diverged(self, path);
    if (rc)
        return rc;
    ld_ckpt_parts_t p;
    ckpt_parts(self, &p);
    return ld_ckpt_save(path, &kind, &p);
}

int ld_aetrain_resume(const char *checkpoint, const ld_meta_t *overrides, ld_aetrain_t **out)
{
    *out = NULL;
    ld_st_t *st = NULL;
    ld_aetrain_config_t cfg;
    ld_ckpt_parts_t p;
    int rc = ld_ckpt_open(checkpoint, &kind, overrides, &cfg, &st);
    if (!rc)
        rc = setup(&cfg, out);
    if (!rc)
        ckpt_parts(*out, &p);
    if (!rc && (rc = ld_ckpt_load(st, &kind, &p)))
        ld_aetrain_destroy(out);
    ld_st_close(&st);
    return rc;
}

/* ---- model file ---------------------------------------------------------------- */

/* "eval.<domain>.psnr" and ".ssim" of the last evaluation, when it is of
 * the current weights. */
static int eval_meta(const ld_aetrain_t *self, ld_meta_t *meta)
{
    if (!evaluated_now(self))
        return LD_OK;
    ld_aetrain_eval_t ev;
    ld_aetrain_eval_at(self, (size_t)self->evals.n - 1, &ev);
    char key[LD_NAME_MAX + 16], value[32];
    int rc = LD_OK;
    for (int d = 0; d < self->n_domains && !rc; d++) {
        snprintf(key, sizeof key, "eval.%s.psnr", ld_dataset_domain(self->ds, d));
        snprintf(value, sizeof value, "%.4f", ev.psnr[d]);
        rc = ld_meta_set(meta, key, value);
        snprintf(key, sizeof key, "eval.%s.ssim", ld_dataset_domain(self->ds, d));
        snprintf(value, sizeof value, "%.5f", ev.ssim[d]);
        if (!rc)
            rc = ld_meta_set(meta, key, value);
        snprintf(key, sizeof key, "eval.%s.vessel_contrast", ld_dataset_domain(self->ds, d));
        snprintf(value, sizeof value, "%.4f", ev.contrast[d]);
        if (!rc)
            rc = ld_meta_set(meta, key, value);
    }
    return rc;
}

int ld_aetrain_save_model(ld_aetrain_t *self, const char *path, const ld_meta_t *provenance, char hash_out[65])
{
    int rc = refuse_if_diverged(self, path);
    if (rc)
        return rc;
    ld_ckpt_parts_t p;
    ckpt_parts(self, &p);
    ld_meta_t *meta = NULL;
    rc = ld_ckpt_model_meta(&kind, &p, provenance, NULL, NULL, &meta);
    if (!rc)
        rc = eval_meta(self, meta);
    if (!rc)
        rc = ld_ae_save(path, self->model, meta, hash_out);
    ld_meta_destroy(&meta);
    return rc;
}

/* ---- preview ---------------------------------------------------------------------- */

int ld_aetrain_preview(ld_aetrain_t *self, const char *path)
{
    int rc = refuse_if_diverged(self, path);
    if (rc)
        return rc;
    const int e = self->cfg.eval_crops, pairs = e < PREVIEW_PAIRS ? e : PREVIEW_PAIRS;
    const int n = pairs < self->cfg.batch ? pairs : self->cfg.batch, tile = self->cfg.size + TILE_GAP;
    const int c = self->arch.image_channels;
    ld_image_t grid = { 0 };
    rc = ld_image_alloc(&grid, 2 * n * tile, self->n_domains * tile, c);
    for (int d = 0; d < self->n_domains && !rc; d++) {
        const float *src = self->eval_img + (size_t)d * e * self->img_len;
        rc = reconstruct_rgb(self, n, src, self->y);
        for (int i = 0; !rc && i < n; i++) {
            ld_image_put_float(&grid, 2 * i * tile, d * tile, src + (size_t)i * self->img_len, c, self->cfg.size);
            ld_image_put_float(&grid, (2 * i + 1) * tile, d * tile, self->y + (size_t)i * self->img_len, c,
                               self->cfg.size);
        }
    }
    if (!rc)
        rc = ld_png_write(path, &grid);
    ld_image_free(&grid);
    return rc;
}

/* ---- run loop ----------------------------------------------------------------------- */

static int op_step(void *obj, void *stats, const atomic_int *cancel)
{
    (void)cancel; /* an iteration is short: the loop checks between them */
    return ld_aetrain_step(obj, stats);
}

static int op_preview(void *obj, const char *path)
{
    return ld_aetrain_preview(obj, path);
}

/* Evaluates and logs "evaluation at iteration N: A 31.20 dB 0.9120, ...". */
static int op_evaluate(void *obj)
{
    ld_aetrain_t *self = obj;
    ld_aetrain_eval_t ev;
    int rc = ld_aetrain_evaluate(self, &ev);
    if (rc)
        return rc;
    char line[LD_AETRAIN_MAX_DOMAINS * (LD_NAME_MAX + 32)];
    size_t used = 0;
    for (int d = 0; d < ev.n_domains && used < sizeof line; d++)
        used += (size_t)snprintf(line + used, sizeof line - used, "%s%s %.2f dB %.4f %.3f", d ? ", " : "",
                                 ld_dataset_domain(self->ds, d), ev.psnr[d], ev.ssim[d], ev.contrast[d]);
    ld_info("evaluation at iteration %" PRId64 " (PSNR, SSIM, vessel contrast kept): %s", ev.iteration, line);
    return LD_OK;
}

/* user: the ld_aetrain_run_opts_t, whose progress takes its own user. */
static void op_progress(const void *stats, void *user)
{
    const ld_aetrain_run_opts_t *opts = user;
    opts->progress(stats, opts->user);
}

int ld_aetrain_run(ld_aetrain_t *self, const ld_aetrain_run_opts_t *opts)
{
    static const ld_ckpt_ops_t ops = { &kind, op_step, op_preview, op_evaluate };
    ld_aetrain_run_opts_t own = *opts; /* op_progress's user (not const) */
    ld_aetrain_stats_t stats;
    ld_ckpt_parts_t p;
    ckpt_parts(self, &p);
    ld_ckpt_run_opts_t ro = {
        .iters = opts->iters,
        .checkpoint = opts->checkpoint,
        .checkpoint_every = opts->checkpoint_every,
        .preview_dir = opts->preview_dir,
        .preview_every = opts->preview_every,
        .evaluate_every = opts->eval_every,
        .progress = opts->progress ? op_progress : NULL,
        .user = &own,
        .stats = &stats,
        .cancel = opts->cancel,
    };
    return ld_ckpt_run(&ops, self, &p, &ro);
}
