/* ld_ckpt: checkpoint contents and model-file metadata shared by the
 * trainers, and their run loop (see ld_ckpt.h).
 *
 * Invariants: a checkpoint is written in one atomic file write (by the
 * caller's ld_st_writer_write), so a reader sees the old checkpoint or the
 * new one; loading copies nothing into the caller's state before the tensor
 * it reads has been checked; the run loop writes nothing after a failed
 * step. */
#include "ld_ckpt.h"
#include "ld_error.h"
#include "ld_log.h"
#include "ld_traindata.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PATH_MAX_LEN 4200

int ld_ckpt_tensor(const ld_st_t *st, const char *name, ld_dtype_t dt, size_t numel, const ld_st_tensor_t **out)
{
    const ld_st_tensor_t *t = ld_st_find(st, name);
    if (!t)
        return ld_seterr(LD_EFORMAT, "%s: checkpoint has no tensor '%s'", ld_st_path(st), name);
    if (t->dtype != dt || t->numel != numel)
        return ld_seterr(LD_EFORMAT, "%s: tensor '%s' is %s with %zu values, expected %s with %zu", ld_st_path(st),
                         name, ld_dtype_name(t->dtype), t->numel, ld_dtype_name(dt), numel);
    *out = t;
    return LD_OK;
}

int ld_ckpt_check_format(const ld_st_t *st, const char *format, const char *version, const char *what)
{
    const ld_meta_t *meta = ld_st_meta(st);
    const char *f = ld_meta_get(meta, "format"), *v = ld_meta_get(meta, "version");
    if (!f || strcmp(f, format) != 0)
        return ld_seterr(LD_EFORMAT, "%s: not a %s (format '%s')", ld_st_path(st), what, f ? f : "");
    if (!v || strcmp(v, version) != 0)
        return ld_seterr(LD_ENOTSUP, "%s: %s version '%s' is not supported", ld_st_path(st), what, v ? v : "");
    return LD_OK;
}

/* ---- parameter sets ---- */

int ld_ckpt_add_sets(ld_st_writer_t *w, const ld_cn_params_t *table, const ld_ckpt_set_t *sets, int n_sets)
{
    char name[160];
    for (int s = 0; s < n_sets; s++) {
        for (size_t i = 0; i < table->n; i++) {
            const ld_cn_tensor_t *t = &table->t[i];
            snprintf(name, sizeof name, "%s%s", sets[s].prefix, t->name);
            int rc = ld_st_writer_add(w, name, LD_DT_F32, t->ndim, t->shape, sets[s].data + t->offset);
            if (rc)
                return rc;
        }
    }
    return LD_OK;
}

int ld_ckpt_load_sets(const ld_st_t *st, const ld_cn_params_t *table, const ld_ckpt_set_t *sets, int n_sets)
{
    char name[160];
    for (int s = 0; s < n_sets; s++) {
        for (size_t i = 0; i < table->n; i++) {
            const ld_cn_tensor_t *t = &table->t[i];
            const ld_st_tensor_t *ct;
            snprintf(name, sizeof name, "%s%s", sets[s].prefix, t->name);
            int rc = ld_ckpt_tensor(st, name, LD_DT_F32, t->numel, &ct);
            if (rc)
                return rc;
            if (ct->ndim != t->ndim || memcmp(ct->shape, t->shape, (size_t)t->ndim * sizeof t->shape[0]))
                return ld_seterr(LD_EFORMAT, "%s: tensor '%s' has another shape than the model's", ld_st_path(st),
                                 name);
            memcpy(sets[s].data + t->offset, ct->data, ct->nbytes);
        }
    }
    return LD_OK;
}

/* ---- scalar state ---- */

void ld_ckpt_state_get(ld_ckpt_state_t *s, int64_t iteration, const ld_adam_t *adam, const ld_rng_t *rng)
{
    *s = (ld_ckpt_state_t){
        .iteration = (uint64_t)iteration,
        .adam_step = ld_adam_steps(adam),
        .rng64 = { rng->seed, rng->stream, rng->counter },
        .rng32 = { rng->buf[0], rng->buf[1], rng->buf[2], rng->buf[3], rng->used },
    };
}

