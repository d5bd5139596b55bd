/* Training: settings and their errors, learning on synthetic multi-domain
 * data (held-out ranking by energy, Langevin moving colour statistics toward
 * the target with the mask kept), bit-exact resume, checkpoints that survive
 * a killed or failed write, divergence detection, preview grids, and
 * ld_ckpt's model-file metadata (key order and values).
 *
 * Knobs (env): LD_TEST_TRAIN_ITERS (iterations of the learning run, default
 * 600), LD_TEST_TRAIN_SEED (its seed, default 7), LD_TEST_TRAIN_SET
 * ("key=value;..." training settings over the tests' defaults). The learning run is shared by the tests that evaluate it:
 * the first one to need it trains and saves the model in the suite's
 * folder, the others load it. */
#include "testutil.h"

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ld_ckpt.h"
#include "ld_colour.h"
#include "ld_dataset.h"
#include "ld_ebm.h"
#include "ld_error.h"
#include "ld_langevin.h"
#include "ld_model.h"
#include "ld_image.h"
#include "ld_png.h"
#include "ld_safetensors.h"
#include "ld_synth.h"
#include "ld_train.h"

#define N_DOMAINS 3
#define EVAL_CROPS 24

static char *g_dir; /* the suite's folder, shared by the forked tests */

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Synthetic data under g_dir/<name> (generated once). */
static char *synth_root(const char *name, uint64_t seed, int per_domain)
{
    char *root = ld_test_path(g_dir, name), *done = ld_test_path(root, ".complete");
    if (!exists(done)) {
        ld_synth_opts_t o;
        ld_synth_defaults(&o);
        o.n_domains = N_DOMAINS;
        o.per_domain = per_domain;
        o.size = 48;
        o.seed = seed;
        ck_assert_msg(ld_synth_write(root, &o) == 0, "%s", ld_errdetail());
        ld_test_write_file(done, "", 0);
    }
    free(done);
    return root;
}

/* LD_TEST_TRAIN_SET="size=24;batch=16": settings for experiments. */
static void apply_env_settings(ld_train_config_t *cfg)
{
    const char *env = getenv("LD_TEST_TRAIN_SET");
    char buf[512], *save = NULL;
    snprintf(buf, sizeof buf, "%s", env ? env : "");
    for (char *kv = strtok_r(buf, ";", &save); kv; kv = strtok_r(NULL, ";", &save)) {
        char *eq = strchr(kv, '=');
        ck_assert_msg(eq != NULL, "LD_TEST_TRAIN_SET: '%s' is not key=value", kv);
        *eq = '\0';
        ck_assert_msg(ld_train_config_set(cfg, kv, eq + 1) == 0, "LD_TEST_TRAIN_SET: %s", ld_errdetail());
    }
}

/* A small model and short chains: what the tests need is a run that
 * learns the domains' appearance within a minute or two. */
static void small_config(ld_train_config_t *cfg, const char *root)
{
    ld_train_config_defaults(cfg);
    ck_assert_int_eq(ld_train_config_set(cfg, "data", root), 0);
    ck_assert_int_eq(ld_train_config_set(cfg, "size", "16"), 0);
    ck_assert_int_eq(ld_train_config_set(cfg, "widths", "8,16"), 0);
    ck_assert_int_eq(ld_train_config_set(cfg, "batch", "8"), 0);
    ck_assert_int_eq(ld_train_config_set(cfg, "langevin-steps", "10"), 0);
    ck_assert_int_eq(ld_train_config_set(cfg, "ema", "0.99"), 0);
    ck_assert_int_eq(ld_train_config_set(cfg, "seed", "7"), 0);
    /* one thread: this tiny model runs faster without the hand-offs */
    ck_assert_int_eq(ld_train_config_set(cfg, "threads", "1"), 0);
    apply_env_settings(cfg);
}

static int64_t env_int(const char *name, int64_t def)
{
    const char *v = getenv(name);
    return v && *v ? atoll(v) : def;
}

/* The shared learning run's model (EMA weights), trained on first use. */
static ld_ebm_t *learned_model(void)
{
    char *path = ld_test_path(g_dir, "learned.safetensors");
    if (!exists(path)) {
        char *root = synth_root("train", 1, 8);
        ld_train_config_t cfg;
        small_config(&cfg, root);
        char seed[32];
        snprintf(seed, sizeof seed, "%lld", (long long)env_int("LD_TEST_TRAIN_SEED", 7));
        ck_assert_int_eq(ld_train_config_set(&cfg, "seed", seed), 0);
        ld_train_t *tr = ld_test_train_new(&cfg);
        ld_test_train_run_to(tr, env_int("LD_TEST_TRAIN_ITERS", 600), NULL, 0);
        ck_assert_int_eq(ld_train_save_model(tr, path, NULL, NULL), 0);
        ld_train_destroy(&tr);
        free(root);
    }
    ld_ebm_t *m = NULL;
    ck_assert_msg(ld_model_load(path, &m, NULL, NULL) == 0, "%s", ld_errdetail());
    free(path);
    return m;
}

