/* Image operations: channel conversion, nearest/bilinear/area resizing
 * (checked against properties each filter must have), float conversion and
 * drawing. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ld_error.h"
#include "ld_image.h"
#include "ld_rng.h"

static void random_image(ld_image_t *img, int w, int h, int c, uint64_t seed)
{
    ck_assert_int_eq(ld_image_alloc(img, w, h, c), 0);
    ld_rng_t rng;
    ld_rng_init(&rng, seed, 0);
    for (size_t i = 0; i < (size_t)w * (size_t)h * (size_t)c; i++)
        img->data[i] = (uint8_t)ld_rng_u32(&rng);
}

START_TEST(convert_channels)
{
    ld_image_t rgb, grey, back, same;
    random_image(&rgb, 7, 5, 3, 1);
    ck_assert_int_eq(ld_image_convert(&rgb, 1, &grey), 0);
    for (int i = 0; i < 35; i++) {
        const uint8_t *p = rgb.data + 3 * i;
        double y = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
        ck_assert_msg(fabs(grey.data[i] - y) <= 1.0, "luma %u vs %.2f", grey.data[i], y);
    }
    ck_assert_int_eq(ld_image_convert(&grey, 3, &back), 0);
    for (int i = 0; i < 35; i++)
        ck_assert(back.data[3 * i] == grey.data[i] && back.data[3 * i + 1] == grey.data[i]
                  && back.data[3 * i + 2] == grey.data[i]);
    /* Identical channels map to themselves (RGB masks). */
    ck_assert_int_eq(ld_image_convert(&back, 1, &same), 0);
    ck_assert_mem_eq(same.data, grey.data, 35);
    ld_image_t bad = { .width = 1 };
    ld_expect_err(ld_image_convert(&rgb, 2, &bad), LD_EINVAL);
    ck_assert_ptr_null(bad.data);
    ld_image_free(&rgb);
    ld_image_free(&grey);
    ld_image_free(&back);
    ld_image_free(&same);
    ld_image_free(&same); /* freeing twice is safe */
}
END_TEST

START_TEST(convert_drops_alpha_and_extracts)
{
    ld_image_t rgba, rgb, ch;
    random_image(&rgba, 4, 3, 4, 2);
    ck_assert_int_eq(ld_image_convert(&rgba, 3, &rgb), 0);
    for (int i = 0; i < 12; i++)
        ck_assert_mem_eq(rgb.data + 3 * i, rgba.data + 4 * i, 3);
    ck_assert_int_eq(ld_image_extract_channel(&rgba, 2, &ch), 0);
    for (int i = 0; i < 12; i++)
        ck_assert_uint_eq(ch.data[i], rgba.data[4 * i + 2]);
    ld_image_free(&ch);
    ld_expect_err(ld_image_extract_channel(&rgba, 4, &ch), LD_EINVAL);
    ld_image_free(&rgba);
    ld_image_free(&rgb);
}
END_TEST

START_TEST(nearest_copies_values)
{
    ld_image_t src, up, down;
    random_image(&src, 10, 6, 1, 3);
    ck_assert_int_eq(ld_image_resize(&src, 20, 12, LD_RESIZE_NEAREST, &up), 0);
    for (int y = 0; y < 12; y++)
        for (int x = 0; x < 20; x++)
            ck_assert_uint_eq(*ld_image_at(&up, x, y), *ld_image_at(&src, x / 2, y / 2));
    ck_assert_int_eq(ld_image_resize(&src, 5, 3, LD_RESIZE_NEAREST, &down), 0);
    for (int y = 0; y < 3; y++)
        for (int x = 0; x < 5; x++)
            ck_assert_uint_eq(*ld_image_at(&down, x, y), *ld_image_at(&src, 2 * x + 1, 2 * y + 1));
    ld_image_free(&src);
    ld_image_free(&up);
    ld_image_free(&down);
}
END_TEST

START_TEST(bilinear_reproduces_linear_ramps)
{
    /* v = 10 + 3x + 5y: interior samples of a 2x upscale are exact
     * (half-pixel centres), borders clamp. */
    ld_image_t src, up, flat, flat_out;
    ck_assert_int_eq(ld_image_alloc(&src, 12, 9, 3), 0);
    for (int y = 0; y < 9; y++)
        for (int x = 0; x < 12; x++)
            for (int c = 0; c < 3; c++)
                ld_image_at(&src, x, y)[c] = (uint8_t)(10 + 3 * x + 5 * y + c);
    ck_assert_int_eq(ld_image_resize(&src, 24, 18, LD_RESIZE_BILINEAR, &up), 0);
    for (int y = 1; y < 17; y++)
        for (int x = 1; x < 23; x++) {
            double sx = (x + 0.5) / 2 - 0.5, sy = (y + 0.5) / 2 - 0.5;
            for (int c = 0; c < 3; c++) {
                double want = 10 + 3 * sx + 5 * sy + c;
                ck_assert_msg(fabs(ld_image_at(&up, x, y)[c] - want) <= 0.5 + 1e-4, "(%d,%d): %u vs %.2f", x, y,
                              ld_image_at(&up, x, y)[c], want);
            }
        }
    ck_assert_int_eq(ld_image_alloc(&flat, 9, 7, 1), 0);
    memset(flat.data, 77, 63);
    ck_assert_int_eq(ld_image_resize(&flat, 4, 13, LD_RESIZE_BILINEAR, &flat_out), 0);
    for (int i = 0; i < 52; i++)
        ck_assert_uint_eq(flat_out.data[i], 77);
    ld_image_free(&src);
    ld_image_free(&up);
    ld_image_free(&flat);
    ld_image_free(&flat_out);
}
END_TEST

