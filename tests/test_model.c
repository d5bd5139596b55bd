/* Model files: save + load round trip is bit-exact with a stable hash that
 * follows the bytes; every kind of bad file (missing/misshapen/mistyped/extra
 * tensor, bad metadata, non-finite weights) is rejected with a detail naming
 * the problem; a failed save leaves the old file and no temporary behind. */
#include "testutil.h"

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ld_ebm.h"
#include "ld_error.h"
#include "ld_model.h"
#include "ld_safetensors.h"

static char *dir; /* a fresh directory per test */

static void setup(void)
{
    dir = ld_test_tmpdir();
}

static void teardown(void)
{
    ld_test_rmtree(dir);
    free(dir);
}

static void small_arch(ld_ebm_arch_t *a)
{
    memset(a, 0, sizeof *a);
    a->image_channels = 3;
    a->mask_classes = 2;
    a->size = 16;
    ck_assert_int_eq(ld_ebm_arch_set_widths(a, "4,8,8"), 0);
    ck_assert_int_eq(ld_ebm_arch_set_domains(a, "DRIVE,STARE"), 0);
    ck_assert_int_eq(ld_ebm_arch_validate(a), 0);
}

static ld_ebm_t *small_model(uint64_t seed)
{
    ld_ebm_arch_t a;
    small_arch(&a);
    ld_ebm_t *m;
    ck_assert_int_eq(ld_ebm_new(&a, &m), 0);
    ld_ebm_init_random(m, seed);
    return m;
}

START_TEST(roundtrip_bit_exact)
{
    char *p = ld_test_path(dir, "m.safetensors");
    ld_ebm_t *m = small_model(42), *back;
    ld_meta_t *extra, *meta;
    ck_assert_int_eq(ld_meta_new(&extra), 0);
    ck_assert_int_eq(ld_meta_set(extra, "maskmap", "0:0,*:1"), 0);
    ck_assert_int_eq(ld_meta_set(extra, "provenance", "test \xc3\xa9"), 0);
    char h_save[65], h_load[65], h_file[65];
    ck_assert_msg(ld_model_save(p, m, extra, h_save) == 0, "%s", ld_errdetail());
    ck_assert_msg(ld_model_load(p, &back, &meta, h_load) == 0, "%s", ld_errdetail());

    ck_assert_uint_eq(ld_ebm_numel(back), ld_ebm_numel(m));
    ck_assert_int_eq(memcmp(ld_ebm_params_const(back), ld_ebm_params_const(m), ld_ebm_numel(m) * sizeof(float)), 0);
    const ld_ebm_arch_t *a = ld_ebm_arch(m), *b = ld_ebm_arch(back);
    ck_assert_int_eq(b->image_channels, a->image_channels);
    ck_assert_int_eq(b->mask_classes, a->mask_classes);
    ck_assert_int_eq(b->size, a->size);
    ck_assert_int_eq(b->n_blocks, a->n_blocks);
    for (int i = 0; i <= a->n_blocks; i++)
        ck_assert_int_eq(b->widths[i], a->widths[i]);
    ck_assert_int_eq(b->n_domains, 2);
    ck_assert_str_eq(b->domains[0], "DRIVE");
    ck_assert_str_eq(b->domains[1], "STARE");

    ck_assert_str_eq(ld_meta_get(meta, "format"), "langdaug-ebm");
    ck_assert_str_eq(ld_meta_get(meta, "version"), "1");
    ck_assert_str_eq(ld_meta_get(meta, "arch"), "resdown");
    ck_assert_str_eq(ld_meta_get(meta, "widths"), "4,8,8");
    ck_assert_str_eq(ld_meta_get(meta, "domains"), "DRIVE,STARE");
    ck_assert_str_eq(ld_meta_get(meta, "size"), "16");
    ck_assert_str_eq(ld_meta_get(meta, "maskmap"), "0:0,*:1");
    ck_assert_str_eq(ld_meta_get(meta, "provenance"), "test \xc3\xa9");

    size_t len;
    unsigned char *raw = (unsigned char *)ld_test_read_file(p, &len);
    ld_sha256_hex(raw, len, h_file);
    ck_assert_str_eq(h_save, h_load);
    ck_assert_str_eq(h_save, h_file);
    /* NULL meta/hash outputs are allowed */
    ld_ebm_destroy(&back);
    ck_assert_int_eq(ld_model_load(p, &back, NULL, NULL), 0);
    ld_ebm_destroy(&back);
    free(raw);
    ld_meta_destroy(&meta);
    ld_meta_destroy(&extra);
    ld_ebm_destroy(&m);
    free(p);
}
END_TEST

