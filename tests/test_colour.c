/* ld_colour: sRGB -> CIE L*a*b* against published reference colours (D65,
 * to 0.01), the rgb -> lab -> rgb round trip over a dense grid of [-1,1]^3
 * (< 1e-4), clamping of colours outside the sRGB gamut, keep-luminance in
 * LAB (L' plane bit-identical) and in RGB (L* within 1e-3 where nothing was
 * clamped), and the names of the settings. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ld_colour.h"
#include "ld_error.h"
#include "ld_rng.h"

/* One 8-bit sRGB colour -> (L*, a*, b*) through the planar functions. */
static void lab_of(const int rgb8[3], double out[3])
{
    float px[3], lab[3];
    for (int c = 0; c < 3; c++)
        px[c] = (float)(rgb8[c] / 255.0 * 2.0 - 1.0);
    ld_colour_rgb_to_lab(px, lab, 1);
    out[0] = ((double)lab[0] + 1.0) * 50.0;
    out[1] = (double)lab[1] * 128.0;
    out[2] = (double)lab[2] * 128.0;
}

/* Reference values: the CIE 1976 formulas with D65 and the sRGB matrix, as
 * tabulated by Bruce Lindbloom's calculator and colormine.org. */
static const struct {
    const char *name;
    int rgb[3];
    double lab[3];
} refs[] = {
    { "white", { 255, 255, 255 }, { 100.0, 0.0, 0.0 } },
    { "black", { 0, 0, 0 }, { 0.0, 0.0, 0.0 } },
    { "red", { 255, 0, 0 }, { 53.2408, 80.0925, 67.2032 } },
    { "green", { 0, 255, 0 }, { 87.7347, -86.1827, 83.1793 } },
    { "blue", { 0, 0, 255 }, { 32.2970, 79.1875, -107.8602 } },
    { "yellow", { 255, 255, 0 }, { 97.1393, -21.5537, 94.4780 } },
    { "cyan", { 0, 255, 255 }, { 91.1132, -48.0875, -14.1312 } },
    { "grey 128", { 128, 128, 128 }, { 53.5850, 0.0, 0.0 } },
    { "grey 50", { 50, 50, 50 }, { 20.7878, 0.0, 0.0 } },
};

START_TEST(reference_colours)
{
    for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++) {
        double got[3];
        lab_of(refs[i].rgb, got);
        for (int c = 0; c < 3; c++)
            ck_assert_msg(fabs(got[c] - refs[i].lab[c]) < 0.01, "%s: channel %d is %.4f, expected %.4f",
                          refs[i].name, c, got[c], refs[i].lab[c]);
        /* and back: the tabulated LAB value gives the colour (0.01 in LAB is
         * at most ~2e-4 in RGB at these colours) */
        float lab[3] = { (float)(refs[i].lab[0] / 50.0 - 1.0), (float)(refs[i].lab[1] / 128.0),
                         (float)(refs[i].lab[2] / 128.0) }, rgb[3];
        ld_colour_lab_to_rgb(lab, rgb, 1);
        for (int c = 0; c < 3; c++) {
            double want = refs[i].rgb[c] / 255.0 * 2.0 - 1.0;
            ck_assert_msg(fabs(rgb[c] - want) < 1e-3, "%s back to RGB: channel %d is %.6f, expected %.6f",
                          refs[i].name, c, (double)rgb[c], want);
        }
    }
}
END_TEST

/* Planar [3][g^3]: every point of a g-point grid per axis of [-1,1]^3. */
static void grid_cube(float *x, int g)
{
    size_t n = (size_t)g * g * g, i = 0;
    for (int p = 0; p < g; p++)
        for (int q = 0; q < g; q++)
            for (int r = 0; r < g; r++, i++) {
                x[i] = (float)(-1.0 + 2.0 * p / (g - 1));
                x[n + i] = (float)(-1.0 + 2.0 * q / (g - 1));
                x[2 * n + i] = (float)(-1.0 + 2.0 * r / (g - 1));
            }
}

/* The whole cube [-1,1]^3 on a 97-point grid per axis (884736 colours,
 * endpoints and both sides of the transfer curve's knee included). */
