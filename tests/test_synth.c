/* Synthetic data: deterministic in the seed, loadable by ld_dataset,
 * domains that differ in per-channel statistics, masks that match what the
 * images show, option checking. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ld_dataset.h"
#include "ld_error.h"
#include "ld_png.h"
#include "ld_synth.h"

static ld_synth_opts_t small_opts(void)
{
    ld_synth_opts_t o;
    ld_synth_defaults(&o);
    o.per_domain = 3;
    o.size = 64;
    return o;
}

START_TEST(defaults_and_validation)
{
    ld_synth_opts_t o;
    ld_synth_defaults(&o);
    ck_assert(o.n_domains == 4 && o.per_domain == 12 && o.size == 96 && o.seed == 1 && !o.disc);
    ck_assert_int_eq(ld_synth_validate(&o), 0);
    ck_assert_str_eq(ld_synth_domain_name(0), "cam0");
    ck_assert_ptr_null(ld_synth_domain_name(LD_SYNTH_MAX_DOMAINS));
    static const struct { int field, value; const char *word; } bad[] = {
        { 0, 0, "domains" }, { 0, LD_SYNTH_MAX_DOMAINS + 1, "domains" }, { 1, 0, "per-domain" },
        { 2, LD_SYNTH_MIN_SIZE - 1, "size" }, { 2, LD_SYNTH_MAX_SIZE + 1, "size" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ld_synth_opts_t b = o;
        int *f[] = { &b.n_domains, &b.per_domain, &b.size };
        *f[bad[i].field] = bad[i].value;
        ld_expect_err(ld_synth_validate(&b), LD_ERANGE);
        ck_assert_msg(strstr(ld_errdetail(), bad[i].word) != NULL, "%s", ld_errdetail());
        ld_expect_err(ld_synth_write("/tmp/never-created-by-langdaug", &b), LD_ERANGE);
    }
    ld_image_t a, m, f;
    ld_expect_err(ld_synth_render(&o, 4, 0, &a, &m, &f), LD_ERANGE);
    ck_assert_ptr_null(a.data);
    ld_expect_err(ld_synth_write("/proc/langdaug-cannot-write-here", &o), LD_EIO);
}
END_TEST

START_TEST(deterministic_in_seed)
{
    ld_synth_opts_t o = small_opts();
    ld_image_t a[3], b[3], c[3];
    ck_assert_int_eq(ld_synth_render(&o, 2, 1, &a[0], &a[1], &a[2]), 0);
    ck_assert_int_eq(ld_synth_render(&o, 2, 1, &b[0], &b[1], &b[2]), 0);
    for (int k = 0; k < 3; k++)
        ck_assert_mem_eq(a[k].data, b[k].data, (size_t)64 * 64 * (size_t)a[k].channels);
    o.seed = 2;
    ck_assert_int_eq(ld_synth_render(&o, 2, 1, &c[0], &c[1], &c[2]), 0);
    ck_assert(memcmp(a[0].data, c[0].data, 64 * 64 * 3) != 0);
    ck_assert(memcmp(a[1].data, c[1].data, 64 * 64) != 0);
    for (int k = 0; k < 3; k++) {
        ld_image_free(&a[k]);
        ld_image_free(&b[k]);
        ld_image_free(&c[k]);
    }

    /* Two writes with the same options hold the same pixels. */
    o.seed = 9;
    o.n_domains = 2;
    o.per_domain = 2;
    char *d1 = ld_test_tmpdir(), *d2 = ld_test_tmpdir();
    ck_assert_int_eq(ld_synth_write(d1, &o), 0);
    ck_assert_int_eq(ld_synth_write(d2, &o), 0);
    static const char *files[] = { "cam0/image/000.png", "cam1/image/001.png", "cam1/mask/001.png",
                                   "cam0/fov/001.png" };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char *p1 = ld_test_path(d1, files[i]), *p2 = ld_test_path(d2, files[i]);
        ld_image_t x, y;
        ck_assert_int_eq(ld_png_read(p1, &x), 0);
        ck_assert_int_eq(ld_png_read(p2, &y), 0);
        ck_assert(x.width == 64 && x.channels == y.channels);
        ck_assert_mem_eq(x.data, y.data, (size_t)64 * 64 * (size_t)x.channels);
        ld_image_free(&x);
        ld_image_free(&y);
        free(p1);
        free(p2);
    }
    ck_assert_int_eq(ld_test_system("grep -q 'seed=9' '%s/README.txt'", d1), 0);
    ld_test_rmtree(d1);
    ld_test_rmtree(d2);
    free(d1);
    free(d2);
}
END_TEST

