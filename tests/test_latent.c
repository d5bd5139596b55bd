/* Latent mode (ld_latent, ld_langevin_sample_latent, langdaug train --latent,
 * langdaug sample on a latent model): the label rule on the latent grid,
 * pairing checks, chains that move the encoded latent without clamping and
 * decode their snapshots (against a chain computed by hand), training on
 * latents with the autoencoder's identity in the model and the checkpoint,
 * bit-exact resume, and the refusals when the autoencoder is not the one
 * the model was trained on. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ld_ae.h"
#include "ld_colour.h"
#include "ld_ebm.h"
#include "ld_error.h"
#include "ld_langevin.h"
#include "ld_latent.h"
#include "ld_model.h"
#include "ld_rng.h"
#include "ld_safetensors.h"
#include "ld_synth.h"
#include "ld_train.h"

#define S 16        /* image side */
#define ZC 3        /* latent channels */
#define SIDE (S / 4) /* latent side (factor 4) */

static ld_ae_arch_t ae_arch(void)
{
    ld_ae_arch_t a;
    memset(&a, 0, sizeof a);
    a.image_channels = 3;
    a.size = S;
    a.latent_channels = ZC;
    ck_assert_int_eq(ld_ae_arch_set_widths(&a, "4,6,8"), 0);
    ck_assert_msg(ld_ae_arch_validate(&a) == 0, "%s", ld_errdetail());
    return a;
}

static ld_ebm_arch_t ebm_arch(void)
{
    ld_ebm_arch_t a;
    memset(&a, 0, sizeof a);
    a.image_channels = ZC;
    a.mask_classes = 2;
    a.size = SIDE;
    ck_assert_int_eq(ld_ebm_arch_set_widths(&a, "4,6"), 0);
    ck_assert_int_eq(ld_ebm_arch_set_domains(&a, "a,b"), 0);
    ck_assert_msg(ld_ebm_arch_validate(&a) == 0, "%s", ld_errdetail());
    return a;
}

static float *rand_floats(size_t n, uint64_t seed)
{
    float *x = malloc(n * sizeof *x);
    ld_rng_t r;
    ld_rng_init(&r, seed, 0);
    for (size_t i = 0; i < n; i++)
        x[i] = 2.0f * ld_rng_uniform(&r) - 1.0f;
    return x;
}

START_TEST(mask_cells_keep_thin_structures)
{
    ld_ae_arch_t a = ae_arch(); /* 16 px, factor 4: a 4 x 4 grid of cells */
    uint8_t mask[S * S] = { 0 }, out[SIDE * SIDE];
    mask[0 * S + 5] = 1;                       /* cell (0,1): one pixel of class 1 */
    for (int i = 0; i < 5; i++)                /* cell (1,0): five px of class 2, three of class 1 */
        mask[(4 + i / 4) * S + i % 4] = 2;
    for (int i = 5; i < 8; i++)
        mask[(4 + i / 4) * S + i % 4] = 1;
    for (int y = 4; y < 8; y++)                /* cell (1,1): all class 1 */
        for (int x = 4; x < 8; x++)
            mask[y * S + x] = 1;
    ld_latent_mask(&a, 1, mask, out);
    ck_assert_int_eq(out[0], 0);                /* all background */
    ck_assert_int_eq(out[1], 1);                /* a thin structure survives */
    ck_assert_int_eq(out[SIDE + 0], 2);         /* the most frequent labelled class */
    ck_assert_int_eq(out[SIDE + 1], 1);
    for (int i = 2; i < SIDE * SIDE; i++)
        if (i != SIDE && i != SIDE + 1)
            ck_assert_int_eq(out[i], 0);
}
END_TEST

START_TEST(pairing_is_checked)
{
    ld_ae_arch_t a = ae_arch();
    ld_ebm_arch_t e = ebm_arch();
    ck_assert_int_eq(ld_latent_check(&a, &e), 0);
    e.image_channels = ZC + 1;
    ld_expect_err(ld_latent_check(&a, &e), LD_EINVAL);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "latent has 3"));
    e = ebm_arch();
    e.size = SIDE * 2;
    ld_expect_err(ld_latent_check(&a, &e), LD_EINVAL);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "latent side is 4"));
    e = ebm_arch();
    e.colour_space = LD_COLOUR_LAB;
    ld_expect_err(ld_latent_check(&a, &e), LD_EINVAL);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "colour space"));
}
END_TEST

