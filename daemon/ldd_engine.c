/* ldd_engine: loading and checking models + dataset (see ldd_engine.h).
 *
 * step_size / noise = auto are resolved here, from the training settings in
 * the model files' metadata, because only a load sees the files: each load
 * (start, SIGHUP) resolves them afresh, and a load that cannot (models that
 * disagree, an unreadable value) fails like any bad file, so a reload keeps
 * the running engine. The same goes for train.pairs, which decides the
 * routes: they are built from the files at every load. */
#include "ldd_engine.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "ld_error.h"
#include "ld_latent.h"
#include "ld_log.h"
#include "ld_model.h"
#include "ldd_err.h"
#include "ldd_mem.h"

static void free_engine(ldd_engine_t *e)
{
    for (int i = 0; i < e->n_models; i++) {
        ld_ebm_destroy(&e->models[i].ebm);
        ld_ae_destroy(&e->models[i].ae);
        free(e->models[i].served);
    }
    for (int d = 0; d < LD_EBM_MAX_DOMAINS; d++)
        free(e->tiles[d]);
    ld_dataset_destroy(&e->dataset);
    free(e);
}

/* A Langevin setting while the models load: the config's value, or (auto)
 * the one the models were trained with. */
typedef struct {
    const char *key;      /* config key: "step_size" */
    const char *trained;  /* training setting: metadata "train.<trained>" */
    double fallback;      /* what auto means when no model has it */
    double value;         /* NAN = auto, and no model had it so far */
    int from_config;
    int model;            /* the first model that gave value, -1 = none */
    int n_models;         /* models that gave it (all agree) */
} trained_t;

enum { STEP_SIZE, NOISE, N_TRAINED };

static void trained_init(const ldd_config_t *cfg, trained_t t[N_TRAINED])
{
    t[STEP_SIZE] = (trained_t){ "step_size", "step-size", LDD_FALLBACK_STEP_SIZE, cfg->step_size,
                                !isnan(cfg->step_size), -1, 0 };
    t[NOISE] = (trained_t){ "noise", "noise", LDD_FALLBACK_NOISE, cfg->noise, !isnan(cfg->noise), -1, 0 };
}

/* An auto setting takes model i's training value. Every model that has one
 * must agree with the first: which one a chain should use is the user's
 * choice, not the loader's. */
static int take_trained(trained_t *t, const ldd_engine_t *e, int i, const ld_meta_t *meta)
{
    if (t->from_config)
        return 0;
    double lo, hi, v;
    int rc = ldd_config_range(t->key, &lo, &hi);
    if (rc == 0)
        rc = ld_model_train_number(e->models[i].path, meta, t->trained, lo, hi, &v);
    if (rc == LD_ENOENT)
        return 0;
    if (rc < 0)
        return ldd_err_wrap(rc, "%s = auto (set %s to a number to not read it)", t->key, t->key);
    if (t->model >= 0 && (float)v != (float)t->value) /* the engine runs in float */
        return ld_seterr(LD_EINVAL,
                         "%s = auto, but the models were trained with different values: %s has train.%s = %.9g, "
                         "%s has %.9g; set %s in the config file or on the command line",
                         t->key, e->models[t->model].path, t->trained, t->value, e->models[i].path, v, t->key);
    if (t->model < 0) {
        t->value = v;
        t->model = i;
    }
    t->n_models++;
    return 0;
}

static double trained_value(const trained_t *t)
{
    return isnan(t->value) ? t->fallback : t->value;
}

static void log_trained(const trained_t *t, const ldd_engine_t *e)
{
    double v = trained_value(t);
    if (t->from_config)
        ld_info("langevin: %s = %.9g, from the config", t->key, v);
    else if (t->model >= 0)
        ld_info("langevin: %s = %.9g (auto): train.%s of model %s (%d of %d models have it)", t->key, v,
                t->trained, e->models[t->model].path, t->n_models, e->n_models);
    else
        ld_info("langevin: %s = %.9g (auto): no model has train.%s (files from `langdaug init-model` or exported "
                "from PyTorch), so the fallback", t->key, v, t->trained);
}