int ld_ckpt_add_state(ld_st_writer_t *w, const ld_ckpt_state_t *s)
{
    const int64_t one = 1, three = 3, five = 5;
    int rc = ld_st_writer_add(w, "state.iteration", LD_DT_U64, 1, &one, &s->iteration);
    if (!rc)
        rc = ld_st_writer_add(w, "state.adam_step", LD_DT_U64, 1, &one, &s->adam_step);
    if (!rc)
        rc = ld_st_writer_add(w, "state.rng_u64", LD_DT_U64, 1, &three, s->rng64);
    if (!rc)
        rc = ld_st_writer_add(w, "state.rng_u32", LD_DT_U32, 1, &five, s->rng32);
    return rc;
}

/* Copies the tensor `name` (numel values of dt) into out. */
static int read_tensor(const ld_st_t *st, const char *name, ld_dtype_t dt, size_t numel, void *out)
{
    const ld_st_tensor_t *t;
    int rc = ld_ckpt_tensor(st, name, dt, numel, &t);
    if (!rc)
        memcpy(out, t->data, t->nbytes);
    return rc;
}

int ld_ckpt_load_state(const ld_st_t *st, uint64_t seed, uint64_t stream, int64_t *iteration, ld_adam_t *adam,
                       ld_rng_t *rng)
{
    ld_ckpt_state_t s;
    int rc;
    if ((rc = read_tensor(st, "state.iteration", LD_DT_U64, 1, &s.iteration)) ||
        (rc = read_tensor(st, "state.adam_step", LD_DT_U64, 1, &s.adam_step)) ||
        (rc = read_tensor(st, "state.rng_u64", LD_DT_U64, 3, s.rng64)) ||
        (rc = read_tensor(st, "state.rng_u32", LD_DT_U32, 5, s.rng32)))
        return rc;
    if (s.iteration > (uint64_t)INT32_MAX * 1024 || s.rng32[4] > 4 || s.rng64[0] != seed || s.rng64[1] != stream)
        return ld_seterr(LD_EFORMAT, "%s: inconsistent training state (iteration %" PRIu64 ")", ld_st_path(st),
                         s.iteration);
    *iteration = (int64_t)s.iteration;
    ld_adam_set_steps(adam, s.adam_step);
    rng->seed = s.rng64[0];
    rng->stream = s.rng64[1];
    rng->counter = s.rng64[2];
    memcpy(rng->buf, s.rng32, sizeof rng->buf);
    rng->used = s.rng32[4];
    return LD_OK;
}

/* ---- tables of rows ---- */

int ld_ckpt_rows_reserve(ld_ckpt_rows_t *r, int64_t rows)
{
    if (rows <= r->cap)
        return LD_OK;
    int64_t cap = r->cap ? r->cap : 1024;
    while (cap < rows)
        cap *= 2;
    float *v = realloc(r->v, (size_t)cap * (size_t)r->cols * sizeof *v);
    if (!v)
        return ld_seterr(LD_ENOMEM, "training history: out of memory for %" PRId64 " rows", cap);
    r->v = v;
    r->cap = cap;
    return LD_OK;
}

int ld_ckpt_rows_append(ld_ckpt_rows_t *r, const float *row)
{
    int rc = ld_ckpt_rows_reserve(r, r->n + 1);
    if (rc)
        return rc;
    memcpy(r->v + (size_t)r->n * (size_t)r->cols, row, (size_t)r->cols * sizeof *row);
    r->n++;
    return LD_OK;
}

void ld_ckpt_rows_free(ld_ckpt_rows_t *r)
{
    free(r->v);
    r->v = NULL;
    r->n = r->cap = 0;
}

int ld_ckpt_add_rows(ld_st_writer_t *w, const char *name, const ld_ckpt_rows_t *r)
{
    const int64_t shape[2] = { r->n, r->cols };
    return ld_st_writer_add(w, name, LD_DT_F32, 2, shape, r->v);
}

int ld_ckpt_load_rows(const ld_st_t *st, const char *name, int64_t n_rows, ld_ckpt_rows_t *r)
{
    const ld_st_tensor_t *t;
    int rc = ld_ckpt_tensor(st, name, LD_DT_F32, (size_t)n_rows * (size_t)r->cols, &t);
    if (!rc)
        rc = ld_ckpt_rows_reserve(r, n_rows);
    if (rc)
        return rc;
    if (t->nbytes)
        memcpy(r->v, t->data, t->nbytes);
    r->n = n_rows;
    return LD_OK;
}

/* ---- a trainer's checkpoints ---- */

