/* Philox known answers (Random123's published vectors), noise
 * reproducibility by sub-range, and the distribution of the streams. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ld_rng.h"

START_TEST(philox_known_answers)
{
    static const uint32_t ctr[3][4] = {
        { 0, 0, 0, 0 },
        { 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu },
        { 0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u },
    };
    static const uint32_t key[3][2] = {
        { 0, 0 }, { 0xffffffffu, 0xffffffffu }, { 0xa4093822u, 0x299f31d0u },
    };
    static const uint32_t want[3][4] = {
        { 0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u },
        { 0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu },
        { 0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u },
    };
    for (int v = 0; v < 3; v++) {
        uint32_t out[4];
        ld_philox4x32(ctr[v], key[v], out);
        for (int i = 0; i < 4; i++)
            ck_assert_msg(out[i] == want[v][i], "vector %d word %d: %08x != %08x", v, i, out[i], want[v][i]);
    }
}
END_TEST

START_TEST(noise_subrange_reproducible)
{
    enum { N = 1003 };
    float *all = malloc(N * sizeof *all), *part = malloc(N * sizeof *part);
    ld_noise_fill(42, 7, 3, all, N);
    /* A chain computed alone must match the same elements of a longer fill. */
    ld_noise_fill(42, 7, 3, part, 400);
    ck_assert_int_eq(memcmp(all, part, 400 * sizeof *all), 0);
    /* Different chain, step or seed: different noise. */
    ld_noise_fill(42, 8, 3, part, N);
    ck_assert_int_ne(memcmp(all, part, N * sizeof *all), 0);
    ld_noise_fill(42, 7, 4, part, N);
    ck_assert_int_ne(memcmp(all, part, N * sizeof *all), 0);
    ld_noise_fill(43, 7, 3, part, N);
    ck_assert_int_ne(memcmp(all, part, N * sizeof *all), 0);
    free(all);
    free(part);
}
END_TEST

START_TEST(noise_is_standard_normal)
{
    enum { N = 200000 };
    float *z = malloc(N * sizeof *z);
    ld_noise_fill(1, 2, 0, z, N);
    double s = 0, s2 = 0, s4 = 0;
    for (int i = 0; i < N; i++) {
        ck_assert(isfinite(z[i]));
        s += z[i];
        s2 += (double)z[i] * z[i];
        s4 += (double)z[i] * z[i] * z[i] * z[i];
    }
    double mean = s / N, var = s2 / N - mean * mean, kurt = s4 / N;
    /* Standard errors at N = 2e5: mean 0.0022, var 0.0032, E z^4 0.022. */
    ck_assert_msg(fabs(mean) < 0.012, "mean %g", mean);
    ck_assert_msg(fabs(var - 1) < 0.02, "var %g", var);
    ck_assert_msg(fabs(kurt - 3) < 0.12, "E z^4 %g", kurt);
    free(z);
}
END_TEST

START_TEST(stream_copy_resumes_identically)
{
    ld_rng_t a, b;
    ld_rng_init(&a, 99, 1);
    for (int i = 0; i < 7; i++)
        (void)ld_rng_u32(&a); /* stop mid-block */
    b = a;
    for (int i = 0; i < 100; i++)
        ck_assert_uint_eq(ld_rng_u32(&a), ld_rng_u32(&b));
    ld_rng_t c;
    ld_rng_init(&c, 99, 2);
    ld_rng_init(&a, 99, 1);
    int same = 0;
    for (int i = 0; i < 100; i++)
        same += ld_rng_u32(&a) == ld_rng_u32(&c);
    ck_assert_int_lt(same, 3);
}
END_TEST

START_TEST(below_and_uniform_ranges)
{
    ld_rng_t r;
    ld_rng_init(&r, 5, 0);
    int hist[6] = { 0 };
    for (int i = 0; i < 60000; i++) {
        uint32_t v = ld_rng_below(&r, 6);
        ck_assert_uint_lt(v, 6);
        hist[v]++;
        double u = ld_rng_uniform(&r);
        ck_assert(u >= 0 && u < 1);
    }
    for (int i = 0; i < 6; i++) /* expected 10000, sd ~91 */
        ck_assert_msg(abs(hist[i] - 10000) < 500, "bin %d: %d", i, hist[i]);
    ck_assert_uint_eq(ld_rng_below(&r, 1), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("rng");
    TCase *tc = ld_tcase("rng", 30);
    tcase_add_test(tc, philox_known_answers);
    tcase_add_test(tc, noise_subrange_reproducible);
    tcase_add_test(tc, noise_is_standard_normal);
    tcase_add_test(tc, stream_copy_resumes_identically);
    tcase_add_test(tc, below_and_uniform_ranges);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
