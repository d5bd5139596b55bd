/* ld_model: langdaug model files = safetensors + langdaug metadata.
 *
 * Load order (each step fails with LD_EFORMAT and a detail naming the file and
 * the key or tensor): safetensors validation (ld_safetensors) -> format,
 * version and arch keys -> the network's architecture keys present and
 * well-formed (for the EBM, colour_space may be absent: files written
 * before it existed are RGB; present, it must be exactly rgb or lab)
 * -> architecture valid (ld_ebm_arch_validate, or the network's own)
 * -> every parameter tensor present, F32, exact shape, finite -> no tensor
 * the architecture does not have. Extra tensors are rejected rather than
 * ignored: they mean the file was written for another architecture or
 * version, and silently dropping weights would change the model.
 * Non-finite weights are refused on save (LD_ENUMERIC) and on load, so a
 * diverged model never circulates.
 * Tensor bytes are copied with memcpy (file data is not aligned) and used
 * as-is: the host must be little-endian, which ld_safetensors.c checks at
 * compile time. The steps that do not depend on the network (ld_model_read,
 * ld_model_write) serve every network's files (ld_ae's too). */
#include "ld_model.h"
#include "ld_text.h"
#include "ld_colour.h"
#include "ld_error.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MODEL_FORMAT "langdaug-ebm"
#define MODEL_VERSION "1"
#define MODEL_ARCH "resdown"

/* ------------------------------------------------------------------ */
/* Any network's files                                                 */
/* ------------------------------------------------------------------ */

int ld_model_bad(const char *path, const char *what)
{
    char detail[400];
    snprintf(detail, sizeof detail, "%s", ld_errdetail());
    return ld_seterr(LD_EFORMAT, "%s: %s: %s", path, what, detail);
}

int ld_model_meta_string(const char *path, const ld_meta_t *m, const char *key, const char **out)
{
    *out = ld_meta_get(m, key);
    if (!*out)
        return ld_seterr(LD_EFORMAT, "%s: metadata key '%s' is missing (not a langdaug model file?)", path,
                         key);
    return LD_OK;
}

static int meta_expect(const char *path, const ld_meta_t *m, const char *key, const char *want)
{
    const char *v;
    int rc = ld_model_meta_string(path, m, key, &v);
    if (rc == LD_OK && strcmp(v, want) != 0)
        rc = ld_seterr(LD_EFORMAT, "%s: metadata '%s' is '%.64s', expected '%s'", path, key, v, want);
    return rc;
}

int ld_model_meta_int(const char *path, const ld_meta_t *m, const char *key, int *out)
{
    const char *v;
    int rc = ld_model_meta_string(path, m, key, &v);
    if (rc == LD_OK && ld_text_parse_int(key, v, INT_MIN, INT_MAX, out) != LD_OK)
        rc = ld_seterr(LD_EFORMAT, "%s: metadata '%s' is not an integer: '%.64s'", path, key, v);
    return rc;
}

static void format_shape(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && n < cap; d++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", d ? "," : "", (long long)shape[d]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
}

static int same_shape(const ld_st_tensor_t *t, const ld_cn_tensor_t *p)
{
    if (t->ndim != p->ndim)
        return 0;
    for (int d = 0; d < p->ndim; d++)
        if (t->shape[d] != p->shape[d])
            return 0;
    return 1;
}

/* Index of the first non-finite value, or -1. */
static long first_non_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return (long)i;
    return -1;
}

static int load_tensor(const char *path, const ld_st_t *st, const ld_cn_tensor_t *p, float *dst)
{
    const ld_st_tensor_t *t = ld_st_find(st, p->name);
    if (!t)
        return ld_seterr(LD_EFORMAT, "%s: tensor '%s' is missing", path, p->name);
    if (t->dtype != LD_DT_F32)
        return ld_seterr(LD_EFORMAT, "%s: tensor '%s' has dtype %s, expected F32", path, p->name,
                         ld_dtype_name(t->dtype));
    if (!same_shape(t, p)) {
        char got[128], want[128];
        format_shape(got, sizeof got, t->ndim, t->shape);
        format_shape(want, sizeof want, p->ndim, p->shape);
        return ld_seterr(LD_EFORMAT, "%s: tensor '%s' has shape %s, expected %s", path, p->name, got, want);
    }
    memcpy(dst, t->data, p->numel * sizeof *dst);
    long bad_at = first_non_finite(dst, p->numel);
    if (bad_at >= 0)
        return ld_seterr(LD_EFORMAT, "%s: tensor '%s' element %ld is %s", path, p->name, bad_at,
                         isnan(dst[bad_at]) ? "NaN" : "infinite");
    return LD_OK;
}

/* Every file tensor must be one of the network's. */
static int check_no_extra(const char *path, const ld_st_t *st, const ld_cn_params_t *ps)
{
    for (size_t i = 0; i < ld_st_n_tensors(st); i++) {
        const char *name = ld_st_tensor(st, i)->name;
        size_t index;
        if (!ld_cn_params_find(ps, name, &index))
            return ld_seterr(LD_EFORMAT, "%s: unexpected tensor '%.64s' (not a parameter of this architecture)",
                             path, name);
    }
    return LD_OK;
}

