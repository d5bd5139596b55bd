/* Datasets: mask maps, folder and manifest layouts written by the tests,
 * pairing, skipping with warnings, domain errors, working scale, channel
 * conversion, crops (image/mask alignment, padding, FOV, threads), and the
 * real data sets when present. */
#include "testutil.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ld_dataset.h"
#include "ld_error.h"
#include "ld_log.h"
#include "ld_png.h"

/* ---- fixtures ---- */

static char warnings[16384];

static void capture_sink(int level, const char *msg, void *user)
{
    (void)user;
    if (level <= LD_LOG_WARN && strlen(warnings) + strlen(msg) + 2 < sizeof warnings) {
        strcat(warnings, msg);
        strcat(warnings, "\n");
    }
}

static void capture_warnings(void)
{
    warnings[0] = '\0';
    ld_log_set(capture_sink, NULL, LD_LOG_WARN);
}

static void mkdirs(const char *root, const char *rel)
{
    ck_assert_int_eq(ld_test_system("mkdir -p '%s/%s'", root, rel), 0);
}

/* Pixel value of the test pattern at (x, y) for image number k. */
static uint8_t pattern(int k, int x, int y)
{
    return (uint8_t)((x * 37 + y * 91 + k * 53 + ((x * y) % 7) * 11) & 0xff);
}

/* Writes an image with the pattern (channels 1 or 3: G = B = pattern) and
 * a mask whose value follows from it: 255 where pattern > 127, else 0. */
static void write_pair(const char *root, const char *dir, const char *img_name, const char *mask_name, int k,
                       int w, int h, int channels)
{
    ld_image_t img, mask;
    ck_assert_int_eq(ld_image_alloc(&img, w, h, channels), 0);
    ck_assert_int_eq(ld_image_alloc(&mask, w, h, 1), 0);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t v = pattern(k, x, y);
            for (int c = 0; c < channels; c++)
                ld_image_at(&img, x, y)[c] = c == 0 ? v : (uint8_t)(255 - v);
            *ld_image_at(&mask, x, y) = v > 127 ? 255 : 0;
        }
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/image/%s", root, dir, img_name);
    ck_assert_int_eq(ld_png_write(path, &img), 0);
    if (mask_name) {
        snprintf(path, sizeof path, "%s/%s/mask/%s", root, dir, mask_name);
        ck_assert_int_eq(ld_png_write(path, &mask), 0);
    }
    ld_image_free(&img);
    ld_image_free(&mask);
}

static void write_plain(const char *path, int w, int h, int channels, uint8_t value)
{
    ld_image_t img;
    ck_assert_int_eq(ld_image_alloc(&img, w, h, channels), 0);
    memset(img.data, value, (size_t)w * (size_t)h * (size_t)channels);
    ck_assert_int_eq(ld_png_write(path, &img), 0);
    ld_image_free(&img);
}

static ld_dataset_t *open_ok(const ld_dataset_opts_t *o)
{
    ld_dataset_t *ds = NULL;
    int rc = ld_dataset_open(o, &ds);
    ck_assert_msg(rc == 0, "open: %s: %s", ld_strerror(rc), ld_errdetail());
    return ds;
}

static void expect_open_error(const ld_dataset_opts_t *o, int err, const char *needle)
{
    ld_dataset_t *ds = (ld_dataset_t *)&ds;
    ck_assert_int_eq(ld_dataset_open(o, &ds), err);
    ck_assert_ptr_null(ds);
    ck_assert_msg(strstr(ld_errdetail(), needle) != NULL, "detail '%s' lacks '%s'", ld_errdetail(), needle);
}

/* ---- mask maps ---- */

/* ld_maskmap_value as an int: the value, or -1 when the lookup finds none
 * (then the out-parameter must be untouched). */
static int value_of(const ld_maskmap_t *m, int cls)
{
    uint8_t v = 77;
    if (ld_maskmap_value(m, cls, &v))
        return v;
    ck_assert_int_eq(v, 77);
    return -1;
}

START_TEST(maskmap_rules)
{
    ld_maskmap_t m;
    ck_assert_int_eq(ld_maskmap_parse(NULL, &m), 0);
    ck_assert_int_eq(m.n_classes, 2);
    ck_assert_int_eq(m.lut[0], 0);
    for (int v = 1; v < 256; v++)
        ck_assert_int_eq(m.lut[v], 1);
    ck_assert_int_eq(value_of(&m, 0), 0);
    ck_assert_int_eq(value_of(&m, 1), 255);
    ck_assert_int_eq(value_of(&m, -1), -1);   /* not the unmapped marker's values */

    ck_assert_int_eq(ld_maskmap_parse("255:0,128:1,0:2", &m), 0);
    ck_assert_int_eq(m.n_classes, 3);
    ck_assert(m.lut[255] == 0 && m.lut[128] == 1 && m.lut[0] == 2);
    ck_assert_int_eq(m.lut[127], -1);
    ck_assert_int_eq(m.lut[1], -1);
    ck_assert(value_of(&m, 0) == 255 && value_of(&m, 1) == 128 && value_of(&m, 2) == 0);
    ck_assert_int_eq(value_of(&m, -1), -1);

    ck_assert_int_eq(ld_maskmap_parse("0-127:1,*:0", &m), 0);
    ck_assert_int_eq(m.n_classes, 2);
    for (int v = 0; v < 256; v++)
        ck_assert_int_eq(m.lut[v], v < 128 ? 1 : 0);
    ck_assert(value_of(&m, 1) == 0 && value_of(&m, 0) == 255);

    /* First match wins; spaces are allowed; classes without values. */
    ck_assert_int_eq(ld_maskmap_parse(" 5 : 3 , 0 - 10 : 1 , * : 0 ", &m), 0);
    ck_assert(m.lut[5] == 3 && m.lut[4] == 1 && m.lut[10] == 1 && m.lut[11] == 0);
    ck_assert_int_eq(m.n_classes, 4);
    ck_assert_int_eq(value_of(&m, 2), -1);
    ck_assert_int_eq(value_of(&m, 1), 0);
    ck_assert_int_eq(value_of(&m, 3), 5);
}
END_TEST

