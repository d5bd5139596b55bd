/* ld_traindata: shared data settings of the trainers (see ld_traindata.h).
 *
 * Invariant: after ld_traindata_open succeeds, d->domains lists the loaded
 * domains in dataset order and d->channels is the dataset's channel count. */
#include "ld_traindata.h"
#include "ld_error.h"
#include "ld_log.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

void ld_traindata_defaults(ld_traindata_t *d)
{
    memset(d, 0, sizeof *d);
    snprintf(d->maskmap, sizeof d->maskmap, "%s", LD_MASKMAP_DEFAULT);
    d->scale = 1;
    d->colour_space = LD_COLOUR_RGB;
}

int ld_traindata_validate(const ld_traindata_t *d)
{
    if (!d->data[0] == !d->manifest[0])
        return ld_seterr(LD_EINVAL, "training data: give exactly one of --data ROOT and --manifest CSV");
    if (d->channels != 0 && d->channels != 1 && d->channels != 3)
        return ld_seterr(LD_ERANGE, "--channels: %d is not 0, 1 or 3", d->channels);
    ld_maskmap_t mm;
    return ld_maskmap_parse(d->maskmap, &mm);
}

/* d->domains := the dataset's domains, in its order. */
static int resolve_domains(ld_traindata_t *d, const ld_dataset_t *ds)
{
    size_t used = 0;
    for (int k = 0; k < ld_dataset_n_domains(ds); k++) {
        int n = snprintf(d->domains + used, sizeof d->domains - used, "%s%s", k ? "," : "",
                         ld_dataset_domain(ds, k));
        if (n < 0 || (size_t)n >= sizeof d->domains - used)
            return ld_seterr(LD_ERANGE, "training data: domain names too long");
        used += (size_t)n;
    }
    return LD_OK;
}

static void warn_small_images(const ld_traindata_t *d, const ld_dataset_t *ds, int size)
{
    for (int k = 0; k < ld_dataset_n_domains(ds); k++) {
        int min_side = INT32_MAX;
        for (int i = 0; i < ld_dataset_n_items(ds, k); i++) {
            int w, h;
            ld_dataset_item_size(ds, k, i, &w, &h);
            min_side = w < min_side ? w : min_side;
            min_side = h < min_side ? h : min_side;
        }
        if (min_side < size)
            ld_warn("domain %s: smallest image side %d (at scale %g) is below --size %d; crops are padded",
                    ld_dataset_domain(ds, k), min_side, d->scale, size);
    }
}

static int check_counts(const ld_dataset_t *ds, int min_domains, int max_domains)
{
    int n = ld_dataset_n_domains(ds);
    if (n < min_domains)
        return ld_seterr(LD_EINVAL, "training needs at least %d domain%s; the data has %d%s%s", min_domains,
                         min_domains == 1 ? "" : "s", n, n ? ": " : "", n ? ld_dataset_domain(ds, 0) : "");
    if (n > max_domains)
        return ld_seterr(LD_ERANGE, "training data has %d domains, at most %d are supported", n, max_domains);
    return LD_OK;
}

int ld_traindata_open(ld_traindata_t *d, int min_domains, int max_domains, int size, ld_dataset_t **out)
{
    return ld_traindata_open_fit(d, min_domains, max_domains, size, 0, out);
}

int ld_traindata_open_fit(ld_traindata_t *d, int min_domains, int max_domains, int size, int fit,
                          ld_dataset_t **out)
{
    ld_dataset_opts_t o;
    memset(&o, 0, sizeof o);
    o.root = d->data[0] ? d->data : NULL;
    o.manifest = d->manifest[0] ? d->manifest : NULL;
    o.subdir = d->subdir[0] ? d->subdir : NULL;
    o.domains = d->domains[0] ? d->domains : NULL;
    o.maskmap = d->maskmap;
    o.channels = d->channels;
    o.scale = d->scale;
    o.fit = fit;
    ld_dataset_t *ds = NULL;
    int rc = ld_dataset_open(&o, &ds);
    if (!rc)
        rc = check_counts(ds, min_domains, max_domains);
    if (!rc)
        rc = resolve_domains(d, ds);
    if (!rc) {
        d->channels = ld_dataset_channels(ds);
        if (d->colour_space == LD_COLOUR_LAB && d->channels != 3)
            rc = ld_seterr(LD_EINVAL, "--colour-space lab needs 3-channel (RGB) images; the data has %d channel(s)",
                           d->channels);
    }
    if (rc) {
        ld_dataset_destroy(&ds);
        return rc;
    }
    if (!fit)
        warn_small_images(d, ds, size);
    *out = ds;
    return LD_OK;
}

void ld_traindata_fingerprint(const ld_dataset_t *ds, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int k = 0; k < ld_dataset_n_domains(ds) && used < len; k++) {
        int n = snprintf(buf + used, len - used, "%s%s:%d", k ? "," : "", ld_dataset_domain(ds, k),
                         ld_dataset_n_items(ds, k));
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

void ld_traindata_warn_changed(const ld_dataset_t *ds, const ld_meta_t *meta, const char *label)
{
    char now[LD_TRAINDATA_LIST_MAX + 64];
    const char *was = ld_meta_get(meta, "data_items");
    ld_traindata_fingerprint(ds, now, sizeof now);
    if (was && strcmp(was, now) != 0)
        ld_warn("%s: the data changed since the checkpoint (items then %s, now %s): the run will not repeat "
                "exactly",
                label, was, now);
}