static int load_model(ldd_engine_t *e, int i, const char *path, trained_t trained[N_TRAINED])
{
    ldd_model_t *m = &e->models[i];
    snprintf(m->path, sizeof m->path, "%s", path);
    ld_meta_t *meta = NULL;
    int rc = ld_model_load(m->path, &m->ebm, &meta, m->hash);
    if (rc < 0)
        return ldd_err_wrap(rc, "model %s", m->path);
    e->n_models++;
    if (ld_latent_is_latent(meta) &&
        (rc = ld_latent_load_ae(m->path, meta, ld_ebm_arch(m->ebm), NULL, &m->ae, m->ae_hash)) < 0) {
        ld_meta_destroy(&meta);
        return ldd_err_wrap(rc, "model %s", m->path);
    }
    rc = ld_model_train_pairs(m->path, meta, ld_ebm_arch(m->ebm), m->pairs, &m->n_pairs);
    if (rc == LD_ENOENT)
        rc = 0;
    for (int k = 0; k < N_TRAINED && rc == 0; k++)
        rc = take_trained(&trained[k], e, i, meta);
    ld_meta_destroy(&meta);
    return rc;
}

static int load_models(const ldd_config_t *cfg, ldd_engine_t *e, trained_t trained[N_TRAINED])
{
    for (int i = 0; i < cfg->n_models; i++) {
        int rc = load_model(e, i, cfg->models[i], trained);
        if (rc < 0)
            return rc;
        const ldd_model_t *m = &e->models[i];
        const ld_ebm_arch_t *a = ld_ebm_arch(m->ebm);
        int c, s, c0, s0;
        ldd_model_image(m, &c, &s);
        ldd_model_image(&e->models[0], &c0, &s0);
        if (s != s0 || c != c0)
            return ld_seterr(LD_EFORMAT,
                             "model %s: size %d and %d channels differ from model %s (size %d, %d channels)",
                             m->path, s, c, e->models[0].path, s0, c0);
        ld_info("model %s: sha256 %.16s..., %d domains, size %d, colour space %s%s%.16s%s", m->path, m->hash,
                a->n_domains, s, ld_colour_space_name(a->colour_space), m->ae ? ", latent (autoencoder sha256 " : "",
                m->ae ? m->ae_hash : "", m->ae ? "...)" : "");
    }
    ldd_model_image(&e->models[0], &e->channels, &e->size);
    if (cfg->size && cfg->size != e->size)
        return ld_seterr(LD_ERANGE, "size = %d in the config, but the models have size %d", cfg->size, e->size);
    return 0;
}

static int load_dataset(const ldd_config_t *cfg, ldd_engine_t *e)
{
    ld_dataset_opts_t o = {
        .root = *cfg->data ? cfg->data : NULL,
        .manifest = *cfg->manifest ? cfg->manifest : NULL,
        .subdir = *cfg->subdir ? cfg->subdir : NULL,
        .domains = *cfg->domains ? cfg->domains : NULL,
        .maskmap = cfg->maskmap,
        .channels = e->channels,
        .scale = cfg->scale,
        .resize = cfg->resize,
        .fit = cfg->whole_images ? e->size : 0,
        .min_side = cfg->min_side,
    };
    int rc = ld_dataset_open(&o, &e->dataset);
    if (rc < 0)
        return ldd_err_wrap(rc, "dataset %s", o.root ? o.root : o.manifest);
    e->channels = ld_dataset_channels(e->dataset);
    e->classes = ld_dataset_n_classes(e->dataset);
    for (int i = 0; i < e->n_models; i++) {
        const ld_ebm_arch_t *a = ld_ebm_arch(e->models[i].ebm);
        if (a->mask_classes < e->classes)
            return ld_seterr(LD_EFORMAT, "model %s has %d mask classes, but the dataset's mask map gives %d",
                             e->models[i].path, a->mask_classes, e->classes);
    }
    if (ld_dataset_n_domains(e->dataset) > LD_EBM_MAX_DOMAINS)
        return ld_seterr(LD_ERANGE, "dataset has %d domains, more than %d", ld_dataset_n_domains(e->dataset),
                         LD_EBM_MAX_DOMAINS);
    return 0;
}