/* Held-out crops of every domain (other images than training's). */
typedef struct {
    int c, s, n;          /* channels, side, crops per domain */
    float *img;           /* [D, n, C,S,S] */
    uint8_t *mask;        /* [D, n, S,S] */
} heldout_t;

static void heldout_load(heldout_t *h, int size, int n)
{
    char *root = synth_root("heldout", 99, 4);
    ld_dataset_opts_t o = { .root = root };
    ld_dataset_t *ds = NULL;
    ck_assert_int_eq(ld_dataset_open(&o, &ds), 0);
    ck_assert_int_eq(ld_dataset_n_domains(ds), N_DOMAINS);
    h->c = ld_dataset_channels(ds);
    h->s = size;
    h->n = n;
    size_t il = (size_t)h->c * size * size, ml = (size_t)size * size;
    h->img = malloc((size_t)N_DOMAINS * n * il * sizeof(float));
    h->mask = malloc((size_t)N_DOMAINS * n * ml);
    ck_assert(h->img && h->mask);
    ld_rng_t rng;
    ld_rng_init(&rng, 12345, 0);
    for (int d = 0; d < N_DOMAINS; d++) {
        for (int i = 0; i < n; i++) {
            ld_crop_t crop;
            size_t k = (size_t)d * n + i;
            ck_assert_int_eq(ld_dataset_random_crop(ds, d, -1, size, &rng, &crop), 0);
            ck_assert_int_eq(ld_dataset_extract(ds, &crop, h->img + k * il, h->mask + k * ml), 0);
        }
    }
    ld_dataset_destroy(&ds);
    free(root);
}

static void heldout_free(heldout_t *h)
{
    free(h->img);
    free(h->mask);
}

/* Energies toward target t of the n held-out crops of domain d. */
static void energies(const ld_ebm_t *m, ld_ebm_ws_t *ws, const heldout_t *h, int d, int t, float *out)
{
    size_t il = (size_t)h->c * h->s * h->s, ml = (size_t)h->s * h->s;
    int32_t target[EVAL_CROPS];
    for (int i = 0; i < h->n; i++)
        target[i] = t;
    int rc = ld_ebm_energy(m, ws, h->n, h->img + (size_t)d * h->n * il, h->mask + (size_t)d * h->n * ml, target,
                           out, NULL);
    ck_assert_msg(rc == 0, "%s", ld_errdetail());
}

/* P(E(target crop) < E(source crop)), ties counting half. */
static double auc_lower(const float *pos, const float *neg, int n)
{
    double wins = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            wins += pos[i] < neg[j] ? 1 : pos[i] == neg[j] ? 0.5 : 0;
    return wins / ((double)n * n);
}

START_TEST(learns_to_rank_target_domain_lowest)
{
    ld_ebm_t *m = learned_model();
    heldout_t h;
    heldout_load(&h, ld_ebm_arch(m)->size, EVAL_CROPS);
    ld_ebm_ws_t *ws = NULL;
    ck_assert_int_eq(ld_ebm_ws_new(ld_ebm_arch(m), EVAL_CROPS, 2, &ws), 0);
    float e_pos[EVAL_CROPS], e_neg[EVAL_CROPS];
    for (int t = 0; t < N_DOMAINS; t++) {
        energies(m, ws, &h, t, t, e_pos);
        for (int s = 0; s < N_DOMAINS; s++) {
            if (s == t)
                continue;
            energies(m, ws, &h, s, t, e_neg);
            double auc = auc_lower(e_pos, e_neg, EVAL_CROPS);
            printf("AUC target %d vs source %d: %.3f\n", t, s, auc);
            ck_assert_msg(auc > 0.9, "held-out AUC %.3f for target %d vs source %d", auc, t, s);
        }
    }
    ld_ebm_ws_destroy(&ws);
    ld_ebm_destroy(&m);
    heldout_free(&h);
}
END_TEST

/* Per-channel mean and std of one crop: a 2C vector. */
static void colour_stats(const float *chw, int c, int s, double *out)
{
    size_t n = (size_t)s * s;
    for (int k = 0; k < c; k++) {
        double sum = 0, sq = 0;
        for (size_t i = 0; i < n; i++) {
            sum += chw[k * n + i];
            sq += (double)chw[k * n + i] * chw[k * n + i];
        }
        double mean = sum / n;
        out[2 * k] = mean;
        out[2 * k + 1] = sqrt(fmax(sq / n - mean * mean, 0));
    }
}

static double stats_distance(const double *a, const double *b, int c)
{
    double d = 0;
    for (int k = 0; k < 2 * c; k++)
        d += (a[k] - b[k]) * (a[k] - b[k]);
    return sqrt(d);
}

#define N_SNAPS 3

