/* Autoencoder training (ld_aetrain, `langdaug train-ae`): the loss and its
 * gradient by finite differences (alone and through the autoencoder), PSNR
 * and SSIM against a direct reference, settings and hostile options (each
 * error names the option), the held-out split (never trained on), bit-exact
 * resume, divergence writing nothing, previews, model metadata, and
 * reconstruction improving on the synthetic domains.
 *
 * Knobs (env): LD_TEST_AETRAIN_ITERS (iterations of the learning run,
 * default 300). */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ld_ae.h"
#include "ld_aetrain.h"
#include "ld_error.h"
#include "ld_image.h"
#include "ld_png.h"
#include "ld_quality.h"
#include "ld_rng.h"
#include "ld_synth.h"

#define N_DOMAINS 3

static char *g_dir;   /* the suite's folder, shared by the forked tests */
static char *g_synth; /* synthetic data in it, written once by main */

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static void set(ld_aetrain_config_t *cfg, const char *key, const char *value)
{
    int rc = ld_settings_set(ld_aetrain_settings(), cfg, key, value);
    ck_assert_msg(rc == 0, "%s=%s: %s", key, value, ld_errdetail());
}

/* A small autoencoder on the synthetic data: S=16, factor 4. */
static void small_config(ld_aetrain_config_t *cfg, const char *root)
{
    ld_aetrain_config_defaults(cfg);
    set(cfg, "data", root);
    set(cfg, "size", "16");
    set(cfg, "widths", "8,16,16");
    set(cfg, "latent-channels", "4");
    set(cfg, "batch", "4");
    set(cfg, "eval-crops", "6");
    set(cfg, "seed", "7");
    set(cfg, "threads", "1");
}

static ld_aetrain_t *new_run(const ld_aetrain_config_t *cfg)
{
    ld_aetrain_t *tr = NULL;
    int rc = ld_aetrain_new(cfg, &tr);
    ck_assert_msg(rc == 0, "ld_aetrain_new: %s: %s", ld_strerror(rc), ld_errdetail());
    return tr;
}

static void run_to(ld_aetrain_t *tr, int64_t iters, const char *checkpoint, int64_t every, int64_t eval_every)
{
    ld_aetrain_run_opts_t ro = { .iters = iters, .checkpoint = checkpoint, .checkpoint_every = every,
                                 .eval_every = eval_every };
    int rc = ld_aetrain_run(tr, &ro);
    ck_assert_msg(rc == 0, "ld_aetrain_run: %s: %s", ld_strerror(rc), ld_errdetail());
    ck_assert_int_eq(ld_aetrain_iteration(tr), iters);
}

static void fill_uniform(float *v, size_t n, uint64_t seed, double lo, double hi)
{
    ld_rng_t rng;
    ld_rng_init(&rng, seed, 0);
    for (size_t i = 0; i < n; i++)
        v[i] = (float)(lo + (hi - lo) * ld_rng_uniform(&rng));
}

/* ---- the loss ------------------------------------------------------------ */

START_TEST(loss_gradient_matches_finite_differences)
{
    enum { N = 2, C = 3, S = 6, T = N * C * S * S };
    ld_aetrain_config_t cfg;
    ld_aetrain_config_defaults(&cfg);
    cfg.mse = 0.7;
    cfg.l1 = 0.3;
    cfg.grad_diff = 0.5;
    static float x[T], y[T], g[T];
    fill_uniform(x, T, 1, -1, 1);
    fill_uniform(y, T, 2, -1, 1);
    ld_aetrain_loss_t l, lp, lm;
    ld_aetrain_loss(&cfg, N, C, S, x, y, &l, g);
    ck_assert(fabs(l.loss - (0.7 * l.mse + 0.3 * l.l1 + 0.5 * l.grad_diff)) < 1e-12);
    ck_assert(l.grad_diff > 0);
    const float h = 1e-3f;
    double worst = 0, gmax = 0;
    for (int i = 0; i < T; i++) {
        float keep = y[i];
        y[i] = keep + h;
        ld_aetrain_loss(&cfg, N, C, S, x, y, &lp, NULL);
        y[i] = keep - h;
        ld_aetrain_loss(&cfg, N, C, S, x, y, &lm, NULL);
        y[i] = keep;
        double fd = (lp.loss - lm.loss) / (2.0 * h);
        worst = fmax(worst, fabs(fd - g[i]));
        gmax = fmax(gmax, fabs(g[i]));
    }
    printf("loss gradient: max |fd - analytic| %.3g, max |g| %.3g\n", worst, gmax);
    ck_assert_msg(worst < 1e-3 * gmax, "max |fd - analytic| %.3g for max |g| %.3g", worst, gmax);
    /* identical images: zero loss, zero gradient */
    ld_aetrain_loss(&cfg, N, C, S, x, x, &l, g);
    ck_assert(l.loss == 0);
    for (int i = 0; i < T; i++)
        ck_assert(g[i] == 0);
}
END_TEST

