/* ld_colour: sRGB <-> CIE L*a*b* on planar float images, and the sampler
 * settings that use it (the colour space a model works in, what a sample
 * keeps of its source).
 *
 * Images are planar [3][n] (n = H*W pixels; plane 0, 1, 2 = R, G, B or
 * L', a', b'), float, as the engine holds them. RGB values are in [-1, 1]:
 * v = 2 * rgb01 - 1 with rgb01 the gamma-encoded sRGB value in [0, 1].
 *
 * Conversion: sRGB with the IEC 61966-2-1 transfer curve (linear below
 * 0.04045 / 0.0031308, exponent 2.4 above), the sRGB primaries' RGB -> XYZ
 * matrix (0.4124564 ... 0.9503041), white = that matrix applied to RGB
 * (1,1,1) = D65 (0.95047, 1.0000001, 1.08883), so every grey has a* = b* = 0,
 * and the CIE 1976 L*a*b* formulas (cube root above (6/29)^3, linear below).
 * Computed in double per pixel; only the stored values are float.
 *
 * Scaled LAB (what a LAB model sees, so that its channels span about [-1, 1]
 * like RGB's):
 *     L' = L* / 50 - 1      (L* 0..100   -> -1..1)
 *     a' = a* / 128         (sRGB's a* -86..98  -> -0.68..0.77)
 *     b' = b* / 128         (sRGB's b* -108..95 -> -0.84..0.74)
 * Not every scaled LAB value is a colour sRGB can show (a Langevin chain in
 * LAB moves freely in [-1, 1]^3): lab -> rgb clamps each linear RGB
 * component to [0, 1], i.e. each output value to [-1, 1].
 *
 * Accuracy: rgb -> lab -> rgb returns every value of [-1, 1]^3 within 1e-4
 * (float storage of the LAB values is the only loss).
 *
 * Keep luminance (the paper's authors' setting for fundus images: a sample
 * differs from its source only in colour):
 *   - in scaled LAB, ld_colour_keep_luminance_lab() copies the source's L'
 *     plane into the sample: the L' plane is then bit-identical to the
 *     source's, a' and b' are the sample's. A LAB model's samples get this.
 *   - in RGB, ld_colour_keep_luminance() converts both to LAB (in double),
 *     takes L* of the source and a*, b* of the sample and converts back.
 *   After conversion back to RGB (both cases), L* of the output equals the
 *   source's within 1e-3 wherever the colour (source L*, sample a*, b*) is
 *   inside the sRGB gamut, i.e. where no RGB component was clamped; where it
 *   is not (near black or white with a strong colour), the clamp changes
 *   L* as well.
 *
 * The functions are pure (no allocation, no state) and work in place
 * (out == in is allowed). */
#ifndef LD_COLOUR_H
#define LD_COLOUR_H

#include <stddef.h>

#include "ld_keep.h" /* ld_keep_t: what a sample keeps of its source */

/* The colour space of a model's image input. Values are those of the wire
 * enum ColourSpace (proto/langdaug.proto). */
typedef enum {
    LD_COLOUR_RGB = 0, /* sRGB in [-1, 1] as read from the images */
    LD_COLOUR_LAB = 1  /* scaled CIE L*a*b* (above); 3-channel images only */
} ld_colour_space_t;

/* "rgb", "lab" / "none", "luminance"; NULL for a value outside the enum. */
const char *ld_colour_space_name(int space);
const char *ld_keep_name(int keep);
/* Parses the name (exact, lowercase). Returns 0 and *out, or LD_EINVAL
 * with a detail "<what>: 'x' is not rgb or lab" (resp. none or luminance). */
int ld_colour_space_parse(const char *what, const char *s, ld_colour_space_t *out);
int ld_keep_parse(const char *what, const char *s, ld_keep_t *out);

/* n pixels of planar RGB in [-1, 1] -> scaled LAB (values outside [-1, 1]
 * are read as the nearest value inside). */
void ld_colour_rgb_to_lab(const float *rgb, float *lab, size_t n);
/* n pixels of planar scaled LAB -> RGB in [-1, 1] (clamped, see above). */
void ld_colour_lab_to_rgb(const float *lab, float *rgb, size_t n);

/* Scaled LAB: the sample's L' plane becomes the source's (a copy). */
void ld_colour_keep_luminance_lab(const float *src_lab, float *sample_lab, size_t n);
/* RGB: the sample becomes the colour with the source's L* and its own a*,
 * b*, back in RGB (clamped). */
void ld_colour_keep_luminance(const float *src_rgb, float *sample_rgb, size_t n);

#endif