START_TEST(langevin_moves_colour_toward_target_and_keeps_mask)
{
    ld_ebm_t *m = learned_model();
    const ld_ebm_arch_t *arch = ld_ebm_arch(m);
    heldout_t h;
    heldout_load(&h, arch->size, EVAL_CROPS);
    const int c = h.c, n = h.n;
    const size_t il = (size_t)c * h.s * h.s, ml = (size_t)h.s * h.s;
    ld_ebm_ws_t *ws = NULL;
    ck_assert_int_eq(ld_ebm_ws_new(arch, n, 2, &ws), 0);
    /* the training chains' settings and length: what the model learned */
    ld_train_config_t cfg;
    small_config(&cfg, "unused");
    ld_langevin_params_t lp;
    memset(&lp, 0, sizeof lp);
    lp.step_size = (float)cfg.step_size;
    lp.noise = (float)cfg.noise;
    lp.steps = cfg.langevin_steps;
    lp.seed = 5;
    char snap_list[64];
    snprintf(snap_list, sizeof snap_list, "0,%d,%d", lp.steps / 2, lp.steps);
    ck_assert_int_eq(ld_langevin_set_snapshots(&lp, snap_list), 0);
    float *img = malloc(il * n * sizeof(float)), *snaps = malloc(N_SNAPS * il * n * sizeof(float));
    uint8_t *mask = malloc(ml * n);
    ck_assert(img && snaps && mask);
    int32_t target[EVAL_CROPS];
    uint64_t chain[EVAL_CROPS];
    for (int t = 0; t < N_DOMAINS; t++) {
        /* the target domain's typical statistics over its held-out crops */
        double ref[2 * LD_EBM_MAX_CHANNELS] = { 0 }, one[2 * LD_EBM_MAX_CHANNELS];
        for (int i = 0; i < n; i++) {
            colour_stats(h.img + ((size_t)t * n + i) * il, c, h.s, one);
            for (int k = 0; k < 2 * c; k++)
                ref[k] += one[k] / n;
        }
        for (int s = 0; s < N_DOMAINS; s++) {
            if (s == t)
                continue;
            memcpy(img, h.img + (size_t)s * n * il, il * n * sizeof(float));
            memcpy(mask, h.mask + (size_t)s * n * ml, ml * n);
            for (int i = 0; i < n; i++) {
                target[i] = t;
                chain[i] = (uint64_t)i;
            }
            ck_assert_int_eq(ld_langevin_run(m, ws, &lp, n, img, mask, target, chain, snaps, NULL, NULL), 0);
            ck_assert_int_eq(memcmp(mask, h.mask + (size_t)s * n * ml, ml * n), 0);
            double dist[N_SNAPS] = { 0 };
            for (int k = 0; k < N_SNAPS; k++) {
                for (int i = 0; i < n; i++) {
                    colour_stats(snaps + ((size_t)k * n + i) * il, c, h.s, one);
                    dist[k] += stats_distance(one, ref, c) / n;
                }
            }
            printf("%d->%d distance to target statistics at K=%s: %.3f %.3f %.3f\n", s, t, snap_list, dist[0],
                   dist[1], dist[2]);
            for (int k = 1; k < N_SNAPS; k++)
                ck_assert_msg(dist[k] < dist[k - 1], "%d->%d: distance did not fall at snapshot %d (%.4f -> %.4f)",
                              s, t, k, dist[k - 1], dist[k]);
            ck_assert_msg(dist[N_SNAPS - 1] < 0.8 * dist[0], "%d->%d: distance only %.3f -> %.3f", s, t, dist[0],
                          dist[N_SNAPS - 1]);
        }
    }
    free(img);
    free(snaps);
    free(mask);
    ld_ebm_ws_destroy(&ws);
    ld_ebm_destroy(&m);
    heldout_free(&h);
}
END_TEST

START_TEST(resume_is_bit_exact)
{
    char *root = synth_root("train", 1, 8), *dir = ld_test_tmpdir();
    char *ck_b = ld_test_path(dir, "b.ckpt");
    ld_train_config_t cfg, one_thread;
    small_config(&cfg, root);
    ck_assert_int_eq(ld_train_config_set(&cfg, "langevin-steps", "4"), 0);
    one_thread = cfg;
    ck_assert_int_eq(ld_train_config_set(&one_thread, "threads", "1"), 0); /* threads do not change results */
    ld_meta_t *overrides;
    ck_assert_int_eq(ld_meta_new(&overrides), 0);
    ck_assert_int_eq(ld_meta_set(overrides, "threads", "2"), 0);
    ck_assert_int_eq(ld_meta_set(overrides, "lr", "0.001"), 0); /* same value, other spelling */
    ld_test_train_resume_bit_exact(&cfg, &one_thread, overrides, 7, 12, 5, dir);

    ld_train_t *tr;
    int64_t rows;
    ck_assert_int_eq(ld_train_resume(ck_b, NULL, &tr), 0);
    const float *hist = ld_train_history(tr, &rows);
    ck_assert_int_eq(rows, 12);
    ck_assert(isfinite(hist[0]) && isfinite(hist[11 * LD_TRAIN_HISTORY_COLS + 2]));
    ld_train_destroy(&tr);

    ld_meta_destroy(&overrides);
    ld_test_rmtree(dir);
    free(root), free(dir), free(ck_b);
}
END_TEST

/* Resuming checkpoint ck with key=value on the command line fails with
 * LD_EINVAL and a detail containing needle. */