START_TEST(round_trip_over_the_cube)
{
    enum { G = 97, N = G * G * G };
    float *rgb = malloc(3 * N * sizeof *rgb), *lab = malloc(3 * N * sizeof *lab), *back = malloc(3 * N * sizeof *back);
    grid_cube(rgb, G);
    ld_colour_rgb_to_lab(rgb, lab, N);
    ld_colour_lab_to_rgb(lab, back, N);
    double worst = 0;
    size_t at = 0;
    for (size_t k = 0; k < 3 * (size_t)N; k++) {
        double e = fabs((double)back[k] - rgb[k]);
        if (e > worst || isnan(e)) {
            worst = isnan(e) ? INFINITY : e;
            at = k;
        }
    }
    ck_assert_msg(worst < 1e-4, "round-trip error %g at value %zu (%g -> %g)", worst, at, (double)rgb[at],
                  (double)back[at]);
    /* scaled LAB spans about [-1, 1] and stays inside it */
    for (size_t k = 0; k < 3 * (size_t)N; k++)
        ck_assert_msg(lab[k] >= -1.0f && lab[k] <= 1.0f, "scaled LAB value %g at %zu", (double)lab[k], k);
    /* in place gives the same bits */
    memcpy(back, rgb, 3 * N * sizeof *rgb);
    ld_colour_rgb_to_lab(back, back, N);
    ck_assert_int_eq(memcmp(back, lab, 3 * N * sizeof *lab), 0);
    free(rgb);
    free(lab);
    free(back);
}
END_TEST

/* A chain in LAB reaches values no sRGB colour has: they come back clamped
 * into [-1, 1], never NaN; inside the gamut nothing is clamped. */
START_TEST(out_of_gamut_is_clamped)
{
    enum { G = 21, N = G * G * G };
    float *lab = malloc(3 * N * sizeof *lab), *rgb = malloc(3 * N * sizeof *rgb);
    grid_cube(lab, G);
    ld_colour_lab_to_rgb(lab, rgb, N);
    int at_bound = 0;
    for (size_t k = 0; k < 3 * (size_t)N; k++) {
        ck_assert_msg(rgb[k] >= -1.0f && rgb[k] <= 1.0f, "value %g at %zu", (double)rgb[k], k);
        at_bound += rgb[k] == -1.0f || rgb[k] == 1.0f;
    }
    ck_assert_int_gt(at_bound, N / 4); /* most of [-1,1]^3 in LAB is outside sRGB */
    /* L' = 1 with a' = b' = 1 is far outside: some components clamp */
    float far[3] = { 1.0f, 1.0f, 1.0f }, out[3];
    ld_colour_lab_to_rgb(far, out, 1);
    ck_assert_msg(out[0] == 1.0f && out[2] == -1.0f, "%g %g %g", (double)out[0], (double)out[1], (double)out[2]);
    free(lab);
    free(rgb);
}
END_TEST

static void random_rgb(float *x, size_t n, uint64_t seed)
{
    ld_rng_t r;
    ld_rng_init(&r, seed, 0);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(ld_rng_uniform(&r) * 2.0 - 1.0);
}

START_TEST(keep_luminance_in_lab_copies_the_l_plane)
{
    enum { N = 4096 };
    float *src = malloc(3 * N * sizeof *src), *smp = malloc(3 * N * sizeof *smp), *orig = malloc(3 * N * sizeof *orig);
    random_rgb(src, 3 * N, 1);
    random_rgb(smp, 3 * N, 2);
    ld_colour_rgb_to_lab(src, src, N);
    ld_colour_rgb_to_lab(smp, smp, N);
    memcpy(orig, smp, 3 * N * sizeof *smp);
    ck_assert_int_ne(memcmp(smp, src, N * sizeof *src), 0);
    ld_colour_keep_luminance_lab(src, smp, N);
    ck_assert_int_eq(memcmp(smp, src, N * sizeof *src), 0);                 /* L' of the source, bit for bit */
    ck_assert_int_eq(memcmp(smp + N, orig + N, 2 * N * sizeof *smp), 0);   /* a', b' of the sample */
    free(src);
    free(smp);
    free(orig);
}
END_TEST

/* RGB: the output's L* is the source's and its a*, b* the sample's, within
 * 1e-3 (CIE units), at every pixel where no component was clamped. */