START_TEST(maskmap_rejects_invalid)
{
    static const char *bad[] = { "", " ", "abc", "0", "256:1", "5-3:1", "0:x", "0:256", "0:0,", ",0:0",
                                 "0:0,,*:1", "-1:0", "1-:0", "0:1:2", "**:1", "1 2:0", "0x10:1", "1000:1" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ld_maskmap_t m;
        ld_clearerr();
        ck_assert_msg(ld_maskmap_parse(bad[i], &m) == LD_EINVAL, "accepted '%s'", bad[i]);
        ck_assert_msg(strstr(ld_errdetail(), "mask map") != NULL, "%s", ld_errdetail());
    }
}
END_TEST

/* ---- folder layout ---- */

START_TEST(folder_layout_pairs_by_stem)
{
    char *root = ld_test_tmpdir();
    mkdirs(root, "siteB/image");
    mkdirs(root, "siteB/mask");
    mkdirs(root, "siteA/image");
    mkdirs(root, "siteA/mask");
    write_pair(root, "siteA", "a1.png", "a1.png", 1, 40, 30, 3);
    write_pair(root, "siteA", "a0.png", "a0.gif", 2, 33, 50, 3); /* mask extension differs */
    write_pair(root, "siteB", "b0.png", "b0.png", 3, 64, 64, 3);
    ld_dataset_opts_t o = { .root = root };
    capture_warnings();
    ld_dataset_t *ds = open_ok(&o);
    ck_assert_str_eq(warnings, "");
    ck_assert_int_eq(ld_dataset_n_domains(ds), 2);
    ck_assert_str_eq(ld_dataset_domain(ds, 0), "siteA"); /* sorted */
    ck_assert_str_eq(ld_dataset_domain(ds, 1), "siteB");
    int d = -1;
    ck_assert(ld_dataset_domain_index(ds, "siteB", &d));
    ck_assert_int_eq(d, 1);
    ck_assert(!ld_dataset_domain_index(ds, "siteC", &d));
    ck_assert_int_eq(d, 1); /* not found: left as it was */
    ck_assert_int_eq(ld_dataset_n_items(ds, 0), 2);
    ck_assert_int_eq(ld_dataset_n_items(ds, 1), 1);
    ck_assert_str_eq(ld_dataset_item_name(ds, 0, 0), "image/a0.png");
    ck_assert_str_eq(ld_dataset_item_name(ds, 0, 1), "image/a1.png");
    ck_assert_int_eq(ld_dataset_channels(ds), 3);
    ck_assert_int_eq(ld_dataset_n_classes(ds), 2);
    ck_assert_int_eq(ld_dataset_n_skipped(ds), 0);
    int w, h;
    ld_dataset_item_size(ds, 0, 0, &w, &h);
    ck_assert(w == 33 && h == 50);
    ck_assert_int_eq(ld_dataset_item_has_fov(ds, 0, 0), 0);
    ld_dataset_destroy(&ds);
    ck_assert_ptr_null(ds);

    /* An explicit domain list sets the order. */
    o.domains = "siteB,siteA";
    ds = open_ok(&o);
    ck_assert_str_eq(ld_dataset_domain(ds, 0), "siteB");
    ck_assert_int_eq(ld_dataset_n_items(ds, 0), 1);
    ld_dataset_destroy(&ds);
    ld_test_rmtree(root);
    free(root);
}
END_TEST