static void expect_resume_refused(const char *ck, const char *key, const char *value, const char *needle)
{
    ld_meta_t *o;
    ld_train_t *tr = NULL;
    ck_assert_int_eq(ld_meta_new(&o), 0);
    ck_assert_int_eq(ld_meta_set(o, key, value), 0);
    ld_expect_err(ld_train_resume(ck, o, &tr), LD_EINVAL);
    ck_assert_ptr_null(tr);
    ck_assert_msg(strstr(ld_errdetail(), needle), "%s", ld_errdetail());
    ld_meta_destroy(&o);
}

START_TEST(resume_rejects_changed_settings)
{
    char *root = synth_root("train", 1, 8), *dir = ld_test_tmpdir(), *ck = ld_test_path(dir, "c.ckpt");
    ld_train_config_t cfg;
    small_config(&cfg, root);
    ck_assert_int_eq(ld_train_config_set(&cfg, "langevin-steps", "2"), 0);
    ld_train_t *tr = ld_test_train_new(&cfg);
    ld_test_train_run_to(tr, 1, ck, 0);
    ld_train_destroy(&tr);
    expect_resume_refused(ck, "lr", "0.002", "--lr 0.002 differs from the checkpoint's 0.001");
    expect_resume_refused(ck, "batch", "x", "--batch");
    /* a model file is not a checkpoint */
    char *model = ld_test_path(dir, "m.safetensors");
    ck_assert_int_eq(ld_train_resume(ck, NULL, &tr), 0);
    ck_assert_int_eq(ld_train_save_model(tr, model, NULL, NULL), 0);
    ld_train_destroy(&tr);
    ld_expect_err(ld_train_resume(model, NULL, &tr), LD_EFORMAT);
    ck_assert_msg(strstr(ld_errdetail(), "not a langdaug training checkpoint"), "%s", ld_errdetail());
    ld_test_rmtree(dir);
    free(root), free(dir), free(ck), free(model);
}
END_TEST

/* The checkpoint at path loads and is the run at `iteration`. */
static void assert_checkpoint_at(const char *path, int64_t iteration)
{
    ld_train_t *tr = NULL;
    int rc = ld_train_resume(path, NULL, &tr);
    ck_assert_msg(rc == 0, "checkpoint no longer loads: %s", ld_errdetail());
    ck_assert_int_eq(ld_train_iteration(tr), iteration);
    ld_train_destroy(&tr);
}

START_TEST(killed_checkpoint_write_keeps_previous)
{
    char *root = synth_root("train", 1, 8), *dir = ld_test_tmpdir(), *ck = ld_test_path(dir, "k.ckpt");
    ld_train_config_t cfg;
    small_config(&cfg, root);
    /* a bigger model, so a save takes long enough to be caught in the middle */
    ck_assert_int_eq(ld_train_config_set(&cfg, "widths", "64,256"), 0);
    ck_assert_int_eq(ld_train_config_set(&cfg, "langevin-steps", "1"), 0);
    ck_assert_int_eq(ld_train_config_set(&cfg, "batch", "2"), 0);
    ld_train_t *tr = ld_test_train_new(&cfg);
    ld_test_train_run_to(tr, 1, ck, 0);
    size_t len0;
    char *before = ld_test_read_file(ck, &len0);
    ld_train_stats_t st;
    ck_assert_int_eq(ld_train_step(tr, &st, NULL), 0);
    for (int trial = 0; trial < 8; trial++) {
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) { /* saves iteration 2 over and over until killed */
            for (;;)
                ld_train_save_checkpoint(tr, ck);
        }
        struct timespec ts = { 0, (long)(1 + trial * 3) * 1000000L };
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        ck_assert(WIFSIGNALED(status));
        /* either the old checkpoint or a complete new one, never a mix */
        ld_train_t *back = NULL;
        ck_assert_msg(ld_train_resume(ck, NULL, &back) == 0, "trial %d: %s", trial, ld_errdetail());
        int64_t it = ld_train_iteration(back);
        ck_assert_msg(it == 1 || it == 2, "trial %d: iteration %lld", trial, (long long)it);
        ld_train_destroy(&back);
    }
    /* the kills did land inside saves: their temporary files are left over */
    ck_assert_msg(ld_test_system("ls '%s' | grep -q 'k.ckpt.tmp'", dir) == 0, "no kill landed inside a save");
    /* restore iteration 1's file: an injected write failure must keep it */
    ld_test_write_file(ck, before, len0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct rlimit lim = { 4096, 4096 };
        signal(SIGXFSZ, SIG_IGN);
        setrlimit(RLIMIT_FSIZE, &lim);
        int rc = ld_train_save_checkpoint(tr, ck);
        _exit(rc == LD_EIO ? 0 : 1);
    }
    int status;
    waitpid(pid, &status, 0);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "a write over the size limit did not fail with LD_EIO");
    size_t len1;
    char *after = ld_test_read_file(ck, &len1);
    ck_assert(len0 == len1 && memcmp(before, after, len0) == 0);
    assert_checkpoint_at(ck, 1);
    ld_train_destroy(&tr);
    ld_test_rmtree(dir);
    free(before), free(after), free(root), free(dir), free(ck);
}
END_TEST

