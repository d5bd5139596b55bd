/* ld_traindata: the data settings every trainer shares (where the images
 * are, which domains, mask map, channels, working scale, colour space),
 * their rows of a settings table (ld_settings.h), their checks, and opening
 * the dataset they describe.
 *
 * A trainer's config struct embeds an ld_traindata_t and puts
 * LD_TRAINDATA_ROWS(its type, the member) into its table, so every trainer
 * takes the same options with the same help and errors.
 *
 * Opening resolves what the settings leave open ("every domain", "channels
 * from the data") into the settings themselves, so a resumed run sees the
 * same domains even if folders were added meanwhile. */
#ifndef LD_TRAINDATA_H
#define LD_TRAINDATA_H

#include <stddef.h>

#include "ld_colour.h"
#include "ld_dataset.h"
#include "ld_ebm.h"
#include "ld_safetensors.h"
#include "ld_settings.h"

#define LD_TRAINDATA_PATH_MAX 4096
#define LD_TRAINDATA_LIST_MAX (LD_EBM_MAX_DOMAINS * LD_NAME_MAX)

typedef struct {
    char data[LD_TRAINDATA_PATH_MAX];     /* folders-layout root, or "" */
    char manifest[LD_TRAINDATA_PATH_MAX]; /* CSV manifest, or "" */
    char subdir[256];                     /* "" = none */
    char domains[LD_TRAINDATA_LIST_MAX];  /* "" = every domain, sorted; resolved by ld_traindata_open */
    char maskmap[256];
    int channels;                         /* 0 = from the data; resolved by ld_traindata_open */
    double scale;                         /* working scale (0 < scale <= 16) */
    ld_colour_space_t colour_space;       /* what the model sees: RGB, or scaled LAB (3 channels) */
} ld_traindata_t;

/* The rows of the data settings for config type T whose member m is an
 * ld_traindata_t: where the images are (data, manifest, subdir, domains),
 * then how they are read (maskmap, channels, scale, colour-space). A
 * trainer whose files keep a key of its own between the two halves (train's
 * pairs) puts the halves into its table itself. */
#define LD_TRAINDATA_ROWS(T, m) LD_TRAINDATA_WHERE_ROWS(T, m), LD_TRAINDATA_HOW_ROWS(T, m)
#define LD_TRAINDATA_WHERE_ROWS(T, m)                                                                                 \
    { "data", LD_SET_STR, LD_SETTING_FIELD(T, m.data), 0, 0, 0, "manifest",                                           \
      "dataset root: ROOT/<domain>/[SUBDIR/]{image,mask}/*.png" },                                                    \
    { "manifest", LD_SET_STR, LD_SETTING_FIELD(T, m.manifest), 0, 0, 0, "data",                                       \
      "CSV manifest (domain,image,mask[,fov]) instead of --data" },                                                   \
    { "subdir", LD_SET_STR, LD_SETTING_FIELD(T, m.subdir), 0, 0, 1, NULL,                                            \
      "folder inside each domain, e.g. train/ROIs" },                                                                 \
    { "domains", LD_SET_STR, LD_SETTING_FIELD(T, m.domains), 0, 0, 1, NULL,                                          \
      "domains to train on, comma-separated (default: all)" }
#define LD_TRAINDATA_HOW_ROWS(T, m)                                                                                   \
    { "maskmap", LD_SET_STR, LD_SETTING_FIELD(T, m.maskmap), 0, 0, 1, NULL,                                          \
      "mask value -> class rules, e.g. 0:0,*:1" },                                                                    \
    { "channels", LD_SET_INT, LD_SETTING_FIELD(T, m.channels), 0, 3, 1, NULL,                                        \
      "image channels 1 or 3 (0: from the data)" },                                                                   \
    { "scale", LD_SET_DBL, LD_SETTING_FIELD(T, m.scale), 1e-6, 16, 1, NULL, "working scale applied to every image" }, \
    { "colour-space", LD_SET_COLOUR, LD_SETTING_FIELD(T, m.colour_space), 0, 0, 1, NULL,                             \
      "rgb, or lab: the model works in scaled CIE LAB (3-channel data)" }

/* Mask map LD_MASKMAP_DEFAULT, scale 1, RGB, the rest empty/0. */
void ld_traindata_defaults(ld_traindata_t *d);
/* Exactly one of data/manifest, channels 0, 1 or 3, a valid mask map. */
int ld_traindata_validate(const ld_traindata_t *d);
/* Loads the data (min_domains..max_domains domains), resolves domains and
 * channels into d, refuses LAB on grey data, warns about images smaller
 * than size (crops are padded). Caller owns *out. */
int ld_traindata_open(ld_traindata_t *d, int min_domains, int max_domains, int size, ld_dataset_t **out);
/* As ld_traindata_open; fit > 0: whole images, each cut to its FOV's box
 * and resized so that its longer side is fit (ld_dataset_opts_t.fit; the
 * scale is not used), and no warning about small images. */
int ld_traindata_open_fit(ld_traindata_t *d, int min_domains, int max_domains, int size, int fit,
                          ld_dataset_t **out);
/* "A:12,B:20": domains and their item counts, to tell whether the data
 * changed between a checkpoint and its resume. */
void ld_traindata_fingerprint(const ld_dataset_t *ds, char *buf, size_t len);
/* Warns, naming label, when meta's "data_items" (a checkpoint's
 * fingerprint) differs from ds's: the resumed run will not repeat exactly. */
void ld_traindata_warn_changed(const ld_dataset_t *ds, const ld_meta_t *meta, const char *label);

#endif
