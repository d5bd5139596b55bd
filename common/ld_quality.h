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
 * Computed in double. */
#ifndef LD_QUALITY_H
#define LD_QUALITY_H

#include <stddef.h>

#define LD_SSIM_WINDOW 11

/* Sum of squared differences of n values (double). */
double ld_quality_sse(const float *a, const float *b, size_t n);
/* PSNR in dB of a mean squared error on [-1, 1] values (+inf for 0). */
double ld_quality_psnr(double mse);
/* SSIM of image a against b, c = 1 or 3 channels of s x s,
 * s >= LD_SSIM_WINDOW; LD_EINVAL/LD_ENOMEM otherwise. */
int ld_quality_ssim(const float *a, const float *b, int c, int s, double *out);

#endif