START_TEST(divergence_stops_and_keeps_checkpoint)
{
    char *root = synth_root("train", 1, 8), *dir = ld_test_tmpdir(), *ck = ld_test_path(dir, "d.ckpt");
    ld_train_config_t cfg;
    small_config(&cfg, root);
    ck_assert_int_eq(ld_train_config_set(&cfg, "lr", "1000"), 0);
    ck_assert_int_eq(ld_train_config_set(&cfg, "langevin-steps", "3"), 0);
    ld_train_t *tr = ld_test_train_new(&cfg);
    ld_train_run_opts_t ro = { .iters = 50, .checkpoint = ck, .checkpoint_every = 1 };
    int rc = ld_train_run(tr, &ro);
    ck_assert_int_eq(rc, LD_ENUMERIC);
    int64_t good = ld_train_iteration(tr);
    ck_assert_msg(good < 10, "an absurd learning rate ran %lld iterations", (long long)good);
    char want[64];
    snprintf(want, sizeof want, "diverged at iteration %lld:", (long long)good + 1);
    ck_assert_msg(strstr(ld_errdetail(), want), "%s", ld_errdetail());
    ld_train_destroy(&tr);
    if (good > 0)
        assert_checkpoint_at(ck, good);
    else
        ck_assert(!exists(ck));
    ld_test_rmtree(dir);
    free(root), free(dir), free(ck);
}
END_TEST

START_TEST(preview_grid)
{
    char *root = synth_root("train", 1, 8), *dir = ld_test_tmpdir();
    ld_train_config_t cfg;
    small_config(&cfg, root);
    ck_assert_int_eq(ld_train_config_set(&cfg, "langevin-steps", "4"), 0);
    ld_train_t *tr = ld_test_train_new(&cfg);
    ld_train_run_opts_t ro = { .iters = 4, .preview_dir = dir, .preview_every = 2 };
    ck_assert_int_eq(ld_train_run(tr, &ro), 0);
    char *p2 = ld_test_path(dir, "preview_00000002.png"), *p4 = ld_test_path(dir, "preview_00000004.png");
    ld_image_t a, b;
    ck_assert_int_eq(ld_png_read(p2, &a), 0);
    ck_assert_int_eq(ld_png_read(p4, &b), 0);
    /* D rows; columns: source, then per other domain 4 snapshots + a real crop */
    const int tile = 16 + 2;
    ck_assert_int_eq(a.height, N_DOMAINS * tile);
    ck_assert_int_eq(a.width, (1 + (N_DOMAINS - 1) * 5) * tile);
    ck_assert_int_eq(a.channels, 3);
    /* same crops, different weights: the source column is identical, the
     * snapshots are not */
    int src_same = 1, snap_same = 1;
    for (int y = 0; y < a.height; y++)
        for (int x = 0; x < a.width; x++)
            for (int k = 0; k < 3; k++) {
                int same = ld_image_at(&a, x, y)[k] == ld_image_at(&b, x, y)[k];
                if (x < tile)
                    src_same &= same;
                else if (x >= tile && x < 5 * tile)
                    snap_same &= same;
            }
    ck_assert(src_same);
    ck_assert(!snap_same);
    ld_image_free(&a);
    ld_image_free(&b);
    ld_train_destroy(&tr);
    ld_test_rmtree(dir);
    free(root), free(dir), free(p2), free(p4);
}
END_TEST

START_TEST(settings_round_trip_and_errors)
{
    ld_train_config_t a, b;
    ld_train_config_defaults(&a);
    ld_train_config_defaults(&b);
    ck_assert_int_eq(ld_train_config_set(&a, "betas", "0.5,0.999"), 0);
    ck_assert_int_eq(ld_train_config_set(&a, "lr", "3e-4"), 0);
    ck_assert_int_eq(ld_train_config_set(&a, "seed", "18446744073709551615"), 0);
    ck_assert_int_eq(ld_train_config_set(&a, "data", "/x"), 0);
    ck_assert_int_eq(ld_train_config_set(&a, "colour-space", "lab"), 0);
    char buf[LD_TRAIN_PATH_MAX];
    const ld_settings_t *t = ld_train_settings();
    for (size_t i = 0; i < t->n; i++) {
        const char *key = t->rows[i].key;
        ck_assert_int_eq(ld_settings_get(t, &a, key, buf, sizeof buf), 0);
        ck_assert_msg(ld_train_config_set(&b, key, buf) == 0, "%s=%s: %s", key, buf, ld_errdetail());
    }
    ck_assert_int_eq(memcmp(&a, &b, sizeof a), 0);
    ck_assert_int_eq(ld_settings_get(t, &a, "lr", buf, sizeof buf), 0);
    ck_assert_str_eq(buf, "0.0003");
    ck_assert_int_eq(ld_train_config_validate(&a), 0);

    static const struct { const char *key, *value, *word; int rc; } bad[] = {
        { "lr", "fast", "--lr", LD_EINVAL }, { "lr", "-1", "--lr", LD_ERANGE },
        { "betas", "0.5", "--betas", LD_EINVAL }, { "betas", "0.5,0.9,0.9", "--betas", LD_EINVAL },
        { "batch", "0", "--batch", LD_ERANGE }, { "nonsense", "1", "nonsense", LD_ENOENT },
        { "threads", "1.5", "--threads", LD_EINVAL },
        { "colour-space", "LAB", "--colour-space: 'LAB' is not rgb or lab", LD_EINVAL },
    };
    ld_expect_err(ld_settings_get(t, &a, "nonsense", buf, sizeof buf), LD_ENOENT);
    ck_assert_msg(strstr(ld_errdetail(), "'nonsense'"), "%s", ld_errdetail());
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ld_expect_err(ld_train_config_set(&b, bad[i].key, bad[i].value), bad[i].rc);
        ck_assert_msg(strstr(ld_errdetail(), bad[i].word), "%s", ld_errdetail());
    }
    static const struct { const char *key, *value, *word; } invalid[] = {
        { "betas", "0.5,1", "beta2" }, { "size", "30", "--size" }, { "ema", "1", "--ema" },
        { "manifest", "/m.csv", "exactly one" }, { "maskmap", "zz", "" },
    };
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        b = a;
        ck_assert_int_eq(ld_train_config_set(&b, invalid[i].key, invalid[i].value), 0);
        ck_assert_int_ne(ld_train_config_validate(&b), 0);
        ck_assert_msg(strstr(ld_errdetail(), invalid[i].word), "%s: %s", invalid[i].key, ld_errdetail());
    }
    b = a;
    b.data.data[0] = '\0';
    ck_assert_int_ne(ld_train_config_validate(&b), 0);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "--data"));
}
END_TEST