START_TEST(skips_bad_files_with_warnings)
{
    char *root = ld_test_tmpdir();
    mkdirs(root, "d/image");
    mkdirs(root, "d/mask");
    char p[1024];
    write_pair(root, "d", "good.png", "good.png", 1, 20, 20, 1);
    write_pair(root, "d", "nomask.png", NULL, 2, 20, 20, 1);
    write_pair(root, "d", "corrupt.png", "corrupt.png", 3, 20, 20, 1);
    snprintf(p, sizeof p, "%s/d/image/corrupt.png", root);
    ld_test_write_file(p, "\x89PNG\r\n\x1a\nbroken", 14);
    write_pair(root, "d", "badmask.png", NULL, 4, 20, 20, 1);
    snprintf(p, sizeof p, "%s/d/mask/badmask.png", root);
    ld_test_write_file(p, "not a png", 9);
    write_pair(root, "d", "size.png", NULL, 5, 20, 20, 1);
    snprintf(p, sizeof p, "%s/d/mask/size.png", root);
    write_plain(p, 21, 20, 1, 0);
    write_pair(root, "d", "value.png", NULL, 6, 20, 20, 1);
    snprintf(p, sizeof p, "%s/d/mask/value.png", root);
    write_plain(p, 20, 20, 1, 77);
    snprintf(p, sizeof p, "%s/d/image/notes.txt", root);
    ld_test_write_file(p, "hello", 5);
    snprintf(p, sizeof p, "%s/d/mask/orphan.png", root);
    write_plain(p, 20, 20, 1, 0);

    ld_dataset_opts_t o = { .root = root, .maskmap = "0:0,255:1" };
    capture_warnings();
    ld_dataset_t *ds = open_ok(&o);
    ck_assert_int_eq(ld_dataset_n_items(ds, 0), 1);
    ck_assert_str_eq(ld_dataset_item_name(ds, 0, 0), "image/good.png");
    ck_assert_int_eq(ld_dataset_n_skipped(ds), 6);
    static const char *named[] = { "nomask.png", "image/corrupt.png", "mask/badmask.png", "mask/size.png",
                                   "mask/value.png", "value 77", "notes.txt", "orphan.png" };
    for (size_t i = 0; i < sizeof named / sizeof named[0]; i++)
        ck_assert_msg(strstr(warnings, named[i]) != NULL, "no warning names %s:\n%s", named[i], warnings);
    ck_assert_msg(strstr(warnings, "good.png") == NULL, "%s", warnings);
    ld_dataset_destroy(&ds);
    ld_test_rmtree(root);
    free(root);
}
END_TEST

START_TEST(domain_errors)
{
    char *root = ld_test_tmpdir();
    mkdirs(root, "ok/image");
    mkdirs(root, "ok/mask");
    mkdirs(root, "empty/image");
    mkdirs(root, "empty/mask");
    write_pair(root, "ok", "x.png", "x.png", 1, 16, 16, 1);
    write_pair(root, "empty", "lonely.png", NULL, 1, 16, 16, 1);
    ld_dataset_opts_t o = { .root = root };
    capture_warnings();
    expect_open_error(&o, LD_ENOENT, "'empty'");
    ck_assert_msg(strstr(warnings, "lonely.png") != NULL, "%s", warnings);
    o.domains = "ok,nowhere";
    expect_open_error(&o, LD_ENOENT, "'nowhere'");
    o.domains = "ok,ok";
    expect_open_error(&o, LD_EINVAL, "'ok'");
    o.domains = "ok,";
    expect_open_error(&o, LD_EINVAL, "empty name");
    o.domains = "ok";
    o.subdir = "train";
    expect_open_error(&o, LD_ENOENT, "ok/train/image");
    o.subdir = NULL;
    o.maskmap = "0:0,x";
    expect_open_error(&o, LD_EINVAL, "mask map");
    o.maskmap = NULL;
    o.channels = 2;
    expect_open_error(&o, LD_EINVAL, "channels");
    o.channels = 0;
    o.manifest = "also.csv";
    expect_open_error(&o, LD_EINVAL, "exactly one");
    o.manifest = NULL;
    o.root = "/nonexistent/langdaug";
    o.domains = NULL;
    expect_open_error(&o, LD_ENOENT, "/nonexistent/langdaug");
    o.root = root;
    o.domains = "ok";
    ld_dataset_t *ds = open_ok(&o);
    ck_assert_int_eq(ld_dataset_n_domains(ds), 1);
    ld_dataset_destroy(&ds);
    ld_test_rmtree(root);
    free(root);
}
END_TEST

/* ---- crops ---- */

/* Every pixel of an extracted crop must satisfy the image/mask relation of
 * write_pair (mask class 1 exactly where channel 0 > 127), and padding must
 * read as image -1, mask 0. */
static void check_aligned(const ld_dataset_t *ds, const ld_crop_t *cr)
{
    int s = cr->size, c = ld_dataset_channels(ds), w, h;
    ld_dataset_item_size(ds, cr->domain, cr->item, &w, &h);
    float *img = malloc(sizeof(float) * (size_t)(c * s * s));
    uint8_t *mask = malloc((size_t)(s * s));
    ck_assert_int_eq(ld_dataset_extract(ds, cr, img, mask), 0);
    for (int y = 0; y < s; y++)
        for (int x = 0; x < s; x++) {
            int sx = cr->x + x, sy = cr->y + y, o = y * s + x;
            if (sx < 0 || sy < 0 || sx >= w || sy >= h) {
                ck_assert_uint_eq(mask[o], 0);
                for (int k = 0; k < c; k++)
                    ck_assert(img[k * s * s + o] == -1.0f);
                continue;
            }
            float v = (img[o] + 1.0f) * 127.5f;
            ck_assert_msg(mask[o] == (v > 127.5f), "crop (%d,%d) pixel (%d,%d): v %.1f mask %u", cr->x, cr->y, x,
                          y, v, mask[o]);
            ck_assert(img[o] >= -1.0f && img[o] <= 1.0f);
        }
    free(img);
    free(mask);
}

static ld_dataset_t *small_aligned_dataset(char **root_out)
{
    char *root = ld_test_tmpdir();
    mkdirs(root, "d/image");
    mkdirs(root, "d/mask");
    write_pair(root, "d", "big.png", "big.png", 1, 70, 50, 1);
    write_pair(root, "d", "small.png", "small.png", 2, 12, 9, 1);
    ld_dataset_opts_t o = { .root = root };
    *root_out = root;
    return open_ok(&o);
}