START_TEST(layout_loads_as_dataset)
{
    for (int disc = 0; disc < 2; disc++) {
        ld_synth_opts_t o = small_opts();
        o.disc = disc;
        char *root = ld_test_tmpdir();
        ck_assert_int_eq(ld_synth_write(root, &o), 0);
        ld_dataset_opts_t dopts = { .root = root, .maskmap = ld_synth_maskmap(&o) };
        ld_dataset_t *ds = NULL;
        int rc = ld_dataset_open(&dopts, &ds);
        ck_assert_msg(rc == 0, "%s", ld_errdetail());
        ck_assert_int_eq(ld_dataset_n_domains(ds), 4);
        ck_assert_int_eq(ld_dataset_n_skipped(ds), 0);
        ck_assert_int_eq(ld_dataset_channels(ds), 3);
        ck_assert_int_eq(ld_dataset_n_classes(ds), disc ? 3 : 2);
        unsigned bits = 0;
        for (int d = 0; d < 4; d++) {
            ck_assert_str_eq(ld_dataset_domain(ds, d), ld_synth_domain_name(d));
            ck_assert_int_eq(ld_dataset_n_items(ds, d), 3);
            ck_assert_int_eq(ld_dataset_item_has_fov(ds, d, 2), 1);
            float img[3 * 64 * 64];
            uint8_t mask[64 * 64];
            ld_crop_t cr;
            ck_assert_int_eq(ld_dataset_center_crop(ds, d, 0, 64, &cr), 0);
            ck_assert_int_eq(ld_dataset_extract(ds, &cr, img, mask), 0);
            for (int i = 0; i < 64 * 64; i++)
                bits |= 1u << mask[i];
        }
        ck_assert_uint_eq(bits, disc ? 7u : 3u);
        ld_dataset_destroy(&ds);
        ld_test_rmtree(root);
        free(root);
    }
}
END_TEST

typedef struct {
    double mean[3], sd[3];
    double vessel_fraction;
    double vessel_luma, background_luma;
} stats_t;

/* Statistics of a domain over its images, inside the FOV. */
static stats_t domain_stats(const ld_synth_opts_t *o, int d)
{
    double sum[3] = { 0 }, sq[3] = { 0 }, n = 0, nv = 0, lv = 0, lb = 0;
    for (int i = 0; i < o->per_domain; i++) {
        ld_image_t img, mask, fov;
        ck_assert_int_eq(ld_synth_render(o, d, i, &img, &mask, &fov), 0);
        for (int p = 0; p < o->size * o->size; p++) {
            if (!fov.data[p])
                continue;
            const uint8_t *px = img.data + 3 * p;
            for (int c = 0; c < 3; c++) {
                sum[c] += px[c];
                sq[c] += (double)px[c] * px[c];
            }
            double luma = 0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2];
            n++;
            if (mask.data[p] == 255) {
                nv++;
                lv += luma;
            } else {
                lb += luma;
            }
        }
        ld_image_free(&img);
        ld_image_free(&mask);
        ld_image_free(&fov);
    }
    stats_t s;
    for (int c = 0; c < 3; c++) {
        s.mean[c] = sum[c] / n;
        s.sd[c] = sqrt(sq[c] / n - s.mean[c] * s.mean[c]);
    }
    s.vessel_fraction = nv / n;
    s.vessel_luma = lv / nv;
    s.background_luma = lb / (n - nv);
    return s;
}

START_TEST(domains_differ_structure_shared)
{
    ld_synth_opts_t o;
    ld_synth_defaults(&o);
    o.n_domains = LD_SYNTH_MAX_DOMAINS;
    o.per_domain = 4;
    stats_t st[LD_SYNTH_MAX_DOMAINS];
    for (int d = 0; d < o.n_domains; d++) {
        st[d] = domain_stats(&o, d);
        /* Shared structure: similar vessel density; vessels darker than
         * their surroundings in every camera (the mask matches the image). */
        ck_assert_msg(st[d].vessel_fraction > 0.04 && st[d].vessel_fraction < 0.25, "domain %d: %.3f", d,
                      st[d].vessel_fraction);
        ck_assert_msg(st[d].vessel_luma < 0.92 * st[d].background_luma, "domain %d: vessel %.1f vs bg %.1f", d,
                      st[d].vessel_luma, st[d].background_luma);
    }
    /* Every pair of cameras differs clearly in some channel's mean or spread. */
    for (int a = 0; a < o.n_domains; a++)
        for (int b = a + 1; b < o.n_domains; b++) {
            double diff = 0;
            for (int c = 0; c < 3; c++) {
                diff = fmax(diff, fabs(st[a].mean[c] - st[b].mean[c]));
                diff = fmax(diff, 2 * fabs(st[a].sd[c] - st[b].sd[c]));
            }
            ck_assert_msg(diff > 12, "domains %d and %d too similar (%.1f)", a, b, diff);
        }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("synth");
    TCase *tc = ld_tcase("synth", 60);
    tcase_add_test(tc, defaults_and_validation);
    tcase_add_test(tc, deterministic_in_seed);
    tcase_add_test(tc, layout_loads_as_dataset);
    tcase_add_test(tc, domains_differ_structure_shared);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