/* Two domains of one flat-coloured 24x24 image each (mask all background):
 * every 16x16 crop of domain d is exactly colour rgb[d]. */
static char *flat_root(const char *name, const uint8_t rgb[2][3])
{
    char *root = ld_test_path(g_dir, name);
    for (int d = 0; d < 2; d++) {
        ck_assert_int_eq(ld_test_system("mkdir -p '%s/%c/image' '%s/%c/mask'", root, 'A' + d, root, 'A' + d), 0);
        ld_image_t img, mask;
        ck_assert_int_eq(ld_image_alloc(&img, 24, 24, 3), 0);
        ck_assert_int_eq(ld_image_alloc(&mask, 24, 24, 1), 0);
        for (int p = 0; p < 24 * 24; p++)
            memcpy(img.data + 3 * p, rgb[d], 3);
        char path[4200];
        snprintf(path, sizeof path, "%s/%c/image/x.png", root, 'A' + d);
        ck_assert_int_eq(ld_png_write(path, &img), 0);
        snprintf(path, sizeof path, "%s/%c/mask/x.png", root, 'A' + d);
        ck_assert_int_eq(ld_png_write(path, &mask), 0);
        ld_image_free(&img);
        ld_image_free(&mask);
    }
    return root;
}

/* Energy under m of a flat 16x16 crop of colour rgb (mask 0) toward target t,
 * the crop converted to LAB first when lab is set. */
static double flat_energy(const ld_ebm_t *m, const uint8_t rgb[3], int t, int lab)
{
    enum { S = 16 };
    static float img[3 * S * S];
    static uint8_t mask[S * S];
    for (int c = 0; c < 3; c++)
        for (int p = 0; p < S * S; p++)
            img[c * S * S + p] = (float)(rgb[c] * (2.0 / 255.0) - 1.0);
    if (lab)
        ld_colour_rgb_to_lab(img, img, S * S);
    ld_ebm_ws_t *ws;
    ck_assert_int_eq(ld_ebm_ws_new(ld_ebm_arch(m), 1, 1, &ws), 0);
    int32_t target = t;
    float e;
    ck_assert_int_eq(ld_ebm_energy(m, ws, 1, img, mask, &target, &e, NULL), 0);
    ld_ebm_ws_destroy(&ws);
    return e;
}

/* colour-space lab: positives and the negatives' starts reach the model as
 * LAB (the step's energies are those of the LAB crops, not of the RGB ones),
 * the model file says lab, previews show the chains back in RGB, grey data
 * is refused, and a checkpoint from before the key resumes as rgb. */