START_TEST(hash_stable_and_follows_weights)
{
    char *p1 = ld_test_path(dir, "a.safetensors"), *p2 = ld_test_path(dir, "b.safetensors");
    ld_ebm_t *m = small_model(7);
    char h1[65], h2[65], h3[65];
    ck_assert_int_eq(ld_model_save(p1, m, NULL, h1), 0);
    ck_assert_int_eq(ld_model_save(p2, m, NULL, h2), 0);
    ck_assert_str_eq(h1, h2);
    size_t l1, l2;
    char *b1 = ld_test_read_file(p1, &l1), *b2 = ld_test_read_file(p2, &l2);
    ck_assert_uint_eq(l1, l2);
    ck_assert_int_eq(memcmp(b1, b2, l1), 0);
    size_t last = ld_ebm_numel(m) - 1;
    ld_ebm_params(m)[last] += 1e-3f;
    ck_assert_int_eq(ld_model_save(p2, m, NULL, h3), 0);
    ck_assert_str_ne(h1, h3);
    ld_ebm_t *back;
    char hl[65];
    ck_assert_int_eq(ld_model_load(p2, &back, NULL, hl), 0);
    ck_assert_str_eq(hl, h3);
    ck_assert(ld_ebm_params(back)[last] == ld_ebm_params(m)[last]);
    /* a different seed gives different weights and hash */
    ld_ebm_t *other = small_model(8);
    ck_assert_int_eq(ld_model_save(p2, other, NULL, h3), 0);
    ck_assert_str_ne(h1, h3);
    ld_ebm_destroy(&other);
    ld_ebm_destroy(&back);
    ld_ebm_destroy(&m);
    free(b1);
    free(b2);
    free(p1);
    free(p2);
}
END_TEST

START_TEST(save_refuses_bad_input)
{
    char *p = ld_test_path(dir, "m.safetensors");
    ld_ebm_t *m = small_model(1);
    ld_meta_t *extra;
    ck_assert_int_eq(ld_meta_new(&extra), 0);
    ck_assert_int_eq(ld_meta_set(extra, "size", "32"), 0);
    ld_expect_err(ld_model_save(p, m, extra, NULL), LD_EINVAL);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "'size'"));
    ck_assert_int_eq(access(p, F_OK), -1);
    ld_ebm_params(m)[5] = NAN;
    ld_expect_err(ld_model_save(p, m, NULL, NULL), LD_ENUMERIC);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "element 5"));
    ck_assert_int_eq(access(p, F_OK), -1);
    ck_assert_int_eq(ld_test_count_entries(dir), 0);
    ld_meta_destroy(&extra);
    ld_ebm_destroy(&m);
    free(p);
}
END_TEST

/* Generated keys: integer lists that do not fit their buffer are refused. */
START_TEST(join_ints_fits_or_refuses)
{
    const int v[3] = { 32, 64, 128 };
    char buf[10];
    ck_assert_int_eq(ld_model_join_ints(buf, sizeof buf, v, 3), 0);
    ck_assert_str_eq(buf, "32,64,128");
    ld_expect_err(ld_model_join_ints(buf, 9, v, 3), LD_ERANGE);
    ck_assert_msg(strstr(ld_errdetail(), "3 integers"), "%s", ld_errdetail());
}
END_TEST

/* ---- hostile model files: a valid file rewritten with one defect ------------ */

/* ld_test_load_rejects' loader: a failed load leaves no model and no metadata. */
static int load_model(const char *path)
{
    ld_ebm_t *back = (ld_ebm_t *)1;
    ld_meta_t *meta = (ld_meta_t *)1;
    int rc = ld_model_load(path, &back, &meta, NULL);
    if (rc) {
        ck_assert_ptr_null(back);
        ck_assert_ptr_null(meta);
    }
    ld_ebm_destroy(&back);
    ld_meta_destroy(&meta);
    return rc;
}

