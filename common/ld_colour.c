/* ld_colour: sRGB <-> scaled CIE L*a*b* per pixel (see ld_colour.h).
 *
 * Invariants: every conversion goes through the two per-pixel functions
 * below, in double, so the plane functions and keep-luminance agree to the
 * bit; the inverse matrix is the forward matrix's inverse computed in double
 * (not the rounded published one), so that rgb -> lab -> rgb is limited by
 * float storage only. */
#include "ld_colour.h"

#include <math.h>
#include <string.h>

#include "ld_error.h"

/* sRGB primaries, D65: linear RGB -> XYZ, and its inverse. */
static const double RGB2XYZ[3][3] = {
    { 0.4124564, 0.3575761, 0.1804375 },
    { 0.2126729, 0.7151522, 0.0721750 },
    { 0.0193339, 0.1191920, 0.9503041 },
};
static const double XYZ2RGB[3][3] = {
    { 3.2404548360214087, -1.5371388501025751, -0.498531546868481 },
    { -0.9692663898756538, 1.876010928842491, 0.041556082346673545 },
    { 0.05564341960421367, -0.20402585426769818, 1.057225162457929 },
};
/* White: RGB2XYZ applied to (1, 1, 1). */
static const double WHITE[3] = {
    0.4124564 + 0.3575761 + 0.1804375,
    0.2126729 + 0.7151522 + 0.0721750,
    0.0193339 + 0.1191920 + 0.9503041,
};

#define DELTA (6.0 / 29.0)
#define L_SCALE 50.0
#define AB_SCALE 128.0

static const char *const space_names[] = { "rgb", "lab" };
static const char *const keep_names[] = { "none", "luminance" };

const char *ld_colour_space_name(int space)
{
    return space >= 0 && space < 2 ? space_names[space] : NULL;
}

const char *ld_keep_name(int keep)
{
    return keep >= 0 && keep < 2 ? keep_names[keep] : NULL;
}

/* Index of s in names[2], or LD_EINVAL naming `what` and both choices. */
static int parse_choice(const char *what, const char *s, const char *const names[2], int *out)
{
    for (int i = 0; i < 2; i++)
        if (s && strcmp(s, names[i]) == 0) {
            *out = i;
            return LD_OK;
        }
    return ld_seterr(LD_EINVAL, "%s: '%.64s' is not %s or %s", what, s ? s : "(null)", names[0], names[1]);
}

int ld_colour_space_parse(const char *what, const char *s, ld_colour_space_t *out)
{
    int v;
    int rc = parse_choice(what, s, space_names, &v);
    if (rc == LD_OK)
        *out = (ld_colour_space_t)v;
    return rc;
}

int ld_keep_parse(const char *what, const char *s, ld_keep_t *out)
{
    int v;
    int rc = parse_choice(what, s, keep_names, &v);
    if (rc == LD_OK)
        *out = (ld_keep_t)v;
    return rc;
}

/* ---- per pixel, in double --------------------------------------------- */

static double clamp01(double v)
{
    return v < 0.0 ? 0.0 : v > 1.0 ? 1.0 : v;
}

/* IEC 61966-2-1 decoding (gamma-encoded -> linear) and encoding. */
static double srgb_to_linear(double c)
{
    return c <= 0.04045 ? c / 12.92 : pow((c + 0.055) / 1.055, 2.4);
}

static double linear_to_srgb(double c)
{
    return c <= 0.0031308 ? 12.92 * c : 1.055 * pow(c, 1.0 / 2.4) - 0.055;
}

static double lab_f(double t)
{
    return t > DELTA * DELTA * DELTA ? cbrt(t) : t / (3.0 * DELTA * DELTA) + 4.0 / 29.0;
}

static double lab_f_inv(double t)
{
    return t > DELTA ? t * t * t : 3.0 * DELTA * DELTA * (t - 4.0 / 29.0);
}

/* RGB values in [-1, 1] -> L*, a*, b* (unscaled). */
static void pixel_to_lab(const double v[3], double lab[3])
{
    double lin[3], f[3];
    for (int c = 0; c < 3; c++)
        lin[c] = srgb_to_linear(clamp01(0.5 * (v[c] + 1.0)));
    for (int r = 0; r < 3; r++)
        f[r] = lab_f((RGB2XYZ[r][0] * lin[0] + RGB2XYZ[r][1] * lin[1] + RGB2XYZ[r][2] * lin[2]) / WHITE[r]);
    lab[0] = 116.0 * f[1] - 16.0;
    lab[1] = 500.0 * (f[0] - f[1]);
    lab[2] = 200.0 * (f[1] - f[2]);
}

/* L*, a*, b* (unscaled) -> RGB values in [-1, 1], clamped. */
static void pixel_to_rgb(const double lab[3], double v[3])
{
    double fy = (lab[0] + 16.0) / 116.0;
    double xyz[3] = { WHITE[0] * lab_f_inv(fy + lab[1] / 500.0), WHITE[1] * lab_f_inv(fy),
                      WHITE[2] * lab_f_inv(fy - lab[2] / 200.0) };
    for (int r = 0; r < 3; r++) {
        double lin = XYZ2RGB[r][0] * xyz[0] + XYZ2RGB[r][1] * xyz[1] + XYZ2RGB[r][2] * xyz[2];
        v[r] = 2.0 * linear_to_srgb(clamp01(lin)) - 1.0;
    }
}

static void load(const float *planes, size_t n, size_t i, double out[3])
{
    for (int c = 0; c < 3; c++)
        out[c] = planes[(size_t)c * n + i];
}

static void store(float *planes, size_t n, size_t i, const double in[3])
{
    for (int c = 0; c < 3; c++)
        planes[(size_t)c * n + i] = (float)in[c];
}

/* ---- planes ------------------------------------------------------------- */

void ld_colour_rgb_to_lab(const float *rgb, float *lab, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        double v[3], l[3];
        load(rgb, n, i, v);
        pixel_to_lab(v, l);
        l[0] = l[0] / L_SCALE - 1.0;
        l[1] /= AB_SCALE;
        l[2] /= AB_SCALE;
        store(lab, n, i, l);
    }
}

void ld_colour_lab_to_rgb(const float *lab, float *rgb, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        double l[3], v[3];
        load(lab, n, i, l);
        l[0] = (l[0] + 1.0) * L_SCALE;
        l[1] *= AB_SCALE;
        l[2] *= AB_SCALE;
        pixel_to_rgb(l, v);
        store(rgb, n, i, v);
    }
}

void ld_colour_keep_luminance_lab(const float *src_lab, float *sample_lab, size_t n)
{
    if (src_lab != sample_lab)
        memcpy(sample_lab, src_lab, n * sizeof *sample_lab);
}

void ld_colour_keep_luminance(const float *src_rgb, float *sample_rgb, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        double v[3], src[3], mix[3];
        load(src_rgb, n, i, v);
        pixel_to_lab(v, src);
        load(sample_rgb, n, i, v);
        pixel_to_lab(v, mix);
        mix[0] = src[0];
        pixel_to_rgb(mix, v);
        store(sample_rgb, n, i, v);
    }
}