START_TEST(lab_training_sees_lab)
{
    static const uint8_t rgb[2][3] = { { 200, 60, 40 }, { 40, 80, 190 } };
    char *root = flat_root("flat", rgb), *dir = ld_test_tmpdir(), *ck = ld_test_path(dir, "l.ckpt");
    ld_train_config_t cfg;
    small_config(&cfg, root);
    /* the negatives cannot move: a step of 1e-12 without noise */
    ck_assert_int_eq(ld_train_config_set(&cfg, "batch", "2"), 0);
    ck_assert_int_eq(ld_train_config_set(&cfg, "langevin-steps", "1"), 0);
    ck_assert_int_eq(ld_train_config_set(&cfg, "step-size", "1e-12"), 0);
    ck_assert_int_eq(ld_train_config_set(&cfg, "noise", "0"), 0);
    ck_assert_int_eq(ld_train_config_set(&cfg, "colour-space", "lab"), 0);
    ld_train_t *tr = ld_test_train_new(&cfg);
    ck_assert_int_eq(ld_ebm_arch(ld_train_model(tr))->colour_space, LD_COLOUR_LAB);
    ld_ebm_t *before;
    ck_assert_int_eq(ld_ebm_clone(ld_train_model(tr), &before), 0);
    ld_train_stats_t st;
    ck_assert_int_eq(ld_train_step(tr, &st, NULL), 0);
    double pos = flat_energy(before, rgb[st.target], st.target, 1), neg = flat_energy(before, rgb[st.source], st.target, 1);
    ck_assert_msg(fabs(st.e_pos - pos) < 1e-4 * (1 + fabs(pos)), "E+ %.6f, of the LAB crop %.6f", st.e_pos, pos);
    ck_assert_msg(fabs(st.e_neg - neg) < 1e-4 * (1 + fabs(neg)), "E- %.6f, of the LAB crop %.6f", st.e_neg, neg);
    double pos_rgb = flat_energy(before, rgb[st.target], st.target, 0);
    ck_assert_msg(fabs(pos_rgb - pos) > 1e-2 * (1 + fabs(pos)), "RGB and LAB crops have the same energy %.6f", pos);

    char *model = ld_test_path(dir, "lab.safetensors"), *prev = ld_test_path(dir, "prev.png");
    ck_assert_int_eq(ld_train_save_model(tr, model, NULL, NULL), 0);
    ld_ebm_t *back;
    ld_meta_t *meta;
    ck_assert_int_eq(ld_model_load(model, &back, &meta, NULL), 0);
    ck_assert_str_eq(ld_meta_get(meta, "colour_space"), "lab");
    ck_assert_str_eq(ld_meta_get(meta, "train.colour-space"), "lab");
    ck_assert_int_eq(ld_ebm_arch(back)->colour_space, LD_COLOUR_LAB);
    ld_meta_destroy(&meta);
    ld_ebm_destroy(&back);

    /* preview: row A = source crop, then snapshots toward B at steps 0 and 1;
     * the chain did not move, so step 1 shown in RGB is A's colour again */
    ck_assert_int_eq(ld_train_preview(tr, prev), 0);
    ld_image_t grid;
    ck_assert_int_eq(ld_png_read(prev, &grid), 0);
    const int tile = 16 + 2;
    for (int col = 0; col < 3; col++) {
        const uint8_t *px = ld_image_at(&grid, col * tile + 8, 8);
        for (int c = 0; c < 3; c++)
            ck_assert_msg(abs(px[c] - rgb[0][c]) <= 1, "preview column %d channel %d: %d, source %d", col, c, px[c],
                          rgb[0][c]);
    }
    ld_image_free(&grid);

    /* resuming keeps the colour space; a checkpoint without the key is rgb */
    ld_test_train_run_to(tr, 2, ck, 0);
    ld_train_destroy(&tr);
    expect_resume_refused(ck, "colour-space", "rgb", "--colour-space rgb differs from the checkpoint's lab");
    char *old = ld_test_path(dir, "old.ckpt");
    ld_test_drop_meta_key(ck, old, "train.colour-space");
    ck_assert_int_eq(ld_train_resume(ck, NULL, &tr), 0);
    ck_assert_int_eq(ld_train_config(tr)->data.colour_space, LD_COLOUR_LAB);
    ld_train_destroy(&tr);
    ck_assert_msg(ld_train_resume(old, NULL, &tr) == 0, "%s", ld_errdetail());
    ck_assert_int_eq(ld_train_config(tr)->data.colour_space, LD_COLOUR_RGB);
    ld_train_destroy(&tr);

    /* LAB needs colour images */
    ck_assert_int_eq(ld_train_config_set(&cfg, "channels", "1"), 0);
    ld_expect_err(ld_train_new(&cfg, &tr), LD_EINVAL);
    ck_assert_ptr_null(tr);
    ck_assert_str_eq(ld_errdetail(), "--colour-space lab needs 3-channel (RGB) images; the data has 1 channel(s)");

    ld_ebm_destroy(&before);
    ld_test_rmtree(dir);
    free(root), free(dir), free(ck), free(model), free(prev), free(old);
}
END_TEST

START_TEST(bad_data_fails_before_training)
{
    char *dir = ld_test_tmpdir();
    ld_train_config_t cfg;
    small_config(&cfg, dir);
    ld_train_t *tr = NULL;
    ck_assert_int_ne(ld_train_new(&cfg, &tr), 0); /* no domains at all */
    ck_assert_ptr_null(tr);
    char *root = synth_root("train", 1, 8);
    small_config(&cfg, root);
    ck_assert_int_eq(ld_train_config_set(&cfg, "domains", "cam0"), 0);
    ld_expect_err(ld_train_new(&cfg, &tr), LD_EINVAL);
    ck_assert_msg(strstr(ld_errdetail(), "at least 2 domains"), "%s", ld_errdetail());
    ck_assert_int_eq(ld_train_config_set(&cfg, "domains", "cam0,nosuch"), 0);
    ck_assert_int_ne(ld_train_new(&cfg, &tr), 0);
    ck_assert_msg(strstr(ld_errdetail(), "nosuch"), "%s", ld_errdetail());
    /* an explicit subset resolves to that order */
    ck_assert_int_eq(ld_train_config_set(&cfg, "domains", "cam2,cam0"), 0);
    tr = ld_test_train_new(&cfg);
    ck_assert_str_eq(ld_ebm_arch(ld_train_model(tr))->domains[0], "cam2");
    ck_assert_int_eq(ld_ebm_arch(ld_train_model(tr))->n_domains, 2);
    ld_train_destroy(&tr);
    ld_test_rmtree(dir);
    free(dir), free(root);
}
END_TEST