/* A random autoencoder and latent model with workspaces for n samples. */
typedef struct {
    ld_ae_arch_t aa;
    ld_ae_t *ae;
    ld_ebm_t *m;
    ld_ae_ws_t *aws;
    ld_ebm_ws_t *ews;
} pair_t;

static pair_t pair_new(int n)
{
    pair_t p = { .aa = ae_arch() };
    ld_ebm_arch_t ea = ebm_arch();
    ck_assert_int_eq(ld_ae_new(&p.aa, &p.ae), 0);
    ld_ae_init_random(p.ae, 3);
    ck_assert_int_eq(ld_ebm_new(&ea, &p.m), 0);
    ld_ebm_init_random(p.m, 4);
    ck_assert_int_eq(ld_ae_ws_new(&p.aa, n, 1, &p.aws), 0);
    ck_assert_int_eq(ld_ebm_ws_new(&ea, n, 1, &p.ews), 0);
    return p;
}

static void pair_free(pair_t *p)
{
    ld_ae_ws_destroy(&p->aws);
    ld_ebm_ws_destroy(&p->ews);
    ld_ae_destroy(&p->ae);
    ld_ebm_destroy(&p->m);
}

/* A noise-free latent chain, step by step by hand: z0 = encode(start),
 * z_{k+1} = z_k - (eta/2) dE/dz (never clamped), snapshot k = decode(z_k);
 * step 0 is the start itself. */
START_TEST(latent_chain_matches_hand_computed_steps)
{
    enum { N = 3, K = 2 };
    pair_t pr = pair_new(N);
    const size_t per = 3 * S * S, lat = ld_ae_arch_latent_numel(&pr.aa);
    float *start = rand_floats(N * per, 5), *snaps = malloc((K + 1) * N * per * sizeof(float));
    uint8_t mask[N * S * S], lmask[N * SIDE * SIDE];
    for (size_t i = 0; i < sizeof mask; i++)
        mask[i] = (uint8_t)(i % 7 == 0);
    int32_t target[N] = { 1, 1, 0 };
    uint64_t chain[N] = { 0, 1, 2 };
    ld_langevin_params_t p = { .step_size = 400.0f, .noise = 0.0f, .steps = K, .n_snapshots = K + 1,
                               .snapshots = { 0, 1, K } };
    ck_assert_msg(ld_langevin_sample_latent(pr.m, pr.ews, pr.ae, pr.aws, &p, LD_KEEP_NONE, N, start, mask, target,
                                            chain, snaps, NULL, NULL, NULL) == 0, "%s", ld_errdetail());
    ck_assert_int_eq(memcmp(snaps, start, N * per * sizeof(float)), 0);

    float *z = malloc(N * lat * sizeof(float)), *tmp = malloc(N * per * sizeof(float));
    float *grad = malloc(N * lat * sizeof(float)), *img = malloc(N * per * sizeof(float)), e[N];
    ck_assert_int_eq(ld_latent_encode_rgb(pr.ae, pr.aws, N, start, tmp, z), 0);
    ld_latent_mask(&pr.aa, N, mask, lmask);
    float zmax = 0;
    for (int k = 1; k <= K; k++) {
        ck_assert_int_eq(ld_ebm_energy(pr.m, pr.ews, N, z, lmask, target, e, grad), 0);
        for (size_t i = 0; i < N * lat; i++) {
            z[i] -= 0.5f * p.step_size * grad[i];
            zmax = fabsf(z[i]) > zmax ? fabsf(z[i]) : zmax;
        }
        ck_assert_int_eq(ld_latent_decode(pr.ae, pr.aws, N, z, img), 0);
        double worst = 0;
        for (size_t i = 0; i < N * per; i++)
            worst = fmax(worst, fabs((double)img[i] - snaps[(size_t)k * N * per + i]));
        ck_assert_msg(worst < 1e-5, "snapshot %d differs from the hand-computed chain by %g", k, worst);
    }
    /* the test only pins "no clamp" if the latent leaves [-1, 1] */
    ck_assert_msg(zmax > 1.5f, "latents stayed within %g: raise the step size", (double)zmax);
    free(z), free(tmp), free(grad), free(img), free(start), free(snaps);
    pair_free(&pr);
}
END_TEST