/* The gradient of the whole training loss to the autoencoder's weights
 * (dL/dy through ld_ae_backward_params) against central differences of
 * the loss of the reconstruction, for the first weight of every tensor. */
START_TEST(training_gradient_through_the_autoencoder)
{
    ld_ae_arch_t arch = { .image_channels = 3, .size = 16, .latent_channels = 3 };
    ck_assert_int_eq(ld_ae_arch_set_widths(&arch, "4,6,8"), 0);
    ld_ae_t *ae;
    ld_ae_ws_t *ws;
    ck_assert_int_eq(ld_ae_new(&arch, &ae), 0);
    ld_ae_init_random(ae, 3);
    ck_assert_int_eq(ld_ae_ws_new(&arch, 2, 1, &ws), 0);
    ld_aetrain_config_t cfg;
    ld_aetrain_config_defaults(&cfg);
    cfg.l1 = 0; /* smooth: differences of float forwards stay meaningful */
    cfg.mse = 1;
    enum { N = 2, T = N * 3 * 16 * 16 };
    static float x[T], y[T], gy[T], lat[N * 3 * 4 * 4];
    fill_uniform(x, T, 4, -1, 1);
    ld_cn_params_t *ps = ld_ae_params(ae);
    float *grad = calloc(ps->numel, sizeof *grad);
    ck_assert_ptr_nonnull(grad);
    ld_aetrain_loss_t l;
    ck_assert_int_eq(ld_ae_encode(ae, ws, N, x, lat), 0);
    ck_assert_int_eq(ld_ae_decode(ae, ws, N, lat, y), 0);
    ld_aetrain_loss(&cfg, N, 3, 16, x, y, &l, gy);
    ck_assert_int_eq(ld_ae_backward_params(ae, ws, N, x, gy, grad), 0);
    for (size_t t = 0; t < ps->n; t++) {
        float *p = ps->params + ps->t[t].offset, keep = *p, h = 1e-2f;
        double loss[2];
        for (int k = 0; k < 2; k++) {
            *p = keep + (k ? -h : h);
            ck_assert_int_eq(ld_ae_encode(ae, ws, N, x, lat), 0);
            ck_assert_int_eq(ld_ae_decode(ae, ws, N, lat, y), 0);
            ld_aetrain_loss(&cfg, N, 3, 16, x, y, &l, NULL);
            loss[k] = l.loss;
        }
        *p = keep;
        double fd = (loss[0] - loss[1]) / (2.0 * h), an = grad[ps->t[t].offset];
        ck_assert_msg(fabs(fd - an) <= 0.05 * fabs(an) + 2e-5, "%s: finite difference %.6g, analytic %.6g",
                      ps->t[t].name, fd, an);
    }
    free(grad);
    ld_ae_ws_destroy(&ws);
    ld_ae_destroy(&ae);
}
END_TEST

/* ---- PSNR and SSIM ---------------------------------------------------------- */

/* SSIM straight from the definition: every 11x11 window summed directly. */
static double ref_ssim(const float *a, const float *b, int c, int s)
{
    double w[11][11], sum = 0, total = 0;
    for (int i = 0; i < 11; i++)
        for (int j = 0; j < 11; j++)
            sum += w[i][j] = exp(-((i - 5) * (i - 5) + (j - 5) * (j - 5)) / (2 * 1.5 * 1.5));
    const size_t plane = (size_t)s * s;
    for (int v = 0; v + 11 <= s; v++)
        for (int u = 0; u + 11 <= s; u++) {
            double mx = 0, my = 0, xx = 0, yy = 0, xy = 0;
            for (int i = 0; i < 11; i++)
                for (int j = 0; j < 11; j++) {
                    size_t p = (size_t)(v + i) * s + u + j;
                    double lx = 0, ly = 0, coef[3] = { 0.299, 0.587, 0.114 };
                    for (int k = 0; k < c; k++) {
                        double cf = c == 1 ? 1 : coef[k];
                        lx += cf * (a[k * plane + p] + 1) / 2;
                        ly += cf * (b[k * plane + p] + 1) / 2;
                    }
                    double ww = w[i][j] / sum;
                    mx += ww * lx, my += ww * ly, xx += ww * lx * lx, yy += ww * ly * ly, xy += ww * lx * ly;
                }
            double c1 = 1e-4, c2 = 9e-4;
            total += (2 * mx * my + c1) * (2 * (xy - mx * my) + c2) /
                     ((mx * mx + my * my + c1) * (xx - mx * mx + yy - my * my + c2));
        }
    return total / ((double)(s - 10) * (s - 10));
}

