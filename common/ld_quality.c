/* ld_quality: PSNR and SSIM (see ld_quality.h for the definitions).
 *
 * SSIM filters five maps (x, y, x^2, y^2, xy of the luminance) with the
 * separable Gaussian, rows then columns, keeping only valid positions:
 * an s x s image gives (s-10) x (s-10) statistics. Scratch is allocated per
 * call (evaluation, not a hot path). */
#include "ld_quality.h"
#include "ld_error.h"

#include <math.h>
#include <stdlib.h>

#define SSIM_SIGMA 1.5
#define SSIM_C1 (0.01 * 0.01)
#define SSIM_C2 (0.03 * 0.03)

double ld_quality_sse(const float *a, const float *b, size_t n)
{
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        sum += d * d;
    }
    return sum;
}

double ld_quality_psnr(double mse)
{
    return mse > 0 ? 10.0 * log10(4.0 / mse) : INFINITY;
}

static void gaussian_window(double w[LD_SSIM_WINDOW])
{
    double sum = 0;
    for (int i = 0; i < LD_SSIM_WINDOW; i++) {
        double x = i - LD_SSIM_WINDOW / 2;
        w[i] = exp(-x * x / (2 * SSIM_SIGMA * SSIM_SIGMA));
        sum += w[i];
    }
    for (int i = 0; i < LD_SSIM_WINDOW; i++)
        w[i] /= sum;
}

/* Luminance in [0, 1] of pixel p of a planar image with c channels. */
static double luma(const float *img, int c, size_t plane, size_t p)
{
    if (c == 1)
        return (img[p] + 1.0) * 0.5;
    return (0.299 * (img[p] + 1.0) + 0.587 * (img[plane + p] + 1.0) + 0.114 * (img[2 * plane + p] + 1.0)) * 0.5;
}

/* The five maps' valid Gaussian filtering: out[k][v*m+u] for k = x, y, xx,
 * yy, xy, m = s - 10; rows[k] holds the row pass ([s][m]). */
static void filter_maps(const double *x, const double *y, int s, double *rows, double *out)
{
    double w[LD_SSIM_WINDOW];
    gaussian_window(w);
    const int m = s - (LD_SSIM_WINDOW - 1);
    const size_t rn = (size_t)s * m, on = (size_t)m * m;
    for (int r = 0; r < s; r++) {
        for (int u = 0; u < m; u++) {
            double acc[5] = { 0 };
            for (int i = 0; i < LD_SSIM_WINDOW; i++) {
                size_t p = (size_t)r * s + u + i;
                acc[0] += w[i] * x[p];
                acc[1] += w[i] * y[p];
                acc[2] += w[i] * x[p] * x[p];
                acc[3] += w[i] * y[p] * y[p];
                acc[4] += w[i] * x[p] * y[p];
            }
            for (int k = 0; k < 5; k++)
                rows[k * rn + (size_t)r * m + u] = acc[k];
        }
    }
    for (int k = 0; k < 5; k++)
        for (int v = 0; v < m; v++)
            for (int u = 0; u < m; u++) {
                double acc = 0;
                for (int i = 0; i < LD_SSIM_WINDOW; i++)
                    acc += w[i] * rows[k * rn + (size_t)(v + i) * m + u];
                out[k * on + (size_t)v * m + u] = acc;
            }
}

static double ssim_mean(const double *st, int m)
{
    const size_t on = (size_t)m * m;
    double sum = 0;
    for (size_t p = 0; p < on; p++) {
        double mx = st[p], my = st[on + p];
        double vx = st[2 * on + p] - mx * mx, vy = st[3 * on + p] - my * my, cxy = st[4 * on + p] - mx * my;
        sum += ((2 * mx * my + SSIM_C1) * (2 * cxy + SSIM_C2)) /
               ((mx * mx + my * my + SSIM_C1) * (vx + vy + SSIM_C2));
    }
    return sum / (double)on;
}

int ld_quality_ssim(const float *a, const float *b, int c, int s, double *out)
{
    if ((c != 1 && c != 3) || s < LD_SSIM_WINDOW)
        return ld_seterr(LD_EINVAL, "SSIM: needs 1 or 3 channels and a side of at least %d, not %d x %d",
                         LD_SSIM_WINDOW, c, s);
    const int m = s - (LD_SSIM_WINDOW - 1);
    const size_t plane = (size_t)s * s;
    double *x = malloc((2 * plane + 5 * (size_t)s * m + 5 * (size_t)m * m) * sizeof *x);
    if (!x)
        return ld_seterr(LD_ENOMEM, "SSIM: out of memory for a %d x %d image", s, s);
    double *y = x + plane, *rows = y + plane, *st = rows + 5 * (size_t)s * m;
    for (size_t p = 0; p < plane; p++) {
        x[p] = luma(a, c, plane, p);
        y[p] = luma(b, c, plane, p);
    }
    filter_maps(x, y, s, rows, st);
    *out = ssim_mean(st, m);
    free(x);
    return LD_OK;
}

/* 1 when (x, y) is unlabelled and a labelled pixel lies within the ring. */
static int in_ring(const uint8_t *mask, int s, int x, int y)
{
    if (mask[y * s + x])
        return 0;
    for (int dy = -LD_VESSEL_RING; dy <= LD_VESSEL_RING; dy++)
        for (int dx = -LD_VESSEL_RING; dx <= LD_VESSEL_RING; dx++) {
            int u = x + dx, v = y + dy;
            if (u >= 0 && v >= 0 && u < s && v < s && mask[v * s + u])
                return 1;
        }
    return 0;
}

void ld_quality_vessel_sums(const float *img, const uint8_t *mask, int c, int s, double sums[4])
{
    const size_t hw = (size_t)s * (size_t)s;
    for (int y = 0; y < s; y++)
        for (int x = 0; x < s; x++) {
            size_t i = (size_t)y * (size_t)s + (size_t)x;
            int where = mask[i] ? 0 : in_ring(mask, s, x, y) ? 2 : -1;
            if (where < 0)
                continue;
            double lum = luma(img, c, hw, i);
            sums[where] += lum;
            sums[where + 1] += 1;
        }
}

double ld_quality_vessel_contrast(const double sums[4])
{
    if (sums[1] == 0 || sums[3] == 0)
        return NAN;
    return sums[2] / sums[3] - sums[0] / sums[1];
}