START_TEST(load_rejects_defects)
{
    static const ld_test_defect_t cases[] = {
        {.needle = "tensor 'head.bias' is missing", .drop = "head.bias"},
        {.needle = "tensor 'blocks.1.conv2.weight' is missing", .drop = "blocks.1.conv2.weight"},
        {.needle = "tensor 'stem.bias' has dtype F64, expected F32", .as_f64 = "stem.bias"},
        {.needle = "tensor 'stem.bias' has shape [2,2], expected [4]", .reshape = "stem.bias"},
        {.needle = "tensor 'domain_embed.weight' element 0 is NaN", .nan_in = "domain_embed.weight"},
        {.needle = "unexpected tensor 'blocks.2.conv1.bias'", .add = "blocks.2.conv1.bias"},
        {.needle = "metadata key 'widths' is missing", .meta_key = "widths"},
        {.needle = "metadata key 'format' is missing", .meta_key = "format"},
        {.needle = "metadata 'format' is 'gguf', expected 'langdaug-ebm'", .meta_key = "format", .meta_value = "gguf"},
        {.needle = "metadata 'version' is '2', expected '1'", .meta_key = "version", .meta_value = "2"},
        {.needle = "metadata 'arch' is 'unet', expected 'resdown'", .meta_key = "arch", .meta_value = "unet"},
        {.needle = "metadata 'size' is not an integer: '16px'", .meta_key = "size", .meta_value = "16px"},
        {.needle = "metadata 'image_channels' is not an integer: ' 3'", .meta_key = "image_channels",
         .meta_value = " 3"},
        {.needle = "metadata 'mask_classes' is not an integer: '99999999999'", .meta_key = "mask_classes",
         .meta_value = "99999999999"},
        {.needle = "metadata 'widths'", .meta_key = "widths", .meta_value = "4,x,8"},
        {.needle = "metadata 'domains'", .meta_key = "domains", .meta_value = ""},
        {.needle = "invalid architecture", .meta_key = "size", .meta_value = "18"},
        {.needle = "invalid architecture", .meta_key = "image_channels", .meta_value = "0"},
        /* a consistent-looking header for another shape: the tensors disagree */
        {.needle = "tensor 'stem.weight' has shape [4,5,1,1], expected [4,3,1,1]", .meta_key = "image_channels",
         .meta_value = "1"},
        {.needle = "tensor 'domain_embed.weight' has shape [2,8], expected [3,8]", .meta_key = "domains",
         .meta_value = "DRIVE,STARE,HRF"},
        {.needle = "metadata 'colour_space': 'LAB' is not rgb or lab", .meta_key = "colour_space", .meta_value = "LAB"},
        {.needle = "metadata 'colour_space': '' is not rgb or lab", .meta_key = "colour_space", .meta_value = ""},
    };
    char *good = ld_test_path(dir, "good.safetensors"), *bad = ld_test_path(dir, "bad.safetensors");
    ld_ebm_t *m = small_model(3);
    ck_assert_int_eq(ld_model_save(good, m, NULL, NULL), 0);
    ld_test_load_rejects(good, bad, cases, sizeof cases / sizeof *cases, load_model);
    ld_ebm_destroy(&m);
    free(good);
    free(bad);
}
END_TEST

/* colour_space: written for every model, read back; a file without it (from
 * before the key) is RGB; LAB with other than 3 channels is refused. */
START_TEST(colour_space_metadata)
{
    char *rgb = ld_test_path(dir, "rgb.safetensors"), *lab = ld_test_path(dir, "lab.safetensors"),
         *bad = ld_test_path(dir, "bad.safetensors");
    ld_ebm_t *m = small_model(5), *back;
    ld_meta_t *meta;
    ck_assert_int_eq(ld_model_save(rgb, m, NULL, NULL), 0);
    ld_ebm_arch_t a = *ld_ebm_arch(m);
    a.colour_space = LD_COLOUR_LAB;
    ld_ebm_t *ml;
    ck_assert_int_eq(ld_ebm_new(&a, &ml), 0);
    memcpy(ld_ebm_params(ml), ld_ebm_params_const(m), ld_ebm_numel(m) * sizeof(float));
    ck_assert_int_eq(ld_model_save(lab, ml, NULL, NULL), 0);

    ck_assert_int_eq(ld_model_load(rgb, &back, &meta, NULL), 0);
    ck_assert_str_eq(ld_meta_get(meta, "colour_space"), "rgb");
    ck_assert_int_eq(ld_ebm_arch(back)->colour_space, LD_COLOUR_RGB);
    ld_ebm_destroy(&back);
    ld_meta_destroy(&meta);
    ck_assert_int_eq(ld_model_load(lab, &back, &meta, NULL), 0);
    ck_assert_str_eq(ld_meta_get(meta, "colour_space"), "lab");
    ck_assert_int_eq(ld_ebm_arch(back)->colour_space, LD_COLOUR_LAB);
    ld_ebm_destroy(&back);
    ld_meta_destroy(&meta);

    ld_test_defect_t old_file = {.meta_key = "colour_space"};
    ld_test_write_defective(lab, bad, &old_file);
    ck_assert_int_eq(ld_model_load(bad, &back, &meta, NULL), 0);
    ck_assert_ptr_null(ld_meta_get(meta, "colour_space"));
    ck_assert_int_eq(ld_ebm_arch(back)->colour_space, LD_COLOUR_RGB);
    ld_ebm_destroy(&back);
    ld_meta_destroy(&meta);

    ld_test_defect_t grey = {.meta_key = "image_channels", .meta_value = "1"};
    ld_test_write_defective(lab, bad, &grey);
    ld_expect_err(ld_model_load(bad, &back, NULL, NULL), LD_EFORMAT);
    ck_assert_msg(strstr(ld_errdetail(), "colour space lab needs 3 image channels, not 1"), "%s", ld_errdetail());

    /* the key is generated: an extra key of that name is refused */
    ck_assert_int_eq(ld_meta_new(&meta), 0);
    ck_assert_int_eq(ld_meta_set(meta, "colour_space", "lab"), 0);
    ld_expect_err(ld_model_save(bad, m, meta, NULL), LD_EINVAL);
    ld_meta_destroy(&meta);
    ld_ebm_destroy(&m);
    ld_ebm_destroy(&ml);
    free(rgb);
    free(lab);
    free(bad);
}
END_TEST