START_TEST(psnr_and_ssim)
{
    enum { S = 24, T = 3 * S * S };
    static float a[T], b[T];
    fill_uniform(a, T, 5, -1, 1);
    for (int i = 0; i < T; i++)
        b[i] = a[i] + 0.1f;
    ck_assert(fabs(ld_quality_psnr(ld_quality_sse(a, b, T) / T) - 10 * log10(4 / 0.01)) < 1e-4);
    ck_assert(isinf(ld_quality_psnr(0)));
    double v;
    ck_assert_int_eq(ld_quality_ssim(a, a, 3, S, &v), 0);
    ck_assert(v == 1.0);
    fill_uniform(b, T, 6, -1, 1);
    for (int i = 0; i < T; i++)
        b[i] = 0.6f * a[i] + 0.4f * b[i];
    for (int c = 1; c <= 3; c += 2) {
        ck_assert_int_eq(ld_quality_ssim(a, b, c, S, &v), 0);
        double ref = ref_ssim(a, b, c, S);
        printf("SSIM (%d channel(s)) %.6f, direct %.6f\n", c, v, ref);
        ck_assert_msg(fabs(v - ref) < 1e-8, "SSIM %.9f, direct %.9f", v, ref);
        ck_assert(v > 0 && v < 1);
    }
    ld_expect_err(ld_quality_ssim(a, b, 3, 10, &v), LD_EINVAL);
    ld_expect_err(ld_quality_ssim(a, b, 2, S, &v), LD_EINVAL);
}
END_TEST

/* ---- settings and options ------------------------------------------------------ */

/* A grey 16 x 16 image at 0.8 (luminance) with a vertical dark vessel (0.2)
 * in column 7: contrast 0.6 exactly; the ring is columns 5-6 and 8-9. A
 * copy whose vessel and its neighbours are averaged (a blur) keeps less. */
START_TEST(vessel_contrast)
{
    enum { S = 16 };
    float img[S * S], blur[S * S];
    uint8_t mask[S * S] = { 0 };
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) {
            img[y * S + x] = 2.0f * (x == 7 ? 0.2f : 0.8f) - 1.0f;
            mask[y * S + x] = x == 7;
        }
    memcpy(blur, img, sizeof img);
    for (int y = 0; y < S; y++)
        for (int x = 6; x <= 8; x++)
            blur[y * S + x] = 2.0f * 0.6f - 1.0f;
    double sums[4] = { 0 }, bsums[4] = { 0 };
    ld_quality_vessel_sums(img, mask, 1, S, sums);
    ck_assert_double_eq(sums[1], S);
    ck_assert_double_eq(sums[3], 4 * S);
    ck_assert_double_eq_tol(ld_quality_vessel_contrast(sums), 0.6, 1e-6);
    ld_quality_vessel_sums(blur, mask, 1, S, bsums);
    /* ring: half at 0.6 (columns 6, 8), half at 0.8 -> 0.7; vessel 0.6 */
    ck_assert_double_eq_tol(ld_quality_vessel_contrast(bsums), 0.1, 1e-6);
    double none[4] = { 0 };
    memset(mask, 0, sizeof mask);
    ld_quality_vessel_sums(img, mask, 1, S, none);
    ck_assert(isnan(ld_quality_vessel_contrast(none)));
}
END_TEST

