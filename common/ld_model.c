/* ld_model: langdaug model files = safetensors + langdaug metadata.
 *
 * Load order (each step fails with LD_EFORMAT and a detail naming the file and
 * the key or tensor): safetensors validation (ld_safetensors) -> metadata
 * keys present and well-formed (colour_space may be absent: files written
 * before it existed are RGB; present, it must be exactly rgb or lab)
 * -> architecture valid (ld_ebm_arch_validate)
 * -> every parameter tensor present, F32, exact shape, finite -> no tensor
 * the architecture does not have. Extra tensors are rejected rather than
 * ignored: they mean the file was written for another architecture or
 * version, and silently dropping weights would change the model.
 * Non-finite weights are refused on save (LD_ENUMERIC) and on load, so a
 * diverged model never circulates.
 * Tensor bytes are copied with memcpy (file data is not aligned) and used
 * as-is: the host must be little-endian, which ld_safetensors.c checks at
 * compile time. */
#include "ld_model.h"
#include "ld_cli.h"
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

/* Keys ld_model_save generates; `extra` may not override them. */
static const char *const generated_keys[] = {
    "format", "version", "arch", "image_channels", "mask_classes", "size", "widths", "domains", "colour_space",
};

static int is_generated_key(const char *key)
{
    for (size_t i = 0; i < sizeof generated_keys / sizeof *generated_keys; i++)
        if (strcmp(generated_keys[i], key) == 0)
            return 1;
    return 0;
}

/* Re-labels the current detail as a format error of `path`. */
static int model_bad_detail(const char *path, const char *what)
{
    char detail[400];
    snprintf(detail, sizeof detail, "%s", ld_errdetail());
    return ld_seterr(LD_EFORMAT, "%s: %s: %s", path, what, detail);
}

static int meta_string(const char *path, const ld_meta_t *m, const char *key, const char **out)
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
    int rc = meta_string(path, m, key, &v);
    if (rc == LD_OK && strcmp(v, want) != 0)
        rc = ld_seterr(LD_EFORMAT, "%s: metadata '%s' is '%.64s', expected '%s'", path, key, v, want);
    return rc;
}

static int meta_int(const char *path, const ld_meta_t *m, const char *key, int *out)
{
    const char *v;
    int rc = meta_string(path, m, key, &v);
    if (rc == LD_OK && ld_cli_parse_int(key, v, INT_MIN, INT_MAX, out) != LD_OK)
        rc = ld_seterr(LD_EFORMAT, "%s: metadata '%s' is not an integer: '%.64s'", path, key, v);
    return rc;
}

static int arch_from_meta(const char *path, const ld_meta_t *m, ld_ebm_arch_t *arch)
{
    memset(arch, 0, sizeof *arch);
    const char *widths, *domains;
    int rc;
    if ((rc = meta_expect(path, m, "format", MODEL_FORMAT)) || (rc = meta_expect(path, m, "version", MODEL_VERSION)) ||
        (rc = meta_expect(path, m, "arch", MODEL_ARCH)) ||
        (rc = meta_int(path, m, "image_channels", &arch->image_channels)) ||
        (rc = meta_int(path, m, "mask_classes", &arch->mask_classes)) ||
        (rc = meta_int(path, m, "size", &arch->size)) || (rc = meta_string(path, m, "widths", &widths)) ||
        (rc = meta_string(path, m, "domains", &domains)))
        return rc;
    if (ld_ebm_arch_set_widths(arch, widths) != LD_OK)
        return model_bad_detail(path, "metadata 'widths'");
    if (ld_ebm_arch_set_domains(arch, domains) != LD_OK)
        return model_bad_detail(path, "metadata 'domains'");
    const char *space = ld_meta_get(m, "colour_space"); /* absent in files older than the key: RGB */
    if (space && ld_colour_space_parse("metadata 'colour_space'", space, &arch->colour_space) != LD_OK)
        return ld_seterr(LD_EFORMAT, "%s: %s", path, ld_errdetail());
    if (ld_ebm_arch_validate(arch) != LD_OK)
        return model_bad_detail(path, "metadata describes an invalid architecture");
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
    if (ld_cli_parse_double(what, v, min, max, out) != LD_OK)
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

static void format_shape(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && n < cap; d++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", d ? "," : "", (long long)shape[d]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
}

static int same_shape(const ld_st_tensor_t *t, const ld_ebm_tensor_t *p)
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

static int load_tensor(const char *path, const ld_st_t *st, const ld_ebm_tensor_t *p, float *dst)
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

/* Every file tensor must be one of the model's. */
static int check_no_extra(const char *path, const ld_st_t *st, const ld_ebm_t *ebm)
{
    for (size_t i = 0; i < ld_st_n_tensors(st); i++) {
        const char *name = ld_st_tensor(st, i)->name;
        if (ld_ebm_find_tensor(ebm, name) < 0)
            return ld_seterr(LD_EFORMAT, "%s: unexpected tensor '%.64s' (not a parameter of this architecture)",
                             path, name);
    }
    return LD_OK;
}

int ld_model_load(const char *path, ld_ebm_t **ebm_out, ld_meta_t **meta_out, char hash_out[65])
{
    *ebm_out = NULL;
    if (meta_out)
        *meta_out = NULL;
    ld_st_t *st = NULL;
    ld_ebm_t *ebm = NULL;
    ld_ebm_arch_t arch;
    int rc = ld_st_open(path, &st);
    if (rc)
        return rc;
    if ((rc = arch_from_meta(path, ld_st_meta(st), &arch)) || (rc = ld_ebm_new(&arch, &ebm)))
        goto fail;
    float *params = ld_ebm_params(ebm);
    for (size_t i = 0; i < ld_ebm_n_tensors(ebm); i++) {
        const ld_ebm_tensor_t *p = ld_ebm_tensor(ebm, i);
        if ((rc = load_tensor(path, st, p, params + p->offset)))
            goto fail;
    }
    if ((rc = check_no_extra(path, st, ebm)))
        goto fail;
    if (meta_out && (rc = ld_meta_clone(ld_st_meta(st), meta_out)))
        goto fail;
    if (hash_out)
        ld_st_sha256(st, hash_out);
    ld_st_close(&st);
    *ebm_out = ebm;
    return LD_OK;
fail:
    ld_ebm_destroy(&ebm);
    ld_st_close(&st);
    return rc;
}

static int join_ints(char *buf, size_t cap, const int *v, int n)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < n; i++) {
        len += (size_t)snprintf(buf + len, cap - len, "%s%d", i ? "," : "", v[i]);
        if (len >= cap)
            return LD_ERANGE;
    }
    return LD_OK;
}