START_TEST(crops_align_image_and_mask)
{
    char *root;
    ld_dataset_t *ds = small_aligned_dataset(&root);
    ld_rng_t rng;
    ld_rng_init(&rng, 42, 0);
    int seen_items[2] = { 0 };
    for (int t = 0; t < 60; t++) {
        ld_crop_t cr;
        ck_assert_int_eq(ld_dataset_random_crop(ds, 0, -1, 24, &rng, &cr), 0);
        ck_assert(cr.domain == 0 && cr.size == 24 && (cr.item == 0 || cr.item == 1));
        seen_items[cr.item]++;
        int w, h;
        ld_dataset_item_size(ds, 0, cr.item, &w, &h);
        if (w >= 24) /* inside the image */
            ck_assert(cr.x >= 0 && cr.x + 24 <= w && cr.y >= 0 && cr.y + 24 <= h);
        else /* the whole image inside the crop */
            ck_assert(cr.x <= 0 && cr.x + 24 >= w && cr.y <= 0 && cr.y + 24 >= h);
        check_aligned(ds, &cr);
    }
    ck_assert(seen_items[0] > 0 && seen_items[1] > 0);
    ld_crop_t cr;
    ck_assert_int_eq(ld_dataset_center_crop(ds, 0, 0, 24, &cr), 0);
    ck_assert(cr.x == (70 - 24) / 2 && cr.y == (50 - 24) / 2);
    check_aligned(ds, &cr);
    ck_assert_int_eq(ld_dataset_center_crop(ds, 0, 1, 24, &cr), 0);
    ck_assert(cr.x < 0 && cr.y < 0);
    check_aligned(ds, &cr);
    /* Same seed, same crops. */
    ld_rng_t r1, r2;
    ld_rng_init(&r1, 7, 3);
    ld_rng_init(&r2, 7, 3);
    for (int t = 0; t < 10; t++) {
        ld_crop_t a, b;
        ck_assert_int_eq(ld_dataset_random_crop(ds, 0, -1, 16, &r1, &a), 0);
        ck_assert_int_eq(ld_dataset_random_crop(ds, 0, -1, 16, &r2, &b), 0);
        ck_assert(a.item == b.item && a.x == b.x && a.y == b.y);
    }
    ld_expect_err(ld_dataset_random_crop(ds, 1, -1, 16, &rng, &cr), LD_ENOENT);
    ld_expect_err(ld_dataset_random_crop(ds, 0, 2, 16, &rng, &cr), LD_ENOENT);
    ld_expect_err(ld_dataset_center_crop(ds, 0, 0, 0, &cr), LD_ERANGE);
    ld_dataset_destroy(&ds);
    ld_test_rmtree(root);
    free(root);
}
END_TEST

typedef struct {
    const ld_dataset_t *ds;
    uint64_t seed;
    double checksum;
} crop_job_t;

static void *crop_worker(void *arg)
{
    crop_job_t *job = arg;
    ld_rng_t rng;
    ld_rng_init(&rng, job->seed, 0);
    float img[20 * 20];
    uint8_t mask[20 * 20];
    double sum = 0;
    for (int t = 0; t < 300; t++) {
        ld_crop_t cr;
        if (ld_dataset_random_crop(job->ds, 0, -1, 20, &rng, &cr) || ld_dataset_extract(job->ds, &cr, img, mask))
            return NULL;
        for (int i = 0; i < 400; i++)
            sum += (img[i] + 2.0) * (i + 1) + mask[i] * 0.5 + cr.x * 1e-3 + cr.item;
    }
    job->checksum = sum;
    return NULL;
}

START_TEST(crops_are_thread_safe)
{
    char *root;
    ld_dataset_t *ds = small_aligned_dataset(&root);
    enum { N = 4 };
    crop_job_t serial[N], par[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        serial[i] = par[i] = (crop_job_t){ .ds = ds, .seed = 100 + (uint64_t)i };
        crop_worker(&serial[i]);
    }
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, crop_worker, &par[i]), 0);
    for (int i = 0; i < N; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < N; i++) {
        ck_assert(serial[i].checksum > 0);
        ck_assert(serial[i].checksum == par[i].checksum);
    }
    ck_assert(serial[0].checksum != serial[1].checksum);
    ld_dataset_destroy(&ds);
    ld_test_rmtree(root);
    free(root);
}
END_TEST

/* A 120x100 image whose FOV is a small disc (or a single pixel): every
 * random crop's centre must fall inside it. */