START_TEST(settings_round_trip_and_errors)
{
    const ld_settings_t *t = ld_aetrain_settings();
    ld_aetrain_config_t a, b;
    ld_aetrain_config_defaults(&a);
    ld_aetrain_config_defaults(&b);
    set(&a, "betas", "0.5,0.99");
    set(&a, "lr", "3e-4");
    set(&a, "seed", "18446744073709551615");
    set(&a, "data", "/x");
    set(&a, "colour-space", "lab");
    set(&a, "grad-diff", "0.25");
    char buf[LD_TRAINDATA_PATH_MAX];
    for (size_t i = 0; i < t->n; i++) {
        ck_assert_int_eq(ld_settings_get(t, &a, t->rows[i].key, buf, sizeof buf), 0);
        ck_assert_msg(ld_settings_set(t, &b, t->rows[i].key, buf) == 0, "%s=%s: %s", t->rows[i].key, buf,
                      ld_errdetail());
    }
    ck_assert_int_eq(memcmp(&a, &b, sizeof a), 0);
    ck_assert_int_eq(ld_aetrain_config_validate(&a), 0);
    /* every saved key in the metadata, threads not */
    ld_meta_t *m;
    ck_assert_int_eq(ld_meta_new(&m), 0);
    ck_assert_int_eq(ld_settings_to_meta(t, &a, m), 0);
    ck_assert_str_eq(ld_meta_get(m, "train_ae.lr"), "0.0003");
    ck_assert_str_eq(ld_meta_get(m, "train_ae.colour-space"), "lab");
    ck_assert_ptr_null(ld_meta_get(m, "train_ae.threads"));
    ck_assert_int_eq(ld_meta_count(m), t->n - 1);
    ld_meta_destroy(&m);

    static const struct { const char *key, *value, *word; int rc; } bad[] = {
        { "lr", "fast", "--lr: 'fast'", LD_EINVAL }, { "lr", "-1", "--lr", LD_ERANGE },
        { "lr", "nan", "--lr: nan is not a finite number", LD_ERANGE }, { "grad-diff", "inf", "--grad-diff", LD_ERANGE },
        { "betas", "0.5", "--betas", LD_EINVAL }, { "betas", "0.5,0.9,0.9", "--betas", LD_EINVAL },
        { "batch", "0", "--batch", LD_ERANGE }, { "batch", "99999999999", "--batch", LD_ERANGE },
        { "latent-channels", "65", "--latent-channels", LD_ERANGE }, { "size", "8", "--size", LD_ERANGE },
        { "val-fraction", "1", "--val-fraction", LD_ERANGE }, { "seed", "-1", "--seed", LD_EINVAL },
        { "threads", "1.5", "--threads", LD_EINVAL }, { "nonsense", "1", "nonsense", LD_ENOENT },
        { "colour-space", "LAB", "--colour-space: 'LAB' is not rgb or lab", LD_EINVAL },
        { "eval-crops", " 3", "--eval-crops", LD_EINVAL },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ld_expect_err(ld_settings_set(t, &b, bad[i].key, bad[i].value), bad[i].rc);
        ck_assert_msg(strstr(ld_errdetail(), bad[i].word), "%s=%s: %s", bad[i].key, bad[i].value, ld_errdetail());
    }
    char long_value[300];
    memset(long_value, 'a', sizeof long_value - 1);
    long_value[sizeof long_value - 1] = '\0';
    ld_expect_err(ld_settings_set(t, &b, "subdir", long_value), LD_ERANGE);
    ck_assert_msg(strstr(ld_errdetail(), "--subdir: value longer than"), "%s", ld_errdetail());

    static const struct { const char *key, *value, *word; } invalid[] = {
        { "size", "36", "--size: 36 is not a multiple of 8" }, { "widths", "8,16", "--widths 8,16" },
        { "widths", "8,x,16", "--widths 8,x,16" }, { "betas", "0.5,1", "beta2" },
        { "manifest", "/m.csv", "exactly one" }, { "maskmap", "zz", "" }, { "size", "1024", "" },
    };
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        b = a;
        set(&b, "size", "64");
        set(&b, invalid[i].key, invalid[i].value);
        if (strcmp(invalid[i].value, "1024") == 0) { /* the largest size with factor 8 is valid */
            set(&b, "widths", "8,8,8,8");
            ck_assert_int_eq(ld_aetrain_config_validate(&b), 0);
            continue;
        }
        ck_assert_int_ne(ld_aetrain_config_validate(&b), 0);
        ck_assert_msg(strstr(ld_errdetail(), invalid[i].word), "%s: %s", invalid[i].key, ld_errdetail());
    }
    b = a;
    b.mse = b.l1 = 0;
    ld_expect_err(ld_aetrain_config_validate(&b), LD_EINVAL);
    ck_assert_msg(strstr(ld_errdetail(), "--mse and --l1"), "%s", ld_errdetail());
}
END_TEST

/* `langdaug train-ae ARGS` exits with `status` and its stderr holds needle. */
static void expect_cli(const char *dir, const char *args, int status, const char *needle)
{
    char *err = ld_test_path(dir, "stderr.txt");
    int rc = ld_test_system("'%s/langdaug' train-ae --out '%s/x.safetensors' %s 2>'%s'", ld_test_build_dir(), dir,
                            args, err);
    char *text = ld_test_read_file(err, NULL);
    ck_assert_msg(rc == status, "%s: exit %d, expected %d: %s", args, rc, status, text);
    ck_assert_msg(strstr(text, needle), "%s: stderr lacks '%s': %s", args, needle, text);
    free(text);
    free(err);
}