#define HISTORY "state.history"
#define EVALS "state.eval"

/* The run's record after a file's own keys: the settings, more_meta's. */
static int run_meta(const ld_ckpt_kind_t *k, const ld_ckpt_parts_t *p, ld_meta_t *meta)
{
    int rc = ld_settings_to_meta(k->settings, p->cfg, meta);
    if (!rc && p->more_meta)
        rc = p->more_meta(p->trainer, meta);
    return rc;
}

static int checkpoint_meta(const ld_ckpt_kind_t *k, const ld_ckpt_parts_t *p, ld_st_writer_t *w)
{
    ld_meta_t *meta = NULL;
    char buf[LD_TRAINDATA_LIST_MAX + 64];
    int rc = ld_meta_new(&meta);
    if (!rc)
        rc = ld_meta_set(meta, "format", k->format);
    if (!rc)
        rc = ld_meta_set(meta, "version", k->version);
    snprintf(buf, sizeof buf, "%" PRId64, *p->iteration);
    if (!rc)
        rc = ld_meta_set(meta, "iteration", buf);
    ld_traindata_fingerprint(p->ds, buf, sizeof buf);
    if (!rc)
        rc = ld_meta_set(meta, "data_items", buf);
    if (!rc)
        rc = run_meta(k, p, meta);
    if (!rc)
        rc = ld_st_writer_merge_meta(w, meta);
    ld_meta_destroy(&meta);
    return rc;
}

int ld_ckpt_save(const char *path, const ld_ckpt_kind_t *k, const ld_ckpt_parts_t *p)
{
    ld_ckpt_state_t state;
    ld_ckpt_state_get(&state, *p->iteration, p->adam, p->rng);
    ld_st_writer_t *w = NULL;
    int rc = ld_st_writer_new(&w);
    if (!rc)
        rc = checkpoint_meta(k, p, w);
    if (!rc)
        rc = ld_ckpt_add_sets(w, p->table, p->sets, p->n_sets);
    if (!rc)
        rc = ld_ckpt_add_state(w, &state);
    if (!rc)
        rc = ld_ckpt_add_rows(w, HISTORY, p->history);
    if (!rc && p->evals)
        rc = ld_ckpt_add_rows(w, EVALS, p->evals);
    if (!rc)
        rc = ld_st_writer_write(w, path, NULL);
    ld_st_writer_destroy(&w);
    return rc;
}

/* Sets the pairs of kv: key, value, ..., NULL (kv may be NULL). */
static int set_pairs(ld_meta_t *meta, const char *const *kv)
{
    int rc = LD_OK;
    for (; kv && kv[0] && !rc; kv += 2)
        rc = ld_meta_set(meta, kv[0], kv[1]);
    return rc;
}

int ld_ckpt_model_meta(const ld_ckpt_kind_t *k, const ld_ckpt_parts_t *p, const ld_meta_t *provenance,
                       const char *const *before, const char *const *after, ld_meta_t **out)
{
    char iterations[32];
    snprintf(iterations, sizeof iterations, "%" PRId64, *p->iteration);
    int rc = provenance ? ld_meta_clone(provenance, out) : ld_meta_new(out);
    if (rc)
        return rc;
    if ((rc = set_pairs(*out, before)) || (rc = ld_meta_set(*out, "iterations", iterations)) ||
        (rc = set_pairs(*out, after)) || (rc = run_meta(k, p, *out)))
        ld_meta_destroy(out);
    return rc;
}

int ld_ckpt_open(const char *path, const ld_ckpt_kind_t *k, const ld_meta_t *overrides, void *cfg, ld_st_t **out)
{
    int rc = ld_st_open(path, out);
    if (!rc)
        rc = ld_ckpt_check_format(*out, k->format, k->version, k->what);
    if (rc)
        return rc;
    k->defaults(cfg);
    rc = ld_settings_from_meta(k->settings, cfg, ld_st_meta(*out), ld_st_path(*out));
    if (!rc)
        rc = ld_settings_override(k->settings, cfg, overrides);
    return rc;
}