static void check_fov_crops(int radius)
{
    char *root = ld_test_tmpdir();
    mkdirs(root, "d/image");
    mkdirs(root, "d/mask");
    mkdirs(root, "d/fov");
    write_pair(root, "d", "e.png", "e.png", 1, 120, 100, 3);
    ld_image_t fov;
    ck_assert_int_eq(ld_image_alloc(&fov, 120, 100, 1), 0);
    const int fx = 95, fy = 20;
    for (int y = 0; y < 100; y++)
        for (int x = 0; x < 120; x++)
            *ld_image_at(&fov, x, y) = (x - fx) * (x - fx) + (y - fy) * (y - fy) <= radius * radius ? 255 : 0;
    char p[1024];
    snprintf(p, sizeof p, "%s/d/fov/e.png", root);
    ck_assert_int_eq(ld_png_write(p, &fov), 0);
    ld_image_free(&fov);
    ld_dataset_opts_t o = { .root = root };
    ld_dataset_t *ds = open_ok(&o);
    ck_assert_int_eq(ld_dataset_item_has_fov(ds, 0, 0), 1);
    ld_rng_t rng;
    ld_rng_init(&rng, 5, 0);
    for (int t = 0; t < 200; t++) {
        ld_crop_t cr;
        ck_assert_int_eq(ld_dataset_random_crop(ds, 0, 0, 32, &rng, &cr), 0);
        int cx = cr.x + 16, cy = cr.y + 16;
        ck_assert_msg((cx - fx) * (cx - fx) + (cy - fy) * (cy - fy) <= radius * radius, "centre (%d,%d)", cx, cy);
    }
    ld_dataset_destroy(&ds);
    ld_test_rmtree(root);
    free(root);
}

START_TEST(crops_centre_inside_fov) { check_fov_crops(12); }
END_TEST

START_TEST(crops_centre_inside_tiny_fov) { check_fov_crops(0); }
END_TEST

/* ---- whole images ---- */

/* A 60 x 40 image whose FOV is the box x 10..39, y 5..24 (30 x 20), grey 200
 * outside it and 100 inside: with fit 16 the item is that box resized to
 * 16 x 11 (its longer side 16), and a crop of side 16 is the whole of it,
 * centred: rows above and below read as padding (-1, class 0). */
START_TEST(whole_images_are_cut_to_the_fov_and_fitted)
{
    char *root = ld_test_tmpdir();
    mkdirs(root, "d/image");
    mkdirs(root, "d/mask");
    mkdirs(root, "d/fov");
    ld_image_t img, mask, fov;
    ck_assert_int_eq(ld_image_alloc(&img, 60, 40, 1), 0);
    ck_assert_int_eq(ld_image_alloc(&mask, 60, 40, 1), 0);
    ck_assert_int_eq(ld_image_alloc(&fov, 60, 40, 1), 0);
    for (int y = 0; y < 40; y++)
        for (int x = 0; x < 60; x++) {
            int in = x >= 10 && x < 40 && y >= 5 && y < 25;
            *ld_image_at(&img, x, y) = in ? 100 : 200;
            *ld_image_at(&fov, x, y) = in ? 255 : 0;
            *ld_image_at(&mask, x, y) = in && x < 12 ? 255 : 0; /* a thin band at the box's left edge */
        }
    const char *names[3] = { "image", "mask", "fov" };
    ld_image_t *planes[3] = { &img, &mask, &fov };
    for (int k = 0; k < 3; k++) {
        char p[1024];
        snprintf(p, sizeof p, "%s/d/%s/e.png", root, names[k]);
        ck_assert_int_eq(ld_png_write(p, planes[k]), 0);
        ld_image_free(planes[k]);
    }
    ld_dataset_opts_t o = { .root = root, .fit = 16, .scale = 3 };
    ld_dataset_t *ds = open_ok(&o);
    int w, h;
    ld_dataset_item_size(ds, 0, 0, &w, &h);
    ck_assert_int_eq(w, 16);
    ck_assert_int_eq(h, 11);
    ld_rng_t rng;
    ld_rng_init(&rng, 1, 0);
    ld_crop_t cr;
    ck_assert_int_eq(ld_dataset_random_crop(ds, 0, -1, 16, &rng, &cr), 0);
    ck_assert_int_eq(cr.x, 0);
    ck_assert_int_eq(cr.y, -2);
    float x[16 * 16];
    uint8_t m[16 * 16];
    ck_assert_int_eq(ld_dataset_extract(ds, &cr, x, m), 0);
    const float inside = 2.0f * 100.0f / 255.0f - 1.0f;
    for (int y = 0; y < 16; y++)
        for (int c = 0; c < 16; c++) {
            int pad = y < 2 || y >= 13;
            ck_assert_msg(fabsf(x[y * 16 + c] - (pad ? -1.0f : inside)) < 1e-6, "pixel (%d,%d) = %g", c, y,
                          (double)x[y * 16 + c]);
            ck_assert_int_eq(m[y * 16 + c], !pad && c == 0);
        }
    /* other sides are still random crops */
    ck_assert_int_eq(ld_dataset_random_crop(ds, 0, 0, 8, &rng, &cr), 0);
    ck_assert_int_eq(cr.size, 8);
    ld_dataset_destroy(&ds);
    o.fit = -1;
    expect_open_error(&o, LD_ERANGE, "fit -1");
    ld_test_rmtree(root);
    free(root);
}
END_TEST

/* ---- scale and channels ---- */