START_TEST(hostile_options_name_the_option)
{
    char *dir = ld_test_tmpdir(), *args = malloc(8192);
    static const struct { const char *args, *needle; } cases[] = {
        { "--lr fast", "--lr: 'fast' is not a number" },
        { "--batch 0", "--batch" },
        { "--latent-channels 100000000000000000000", "--latent-channels" },
        { "--size 36", "--size: 36 is not a multiple of 8" },
        { "--widths 8,16,16,16,16", "--widths 8,16,16,16,16" },
        { "--val-fraction 0", "--val-fraction" },
        { "--grad-diff -1", "--grad-diff" },
        { "--mse 0 --l1 0", "--mse and --l1" },
        { "--colour-space hsv", "--colour-space: 'hsv'" },
        { "--iters 0", "--iters" },
        { "--eval-every -5", "--eval-every" },
        { "--nonsense 3", "unknown or ambiguous option '--nonsense'" },
        { "--threads", "option '--threads' needs a value" },
        { "--seed 1x", "--seed" },
        { "--manifest /nonexistent.csv", "exactly one of --data ROOT and --manifest CSV" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(args, 8192, "--data '%s' %s", g_synth, cases[i].args);
        expect_cli(dir, args, 2, cases[i].needle);
    }
    expect_cli(dir, "--size 16", 2, "--data ROOT (or --manifest CSV) is required");
    snprintf(args, 8192, "--data '%s' --size 16 --domains cam0,nosuch", g_synth);
    expect_cli(dir, args, 1, "nosuch");
    snprintf(args, 8192, "--data '%s' --resume /nonexistent.ckpt", g_synth);
    expect_cli(dir, args, 1, "/nonexistent.ckpt");
    snprintf(args, 8192, "%s/x.safetensors", dir);
    ck_assert(!exists(args));
    ld_test_rmtree(dir);
    free(dir), free(args);
}
END_TEST

/* ---- data split ------------------------------------------------------------------- */

/* Which image of the flat data set an item is: the digit of its file name. */
static int flat_image(const ld_dataset_t *ds, int d, int item)
{
    const char *name = ld_dataset_item_name(ds, d, item), *slash = strrchr(name, '/');
    return (slash ? slash[1] : name[0]) - '0';
}

/* Two domains of 5 flat-coloured 24x24 images: image i of domain d has the
 * colour (20 + 40 i, 100 + 50 d, 7), so a crop tells which image it came
 * from. */
static char *flat_root(void)
{
    char *root = ld_test_path(g_dir, "flat");
    if (exists(root))
        return root;
    for (int d = 0; d < 2; d++) {
        ck_assert_int_eq(ld_test_system("mkdir -p '%s/%c/image' '%s/%c/mask'", root, 'A' + d, root, 'A' + d), 0);
        for (int i = 0; i < 5; i++) {
            ld_image_t img, mask;
            const uint8_t rgb[3] = { (uint8_t)(20 + 40 * i), (uint8_t)(100 + 50 * d), 7 };
            ck_assert_int_eq(ld_image_alloc(&img, 24, 24, 3), 0);
            ck_assert_int_eq(ld_image_alloc(&mask, 24, 24, 1), 0);
            ld_image_fill_rect(&img, 0, 0, 24, 24, rgb);
            char path[4200];
            snprintf(path, sizeof path, "%s/%c/image/%d.png", root, 'A' + d, i);
            ck_assert_int_eq(ld_png_write(path, &img), 0);
            snprintf(path, sizeof path, "%s/%c/mask/%d.png", root, 'A' + d, i);
            ck_assert_int_eq(ld_png_write(path, &mask), 0);
            ld_image_free(&img);
            ld_image_free(&mask);
        }
    }
    return root;
}

START_TEST(held_out_images_are_never_trained_on)
{
    char *root = flat_root();
    ld_aetrain_config_t cfg;
    small_config(&cfg, root);
    set(&cfg, "val-fraction", "0.4"); /* 2 of 5 per domain */
    ld_aetrain_t *tr = new_run(&cfg);
    const ld_dataset_t *ds = ld_aetrain_dataset(tr);
    int held[2][5] = { { 0 } };
    for (int d = 0; d < 2; d++) {
        ck_assert_int_eq(ld_aetrain_n_val(tr, d), 2);
        for (int k = 0; k < 2; k++) {
            held[d][flat_image(ds, d, ld_aetrain_val_items(tr, d)[k])] = 1;
        }
    }
    int seen[2][5] = { { 0 } };
    for (int it = 0; it < 40; it++) {
        ck_assert_int_eq(ld_aetrain_step(tr, NULL), 0);
        for (int i = 0; i < cfg.batch; i++) {
            const float *x = ld_aetrain_batch(tr) + (size_t)i * 3 * 16 * 16;
            int r = (int)lround((x[0] + 1) * 127.5), g = (int)lround((x[256] + 1) * 127.5);
            int item = (r - 20) / 40, d = (g - 100) / 50;
            ck_assert_msg(d >= 0 && d < 2 && item >= 0 && item < 5, "crop colour %d,%d", r, g);
            ck_assert_msg(!held[d][item], "iteration %d trained on held-out image %d of domain %d", it + 1, item, d);
            seen[d][item] = 1;
        }
    }
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < 5; i++)
            ck_assert_msg(seen[d][i] != held[d][i], "domain %d image %d: held %d, trained %d", d, i, held[d][i],
                          seen[d][i]);
    ld_aetrain_destroy(&tr);
    /* other seeds hold out other images */
    int differs = 0;
    for (int seed = 8; seed < 12 && !differs; seed++) {
        char value[8];
        snprintf(value, sizeof value, "%d", seed);
        set(&cfg, "seed", value);
        tr = new_run(&cfg);
        for (int k = 0; k < 2; k++)
            differs |= !held[0][flat_image(ld_aetrain_dataset(tr), 0, ld_aetrain_val_items(tr, 0)[k])];
        ld_aetrain_destroy(&tr);
    }
    ck_assert(differs);
    /* a domain too small to split is named */
    set(&cfg, "val-fraction", "0.9");
    ld_expect_err(ld_aetrain_new(&cfg, &tr), LD_EINVAL);
    ck_assert_ptr_null(tr);
    ck_assert_msg(strstr(ld_errdetail(), "domain A has 5 images: holding out 5"), "%s", ld_errdetail());
    free(root);
}
END_TEST