/* Evenly spread positions covering [0, len) with tiles of side s: the first
 * at 0, the last flush with the end (or centred when len < s). */
static int tile_positions(int len, int s, int *pos, int max)
{
    if (len <= s) {
        pos[0] = -(s - len) / 2;
        return 1;
    }
    int n = (len + s - 1) / s;
    if (n > max)
        n = max;
    for (int i = 0; i < n; i++)
        pos[i] = n == 1 ? 0 : (int)((long)i * (len - s) / (n - 1));
    return n;
}

static void build_tiles(ldd_engine_t *e)
{
    enum { MAXP = 4096 };
    static _Thread_local int xs[MAXP], ys[MAXP];
    for (int d = 0; d < ld_dataset_n_domains(e->dataset); d++) {
        int n = 0, cap = 0;
        ldd_tile_t *t = NULL;
        for (int i = 0; i < ld_dataset_n_items(e->dataset, d); i++) {
            int w, h;
            ld_dataset_item_size(e->dataset, d, i, &w, &h);
            int nx = tile_positions(w, e->size, xs, MAXP), ny = tile_positions(h, e->size, ys, MAXP);
            for (int a = 0; a < ny; a++) {
                for (int b = 0; b < nx; b++) {
                    if (n == cap) {
                        cap = cap ? 2 * cap : 64;
                        t = ldd_xrealloc(t, (size_t)cap * sizeof *t);
                    }
                    t[n++] = (ldd_tile_t){ i, xs[b], ys[a] };
                }
            }
        }
        e->tiles[d] = t;
        e->n_tiles[d] = n;
    }
}

/* Whether model i serves (dataset domain s, its domain t), other models
 * aside. */
static int model_serves(const ldd_engine_t *e, int i, int s, int t)
{
    const ldd_model_t *m = &e->models[i];
    const ld_ebm_arch_t *a = ld_ebm_arch(m->ebm);
    const char *source = ld_dataset_domain(e->dataset, s);
    if (!m->n_pairs)
        return strcmp(source, a->domains[t]) != 0;
    int ms;
    if (!ld_ebm_arch_domain(a, source, &ms))
        return 0;
    for (int k = 0; k < m->n_pairs; k++)
        if (m->pairs[k].source == ms && m->pairs[k].target == t)
            return 1;
    return 0;
}

static ldd_target_t *target_of(ldd_engine_t *e, const char *name)
{
    int t;
    if (ldd_engine_find_target(e, name, &t))
        return &e->targets[t];
    ldd_target_t *tr = &e->targets[e->n_targets++];
    snprintf(tr->name, sizeof tr->name, "%s", name);
    for (int s = 0; s < LD_EBM_MAX_DOMAINS; s++)
        tr->from[s].model = -1;
    return tr;
}

/* Model i's served pairs, source-major, logged ("A:B,A:C,..."). */
static void list_served(ldd_engine_t *e, int i)
{
    ldd_model_t *m = &e->models[i];
    const ld_ebm_arch_t *a = ld_ebm_arch(m->ebm);
    int nd = ld_dataset_n_domains(e->dataset);
    m->served = ldd_xcalloc((size_t)nd * (size_t)a->n_domains, sizeof *m->served);
    char text[1024] = "";
    size_t used = 0;
    for (int s = 0; s < nd; s++) {
        for (int t = 0; t < a->n_domains; t++) {
            int route = 0;
            ldd_engine_find_target(e, a->domains[t], &route); /* build_routes added every model's targets */
            const ldd_route_t *r = &e->targets[route].from[s];
            if (r->model != i)
                continue;
            m->served[m->n_served++] = (ldd_served_t){ (int16_t)s, (int16_t)t };
            if (used < sizeof text)
                used += (size_t)snprintf(text + used, sizeof text - used, "%s%s:%s", m->n_served > 1 ? "," : "",
                                         ld_dataset_domain(e->dataset, s), a->domains[t]);
        }
    }
    const char *trained = m->n_pairs ? "the pairs of its train.pairs" : "every ordered pair of its domains";
    if (m->n_served)
        ld_info("model %s (trained for %s) serves %d pair(s): %s%s", m->path, trained, m->n_served, text,
                used >= sizeof text ? "..." : "");
    else
        ld_warn("model %s serves no pair: of %s, none has its source in the dataset without an earlier model "
                "serving it", m->path, trained);
}