START_TEST(working_scale_and_channels)
{
    char *root = ld_test_tmpdir();
    mkdirs(root, "d/image");
    mkdirs(root, "d/mask");
    write_pair(root, "d", "a.png", "a.png", 1, 101, 60, 1);
    write_pair(root, "d", "b.png", "b.png", 2, 30, 90, 1);
    ld_dataset_opts_t o = { .root = root, .scale = 0.5 };
    ld_dataset_t *ds = open_ok(&o);
    int w, h;
    ld_dataset_item_size(ds, 0, 0, &w, &h);
    ck_assert(w == 51 && h == 30); /* round(50.5) = 51 */
    ld_dataset_item_size(ds, 0, 1, &w, &h);
    ck_assert(w == 15 && h == 45);
    ck_assert_int_eq(ld_dataset_channels(ds), 1);
    ld_dataset_destroy(&ds);

    o.scale = 0;
    o.resize = 40; /* shorter side -> 40, overrides scale */
    o.channels = 3;
    ds = open_ok(&o);
    ld_dataset_item_size(ds, 0, 0, &w, &h);
    ck_assert(w == 67 && h == 40);
    ld_dataset_item_size(ds, 0, 1, &w, &h);
    ck_assert(w == 40 && h == 120);
    ck_assert_int_eq(ld_dataset_channels(ds), 3);
    /* Grey replicated into three channels; masks stay class ids. */
    float img[3 * 32 * 32];
    uint8_t mask[32 * 32];
    ld_crop_t cr;
    ck_assert_int_eq(ld_dataset_center_crop(ds, 0, 1, 32, &cr), 0);
    ck_assert_int_eq(ld_dataset_extract(ds, &cr, img, mask), 0);
    int ones = 0;
    for (int i = 0; i < 32 * 32; i++) {
        ck_assert(img[i] == img[1024 + i] && img[i] == img[2048 + i]);
        ck_assert(mask[i] <= 1);
        ones += mask[i];
    }
    ck_assert(ones > 0 && ones < 1024);
    ld_dataset_destroy(&ds);

    /* min_side skips (and counts) images that end up too small. */
    o.resize = 0;
    o.scale = 0.5;
    o.min_side = 20;
    capture_warnings();
    ds = open_ok(&o);
    ck_assert_int_eq(ld_dataset_n_items(ds, 0), 1);
    ck_assert_int_eq(ld_dataset_n_skipped(ds), 1);
    ck_assert_msg(strstr(warnings, "b.png") != NULL, "%s", warnings);
    ld_dataset_destroy(&ds);
    ld_test_rmtree(root);
    free(root);
}
END_TEST

START_TEST(rgb_images_to_grey_and_rgb_masks)
{
    char *root = ld_test_tmpdir();
    mkdirs(root, "d/image");
    mkdirs(root, "d/mask");
    char p[1024];
    snprintf(p, sizeof p, "%s/d/image/c.png", root);
    ld_image_t img;
    ck_assert_int_eq(ld_image_alloc(&img, 8, 8, 3), 0);
    for (int i = 0; i < 64; i++) {
        img.data[3 * i] = 200;
        img.data[3 * i + 1] = 100;
        img.data[3 * i + 2] = 50;
    }
    ck_assert_int_eq(ld_png_write(p, &img), 0);
    /* RGB mask with identical channels: 0 / 128 / 255 rows. */
    for (int i = 0; i < 64; i++)
        memset(img.data + 3 * i, i < 16 ? 0 : i < 40 ? 128 : 255, 3);
    snprintf(p, sizeof p, "%s/d/mask/c.png", root);
    ck_assert_int_eq(ld_png_write(p, &img), 0);
    ld_image_free(&img);
    ld_dataset_opts_t o = { .root = root, .channels = 1, .maskmap = "255:0,128:1,0:2" };
    ld_dataset_t *ds = open_ok(&o);
    ck_assert_int_eq(ld_dataset_n_classes(ds), 3);
    float g[64];
    uint8_t m[64];
    ld_crop_t cr;
    ck_assert_int_eq(ld_dataset_center_crop(ds, 0, 0, 8, &cr), 0);
    ck_assert_int_eq(ld_dataset_extract(ds, &cr, g, m), 0);
    double luma = 0.299 * 200 + 0.587 * 100 + 0.114 * 50;
    for (int i = 0; i < 64; i++) {
        ck_assert_msg(fabs((g[i] + 1) * 127.5 - luma) <= 1.0, "grey %.2f vs %.2f", (g[i] + 1) * 127.5, luma);
        ck_assert_uint_eq(m[i], i < 16 ? 2 : i < 40 ? 1 : 0);
    }
    ld_dataset_destroy(&ds);
    ld_test_rmtree(root);
    free(root);
}
END_TEST

START_TEST(resized_masks_keep_class_ids)
{
    char *root = ld_test_tmpdir();
    mkdirs(root, "d/image");
    mkdirs(root, "d/mask");
    char p[1024];
    snprintf(p, sizeof p, "%s/d/image/r.png", root);
    write_plain(p, 90, 70, 3, 100);
    ld_image_t mask;
    ck_assert_int_eq(ld_image_alloc(&mask, 90, 70, 1), 0);
    for (int y = 0; y < 70; y++)
        for (int x = 0; x < 90; x++)
            *ld_image_at(&mask, x, y) = (uint8_t)((x / 5 + y / 7) % 3 * 100); /* 0, 100, 200 */
    snprintf(p, sizeof p, "%s/d/mask/r.png", root);
    ck_assert_int_eq(ld_png_write(p, &mask), 0);
    ld_image_free(&mask);
    ld_dataset_opts_t o = { .root = root, .scale = 0.37, .maskmap = "0:0,100:1,200:2" };
    ld_dataset_t *ds = open_ok(&o);
    int w, h, counts[256] = { 0 };
    ld_dataset_item_size(ds, 0, 0, &w, &h);
    ck_assert(w == 33 && h == 26);
    float img[3 * 40 * 40];
    uint8_t m[40 * 40];
    ld_crop_t cr;
    ck_assert_int_eq(ld_dataset_center_crop(ds, 0, 0, 40, &cr), 0);
    ck_assert_int_eq(ld_dataset_extract(ds, &cr, img, m), 0);
    for (int i = 0; i < 1600; i++)
        counts[m[i]]++;
    ck_assert(counts[1] > 0 && counts[2] > 0);
    ck_assert_int_eq(counts[0] + counts[1] + counts[2], 1600);
    ld_dataset_destroy(&ds);
    ld_test_rmtree(root);
    free(root);
}
END_TEST