/* ---- checkpoints ------------------------------------------------------------------- */

START_TEST(resume_is_bit_exact)
{
    char *dir = ld_test_tmpdir();
    char *ck_a = ld_test_path(dir, "a.ckpt"), *ck_b = ld_test_path(dir, "b.ckpt");
    char *mod_a = ld_test_path(dir, "a.safetensors"), *mod_b = ld_test_path(dir, "b.safetensors");
    ld_aetrain_config_t cfg, two_threads;
    small_config(&cfg, g_synth);
    set(&cfg, "grad-diff", "0.5");
    two_threads = cfg;
    set(&two_threads, "threads", "2"); /* threads do not change results */
    ld_aetrain_t *tr = new_run(&two_threads);
    run_to(tr, 12, ck_a, 5, 4);
    ck_assert_int_eq(ld_aetrain_save_model(tr, mod_a, NULL, NULL), 0);
    ld_aetrain_destroy(&tr);

    tr = new_run(&cfg);
    run_to(tr, 7, ck_b, 0, 4);
    ld_aetrain_destroy(&tr);
    ld_meta_t *overrides;
    ck_assert_int_eq(ld_meta_new(&overrides), 0);
    ck_assert_int_eq(ld_meta_set(overrides, "threads", "2"), 0);
    ck_assert_int_eq(ld_meta_set(overrides, "lr", "0.0010"), 0); /* same value, other spelling */
    ck_assert_msg(ld_aetrain_resume(ck_b, overrides, &tr) == 0, "%s", ld_errdetail());
    ck_assert_int_eq(ld_aetrain_iteration(tr), 7);
    ck_assert_int_eq(ld_aetrain_n_evals(tr), 1);
    run_to(tr, 12, ck_b, 5, 4);
    ck_assert_int_eq(ld_aetrain_save_model(tr, mod_b, NULL, NULL), 0);
    int64_t rows;
    const float *h = ld_aetrain_history(tr, &rows);
    ck_assert_int_eq(rows, 12);
    ck_assert(isfinite(h[0]) && h[11 * LD_AETRAIN_HISTORY_COLS + 3] > 0);
    ck_assert_int_eq(ld_aetrain_n_evals(tr), 3); /* 4, 8, 12 */
    ld_aetrain_destroy(&tr);
    ck_assert_msg(ld_test_files_equal(mod_a, mod_b), "model files differ");
    ck_assert_msg(ld_test_files_equal(ck_a, ck_b), "final checkpoints differ");

    /* trajectory settings may not change; a model file is not a checkpoint */
    ck_assert_int_eq(ld_meta_set(overrides, "lr", "0.002"), 0);
    ld_expect_err(ld_aetrain_resume(ck_b, overrides, &tr), LD_EINVAL);
    ck_assert_ptr_null(tr);
    ck_assert_msg(strstr(ld_errdetail(), "--lr 0.002 differs from the checkpoint's 0.001"), "%s", ld_errdetail());
    ld_expect_err(ld_aetrain_resume(mod_a, NULL, &tr), LD_EFORMAT);
    ck_assert_msg(strstr(ld_errdetail(), "not a langdaug autoencoder training checkpoint"), "%s", ld_errdetail());
    ld_meta_destroy(&overrides);
    ld_test_rmtree(dir);
    free(dir), free(ck_a), free(ck_b), free(mod_a), free(mod_b);
}
END_TEST

START_TEST(divergence_stops_and_writes_nothing)
{
    char *dir = ld_test_tmpdir(), *ck = ld_test_path(dir, "d.ckpt"), *model = ld_test_path(dir, "d.safetensors");
    char *prev = ld_test_path(dir, "prev"), *ck_copy = ld_test_path(dir, "copy.ckpt");
    ck_assert_int_eq(mkdir(prev, 0700), 0);
    ld_aetrain_config_t cfg;
    small_config(&cfg, g_synth);
    ld_aetrain_t *tr = new_run(&cfg);
    run_to(tr, 3, ck, 1, 0);
    ck_assert_int_eq(ld_test_system("cp '%s' '%s'", ck, ck_copy), 0);
    /* a NaN weight makes the next loss NaN */
    ld_ae_params((ld_ae_t *)ld_aetrain_model(tr))->params[0] = NAN;
    ld_aetrain_run_opts_t ro = { .iters = 10, .checkpoint = ck, .checkpoint_every = 1, .preview_dir = prev,
                                 .preview_every = 1, .eval_every = 1 };
    ld_expect_err(ld_aetrain_run(tr, &ro), LD_ENUMERIC);
    ck_assert_msg(strstr(ld_errdetail(), "training diverged at iteration 4: the loss is nan"), "%s",
                  ld_errdetail());
    ck_assert_int_eq(ld_aetrain_iteration(tr), 3);
    ck_assert_msg(ld_test_files_equal(ck, ck_copy), "the checkpoint changed after the divergence");
    ck_assert_int_eq(ld_test_count_entries(prev), 0);
    ld_expect_err(ld_aetrain_save_model(tr, model, NULL, NULL), LD_ESTATE);
    ld_expect_err(ld_aetrain_save_checkpoint(tr, ck), LD_ESTATE);
    ld_expect_err(ld_aetrain_preview(tr, model), LD_ESTATE);
    ld_expect_err(ld_aetrain_step(tr, NULL), LD_ESTATE);
    ck_assert(!exists(model));
    ck_assert_msg(ld_test_files_equal(ck, ck_copy), "the checkpoint changed after the divergence");
    ld_aetrain_destroy(&tr);
    /* an absurd learning rate blows the weights up the same way */
    set(&cfg, "lr", "1e9");
    tr = new_run(&cfg);
    ld_aetrain_run_opts_t ro2 = { .iters = 50 };
    ld_expect_err(ld_aetrain_run(tr, &ro2), LD_ENUMERIC);
    ck_assert_msg(strstr(ld_errdetail(), "training diverged at iteration"), "%s", ld_errdetail());
    ld_aetrain_destroy(&tr);
    ld_test_rmtree(dir);
    free(dir), free(ck), free(model), free(prev), free(ck_copy);
}
END_TEST