/* Every pair goes to the first model that serves it (see ldd_engine.h). */
static void build_routes(ldd_engine_t *e)
{
    int nd = ld_dataset_n_domains(e->dataset);
    for (int i = 0; i < e->n_models; i++) {
        const ld_ebm_arch_t *a = ld_ebm_arch(e->models[i].ebm);
        for (int t = 0; t < a->n_domains; t++) {
            ldd_target_t *tr = target_of(e, a->domains[t]);
            for (int s = 0; s < nd; s++) {
                if (tr->from[s].model >= 0 || !model_serves(e, i, s, t))
                    continue;
                tr->from[s] = (ldd_route_t){ (int16_t)i, (int16_t)t };
                tr->n_sources++;
            }
        }
    }
    for (int i = 0; i < e->n_models; i++)
        list_served(e, i);
}

static int set_langevin(const ldd_config_t *cfg, const trained_t trained[N_TRAINED], ldd_engine_t *e)
{
    ld_langevin_params_t *p = &e->defaults;
    p->step_size = (float)trained_value(&trained[STEP_SIZE]);
    p->noise = (float)trained_value(&trained[NOISE]);
    int rc = ld_langevin_set_snapshots(p, cfg->steps);
    if (rc < 0)
        return ldd_err_wrap(rc, "steps");
    p->steps = p->snapshots[p->n_snapshots - 1] > 0 ? p->snapshots[p->n_snapshots - 1] : 1;
    e->max_steps = cfg->max_steps;
    e->keep = cfg->keep;
    if (e->keep == LD_KEEP_LUMINANCE && e->channels != 3)
        return ld_seterr(LD_EINVAL, "keep = luminance needs 3-channel images; the models have %d channel(s)",
                         e->channels);
    return ld_langevin_validate(p);
}

int ldd_engine_load(const ldd_config_t *cfg, ldd_engine_t **out)
{
    *out = NULL;
    ldd_engine_t *e = ldd_xcalloc(1, sizeof *e);
    atomic_init(&e->refs, 1);
    trained_t trained[N_TRAINED];
    trained_init(cfg, trained);
    int rc = load_models(cfg, e, trained);
    if (rc == 0)
        rc = load_dataset(cfg, e);
    if (rc == 0)
        rc = set_langevin(cfg, trained, e);
    if (rc < 0)
        goto fail;
    for (int k = 0; k < N_TRAINED; k++)
        log_trained(&trained[k], e);
    ld_info("keep = %s for requests that do not say", ld_keep_name(e->keep));
    build_routes(e);
    build_tiles(e);
    *out = e;
    return 0;
fail:
    free_engine(e);
    return rc;
}

ldd_engine_t *ldd_engine_ref(ldd_engine_t *e)
{
    atomic_fetch_add(&e->refs, 1);
    return e;
}

void ldd_engine_unref(ldd_engine_t **e_p)
{
    ldd_engine_t *e = *e_p;
    *e_p = NULL;
    if (e && atomic_fetch_sub(&e->refs, 1) == 1)
        free_engine(e);
}

bool ldd_engine_find_target(const ldd_engine_t *e, const char *target, int *index)
{
    for (int t = 0; t < e->n_targets; t++)
        if (strcmp(e->targets[t].name, target) == 0) {
            *index = t;
            return true;
        }
    return false;
}

bool ldd_engine_find_source(const ldd_engine_t *e, const char *source, int *index)
{
    return ld_dataset_domain_index(e->dataset, source, index);
}

void ldd_model_image(const ldd_model_t *m, int *channels, int *size)
{
    const ld_ebm_arch_t *a = ld_ebm_arch(m->ebm);
    *channels = m->ae ? ld_ae_arch(m->ae)->image_channels : a->image_channels;
    *size = m->ae ? ld_ae_arch(m->ae)->size : a->size;
}
