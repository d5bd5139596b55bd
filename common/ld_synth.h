/* ld_synth: a small synthetic fundus-like multi-domain data set.
 *
 * Every image shows a circular field of view (FOV) with a branching vessel
 * tree growing from an optic disc. The geometry is drawn from one process
 * shared by all domains (per image, from the seed); the domains ("cameras")
 * differ only in appearance: colour cast, contrast, gamma, blur, noise and
 * vignetting, chosen so per-channel means and spreads differ clearly.
 *
 * Layout written (the ld_dataset folders layout, loads with the default
 * mask map "0:0,*:1"):
 *   ROOT/<camK>/image/NNN.png  RGB
 *   ROOT/<camK>/mask/NNN.png   grey: 255 vessel, 0 background
 *                              (with disc: 128 optic disc, mask map
 *                              "0:0,255:1,128:2")
 *   ROOT/<camK>/fov/NNN.png    grey: 255 inside the FOV
 *   ROOT/README.txt            what was generated and with which parameters
 * Output is a pure function of the options; every file is written
 * atomically. */
#ifndef LD_SYNTH_H
#define LD_SYNTH_H

#include <stdint.h>

#include "ld_image.h"

#define LD_SYNTH_MAX_DOMAINS 8
#define LD_SYNTH_MIN_SIZE 32
#define LD_SYNTH_MAX_SIZE 1024
#define LD_SYNTH_MAX_PER_DOMAIN 10000

typedef struct {
    int n_domains;  /* 1..LD_SYNTH_MAX_DOMAINS (default 4) */
    int per_domain; /* images per domain, 1..LD_SYNTH_MAX_PER_DOMAIN (default 12) */
    int size;       /* square side in pixels (default 96) */
    uint64_t seed;  /* default 1 */
    int disc;       /* 1: also label the optic disc (mask value 128) */
} ld_synth_opts_t;

/* Fills the defaults above. */
void ld_synth_defaults(ld_synth_opts_t *opts);
/* Checks the options; LD_ERANGE with a detail naming the field. */
int ld_synth_validate(const ld_synth_opts_t *opts);
/* Name of domain d ("cam0".."cam7"), NULL when out of range. */
const char *ld_synth_domain_name(int d);
/* The mask map matching the masks written. */
const char *ld_synth_maskmap(const ld_synth_opts_t *opts);

/* Renders image i of domain d into three new images (RGB, mask, FOV) the
 * caller frees with ld_image_free. */
int ld_synth_render(const ld_synth_opts_t *opts, int d, int i, ld_image_t *image, ld_image_t *mask,
                    ld_image_t *fov);

/* Writes the whole data set under root (created if needed). */
int ld_synth_write(const char *root, const ld_synth_opts_t *opts);

#endif