/* ---- previews and model files ------------------------------------------------------- */

START_TEST(preview_grid_and_model_metadata)
{
    char *dir = ld_test_tmpdir(), *model = ld_test_path(dir, "m.safetensors");
    ld_aetrain_config_t cfg;
    small_config(&cfg, g_synth);
    set(&cfg, "colour-space", "lab");
    ld_aetrain_t *tr = new_run(&cfg);
    ld_aetrain_run_opts_t ro = { .iters = 4, .preview_dir = dir, .preview_every = 2, .eval_every = 4 };
    ck_assert_int_eq(ld_aetrain_run(tr, &ro), 0);
    char *p2 = ld_test_path(dir, "preview_00000002.png"), *p4 = ld_test_path(dir, "preview_00000004.png");
    ld_image_t a, b;
    ck_assert_int_eq(ld_png_read(p2, &a), 0);
    ck_assert_int_eq(ld_png_read(p4, &b), 0);
    const int tile = 16 + 2;
    ck_assert_int_eq(a.height, N_DOMAINS * tile); /* a row per domain */
    ck_assert_int_eq(a.width, 2 * 4 * tile);       /* 4 (original | reconstruction) pairs */
    int orig_same = 1, recon_same = 1;
    for (int y = 0; y < a.height; y++)
        for (int x = 0; x < a.width; x++)
            for (int k = 0; k < 3; k++) {
                int same = ld_image_at(&a, x, y)[k] == ld_image_at(&b, x, y)[k];
                if ((x / tile) % 2 == 0)
                    orig_same &= same;
                else
                    recon_same &= same;
            }
    ck_assert(orig_same);  /* the same held-out crops */
    ck_assert(!recon_same); /* other weights */
    ld_image_free(&a);
    ld_image_free(&b);

    ld_meta_t *prov, *meta;
    ck_assert_int_eq(ld_meta_new(&prov), 0);
    ck_assert_int_eq(ld_meta_set(prov, "command", "test"), 0);
    ck_assert_int_eq(ld_aetrain_save_model(tr, model, prov, NULL), 0);
    ld_ae_t *ae;
    ck_assert_msg(ld_ae_load(model, &ae, &meta, NULL) == 0, "%s", ld_errdetail());
    ck_assert_int_eq(ld_ae_arch(ae)->colour_space, LD_COLOUR_LAB);
    ck_assert_int_eq(ld_ae_arch(ae)->latent_channels, 4);
    ck_assert_str_eq(ld_meta_get(meta, "colour_space"), "lab");
    ck_assert_str_eq(ld_meta_get(meta, "command"), "test");
    ck_assert_str_eq(ld_meta_get(meta, "iterations"), "4");
    ck_assert_str_eq(ld_meta_get(meta, "train_ae.widths"), "8,16,16");
    ck_assert_str_eq(ld_meta_get(meta, "train_ae.domains"), "cam0,cam1,cam2");
    ck_assert_str_eq(ld_meta_get(meta, "train_ae.channels"), "3");
    ck_assert_ptr_null(ld_meta_get(meta, "train_ae.threads"));
    ld_aetrain_eval_t ev;
    ck_assert_int_eq(ld_aetrain_n_evals(tr), 1);
    ld_aetrain_eval_at(tr, 0, &ev);
    char want[32];
    snprintf(want, sizeof want, "%.4f", ev.psnr[1]);
    ck_assert_str_eq(ld_meta_get(meta, "eval.cam1.psnr"), want);
    ck_assert_ptr_nonnull(ld_meta_get(meta, "eval.cam2.ssim"));
    /* the model file's weights are the run's */
    const ld_cn_params_t *pa = ld_ae_params_const(ae), *pb = ld_ae_params_const(ld_aetrain_model(tr));
    ck_assert_int_eq(memcmp(pa->params, pb->params, pa->numel * sizeof(float)), 0);
    ld_meta_destroy(&meta);
    ld_ae_destroy(&ae);
    /* after another step the evaluation is stale and not recorded */
    ck_assert_int_eq(ld_aetrain_step(tr, NULL), 0);
    ck_assert_int_eq(ld_aetrain_save_model(tr, model, NULL, NULL), 0);
    ck_assert_int_eq(ld_ae_load(model, &ae, &meta, NULL), 0);
    ck_assert_ptr_null(ld_meta_get(meta, "eval.cam1.psnr"));
    ld_meta_destroy(&meta);
    ld_ae_destroy(&ae);
    ld_meta_destroy(&prov);
    ld_aetrain_destroy(&tr);
    ld_test_rmtree(dir);
    free(dir), free(model), free(p2), free(p4);
}
END_TEST