/* The authors' fundus setting on a latent chain: keep = luminance is applied
 * to each decoded snapshot (the start's L*, the decoded a*, b*), exactly as
 * ld_colour_keep_luminance would to the keep-none snapshot, and brings the
 * snapshots' L* to the start's where keep-none leaves the decoder's. */
static float mean_abs_lightness_gap(const float *a, const float *b, size_t pixels)
{
    float *la = malloc(3 * pixels * sizeof(float)), *lb = malloc(3 * pixels * sizeof(float));
    ld_colour_rgb_to_lab(a, la, pixels);
    ld_colour_rgb_to_lab(b, lb, pixels);
    double sum = 0;
    for (size_t i = 0; i < pixels; i++) /* planar: the L' plane comes first */
        sum += fabs((double)la[i] - lb[i]);
    free(la), free(lb);
    return (float)(sum / pixels);
}

START_TEST(latent_chain_keeps_the_start_luminance)
{
    enum { N = 2, K = 2 };
    pair_t pr = pair_new(N);
    const size_t per = 3 * S * S, all = (K + 1) * N * per;
    float *start = rand_floats(N * per, 6), *plain = malloc(all * sizeof(float)), *kept = malloc(all * sizeof(float));
    uint8_t mask[N * S * S] = { 0 };
    int32_t target[N] = { 1, 0 };
    uint64_t chain[N] = { 0, 1 };
    ld_langevin_params_t p = { .step_size = 50.0f, .noise = 0.0f, .steps = K, .n_snapshots = K + 1,
                               .snapshots = { 0, 1, K } };
    ck_assert_int_eq(ld_langevin_sample_latent(pr.m, pr.ews, pr.ae, pr.aws, &p, LD_KEEP_NONE, N, start, mask,
                                               target, chain, plain, NULL, NULL, NULL), 0);
    ck_assert_msg(ld_langevin_sample_latent(pr.m, pr.ews, pr.ae, pr.aws, &p, LD_KEEP_LUMINANCE, N, start, mask,
                                            target, chain, kept, NULL, NULL, NULL) == 0, "%s", ld_errdetail());
    ck_assert_int_eq(memcmp(kept, start, N * per * sizeof(float)), 0); /* step 0: the start itself */
    for (int k = 1; k <= K; k++)
        for (int i = 0; i < N; i++) {
            const size_t at = ((size_t)k * N + i) * per;
            float want[3 * S * S];
            memcpy(want, plain + at, sizeof want);
            ld_colour_keep_luminance(start + (size_t)i * per, want, S * S);
            ck_assert_msg(memcmp(want, kept + at, sizeof want) == 0, "snapshot %d, chain %d: keep not as in RGB", k, i);
            float gap_plain = mean_abs_lightness_gap(start + (size_t)i * per, plain + at, S * S);
            float gap_kept = mean_abs_lightness_gap(start + (size_t)i * per, kept + at, S * S);
            ck_assert_msg(gap_plain > 0.05f && gap_kept < 0.1f * gap_plain,
                          "snapshot %d, chain %d: L' gap to the start %g kept vs %g decoded", k, i, (double)gap_kept,
                          (double)gap_plain);
        }
    free(start), free(plain), free(kept);
    pair_free(&pr);
}
END_TEST

/* ---- training on latents ---- */

typedef struct {
    char *dir, *data, *ae, *other_ae;
    char ae_hash[65];
} fixture_t;

static char *save_ae(const char *dir, const char *name, uint64_t seed, int size, char hash[65])
{
    ld_ae_arch_t a = ae_arch();
    a.size = size;
    ld_ae_t *ae = NULL;
    ck_assert_int_eq(ld_ae_new(&a, &ae), 0);
    ld_ae_init_random(ae, seed);
    char *path = ld_test_path(dir, name);
    ck_assert_msg(ld_ae_save(path, ae, NULL, hash) == 0, "%s", ld_errdetail());
    ld_ae_destroy(&ae);
    return path;
}