START_TEST(load_rejects_non_model_files)
{
    char *p = ld_test_path(dir, "x.safetensors");
    ld_ebm_t *m;
    ld_test_write_file(p, "hello, world", 12);
    ld_expect_err(ld_model_load(p, &m, NULL, NULL), LD_EFORMAT);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), p));
    /* a valid safetensors file without langdaug metadata */
    ld_st_writer_t *w;
    ck_assert_int_eq(ld_st_writer_new(&w), 0);
    ck_assert_int_eq(ld_st_writer_write(w, p, NULL), 0);
    ld_st_writer_destroy(&w);
    ld_expect_err(ld_model_load(p, &m, NULL, NULL), LD_EFORMAT);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "metadata key 'format' is missing"));
    ld_expect_err(ld_model_load("/nonexistent-langdaug/m.safetensors", &m, NULL, NULL), LD_ENOENT);
    ck_assert_ptr_null(m);
    free(p);
}
END_TEST

START_TEST(failed_save_keeps_old_file)
{
    char *p = ld_test_path(dir, "m.safetensors");
    ld_ebm_t *m = small_model(11);
    char h_old[65], h_now[65];
    ck_assert_int_eq(ld_model_save(p, m, NULL, h_old), 0);
    ld_ebm_params(m)[0] += 1.0f;

    /* the disk "fills up" mid-write: a file-size limit below the model's
     * size makes the write fail (works as root too) */
    struct stat sb;
    ck_assert_int_eq(stat(p, &sb), 0);
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit old_lim, lim = {.rlim_cur = (rlim_t)sb.st_size / 2, .rlim_max = RLIM_INFINITY};
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old_lim), 0);
    lim.rlim_max = old_lim.rlim_max;
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    ld_expect_err(ld_model_save(p, m, NULL, NULL), LD_EIO);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old_lim), 0);
    ck_assert_int_eq(ld_test_count_entries(dir), 1); /* no temporary left */
    ld_ebm_t *back;
    ck_assert_int_eq(ld_model_load(p, &back, NULL, h_now), 0);
    ck_assert_str_eq(h_now, h_old);
    ld_ebm_destroy(&back);

    /* a directory that does not exist */
    ld_expect_err(ld_model_save("/nonexistent-langdaug/m.safetensors", m, NULL, NULL), LD_EIO);

    /* a read-only directory (root ignores permissions: skip that part) */
    if (geteuid() != 0) {
        ck_assert_int_eq(chmod(dir, 0555), 0);
        ld_expect_err(ld_model_save(p, m, NULL, NULL), LD_EIO);
        ck_assert_int_eq(chmod(dir, 0755), 0);
        ck_assert_int_eq(ld_model_load(p, &back, NULL, h_now), 0);
        ck_assert_str_eq(h_now, h_old);
        ld_ebm_destroy(&back);
    }
    ld_ebm_destroy(&m);
    free(p);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("model");
    TCase *tc = ld_tcase("model", 30);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, roundtrip_bit_exact);
    tcase_add_test(tc, hash_stable_and_follows_weights);
    tcase_add_test(tc, save_refuses_bad_input);
    tcase_add_test(tc, join_ints_fits_or_refuses);
    tcase_add_test(tc, load_rejects_defects);
    tcase_add_test(tc, colour_space_metadata);
    tcase_add_test(tc, load_rejects_non_model_files);
    tcase_add_test(tc, failed_save_keeps_old_file);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