/* The tensors of the file into ps, then meta_out and hash_out. */
static int read_params(const char *path, const ld_st_t *st, ld_cn_params_t *ps, ld_meta_t **meta_out,
                       char hash_out[65])
{
    int rc;
    for (size_t i = 0; i < ps->n; i++)
        if ((rc = load_tensor(path, st, &ps->t[i], ps->params + ps->t[i].offset)))
            return rc;
    if ((rc = check_no_extra(path, st, ps)) || (meta_out && (rc = ld_meta_clone(ld_st_meta(st), meta_out))))
        return rc;
    if (hash_out)
        ld_st_sha256(st, hash_out);
    return LD_OK;
}

int ld_model_read(const char *path, const char *format, const char *version, const char *arch, ld_model_make_fn make,
                  void (*unmake)(void *ctx), void *ctx, ld_meta_t **meta_out, char hash_out[65])
{
    if (meta_out)
        *meta_out = NULL;
    ld_st_t *st = NULL;
    ld_cn_params_t *ps;
    int rc = ld_st_open(path, &st);
    if (rc)
        return rc;
    const ld_meta_t *meta = ld_st_meta(st);
    if ((rc = meta_expect(path, meta, "format", format)) || (rc = meta_expect(path, meta, "version", version)) ||
        (rc = meta_expect(path, meta, "arch", arch)) || (rc = make(ctx, path, meta, &ps)))
        goto done;
    if ((rc = read_params(path, st, ps, meta_out, hash_out)))
        unmake(ctx);
done:
    ld_st_close(&st);
    return rc;
}

static int set_extra_meta(ld_st_writer_t *w, const ld_meta_t *generated, const ld_meta_t *extra)
{
    for (size_t i = 0; extra && i < ld_meta_count(extra); i++) {
        const char *k = ld_meta_key(extra, i);
        if (ld_meta_get(generated, k))
            return ld_seterr(LD_EINVAL, "model: extra metadata key '%s' collides with a generated key", k);
        int rc = ld_st_writer_set_meta(w, k, ld_meta_value(extra, i));
        if (rc)
            return rc;
    }
    return LD_OK;
}

static int add_tensors(ld_st_writer_t *w, const ld_cn_params_t *ps, const char *path)
{
    for (size_t i = 0; i < ps->n; i++) {
        const ld_cn_tensor_t *p = &ps->t[i];
        long bad_at = first_non_finite(ps->params + p->offset, p->numel);
        if (bad_at >= 0)
            return ld_seterr(LD_ENUMERIC, "%s: not saving: tensor '%s' element %ld is not finite", path, p->name,
                             bad_at);
        int rc = ld_st_writer_add(w, p->name, LD_DT_F32, p->ndim, p->shape, ps->params + p->offset);
        if (rc)
            return rc;
    }
    return LD_OK;
}

int ld_model_write(const char *path, ld_model_meta_fn generate, const void *arch, const ld_meta_t *extra,
                   const ld_cn_params_t *ps, char hash_out[65])
{
    ld_meta_t *gen = NULL;
    ld_st_writer_t *w = NULL;
    int rc = ld_meta_new(&gen);
    if (rc == LD_OK)
        rc = generate(gen, arch);
    if (rc == LD_OK)
        rc = ld_st_writer_new(&w);
    if (rc == LD_OK)
        rc = ld_st_writer_merge_meta(w, gen);
    if (rc == LD_OK)
        rc = set_extra_meta(w, gen, extra);
    if (rc == LD_OK)
        rc = add_tensors(w, ps, path);
    if (rc == LD_OK)
        rc = ld_st_writer_write(w, path, hash_out);
    ld_st_writer_destroy(&w);
    ld_meta_destroy(&gen);
    return rc;
}

int ld_model_set_int(ld_meta_t *m, const char *key, int v)
{
    char buf[24];
    snprintf(buf, sizeof buf, "%d", v);
    return ld_meta_set(m, key, buf);
}

int ld_model_join_ints(char *buf, size_t cap, const int *v, int n)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < n; i++) {
        len += (size_t)snprintf(buf + len, cap - len, "%s%d", i ? "," : "", v[i]);
        if (len >= cap)
            return ld_seterr(LD_ERANGE, "model: %d integers do not fit in %zu characters", n, cap - 1);
    }
    return LD_OK;
}

/* ------------------------------------------------------------------ */
/* Energy models                                                       */
/* ------------------------------------------------------------------ */