START_TEST(area_averages_and_smooth_switches)
{
    /* A 1-pixel checkerboard shrunk 3x: area averaging gives 4/9 or 5/9
     * white, bilinear samples land on pixel centres and alias to 0/255. */
    ld_image_t cb, area, smooth, bil, smooth15, bil15;
    ck_assert_int_eq(ld_image_alloc(&cb, 30, 15, 1), 0);
    for (int y = 0; y < 15; y++)
        for (int x = 0; x < 30; x++)
            *ld_image_at(&cb, x, y) = ((x + y) & 1) ? 255 : 0;
    ck_assert_int_eq(ld_image_resize(&cb, 10, 5, LD_RESIZE_AREA, &area), 0);
    for (int i = 0; i < 50; i++)
        ck_assert_msg(area.data[i] == 113 || area.data[i] == 142, "area %u", area.data[i]);
    ck_assert_int_eq(ld_image_resize(&cb, 10, 5, LD_RESIZE_SMOOTH, &smooth), 0);
    ck_assert_mem_eq(smooth.data, area.data, 50);
    ck_assert_int_eq(ld_image_resize(&cb, 10, 5, LD_RESIZE_BILINEAR, &bil), 0);
    for (int i = 0; i < 50; i++)
        ck_assert_msg(bil.data[i] == 0 || bil.data[i] == 255, "bilinear %u", bil.data[i]);
    /* Shrinking by 1.5x stays bilinear. */
    ck_assert_int_eq(ld_image_resize(&cb, 20, 10, LD_RESIZE_SMOOTH, &smooth15), 0);
    ck_assert_int_eq(ld_image_resize(&cb, 20, 10, LD_RESIZE_BILINEAR, &bil15), 0);
    ck_assert_mem_eq(smooth15.data, bil15.data, 20 * 10);
    /* Non-integer area factor keeps the mean of a random image. */
    ld_image_t rnd, rnd_small;
    random_image(&rnd, 50, 30, 1, 9);
    ck_assert_int_eq(ld_image_resize(&rnd, 10, 6, LD_RESIZE_AREA, &rnd_small), 0);
    double m0 = 0, m1 = 0;
    for (int i = 0; i < 1500; i++)
        m0 += rnd.data[i] / 1500.0;
    for (int i = 0; i < 60; i++)
        m1 += rnd_small.data[i] / 60.0;
    ck_assert_msg(fabs(m0 - m1) < 0.6, "mean %.2f vs %.2f", m0, m1);
    ld_image_free(&cb);
    ld_image_free(&area);
    ld_image_free(&smooth);
    ld_image_free(&bil);
    ld_image_free(&smooth15);
    ld_image_free(&bil15);
    ld_image_free(&rnd);
    ld_image_free(&rnd_small);
}
END_TEST

START_TEST(float_and_drawing)
{
    ld_image_t canvas;
    ck_assert_int_eq(ld_image_alloc(&canvas, 6, 6, 3), 0);
    float chw[3 * 2 * 2] = { -1, 1, 0, 2, /* R */ -2, -1, 0.5f, NAN, /* G */ 0, 0, 0, 0 /* B */ };
    ld_image_put_float(&canvas, 5, 5, chw, 3, 2); /* clipped: only (5,5) lands */
    const uint8_t *p = ld_image_at(&canvas, 5, 5);
    ck_assert(p[0] == 0 && p[1] == 0 && p[2] == 128);
    ld_image_put_float(&canvas, 0, 0, chw, 3, 2);
    ck_assert_uint_eq(ld_image_at(&canvas, 1, 0)[0], 255);
    ck_assert_uint_eq(ld_image_at(&canvas, 0, 1)[0], 128);
    ck_assert_uint_eq(ld_image_at(&canvas, 1, 1)[0], 255); /* 2 clamps */
    ck_assert_uint_eq(ld_image_at(&canvas, 1, 1)[1], 0);   /* NaN -> 0 */
    ck_assert_uint_eq(ld_image_at(&canvas, 0, 1)[1], 191);

    ld_image_t ov;
    ck_assert_int_eq(ld_image_alloc(&ov, 5, 5, 1), 0);
    static const uint8_t white[3] = { 255, 255, 255 };
    ld_image_fill_rect(&ov, -2, -2, 3, 3, white);
    ck_assert_uint_eq(ov.data[0], 255);
    ck_assert_uint_eq(ov.data[2], 0);

    ld_image_t small;
    random_image(&small, 2, 2, 1, 4);
    ld_image_paste(&canvas, 4, 0, &small);
    ck_assert_uint_eq(ld_image_at(&canvas, 5, 1)[2], small.data[3]);
    ld_image_free(&canvas);
    ld_image_free(&ov);
    ld_image_free(&small);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("image");
    TCase *tc = ld_tcase("image", 30);
    tcase_add_test(tc, convert_channels);
    tcase_add_test(tc, convert_drops_alpha_and_extracts);
    tcase_add_test(tc, nearest_copies_values);
    tcase_add_test(tc, bilinear_reproduces_linear_ramps);
    tcase_add_test(tc, area_averages_and_smooth_switches);
    tcase_add_test(tc, float_and_drawing);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
