/* ld_latent: the rules of latent mode (see ld_latent.h): pairing an energy
 * model with an autoencoder, labels on the latent grid, encoding dataset
 * crops, and the identity keys that make the two files one model.
 * Invariant: a latent model is only ever used with the autoencoder whose
 * SHA-256 its metadata names. */
#include "ld_latent.h"

#include <stdio.h>
#include <string.h>

#include "ld_colour.h"
#include "ld_error.h"

int ld_latent_check(const ld_ae_arch_t *ae, const ld_ebm_arch_t *ebm)
{
    const int side = ae->size / ae->factor;
    if (ebm->image_channels != ae->latent_channels)
        return ld_seterr(LD_EINVAL, "latent model: the energy model takes %d channel(s), the autoencoder's latent has %d",
                         ebm->image_channels, ae->latent_channels);
    if (ebm->size != side)
        return ld_seterr(LD_EINVAL, "latent model: the energy model's side is %d, the autoencoder's latent side is %d "
                         "(size %d / factor %d)", ebm->size, side, ae->size, ae->factor);
    if (ebm->colour_space != ae->colour_space)
        return ld_seterr(LD_EINVAL, "latent model: colour space %s of the energy model, %s of the autoencoder",
                         ld_colour_space_name(ebm->colour_space), ld_colour_space_name(ae->colour_space));
    return LD_OK;
}

/* The label of one f x f cell: the most frequent non-background class, or 0. */
static uint8_t cell_label(const uint8_t *mask, int stride, int f)
{
    int count[256] = { 0 }, best = 0;
    for (int y = 0; y < f; y++)
        for (int x = 0; x < f; x++)
            count[mask[y * stride + x]]++;
    for (int c = 1; c < 256; c++)
        if (count[c] > count[best] || (best == 0 && count[c] > 0))
            best = c;
    return (uint8_t)best;
}

void ld_latent_mask(const ld_ae_arch_t *ae, int n, const uint8_t *mask, uint8_t *out)
{
    const int s = ae->size, f = ae->factor, side = s / f;
    for (int i = 0; i < n; i++) {
        const uint8_t *m = mask + (size_t)i * (size_t)s * (size_t)s;
        uint8_t *o = out + (size_t)i * (size_t)side * (size_t)side;
        for (int y = 0; y < side; y++)
            for (int x = 0; x < side; x++)
                o[y * side + x] = cell_label(m + (size_t)(y * f) * (size_t)s + (size_t)(x * f), s, f);
    }
}

typedef int (*ae_pass_fn)(const ld_ae_t *, ld_ae_ws_t *, int, const float *, float *);

/* Runs an encoder or decoder pass over n samples (in_len / out_len floats
 * each) in pieces of at most the workspace's batch. */
static int in_pieces(ae_pass_fn pass, const ld_ae_t *ae, ld_ae_ws_t *ws, int n, const float *in, size_t in_len,
                     float *out, size_t out_len)
{
    const int piece = ld_ae_ws_max_batch(ws);
    for (int first = 0; first < n; first += piece) {
        int m = n - first < piece ? n - first : piece;
        int rc = pass(ae, ws, m, in + (size_t)first * in_len, out + (size_t)first * out_len);
        if (rc)
            return rc;
    }
    return LD_OK;
}

int ld_latent_encode_rgb(const ld_ae_t *ae, ld_ae_ws_t *ws, int n, const float *rgb, float *tmp, float *latent)
{
    const ld_ae_arch_t *a = ld_ae_arch(ae);
    const size_t hw = (size_t)a->size * (size_t)a->size, per = (size_t)a->image_channels * hw;
    const size_t lat = ld_ae_arch_latent_numel(a);
    for (int j = 0; j < n; j++) {
        if (a->colour_space == LD_COLOUR_LAB)
            ld_colour_rgb_to_lab(rgb + (size_t)j * per, tmp + (size_t)j * per, hw);
        else if (tmp != rgb)
            memcpy(tmp + (size_t)j * per, rgb + (size_t)j * per, per * sizeof *tmp);
    }
    return in_pieces(ld_ae_encode, ae, ws, n, tmp, per, latent, lat);
}

int ld_latent_decode(const ld_ae_t *ae, ld_ae_ws_t *ws, int n, const float *latent, float *image)
{
    const ld_ae_arch_t *a = ld_ae_arch(ae);
    const size_t per = (size_t)a->image_channels * (size_t)a->size * (size_t)a->size;
    return in_pieces(ld_ae_decode, ae, ws, n, latent, ld_ae_arch_latent_numel(a), image, per);
}

int ld_latent_is_latent(const ld_meta_t *model_meta)
{
    return model_meta && ld_meta_get(model_meta, LD_LATENT_META_HASH) != NULL;
}

/* A file name from metadata: a plain name in the model's folder, never a path. */
static int plain_name(const char *name)
{
    return name && name[0] && !strchr(name, '/') && strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

static int ae_path_next_to(const char *model_path, const ld_meta_t *meta, char *buf, size_t len)
{
    const char *name = ld_meta_get(meta, LD_LATENT_META_FILE);
    if (!plain_name(name))
        return ld_seterr(LD_EFORMAT, "%s: metadata %s '%s' is not a file name; give the autoencoder's path",
                         model_path, LD_LATENT_META_FILE, name ? name : "");
    const char *slash = strrchr(model_path, '/');
    int dir = slash ? (int)(slash - model_path) + 1 : 0;
    int w = snprintf(buf, len, "%.*s%s", dir, model_path, name);
    if (w < 0 || (size_t)w >= len)
        return ld_seterr(LD_ERANGE, "%s: the autoencoder's path is too long", model_path);
    return LD_OK;
}

int ld_latent_load_ae(const char *model_path, const ld_meta_t *model_meta, const ld_ebm_arch_t *ebm,
                      const char *ae_path, ld_ae_t **ae_out, char hash_out[65])
{
    *ae_out = NULL;
    const char *want = ld_meta_get(model_meta, LD_LATENT_META_HASH);
    if (!want)
        return ld_seterr(LD_EINVAL, "%s: not a latent model (no %s in its metadata)", model_path,
                         LD_LATENT_META_HASH);
    char path[4096], hash[65];
    int rc = ae_path ? LD_OK : ae_path_next_to(model_path, model_meta, path, sizeof path);
    if (rc)
        return rc;
    if (!ae_path)
        ae_path = path;
    ld_ae_t *ae = NULL;
    if ((rc = ld_ae_load(ae_path, &ae, NULL, hash)))
        return ld_seterr(rc, "the autoencoder of latent model %s: %s", model_path, ld_errdetail());
    if (strcmp(hash, want) != 0)
        rc = ld_seterr(LD_EINVAL, "autoencoder %s has SHA-256 %.12s..., latent model %s was trained on %.12s...",
                       ae_path, hash, model_path, want);
    else if ((rc = ld_latent_check(ld_ae_arch(ae), ebm)))
        rc = ld_seterr(rc, "%s with %s: %s", model_path, ae_path, ld_errdetail());
    if (rc) {
        ld_ae_destroy(&ae);
        return rc;
    }
    if (hash_out)
        memcpy(hash_out, hash, sizeof hash);
    *ae_out = ae;
    return LD_OK;
}

int ld_latent_set_meta(ld_meta_t *model_meta, const char *ae_path, const char ae_hash[65])
{
    const char *slash = strrchr(ae_path, '/');
    int rc = ld_meta_set(model_meta, LD_LATENT_META_HASH, ae_hash);
    return rc ? rc : ld_meta_set(model_meta, LD_LATENT_META_FILE, slash ? slash + 1 : ae_path);
}