static int more_meta(const void *trainer, ld_meta_t *meta)
{
    return ld_meta_set(meta, "more", trainer);
}

static void assert_key(const ld_meta_t *m, size_t i, const char *key, const char *value)
{
    ck_assert_msg(i < ld_meta_count(m), "%zu keys, wanted '%s' at %zu", ld_meta_count(m), key, i);
    ck_assert_str_eq(ld_meta_key(m, i), key);
    ck_assert_str_eq(ld_meta_value(m, i), value);
}

/* ld_ckpt_model_meta: provenance, the trainer's keys around "iterations",
 * the settings and more_meta's keys, in that order (a model file's bytes,
 * and so its SHA-256, follow the order). */
START_TEST(model_meta_order_and_values)
{
    ld_train_config_t cfg;
    ld_train_config_defaults(&cfg);
    ck_assert_int_eq(ld_train_config_set(&cfg, "seed", "77"), 0);
    const ld_settings_t *t = ld_train_settings();
    ld_meta_t *settings, *prov, *meta;
    ck_assert_int_eq(ld_meta_new(&settings), 0);
    ck_assert_int_eq(ld_settings_to_meta(t, &cfg, settings), 0);
    const size_t n_set = ld_meta_count(settings);
    ck_assert_str_eq(ld_meta_get(settings, "train.seed"), "77");
    ck_assert_int_eq(ld_meta_new(&prov), 0);
    ck_assert_int_eq(ld_meta_set(prov, "command", "langdaug train"), 0);
    int64_t iteration = 5000000000; /* beyond 32 bits */
    const ld_ckpt_kind_t kind = { .settings = t };
    const ld_ckpt_parts_t p = { .iteration = &iteration, .cfg = &cfg, .more_meta = more_meta, .trainer = "last" };
    const char *const before[] = { "b1", "x", "b2", "y", NULL }, *const after[] = { "a1", "z", NULL };
    ck_assert_int_eq(ld_ckpt_model_meta(&kind, &p, prov, before, after, &meta), 0);
    assert_key(meta, 0, "command", "langdaug train");
    assert_key(meta, 1, "b1", "x");
    assert_key(meta, 2, "b2", "y");
    assert_key(meta, 3, "iterations", "5000000000");
    assert_key(meta, 4, "a1", "z");
    for (size_t i = 0; i < n_set; i++)
        assert_key(meta, 5 + i, ld_meta_key(settings, i), ld_meta_value(settings, i));
    assert_key(meta, 5 + n_set, "more", "last");
    ck_assert_uint_eq(ld_meta_count(meta), 6 + n_set);
    ld_meta_destroy(&meta);
    /* no provenance, no trainer's keys, no more_meta */
    iteration = 0;
    const ld_ckpt_parts_t bare = { .iteration = &iteration, .cfg = &cfg };
    ck_assert_int_eq(ld_ckpt_model_meta(&kind, &bare, NULL, NULL, NULL, &meta), 0);
    assert_key(meta, 0, "iterations", "0");
    ck_assert_uint_eq(ld_meta_count(meta), 1 + n_set);
    assert_key(meta, n_set, ld_meta_key(settings, n_set - 1), ld_meta_value(settings, n_set - 1));
    ld_meta_destroy(&meta);
    ld_meta_destroy(&prov);
    ld_meta_destroy(&settings);
}
END_TEST

int main(void)
{
    const char *base = getenv("TMPDIR");
    g_dir = malloc(4096);
    snprintf(g_dir, 4096, "%s/langdaug-train.XXXXXX", base && *base ? base : "/tmp");
    if (!g_dir || !mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    Suite *s = suite_create("train");
    TCase *quick = ld_tcase("train", 120);
    tcase_add_test(quick, settings_round_trip_and_errors);
    tcase_add_test(quick, model_meta_order_and_values);
    tcase_add_test(quick, bad_data_fails_before_training);
    tcase_add_test(quick, resume_is_bit_exact);
    tcase_add_test(quick, resume_rejects_changed_settings);
    tcase_add_test(quick, killed_checkpoint_write_keeps_previous);
    tcase_add_test(quick, divergence_stops_and_keeps_checkpoint);
    tcase_add_test(quick, preview_grid);
    tcase_add_test(quick, lab_training_sees_lab);
    suite_add_tcase(s, quick);
    TCase *learn = ld_tcase("learning", 900);
    tcase_add_test(learn, learns_to_rank_target_domain_lowest);
    tcase_add_test(learn, langevin_moves_colour_toward_target_and_keeps_mask);
    suite_add_tcase(s, learn);
    int rc = ld_test_run(s);
    ld_test_rmtree(g_dir);
    free(g_dir);
    return rc;
}