/* ld_model_make_fn for an EBM: ctx is an ld_ebm_t **. */
static int ebm_make(void *ctx, const char *path, const ld_meta_t *m, ld_cn_params_t **ps)
{
    ld_ebm_arch_t a, *arch = &a;
    memset(arch, 0, sizeof *arch);
    const char *widths, *domains;
    int rc;
    if ((rc = ld_model_meta_int(path, m, "image_channels", &arch->image_channels)) ||
        (rc = ld_model_meta_int(path, m, "mask_classes", &arch->mask_classes)) ||
        (rc = ld_model_meta_int(path, m, "size", &arch->size)) ||
        (rc = ld_model_meta_string(path, m, "widths", &widths)) ||
        (rc = ld_model_meta_string(path, m, "domains", &domains)))
        return rc;
    if (ld_ebm_arch_set_widths(arch, widths) != LD_OK)
        return ld_model_bad(path, "metadata 'widths'");
    if (ld_ebm_arch_set_domains(arch, domains) != LD_OK)
        return ld_model_bad(path, "metadata 'domains'");
    const char *space = ld_meta_get(m, "colour_space"); /* absent in files older than the key: RGB */
    if (space && ld_colour_space_parse("metadata 'colour_space'", space, &arch->colour_space) != LD_OK)
        return ld_seterr(LD_EFORMAT, "%s: %s", path, ld_errdetail());
    if (ld_ebm_arch_validate(arch) != LD_OK)
        return ld_model_bad(path, "metadata describes an invalid architecture");
    ld_ebm_t **ebm = ctx;
    if ((rc = ld_ebm_new(arch, ebm)))
        return rc;
    *ps = ld_ebm_parameters(*ebm);
    return LD_OK;
}

int ld_model_train_number(const char *path, const ld_meta_t *meta, const char *name, double min, double max,
                          double *out)
{
    char key[128], what[160];
    snprintf(key, sizeof key, "train.%s", name);
    const char *v = ld_meta_get(meta, key);
    if (!v)
        return ld_seterr(LD_ENOENT, "%s: no metadata '%s'", path, key);
    snprintf(what, sizeof what, "%s: metadata '%s'", path, key);
    if (ld_text_parse_double(what, v, min, max, out) != LD_OK)
        return ld_seterr(LD_EFORMAT, "%s", ld_errdetail());
    return LD_OK;
}

int ld_model_train_pairs(const char *path, const ld_meta_t *meta, const ld_ebm_arch_t *arch, ld_ebm_pair_t *pairs,
                         int *n)
{
    *n = 0;
    const char *v = ld_meta_get(meta, "train.pairs");
    if (!v)
        return ld_seterr(LD_ENOENT, "%s: no metadata 'train.pairs'", path);
    if (ld_ebm_arch_parse_pairs(arch, v, pairs, n) != LD_OK)
        return ld_seterr(LD_EFORMAT, "%s: metadata 'train.pairs': %s", path, ld_errdetail());
    return LD_OK;
}

static void ebm_unmake(void *ctx) { ld_ebm_destroy(ctx); }

int ld_model_load(const char *path, ld_ebm_t **ebm_out, ld_meta_t **meta_out, char hash_out[65])
{
    *ebm_out = NULL;
    return ld_model_read(path, MODEL_FORMAT, MODEL_VERSION, MODEL_ARCH, ebm_make, ebm_unmake, ebm_out, meta_out,
                         hash_out);
}

static int join_domains(char *buf, size_t cap, const ld_ebm_arch_t *a)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < a->n_domains; i++) {
        len += (size_t)snprintf(buf + len, cap - len, "%s%s", i ? "," : "", a->domains[i]);
        if (len >= cap)
            return ld_seterr(LD_ERANGE, "model: %d domain names do not fit in %zu characters", a->n_domains,
                             cap - 1);
    }
    return LD_OK;
}

/* ld_model_meta_fn of an EBM. */
static int generated_meta(ld_meta_t *m, const void *arch)
{
    const ld_ebm_arch_t *a = arch;
    char widths[(LD_EBM_MAX_BLOCKS + 1) * 12];
    char domains[LD_EBM_MAX_DOMAINS * LD_NAME_MAX];
    int rc;
    if ((rc = ld_model_join_ints(widths, sizeof widths, a->widths, a->n_blocks + 1)) ||
        (rc = join_domains(domains, sizeof domains, a)))
        return ld_seterr(rc, "model: architecture too large to describe");
    if ((rc = ld_meta_set(m, "format", MODEL_FORMAT)) || (rc = ld_meta_set(m, "version", MODEL_VERSION)) ||
        (rc = ld_meta_set(m, "arch", MODEL_ARCH)) || (rc = ld_model_set_int(m, "image_channels", a->image_channels)) ||
        (rc = ld_model_set_int(m, "mask_classes", a->mask_classes)) || (rc = ld_model_set_int(m, "size", a->size)) ||
        (rc = ld_meta_set(m, "widths", widths)) || (rc = ld_meta_set(m, "domains", domains)) ||
        (rc = ld_meta_set(m, "colour_space", ld_colour_space_name(a->colour_space))))
        return rc;
    return LD_OK;
}

int ld_model_save(const char *path, const ld_ebm_t *ebm, const ld_meta_t *extra, char hash_out[65])
{
    return ld_model_write(path, generated_meta, ld_ebm_arch(ebm), extra, ld_ebm_parameters_const(ebm), hash_out);
}