/* ---- manifest ---- */

START_TEST(manifest_layout)
{
    char *root = ld_test_tmpdir();
    mkdirs(root, "files/image");
    mkdirs(root, "files/mask");
    mkdirs(root, "files/f");
    write_pair(root, "files", "one.png", "one.png", 1, 30, 30, 3);
    write_pair(root, "files", "two, with comma.png", "two.png", 2, 25, 35, 3);
    char p[1024];
    snprintf(p, sizeof p, "%s/files/f/one.png", root);
    write_plain(p, 30, 30, 1, 255);
    char *csv = ld_test_path(root, "list.csv");
    char text[2048];
    snprintf(text, sizeof text,
             "domain,image,mask,fov\r\n"
             "zeta,files/image/one.png,files/mask/one.png,files/f/one.png\r\n"
             "\r\n"
             "alpha, \"files/image/two, with comma.png\" ,%s/files/mask/two.png,\n"
             "alpha,files/image/missing.png,files/mask/one.png,\n"
             "zeta,files/image/one.png,files/mask/one.png,\n",
             root);
    ld_test_write_file(csv, text, strlen(text));
    ld_dataset_opts_t o = { .manifest = csv };
    capture_warnings();
    ld_dataset_t *ds = open_ok(&o);
    ck_assert_int_eq(ld_dataset_n_domains(ds), 2);
    ck_assert_str_eq(ld_dataset_domain(ds, 0), "alpha");
    ck_assert_int_eq(ld_dataset_n_items(ds, 0), 1);
    ck_assert_int_eq(ld_dataset_n_items(ds, 1), 2);
    ck_assert_str_eq(ld_dataset_item_name(ds, 0, 0), "files/image/two, with comma.png");
    ck_assert_int_eq(ld_dataset_item_has_fov(ds, 1, 0), 1);
    ck_assert_int_eq(ld_dataset_item_has_fov(ds, 1, 1), 0);
    ck_assert_int_eq(ld_dataset_n_skipped(ds), 1);
    ck_assert_msg(strstr(warnings, "missing.png") != NULL, "%s", warnings);
    ld_dataset_destroy(&ds);

    o.domains = "zeta";
    ds = open_ok(&o);
    ck_assert_int_eq(ld_dataset_n_domains(ds), 1);
    ck_assert_int_eq(ld_dataset_n_skipped(ds), 0);
    ld_dataset_destroy(&ds);
    o.domains = "omega";
    expect_open_error(&o, LD_ENOENT, "'omega'");
    o.domains = NULL;

    static const char *bad[][2] = {
        { "dom,img,mask\nd,a,b\n", "header" },
        { "domain,image,mask\nd,a\n", "line 2" },
        { "domain,image,mask\nd,a,b,c\n", "line 2" },
        { "domain,image,mask\n\nd,,b\n", "line 3" },
        { "domain,image,mask\nd,\"a,b\n", "quote" },
        { "", "empty" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ld_test_write_file(csv, bad[i][0], strlen(bad[i][0]));
        expect_open_error(&o, LD_EFORMAT, bad[i][1]);
    }
    o.manifest = "/nonexistent/list.csv";
    expect_open_error(&o, LD_ENOENT, "/nonexistent/list.csv");
    ld_test_rmtree(root);
    free(csv);
    free(root);
}
END_TEST

/* ---- real data ---- */

static char *real_dir(const char *rel)
{
    const char *data = ld_test_data_dir();
    if (!data)
        return NULL;
    char *p = ld_test_path(data, rel);
    if (ld_test_system("test -d '%s'", p) != 0) {
        free(p);
        return NULL;
    }
    return p;
}

/* Classes present in the whole of item i. */
static unsigned class_bits(const ld_dataset_t *ds, int d, int i)
{
    int w, h;
    ld_dataset_item_size(ds, d, i, &w, &h);
    int s = w > h ? w : h;
    float *img = malloc(sizeof(float) * (size_t)ld_dataset_channels(ds) * (size_t)s * (size_t)s);
    uint8_t *m = malloc((size_t)s * (size_t)s);
    ld_crop_t cr;
    ck_assert_int_eq(ld_dataset_center_crop(ds, d, i, s, &cr), 0);
    ck_assert_int_eq(ld_dataset_extract(ds, &cr, img, m), 0);
    unsigned bits = 0;
    for (size_t k = 0; k < (size_t)s * (size_t)s; k++)
        bits |= 1u << m[k];
    free(img);
    free(m);
    return bits;
}

START_TEST(real_retina)
{
    char *root = real_dir("retina");
    if (!root)
        LD_SKIP("no retina data");
    ld_dataset_opts_t o = { .root = root, .scale = 0.25 };
    ld_dataset_t *ds = open_ok(&o);
    static const struct { const char *name; int n; } want[] = {
        { "CHASEDB1", 28 }, { "DRIVE", 40 }, { "HRF", 30 }, { "STARE", 20 }
    };
    ck_assert_int_eq(ld_dataset_n_domains(ds), 4);
    ck_assert_int_eq(ld_dataset_n_skipped(ds), 0);
    ck_assert_int_eq(ld_dataset_channels(ds), 3);
    for (int d = 0; d < 4; d++) {
        ck_assert_str_eq(ld_dataset_domain(ds, d), want[d].name);
        ck_assert_int_eq(ld_dataset_n_items(ds, d), want[d].n);
        ck_assert_int_eq(ld_dataset_item_has_fov(ds, d, 0), 1);
        ck_assert_uint_eq(class_bits(ds, d, 0), 3u);
        int w, h;
        ld_dataset_item_size(ds, d, 0, &w, &h);
        ck_assert(w > 90 && w < 160 && h > 90 && h < 160);
    }
    ld_dataset_destroy(&ds);
    free(root);
}
END_TEST

START_TEST(real_paper_fundus)
{
    char *root = real_dir("paper-samples/Fundus");
    if (!root)
        LD_SKIP("no paper-samples Fundus data");
    ld_dataset_opts_t o = { .root = root, .subdir = "train/ROIs", .maskmap = "255:0,128:1,0:2", .scale = 0.25 };
    ld_dataset_t *ds = open_ok(&o);
    ck_assert_int_eq(ld_dataset_n_domains(ds), 4);
    ck_assert_int_eq(ld_dataset_n_classes(ds), 3);
    for (int d = 0; d < 4; d++) {
        ck_assert_int_eq(ld_dataset_n_items(ds, d), 1);
        ck_assert_uint_eq(class_bits(ds, d, 0), 7u);
    }
    ld_dataset_destroy(&ds);
    o.subdir = "test/ROIs";
    ds = open_ok(&o);
    ck_assert_int_eq(ld_dataset_n_domains(ds), 4);
    ld_dataset_destroy(&ds);
    free(root);
}
END_TEST

START_TEST(real_paper_prostate)
{
    char *root = real_dir("paper-samples/ProstateSlice");
    if (!root)
        LD_SKIP("no paper-samples ProstateSlice data");
    ld_dataset_opts_t o = { .root = root, .subdir = "train", .maskmap = "0-127:1,*:0", .scale = 0.5 };
    /* I2CVB/train's only image has no mask of the same stem: skipped, which
     * leaves that domain empty -> an error naming it. */
    capture_warnings();
    expect_open_error(&o, LD_ENOENT, "'I2CVB'");
    ck_assert_msg(strstr(ld_errdetail(), "1 skipped") != NULL, "%s", ld_errdetail());
    ck_assert_msg(strstr(warnings, "I2CVB/train/image/00_01.png") != NULL, "%s", warnings);
    o.domains = "BIDMC,BMC,HK,RUNMC,UCL";
    ld_dataset_t *ds = open_ok(&o);
    ck_assert_int_eq(ld_dataset_n_domains(ds), 5);
    ck_assert_int_eq(ld_dataset_channels(ds), 1);
    for (int d = 0; d < 5; d++)
        ck_assert_uint_eq(class_bits(ds, d, 0), 3u);
    ld_dataset_destroy(&ds);
    o.subdir = "test";
    o.domains = NULL;
    ds = open_ok(&o);
    ck_assert_int_eq(ld_dataset_n_domains(ds), 6);
    ck_assert_int_eq(ld_dataset_n_skipped(ds), 0);
    ld_dataset_destroy(&ds);
    free(root);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("dataset");
    TCase *tc = ld_tcase("dataset", 60);
    tcase_add_test(tc, maskmap_rules);
    tcase_add_test(tc, maskmap_rejects_invalid);
    tcase_add_test(tc, folder_layout_pairs_by_stem);
    tcase_add_test(tc, skips_bad_files_with_warnings);
    tcase_add_test(tc, domain_errors);
    tcase_add_test(tc, crops_align_image_and_mask);
    tcase_add_test(tc, crops_are_thread_safe);
    tcase_add_test(tc, crops_centre_inside_fov);
    tcase_add_test(tc, crops_centre_inside_tiny_fov);
    tcase_add_test(tc, whole_images_are_cut_to_the_fov_and_fitted);
    tcase_add_test(tc, working_scale_and_channels);
    tcase_add_test(tc, rgb_images_to_grey_and_rgb_masks);
    tcase_add_test(tc, resized_masks_keep_class_ids);
    tcase_add_test(tc, manifest_layout);
    suite_add_tcase(s, tc);
    TCase *real = ld_tcase("real-data", 120);
    tcase_add_test(real, real_retina);
    tcase_add_test(real, real_paper_fundus);
    tcase_add_test(real, real_paper_prostate);
    suite_add_tcase(s, real);
    return ld_test_run(s);
}