/* Evaluations are rows of increasing iterations up to the checkpoint's. */
static int load_evals(const ld_st_t *st, int64_t iteration, ld_ckpt_rows_t *evals)
{
    const ld_st_tensor_t *t = ld_st_find(st, EVALS);
    if (!t || t->ndim != 2 || t->shape[1] != evals->cols)
        return ld_seterr(LD_EFORMAT, "%s: tensor '" EVALS "' is missing or not [n, %d]", ld_st_path(st),
                         evals->cols);
    int rc = ld_ckpt_load_rows(st, EVALS, t->shape[0], evals);
    for (int64_t i = 0; !rc && i < evals->n; i++) {
        float at = evals->v[(size_t)i * evals->cols];
        float before = i ? evals->v[(size_t)(i - 1) * evals->cols] : -1;
        if (!(at > before && at <= (float)iteration))
            rc = ld_seterr(LD_EFORMAT, "%s: evaluation %" PRId64 " is at iteration %g", ld_st_path(st), i, at);
    }
    return rc;
}

int ld_ckpt_load(const ld_st_t *st, const ld_ckpt_kind_t *k, const ld_ckpt_parts_t *p)
{
    int rc = ld_ckpt_load_sets(st, p->table, p->sets, p->n_sets);
    if (!rc)
        rc = ld_ckpt_load_state(st, p->seed, k->stream, p->iteration, p->adam, p->rng);
    if (!rc)
        rc = ld_ckpt_load_rows(st, HISTORY, *p->iteration, p->history);
    if (!rc && p->evals)
        rc = load_evals(st, *p->iteration, p->evals);
    if (!rc)
        ld_traindata_warn_changed(p->ds, ld_st_meta(st), ld_st_path(st));
    return rc;
}

/* ---- run loop ---- */

typedef struct {
    const ld_ckpt_ops_t *ops;
    void *obj;
    const ld_ckpt_parts_t *p;
    const ld_ckpt_run_opts_t *opts;
    int64_t saved_at;  /* the iteration of the last checkpoint written or loaded */
} run_t;

static int checkpoint_if(run_t *r)
{
    int64_t it = *r->p->iteration;
    if (!r->opts->checkpoint || r->saved_at == it)
        return LD_OK;
    int rc = ld_ckpt_save(r->opts->checkpoint, r->ops->kind, r->p);
    if (rc)
        return rc;
    r->saved_at = it;
    ld_info("checkpoint %s at iteration %" PRId64, r->opts->checkpoint, it);
    return LD_OK;
}

static int preview_now(const run_t *r)
{
    char path[PATH_MAX_LEN];
    snprintf(path, sizeof path, "%s/preview_%08" PRId64 ".png", r->opts->preview_dir, *r->p->iteration);
    int rc = r->ops->preview(r->obj, path);
    if (rc)
        return rc;
    ld_info("preview %s", path);
    return LD_OK;
}

static int due(int64_t iteration, int64_t every)
{
    return every > 0 && iteration % every == 0;
}

/* Evaluation, checkpoint and preview due after the iteration just done. */
static int after_step(run_t *r)
{
    int64_t it = *r->p->iteration;
    int rc = LD_OK;
    if (r->ops->evaluate && due(it, r->opts->evaluate_every))
        rc = r->ops->evaluate(r->obj);
    if (!rc && due(it, r->opts->checkpoint_every))
        rc = checkpoint_if(r);
    if (!rc && r->opts->preview_dir && due(it, r->opts->preview_every))
        rc = preview_now(r);
    return rc;
}

int ld_ckpt_run(const ld_ckpt_ops_t *ops, void *obj, const ld_ckpt_parts_t *p, const ld_ckpt_run_opts_t *opts)
{
    run_t r = { ops, obj, p, opts, *p->iteration };
    int rc = LD_OK;
    while (*p->iteration < opts->iters) {
        if (opts->cancel && atomic_load(opts->cancel)) {
            rc = LD_ECANCELED;
            break;
        }
        rc = ops->step(obj, opts->stats, opts->cancel);
        if (rc)
            break;
        if (opts->progress)
            opts->progress(opts->stats, opts->user);
        if ((rc = after_step(&r)))
            return rc;
    }
    if (rc && rc != LD_ECANCELED)
        return rc; /* divergence or failure: the last checkpoint stays as it is */
    int save_rc = checkpoint_if(&r);
    if (save_rc)
        return save_rc;
    if (rc == LD_ECANCELED)
        return ld_seterr(LD_ECANCELED, "interrupted after iteration %" PRId64 "%s%s", *p->iteration,
                         opts->checkpoint ? "; checkpoint " : "", opts->checkpoint ? opts->checkpoint : "");
    return LD_OK;
}