static fixture_t fixture(void)
{
    fixture_t f;
    f.dir = ld_test_tmpdir();
    f.data = ld_test_path(f.dir, "data");
    ld_synth_opts_t o;
    ld_synth_defaults(&o);
    o.n_domains = 2;
    o.per_domain = 3;
    o.size = 32;
    ck_assert_int_eq(ld_synth_write(f.data, &o), 0);
    f.ae = save_ae(f.dir, "ae.safetensors", 11, S, f.ae_hash);
    f.other_ae = save_ae(f.dir, "other-ae.safetensors", 12, S, NULL);
    return f;
}

static void fixture_free(fixture_t *f)
{
    ld_test_rmtree(f->dir);
    free(f->dir), free(f->data), free(f->ae), free(f->other_ae);
}

static void latent_config(ld_train_config_t *cfg, const fixture_t *f)
{
    ld_train_config_defaults(cfg);
    ck_assert_int_eq(ld_train_config_set(cfg, "data", f->data), 0);
    ck_assert_int_eq(ld_train_config_set(cfg, "latent", f->ae), 0);
    ck_assert_int_eq(ld_train_config_set(cfg, "size", "16"), 0);
    ck_assert_int_eq(ld_train_config_set(cfg, "widths", "8,16"), 0);
    ck_assert_int_eq(ld_train_config_set(cfg, "batch", "4"), 0);
    ck_assert_int_eq(ld_train_config_set(cfg, "langevin-steps", "3"), 0);
    ck_assert_int_eq(ld_train_config_set(cfg, "noise", "0"), 0);
    ck_assert_int_eq(ld_train_config_set(cfg, "threads", "1"), 0);
}

static void same_params(const ld_ebm_t *a, const ld_ebm_t *b)
{
    ck_assert_int_eq(memcmp(ld_ebm_params_const(a), ld_ebm_params_const(b), ld_ebm_numel(a) * sizeof(float)), 0);
}

START_TEST(latent_training_names_its_autoencoder_and_resumes_exactly)
{
    fixture_t f = fixture();
    ld_train_config_t cfg;
    latent_config(&cfg, &f);
    ld_train_t *whole = ld_test_train_new(&cfg), *half = ld_test_train_new(&cfg);
    const ld_ebm_arch_t *a = ld_ebm_arch(ld_train_model(whole));
    ck_assert_int_eq(a->image_channels, ZC);
    ck_assert_int_eq(a->size, SIDE);
    ld_test_train_run_to(whole, 4, NULL, 0);
    char *ckpt = ld_test_path(f.dir, "run.ckpt"), *model = ld_test_path(f.dir, "latent.safetensors");
    ld_test_train_run_to(half, 2, ckpt, 2);
    ld_train_destroy(&half);

    ld_meta_t *over = NULL;
    ck_assert_int_eq(ld_meta_new(&over), 0);
    ck_assert_int_eq(ld_meta_set(over, "latent", f.other_ae), 0);
    ld_expect_err(ld_train_resume(ckpt, over, &half), LD_EINVAL);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "the checkpoint's run used"));
    ld_meta_destroy(&over);
    ck_assert_msg(ld_train_resume(ckpt, NULL, &half) == 0, "%s", ld_errdetail());
    ld_test_train_run_to(half, 4, NULL, 0);
    same_params(ld_train_model(whole), ld_train_model(half));

    ck_assert_int_eq(ld_train_save_model(whole, model, NULL, NULL), 0);
    ld_ebm_t *m = NULL;
    ld_meta_t *meta = NULL;
    ld_ae_t *ae = NULL;
    ck_assert_int_eq(ld_model_load(model, &m, &meta, NULL), 0);
    ck_assert_str_eq(ld_meta_get(meta, LD_LATENT_META_HASH), f.ae_hash);
    ck_assert_str_eq(ld_meta_get(meta, LD_LATENT_META_FILE), "ae.safetensors");
    ck_assert_msg(ld_latent_load_ae(model, meta, ld_ebm_arch(m), NULL, &ae, NULL) == 0, "%s", ld_errdetail());
    ld_ae_destroy(&ae);
    ld_expect_err(ld_latent_load_ae(model, meta, ld_ebm_arch(m), f.other_ae, &ae, NULL), LD_EINVAL);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "was trained on"));
    ck_assert_ptr_null(ae);
    ld_ebm_destroy(&m);
    ld_meta_destroy(&meta);
    ld_train_destroy(&whole);
    ld_train_destroy(&half);
    free(ckpt), free(model);
    fixture_free(&f);
}
END_TEST

