/* ld_dataset: multi-domain segmentation datasets, loaded once, cropped many times.
 *
 * Layouts:
 *   folders:  ROOT/<domain>/[SUBDIR/]image/NAME.png with mask/ (and optional fov/)
 *             paired by file name (stem; image and mask may differ in extension)
 *   manifest: a CSV with header "domain,image,mask[,fov]"; relative paths are
 *             resolved against the CSV's folder.
 * Every image is read once, converted to the working channel count, brought to
 * the working scale (bilinear/area for images, nearest for masks and FOV) and
 * kept in memory as 8-bit. Mask pixel values map to class ids through a mask
 * map (see ld_maskmap_parse).
 * A missing, corrupt or unreadable file is skipped with a warning naming it
 * and counted; an empty domain is an error naming the domain.
 * After ld_dataset_open() returns, the dataset is read-only: every function
 * below may be called from many threads at once. */
#ifndef LD_DATASET_H
#define LD_DATASET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ld_rng.h"

/* Mask value -> class id table over 8-bit values (16-bit masks use their
 * high byte). Spec: comma-separated rules "V:C", "A-B:C" or "*:C", first
 * match wins, e.g. default "0:0,*:1"; fundus (paper) "255:0,128:1,0:2";
 * prostate "0-127:1,*:0". A value no rule matches is an error when loading. */
typedef struct {
    int16_t lut[256];  /* class id, or -1 = unmapped */
    int n_classes;     /* 1 + highest class id used */
} ld_maskmap_t;

/* The mask map of datasets that do not say: 0 is background, any other value class 1. */
#define LD_MASKMAP_DEFAULT "0:0,*:1"

int ld_maskmap_parse(const char *spec, ld_maskmap_t *out);
/* A lookup: whether some mask value maps to class cls; if so *value is one
 * (0 or 255 when either does, else the smallest), so a mask written with it
 * reads back as the same classes. */
bool ld_maskmap_value(const ld_maskmap_t *map, int cls, uint8_t *value);

typedef struct {
    const char *root;       /* folders layout root (or NULL when manifest is set) */
    const char *manifest;   /* CSV manifest path (or NULL) */
    const char *subdir;     /* inside each domain folder, e.g. "train/ROIs"; NULL = none */
    const char *domains;    /* comma list to load, in this order; NULL = every folder, sorted */
    const char *maskmap;    /* NULL = LD_MASKMAP_DEFAULT */
    int channels;           /* working channels 1 or 3; 0 = from the first image */
    double scale;           /* resize factor for every image; 0 = 1 */
    int resize;             /* >0: resize so the shorter side is this (overrides scale) */
    int fit;                /* >0: whole images (overrides scale and resize): each image is first cut to
                               its FOV's bounding box (when it has a FOV), then resized so the longer side
                               is fit; a crop of side fit is then the whole image, centred and padded */
    int min_side;           /* images whose shorter side ends up below this are skipped (0 = none) */
} ld_dataset_opts_t;

typedef struct ld_dataset_s ld_dataset_t;

/* Loads everything. Caller owns *out. */
int ld_dataset_open(const ld_dataset_opts_t *opts, ld_dataset_t **out);
void ld_dataset_destroy(ld_dataset_t **self_p);

int ld_dataset_n_domains(const ld_dataset_t *self);
const char *ld_dataset_domain(const ld_dataset_t *self, int d);
/* Whether the dataset has the domain; if so *index = its index. */
bool ld_dataset_domain_index(const ld_dataset_t *self, const char *name, int *index);
int ld_dataset_n_items(const ld_dataset_t *self, int d);
int ld_dataset_channels(const ld_dataset_t *self);
int ld_dataset_n_classes(const ld_dataset_t *self);
/* Files skipped while loading (all domains). */
int ld_dataset_n_skipped(const ld_dataset_t *self);
/* Image file name of an item (as listed, relative to its domain folder). */
const char *ld_dataset_item_name(const ld_dataset_t *self, int d, int i);
/* Working-scale size of an item. */
void ld_dataset_item_size(const ld_dataset_t *self, int d, int i, int *width, int *height);
/* 1 if the item has a field-of-view mask. */
int ld_dataset_item_has_fov(const ld_dataset_t *self, int d, int i);
/* The mask map the dataset was loaded with (owned by the dataset). */
const ld_maskmap_t *ld_dataset_maskmap(const ld_dataset_t *self);

typedef struct {
    int domain, item;
    int x, y;   /* top-left corner in working-scale pixels (may be negative when the image is smaller than S) */
    int size;   /* S */
} ld_crop_t;

/* A uniformly random crop of item i of domain d (i < 0: a random item);
 * when a FOV is present, the crop centre is drawn inside it. With fit, a
 * crop of side fit is the item's centred crop (the whole image). */
int ld_dataset_random_crop(const ld_dataset_t *self, int d, int i, int size, ld_rng_t *rng, ld_crop_t *out);
/* The centred crop of item i. */
int ld_dataset_center_crop(const ld_dataset_t *self, int d, int i, int size, ld_crop_t *out);
/* Extracts a crop: image [C,S,S] float in [-1,1] (2*v/255-1), mask [S,S] class
 * ids. Pixels outside the image read as image -1 and mask class 0. */
int ld_dataset_extract(const ld_dataset_t *self, const ld_crop_t *crop, float *image, uint8_t *mask);

#endif
