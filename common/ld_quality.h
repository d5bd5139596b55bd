/* ld_quality: image reconstruction quality, PSNR and SSIM, on the engine's
 * planar float images ([C,S,S], RGB or grey, values in [-1, 1]).
 *
 * PSNR = 10 log10(range^2 / MSE) with range 2 (the span of [-1, 1]; the
 * same number as 8-bit PSNR with range 255 on (v+1)*127.5), from an MSE
 * over every value of every channel.
 *
 * SSIM (Wang, Bovik, Sheikh, Simoncelli 2004, as their reference code):
 * on the luminance of RGB images, Y = 0.299 R + 0.587 G + 0.114 B of the
 * values mapped to [0, 1] (ITU-R BT.601), or on the single plane of a grey
 * image; data range 1, K1 = 0.01, K2 = 0.03; local statistics under an
 * 11x11 Gaussian window with sigma 1.5 (normalised to sum 1), at every
 * position where the window lies inside the image ("valid", no padding);
 * the SSIM is the mean of the map. Identical images give exactly 1.
 *
 * Vessel contrast: how much darker labelled structures are than their
 * surroundings, on the same luminance: mean Y over the pixels around the
 * structures (unlabelled pixels within LD_VESSEL_RING pixels, Chebyshev
 * distance, of a labelled one) minus mean Y over the labelled pixels,
 * pooled over any number of images. A reconstruction that blurs thin
 * vessels away lowers it; its ratio to the original's says how much is kept.
 * Computed in double. */
#ifndef LD_QUALITY_H
#define LD_QUALITY_H

#include <stddef.h>
#include <stdint.h>

#define LD_SSIM_WINDOW 11

/* Sum of squared differences of n values (double). */
double ld_quality_sse(const float *a, const float *b, size_t n);
/* PSNR in dB of a mean squared error on [-1, 1] values (+inf for 0). */
double ld_quality_psnr(double mse);
/* SSIM of image a against b, c = 1 or 3 channels of s x s,
 * s >= LD_SSIM_WINDOW; LD_EINVAL/LD_ENOMEM otherwise. */
int ld_quality_ssim(const float *a, const float *b, int c, int s, double *out);

#define LD_VESSEL_RING 2
/* Adds image img's (c = 1 or 3 channels of s x s) sums under its mask (s x
 * s class ids, labelled = non-zero) to sums: [0] Y over labelled pixels,
 * [1] their count, [2] Y over the ring around them, [3] its count. */
void ld_quality_vessel_sums(const float *img, const uint8_t *mask, int c, int s, double sums[4]);
/* The vessel contrast of pooled sums (NaN when either set is empty). */
double ld_quality_vessel_contrast(const double sums[4]);

#endif