START_TEST(latent_settings_errors_name_the_option)
{
    fixture_t f = fixture();
    ld_train_config_t cfg;
    ld_train_t *tr = NULL;
    latent_config(&cfg, &f);
    ck_assert_int_eq(ld_train_config_set(&cfg, "size", "32"), 0);
    ld_expect_err(ld_train_new(&cfg, &tr), LD_EINVAL);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "give --size 16"));
    latent_config(&cfg, &f);
    ck_assert_int_eq(ld_train_config_set(&cfg, "colour-space", "lab"), 0);
    ld_expect_err(ld_train_new(&cfg, &tr), LD_EINVAL);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "--colour-space rgb"));
    latent_config(&cfg, &f);
    ck_assert_int_eq(ld_train_config_set(&cfg, "widths", "8,16,32,64"), 0); /* 4 px latent: 3 blocks do not fit */
    ck_assert_int_ne(ld_train_new(&cfg, &tr), 0);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "the energy model on the latent"));
    latent_config(&cfg, &f);
    ck_assert_int_eq(ld_train_config_set(&cfg, "latent", f.data), 0);
    ck_assert_int_ne(ld_train_new(&cfg, &tr), 0);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "--latent"));
    ck_assert_ptr_null(tr);
    fixture_free(&f);
}
END_TEST

/* langdaug sample on a latent model: the autoencoder next to the model is
 * found, another one is refused with the reason, --autoencoder on a pixel
 * model is an error. */
START_TEST(sample_command_pairs_model_and_autoencoder)
{
    fixture_t f = fixture();
    ld_train_config_t cfg;
    latent_config(&cfg, &f);
    ld_train_t *tr = ld_test_train_new(&cfg);
    ld_test_train_run_to(tr, 1, NULL, 0);
    char *model = ld_test_path(f.dir, "latent.safetensors"), *out = ld_test_path(f.dir, "out");
    ck_assert_int_eq(ld_train_save_model(tr, model, NULL, NULL), 0);
    ld_train_destroy(&tr);
    const char *b = ld_test_build_dir();
    const char *args = "--source cam0 --target cam1 --batch 2 --steps 3 --snapshots 0,3";
    ck_assert_int_eq(ld_test_system("%s/langdaug sample --model %s --data %s --out %s %s >/dev/null 2>&1", b, model,
                                    f.data, out, args), 0);
    char *csv = ld_test_path(out, "samples.csv");
    char *text = ld_test_read_file(csv, NULL);
    ck_assert_ptr_nonnull(strstr(text, "c001_s0003"));
    free(text);
    ck_assert_int_ne(ld_test_system("%s/langdaug sample --model %s --autoencoder %s --data %s --out %s %s "
                                    "2>%s/err.txt >/dev/null", b, model, f.other_ae, f.data, out, args, f.dir), 0);
    char *err = ld_test_path(f.dir, "err.txt");
    text = ld_test_read_file(err, NULL);
    ck_assert_msg(strstr(text, "was trained on") != NULL, "stderr: %s", text);
    free(text);
    free(csv), free(err), free(model), free(out);
    fixture_free(&f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("latent");
    TCase *tc = ld_tcase("latent", 120);
    tcase_add_test(tc, mask_cells_keep_thin_structures);
    tcase_add_test(tc, pairing_is_checked);
    tcase_add_test(tc, latent_chain_matches_hand_computed_steps);
    tcase_add_test(tc, latent_chain_keeps_the_start_luminance);
    tcase_add_test(tc, latent_training_names_its_autoencoder_and_resumes_exactly);
    tcase_add_test(tc, latent_settings_errors_name_the_option);
    tcase_add_test(tc, sample_command_pairs_model_and_autoencoder);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