static int join_domains(char *buf, size_t cap, const ld_ebm_arch_t *a)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < a->n_domains; i++) {
        len += (size_t)snprintf(buf + len, cap - len, "%s%s", i ? "," : "", a->domains[i]);
        if (len >= cap)
            return LD_ERANGE;
    }
    return LD_OK;
}

static int set_int(ld_st_writer_t *w, const char *key, int v)
{
    char buf[24];
    snprintf(buf, sizeof buf, "%d", v);
    return ld_st_writer_set_meta(w, key, buf);
}

static int set_generated_meta(ld_st_writer_t *w, const ld_ebm_arch_t *a)
{
    char widths[(LD_EBM_MAX_BLOCKS + 1) * 12];
    char domains[LD_EBM_MAX_DOMAINS * LD_NAME_MAX];
    int rc;
    if ((rc = join_ints(widths, sizeof widths, a->widths, a->n_blocks + 1)) ||
        (rc = join_domains(domains, sizeof domains, a)))
        return ld_seterr(rc, "model: architecture too large to describe");
    if ((rc = ld_st_writer_set_meta(w, "format", MODEL_FORMAT)) ||
        (rc = ld_st_writer_set_meta(w, "version", MODEL_VERSION)) ||
        (rc = ld_st_writer_set_meta(w, "arch", MODEL_ARCH)) ||
        (rc = set_int(w, "image_channels", a->image_channels)) ||
        (rc = set_int(w, "mask_classes", a->mask_classes)) || (rc = set_int(w, "size", a->size)) ||
        (rc = ld_st_writer_set_meta(w, "widths", widths)) || (rc = ld_st_writer_set_meta(w, "domains", domains)) ||
        (rc = ld_st_writer_set_meta(w, "colour_space", ld_colour_space_name(a->colour_space))))
        return rc;
    return LD_OK;
}

static int set_extra_meta(ld_st_writer_t *w, const ld_meta_t *extra)
{
    for (size_t i = 0; extra && i < ld_meta_count(extra); i++) {
        const char *k = ld_meta_key(extra, i);
        if (is_generated_key(k))
            return ld_seterr(LD_EINVAL, "model: extra metadata key '%s' collides with a generated key", k);
        int rc = ld_st_writer_set_meta(w, k, ld_meta_value(extra, i));
        if (rc)
            return rc;
    }
    return LD_OK;
}

static int add_tensors(ld_st_writer_t *w, const ld_ebm_t *ebm, const char *path)
{
    const float *params = ld_ebm_params_const(ebm);
    for (size_t i = 0; i < ld_ebm_n_tensors(ebm); i++) {
        const ld_ebm_tensor_t *p = ld_ebm_tensor(ebm, i);
        long bad_at = first_non_finite(params + p->offset, p->numel);
        if (bad_at >= 0)
            return ld_seterr(LD_ENUMERIC, "%s: not saving: tensor '%s' element %ld is not finite", path, p->name,
                             bad_at);
        int rc = ld_st_writer_add(w, p->name, LD_DT_F32, p->ndim, p->shape, params + p->offset);
        if (rc)
            return rc;
    }
    return LD_OK;
}

int ld_model_save(const char *path, const ld_ebm_t *ebm, const ld_meta_t *extra, char hash_out[65])
{
    ld_st_writer_t *w = NULL;
    int rc = ld_st_writer_new(&w);
    if (rc == LD_OK)
        rc = set_generated_meta(w, ld_ebm_arch(ebm));
    if (rc == LD_OK)
        rc = set_extra_meta(w, extra);
    if (rc == LD_OK)
        rc = add_tensors(w, ebm, path);
    if (rc == LD_OK)
        rc = ld_st_writer_write(w, path, hash_out);
    ld_st_writer_destroy(&w);
    return rc;
}
