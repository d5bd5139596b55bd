/* ld_settings: table-driven run settings (see ld_settings.h).
 *
 * Invariants: a config is only ever changed through a row of its table;
 * ld_settings_get's text reads back through ld_settings_set to the same
 * bits (doubles printed with the fewest digits that do), so metadata
 * round-trips exactly and a resumed run sees the values it started with. */
#include "ld_settings.h"
#include "ld_colour.h"
#include "ld_error.h"
#include "ld_text.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define VALUE_MAX 8192

const ld_setting_t *ld_settings_find(const ld_settings_t *t, const char *key)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->rows[i].key, key) == 0)
            return &t->rows[i];
    return NULL;
}

static int find_or_fail(const ld_settings_t *t, const char *key, const ld_setting_t **row)
{
    *row = ld_settings_find(t, key);
    return *row ? LD_OK : ld_seterr(LD_ENOENT, "unknown %s '%s'", t->what, key);
}

static int set_pair(const char *what, const char *value, double min, double max, double out[2])
{
    const char *comma = strchr(value, ',');
    char first[64];
    size_t len = comma ? (size_t)(comma - value) : 0;
    if (!comma || strchr(comma + 1, ',') || len >= sizeof first)
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

int ld_settings_set(const ld_settings_t *t, void *cfg, const char *key, const char *value)
{
    const ld_setting_t *k;
    int rc = find_or_fail(t, key, &k);
    if (rc)
        return rc;
    char what[80];
    snprintf(what, sizeof what, "--%s", key);
    void *field = (char *)cfg + k->off;
    switch (k->type) {
    case LD_SET_STR:
        if (strlen(value) >= k->size)
            return ld_seterr(LD_ERANGE, "%s: value longer than %zu characters", what, k->size - 1);
        memcpy(field, value, strlen(value) + 1);
        return LD_OK;
    case LD_SET_INT:
        return ld_text_parse_int(what, value, (int)k->min, (int)k->max, field);
    case LD_SET_U64:
        return ld_text_parse_u64(what, value, field);
    case LD_SET_DBL:
        return ld_text_parse_double(what, value, k->min, k->max, field);
    case LD_SET_COLOUR:
        return ld_colour_space_parse(what, value, field);
    case LD_SET_PAIR:
        return set_pair(what, value, k->min, k->max, field);
    }
    return ld_seterr(LD_EINVAL, "%s: bad setting type %d", what, (int)k->type);
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

int ld_settings_get(const ld_settings_t *t, const void *cfg, const char *key, char *buf, size_t len)
{
    const ld_setting_t *k;
    int rc = find_or_fail(t, key, &k);
    if (rc)
        return rc;
    const void *field = (const char *)cfg + k->off;
    char a[32], b[32];
    switch (k->type) {
    case LD_SET_STR:
        snprintf(buf, len, "%s", (const char *)field);
        break;
    case LD_SET_INT:
        snprintf(buf, len, "%d", *(const int *)field);
        break;
    case LD_SET_U64:
        snprintf(buf, len, "%" PRIu64, *(const uint64_t *)field);
        break;
    case LD_SET_DBL:
        format_double(*(const double *)field, buf, len);
        break;
    case LD_SET_COLOUR:
        snprintf(buf, len, "%s", ld_colour_space_name(*(const ld_colour_space_t *)field));
        break;
    case LD_SET_PAIR:
        format_double(((const double *)field)[0], a, sizeof a);
        format_double(((const double *)field)[1], b, sizeof b);
        snprintf(buf, len, "%s,%s", a, b);
        break;
    }
    return LD_OK;
}

int ld_settings_to_meta(const ld_settings_t *t, const void *cfg, ld_meta_t *meta)
{
    char key[128], value[VALUE_MAX];
    for (size_t i = 0; i < t->n; i++) {
        if (t->rows[i].trajectory < 0)
            continue;
        snprintf(key, sizeof key, "%s%s", t->prefix, t->rows[i].key);
        ld_settings_get(t, cfg, t->rows[i].key, value, sizeof value);
        int rc = ld_meta_set(meta, key, value);
        if (rc)
            return rc;
    }
    return LD_OK;
}

static const char *added_value(const ld_settings_t *t, const char *key)
{
    for (size_t a = 0; a < t->n_added; a++)
        if (strcmp(t->added[a].key, key) == 0)
            return t->added[a].value;
    return NULL;
}

int ld_settings_from_meta(const ld_settings_t *t, void *cfg, const ld_meta_t *meta, const char *label)
{
    char key[128];
    for (size_t i = 0; i < t->n; i++) {
        if (t->rows[i].trajectory < 0)
            continue;
        snprintf(key, sizeof key, "%s%s", t->prefix, t->rows[i].key);
        const char *v = ld_meta_get(meta, key);
        if (!v)
            v = added_value(t, t->rows[i].key);
        if (!v)
            return ld_seterr(LD_EFORMAT, "%s: metadata lacks '%s'", label, key);
        if (ld_settings_set(t, cfg, t->rows[i].key, v))
            return ld_seterr(LD_EFORMAT, "%s: metadata '%s': %s", label, key, ld_errdetail());
    }
    return LD_OK;
}

/* One override on `changed`, checked against the original cfg (unchanged). */
static int override_one(const ld_settings_t *t, const void *cfg, void *changed, const char *key, const char *value)
{
    int rc = ld_settings_set(t, changed, key, value);
    if (rc)
        return rc;
    const ld_setting_t *k = ld_settings_find(t, key);
    char was[VALUE_MAX], now[VALUE_MAX];
    ld_settings_get(t, cfg, key, was, sizeof was);
    ld_settings_get(t, changed, key, now, sizeof now);
    if (k->trajectory > 0 && strcmp(was, now) != 0)
        return ld_seterr(LD_EINVAL,
                         "--%s %s differs from the checkpoint's %s; a resumed run keeps the settings it started "
                         "with",
                         key, now, was);
    if (k->clears)
        return ld_settings_set(t, changed, k->clears, "");
    return LD_OK;
}

int ld_settings_override(const ld_settings_t *t, void *cfg, const ld_meta_t *overrides)
{
    void *changed = malloc(t->cfg_size);
    if (!changed)
        return ld_seterr(LD_ENOMEM, "settings: out of memory");
    memcpy(changed, cfg, t->cfg_size);
    int rc = LD_OK;
    for (size_t i = 0; overrides && i < ld_meta_count(overrides) && !rc; i++)
        rc = override_one(t, cfg, changed, ld_meta_key(overrides, i), ld_meta_value(overrides, i));
    if (!rc)
        memcpy(cfg, changed, t->cfg_size);
    free(changed);
    return rc;
}

void ld_settings_help(const ld_settings_t *t, const void *cfg, FILE *f)
{
    for (size_t i = 0; i < t->n; i++) {
        const ld_setting_t *k = &t->rows[i];
        char value[64];
        ld_settings_get(t, cfg, k->key, value, sizeof value);
        fprintf(f, "  --%-16s %s %s%s%s%s\n", k->key, k->trajectory > 0 ? "*" : " ", k->help,
                value[0] ? " (default " : "", value, value[0] ? ")" : "");
    }
}

int ld_settings_adam_params(const ld_settings_adam_t *a, ld_adam_params_t *p)
{
    p->lr = a->lr;
    p->beta1 = a->betas[0];
    p->beta2 = a->betas[1];
    p->eps = a->eps;
    return ld_adam_validate(p);
}