START_TEST(keep_luminance_in_rgb)
{
    enum { N = 20000 };
    float *src = malloc(3 * N * sizeof *src), *smp = malloc(3 * N * sizeof *smp), *out = malloc(3 * N * sizeof *out);
    float *lsrc = malloc(3 * N * sizeof *lsrc), *lsmp = malloc(3 * N * sizeof *lsmp), *lout = malloc(3 * N * sizeof *lout);
    random_rgb(src, 3 * N, 3);
    random_rgb(smp, 3 * N, 4);
    /* half the samples are their source with a small colour shift (mostly
     * inside the gamut), half are unrelated colours */
    for (size_t i = 0; i < N / 2; i++)
        for (int c = 0; c < 3; c++)
            smp[c * N + i] = fminf(1.0f, fmaxf(-1.0f, src[c * N + i] + 0.15f * smp[c * N + i]));
    memcpy(out, smp, 3 * N * sizeof *smp);
    ld_colour_keep_luminance(src, out, N);
    ld_colour_rgb_to_lab(src, lsrc, N);
    ld_colour_rgb_to_lab(smp, lsmp, N);
    ld_colour_rgb_to_lab(out, lout, N);
    int checked = 0, moved = 0;
    for (size_t i = 0; i < N; i++) {
        int clamped = 0;
        for (int c = 0; c < 3; c++)
            clamped |= out[c * N + i] == -1.0f || out[c * N + i] == 1.0f;
        moved += fabs(((double)lsmp[i] - lsrc[i]) * 50.0) > 1.0;
        if (clamped)
            continue;
        checked++;
        ck_assert_msg(fabs(((double)lout[i] - lsrc[i]) * 50.0) < 1e-3, "pixel %zu: L* %.5f, source %.5f", i,
                      ((double)lout[i] + 1) * 50, ((double)lsrc[i] + 1) * 50);
        for (int c = 1; c < 3; c++)
            ck_assert_msg(fabs(((double)lout[c * N + i] - lsmp[c * N + i]) * 128.0) < 1e-3,
                          "pixel %zu: channel %d is %.5f, sample's %.5f", i, c, (double)lout[c * N + i] * 128,
                          (double)lsmp[c * N + i] * 128);
    }
    ck_assert_int_gt(checked, N / 3);
    ck_assert_int_gt(moved, N / 2); /* the samples' own L* was different */
    /* keeping the luminance of the sample itself changes nothing (to float) */
    memcpy(out, smp, 3 * N * sizeof *smp);
    ld_colour_keep_luminance(smp, out, N);
    for (size_t k = 0; k < 3 * (size_t)N; k++)
        ck_assert_msg(fabs((double)out[k] - smp[k]) < 1e-4, "value %zu: %g -> %g", k, (double)smp[k], (double)out[k]);
    free(src);
    free(smp);
    free(out);
    free(lsrc);
    free(lsmp);
    free(lout);
}
END_TEST

START_TEST(names_parse_and_print)
{
    ld_colour_space_t cs = LD_COLOUR_RGB;
    ld_keep_t keep = LD_KEEP_NONE;
    ck_assert_int_eq(ld_colour_space_parse("colour-space", "lab", &cs), 0);
    ck_assert_int_eq(cs, LD_COLOUR_LAB);
    ck_assert_int_eq(ld_colour_space_parse("colour-space", "rgb", &cs), 0);
    ck_assert_int_eq(cs, LD_COLOUR_RGB);
    ld_expect_err(ld_colour_space_parse("--colour-space", "LAB", &cs), LD_EINVAL);
    ck_assert_str_eq(ld_errdetail(), "--colour-space: 'LAB' is not rgb or lab");
    ck_assert_int_eq(cs, LD_COLOUR_RGB);
    ck_assert_int_eq(ld_keep_parse("keep", "luminance", &keep), 0);
    ck_assert_int_eq(keep, LD_KEEP_LUMINANCE);
    ld_expect_err(ld_keep_parse("keep", "", &keep), LD_EINVAL);
    ck_assert_str_eq(ld_errdetail(), "keep: '' is not none or luminance");
    ck_assert_str_eq(ld_colour_space_name(LD_COLOUR_LAB), "lab");
    ck_assert_str_eq(ld_keep_name(LD_KEEP_NONE), "none");
    ck_assert_ptr_null(ld_colour_space_name(2));
    ck_assert_ptr_null(ld_keep_name(-1));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("colour");
    TCase *tc = ld_tcase("colour", 60);
    tcase_add_test(tc, reference_colours);
    tcase_add_test(tc, round_trip_over_the_cube);
    tcase_add_test(tc, out_of_gamut_is_clamped);
    tcase_add_test(tc, keep_luminance_in_lab_copies_the_l_plane);
    tcase_add_test(tc, keep_luminance_in_rgb);
    tcase_add_test(tc, names_parse_and_print);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