/* ---- learning ------------------------------------------------------------------------- */

START_TEST(reconstruction_improves_on_synthetic_domains)
{
    ld_aetrain_config_t cfg;
    small_config(&cfg, g_synth);
    set(&cfg, "size", "32");
    set(&cfg, "widths", "16,32,32");
    set(&cfg, "latent-channels", "8");
    set(&cfg, "batch", "8");
    set(&cfg, "eval-crops", "12");
    set(&cfg, "grad-diff", "0.5");
    const char *env = getenv("LD_TEST_AETRAIN_ITERS");
    int64_t iters = env && *env ? atoll(env) : 300;
    ld_aetrain_t *tr = new_run(&cfg);
    ld_aetrain_eval_t before, after;
    ck_assert_int_eq(ld_aetrain_evaluate(tr, &before), 0);
    run_to(tr, iters, NULL, 0, 0);
    ck_assert_int_eq(ld_aetrain_evaluate(tr, &after), 0);
    for (int d = 0; d < N_DOMAINS; d++) {
        printf("cam%d: PSNR %.2f -> %.2f dB, SSIM %.4f -> %.4f after %lld iterations\n", d, before.psnr[d],
               after.psnr[d], before.ssim[d], after.ssim[d], (long long)iters);
        ck_assert_msg(after.psnr[d] > before.psnr[d] + 5, "cam%d: PSNR %.2f -> %.2f", d, before.psnr[d],
                      after.psnr[d]);
        ck_assert_msg(after.ssim[d] > before.ssim[d] + 0.2, "cam%d: SSIM %.4f -> %.4f", d, before.ssim[d],
                      after.ssim[d]);
    }
    int64_t rows;
    const float *h = ld_aetrain_history(tr, &rows);
    double first = 0, last = 0;
    for (int i = 0; i < 20; i++) {
        first += h[i * LD_AETRAIN_HISTORY_COLS] / 20;
        last += h[(rows - 1 - i) * LD_AETRAIN_HISTORY_COLS] / 20;
    }
    printf("training loss: first 20 iterations %.4f, last 20 %.4f\n", first, last);
    ck_assert_msg(last < 0.5 * first, "loss %.4f -> %.4f", first, last);
    ld_aetrain_destroy(&tr);
}
END_TEST

int main(void)
{
    const char *base = getenv("TMPDIR");
    g_dir = malloc(4096);
    snprintf(g_dir, 4096, "%s/langdaug-aetrain.XXXXXX", base && *base ? base : "/tmp");
    if (!g_dir || !mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    g_synth = malloc(4200);
    snprintf(g_synth, 4200, "%s/synth", g_dir);
    ld_synth_opts_t o;
    ld_synth_defaults(&o);
    o.n_domains = N_DOMAINS;
    o.per_domain = 6;
    o.size = 48;
    if (ld_synth_write(g_synth, &o)) {
        fprintf(stderr, "synthetic data: %s\n", ld_errdetail());
        return 1;
    }
    Suite *s = suite_create("aetrain");
    TCase *quick = ld_tcase("aetrain", 120);
    tcase_add_test(quick, loss_gradient_matches_finite_differences);
    tcase_add_test(quick, training_gradient_through_the_autoencoder);
    tcase_add_test(quick, psnr_and_ssim);
    tcase_add_test(quick, vessel_contrast);
    tcase_add_test(quick, settings_round_trip_and_errors);
    tcase_add_test(quick, hostile_options_name_the_option);
    tcase_add_test(quick, held_out_images_are_never_trained_on);
    tcase_add_test(quick, resume_is_bit_exact);
    tcase_add_test(quick, divergence_stops_and_writes_nothing);
    tcase_add_test(quick, preview_grid_and_model_metadata);
    suite_add_tcase(s, quick);
    TCase *learn = ld_tcase("learning", 600);
    tcase_add_test(learn, reconstruction_improves_on_synthetic_domains);
    suite_add_tcase(s, learn);
    int rc = ld_test_run(s);
    ld_test_rmtree(g_dir);
    free(g_dir);
    free(g_synth);
    return rc;
}
