/* Per-pair training: the pairs syntax (ld_ebm_arch_parse_pairs) and its
 * errors, the train.pairs metadata of model files (ld_model_train_pairs),
 * the `pairs` training key (errors naming the pair, metadata, a trajectory
 * key), the pair each iteration draws (only listed pairs, every listed one,
 * over many iterations; every ordered pair without the key), bit-exact
 * resume with pairs, old checkpoints without the key, and preview grids
 * with only the trained pairs' rows and columns. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "ld_ebm.h"
#include "ld_error.h"
#include "ld_image.h"
#include "ld_model.h"
#include "ld_png.h"
#include "ld_safetensors.h"
#include "ld_synth.h"
#include "ld_train.h"

#define N_DOMAINS 3
#define S 16

static ld_ebm_arch_t abc_arch(void)
{
    ld_ebm_arch_t a;
    memset(&a, 0, sizeof a);
    ck_assert_int_eq(ld_ebm_arch_set_domains(&a, "A,B,C"), 0);
    return a;
}

START_TEST(parse_pairs_and_errors)
{
    ld_ebm_arch_t a = abc_arch();
    ld_ebm_pair_t p[LD_EBM_MAX_PAIRS];
    int n = -1;
    ck_assert_int_eq(ld_ebm_arch_parse_pairs(&a, "C:A,A:B", p, &n), 0);
    ck_assert_int_eq(n, 2);
    ck_assert(p[0].source == 2 && p[0].target == 0 && p[1].source == 0 && p[1].target == 1);
    ck_assert_int_eq(ld_ebm_arch_parse_pairs(&a, "", p, &n), 0);
    ck_assert_int_eq(n, 0);
    ck_assert_int_eq(ld_ebm_arch_parse_pairs(&a, "A:B,A:C,B:A,B:C,C:A,C:B", p, &n), 0);
    ck_assert_int_eq(n, 6);

    static const struct { const char *text, *detail; } bad[] = {
        { "A:Z", "pair 'A:Z': 'Z' is not one of the domains A,B,C" },
        { "B:C,Q:A", "pair 'Q:A': 'Q' is not one of the domains A,B,C" },
        { "A:A", "pair 'A:A': source and target are the same domain" },
        { "A:B,C:A,A:B", "pair 'A:B' is listed twice" },
        { "AB", "pair 'AB' is not source:target" },
        { "A:B:C", "pair 'A:B:C' is not source:target" },
        { "A:B,", "pair '' is not source:target" },
        { ",A:B", "pair '' is not source:target" },
        { "A:B,,C:A", "pair '' is not source:target" },
        { ":B", "pair ':B': '' is not one of the domains" },
        { "A :B", "pair 'A :B': 'A ' is not one of the domains" },
        { "a:B", "'a' is not one of the domains" }, /* names are case-sensitive */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        n = -1;
        ck_assert_msg(ld_ebm_arch_parse_pairs(&a, bad[i].text, p, &n) == LD_EINVAL, "'%s' accepted", bad[i].text);
        ck_assert_int_eq(n, 0);
        ck_assert_msg(strstr(ld_errdetail(), bad[i].detail), "'%s': %s", bad[i].text, ld_errdetail());
    }
    /* a hostile name is cut in the detail */
    char *huge = malloc(20001);
    ck_assert_ptr_nonnull(huge);
    memset(huge, 'x', 20000);
    huge[0] = 'A';
    huge[1] = ':';
    huge[20000] = '\0';
    ld_expect_err(ld_ebm_arch_parse_pairs(&a, huge, p, &n), LD_EINVAL);
    ck_assert_msg(strstr(ld_errdetail(), "is not one of the domains A,B,C") && strlen(ld_errdetail()) < 400, "%s",
                  ld_errdetail());
    free(huge);
}
END_TEST

/* A model file with domains A,B,C and metadata train.pairs = value (NULL:
 * without the key), loaded back: ld_model_train_pairs's result. */
static int model_pairs(const char *dir, const char *value, ld_ebm_pair_t *p, int *n)
{
    ld_ebm_arch_t a = abc_arch();
    a.image_channels = 3;
    a.mask_classes = 2;
    a.size = 8;
    ck_assert_int_eq(ld_ebm_arch_set_widths(&a, "2,4"), 0);
    ld_ebm_t *m = NULL, *back = NULL;
    ld_meta_t *meta = NULL, *got = NULL;
    ck_assert_int_eq(ld_ebm_new(&a, &m), 0);
    ck_assert_int_eq(ld_meta_new(&meta), 0);
    if (value)
        ck_assert_int_eq(ld_meta_set(meta, "train.pairs", value), 0);
    char *path = ld_test_path(dir, "m.safetensors");
    ck_assert_int_eq(ld_model_save(path, m, meta, NULL), 0);
    ck_assert_msg(ld_model_load(path, &back, &got, NULL) == 0, "%s", ld_errdetail());
    int rc = ld_model_train_pairs(path, got, ld_ebm_arch(back), p, n);
    ld_meta_destroy(&meta);
    ld_meta_destroy(&got);
    ld_ebm_destroy(&m);
    ld_ebm_destroy(&back);
    free(path);
    return rc;
}

START_TEST(model_file_train_pairs)
{
    char *dir = ld_test_tmpdir();
    ld_ebm_pair_t p[LD_EBM_MAX_PAIRS];
    int n = -1;
    ck_assert_int_eq(model_pairs(dir, "B:C", p, &n), 0);
    ck_assert(n == 1 && p[0].source == 1 && p[0].target == 2);
    ck_assert_int_eq(model_pairs(dir, "", p, &n), 0);
    ck_assert_int_eq(n, 0);
    ld_expect_err(model_pairs(dir, NULL, p, &n), LD_ENOENT);
    ck_assert_int_eq(n, 0);
    ld_expect_err(model_pairs(dir, "B:C,A:D", p, &n), LD_EFORMAT);
    ck_assert_msg(strstr(ld_errdetail(), "m.safetensors: metadata 'train.pairs': pair 'A:D': 'D' is not one of the "
                                         "domains A,B,C"),
                  "%s", ld_errdetail());
    ld_expect_err(model_pairs(dir, "B-C", p, &n), LD_EFORMAT);
    ck_assert_msg(strstr(ld_errdetail(), "pair 'B-C' is not source:target"), "%s", ld_errdetail());
    ld_test_rmtree(dir);
    free(dir);
}
END_TEST

/* Synthetic data of N_DOMAINS domains (cam0..) under dir/data. */
static char *synth_data(const char *dir)
{
    char *root = ld_test_path(dir, "data");
    ld_synth_opts_t o;
    ld_synth_defaults(&o);
    o.n_domains = N_DOMAINS;
    o.per_domain = 2;
    o.size = 32;
    ck_assert_msg(ld_synth_write(root, &o) == 0, "%s", ld_errdetail());
    return root;
}

/* A tiny, fast run: what these tests look at is which pairs are drawn. */
static void tiny_config(ld_train_config_t *cfg, const char *root, const char *pairs)
{
    const char *settings[][2] = {
        { "data", root }, { "size", "16" }, { "widths", "2,4" }, { "batch", "1" },
        { "langevin-steps", "1" }, { "threads", "1" }, { "pairs", pairs },
    };
    ld_train_config_defaults(cfg);
    for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++)
        ck_assert_msg(ld_train_config_set(cfg, settings[i][0], settings[i][1]) == 0, "%s", ld_errdetail());
}

START_TEST(pairs_setting_errors_name_the_pair)
{
    char *dir = ld_test_tmpdir(), *root = synth_data(dir);
    const ld_setting_t *row = ld_settings_find(ld_train_settings(), "pairs");
    ck_assert_ptr_nonnull(row);
    ck_assert_int_eq(row->trajectory, 1);
    static const struct { const char *pairs, *detail; } bad[] = {
        { "cam0:cam9", "--pairs: pair 'cam0:cam9': 'cam9' is not one of the domains cam0,cam1,cam2" },
        { "cam1:cam1", "--pairs: pair 'cam1:cam1': source and target are the same domain" },
        { "cam0:cam1,cam1:cam0,cam0:cam1", "--pairs: pair 'cam0:cam1' is listed twice" },
        { "cam0>cam1", "--pairs: pair 'cam0>cam1' is not source:target (pairs are A:B,C:D)" },
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        ld_train_config_t cfg;
        tiny_config(&cfg, root, bad[k].pairs);
        ld_train_t *tr = NULL;
        ld_expect_err(ld_train_new(&cfg, &tr), LD_EINVAL);
        ck_assert_ptr_null(tr);
        ck_assert_msg(strcmp(ld_errdetail(), bad[k].detail) == 0, "%s", ld_errdetail());
    }
    /* the names are those of the training domains, not of the data */
    ld_train_config_t cfg;
    tiny_config(&cfg, root, "cam0:cam2");
    ck_assert_int_eq(ld_train_config_set(&cfg, "domains", "cam0,cam1"), 0);
    ld_train_t *tr = NULL;
    ld_expect_err(ld_train_new(&cfg, &tr), LD_EINVAL);
    ck_assert_msg(strstr(ld_errdetail(), "'cam2' is not one of the domains cam0,cam1"), "%s", ld_errdetail());
    ld_test_rmtree(dir);
    free(dir), free(root);
}
END_TEST

/* Runs iters iterations and counts the (source, target) drawn. */
static void count_draws(ld_train_t *tr, int iters, int counts[N_DOMAINS][N_DOMAINS])
{
    memset(counts, 0, sizeof(int) * N_DOMAINS * N_DOMAINS);
    for (int i = 0; i < iters; i++) {
        ld_train_stats_t st;
        ck_assert_msg(ld_train_step(tr, &st, NULL) == 0, "%s", ld_errdetail());
        ck_assert(st.source >= 0 && st.source < N_DOMAINS && st.target >= 0 && st.target < N_DOMAINS);
        counts[st.source][st.target]++;
    }
}

START_TEST(only_listed_pairs_are_drawn)
{
    enum { ITERS = 300 };
    char *dir = ld_test_tmpdir(), *root = synth_data(dir);
    ld_train_config_t cfg;
    int counts[N_DOMAINS][N_DOMAINS];
    /* two pairs: each drawn about ITERS/2 times (sd ~9), nothing else ever */
    tiny_config(&cfg, root, "cam2:cam0,cam0:cam1");
    ld_train_t *tr = ld_test_train_new(&cfg);
    count_draws(tr, ITERS, counts);
    for (int s = 0; s < N_DOMAINS; s++)
        for (int t = 0; t < N_DOMAINS; t++) {
            int listed = (s == 2 && t == 0) || (s == 0 && t == 1);
            if (listed)
                ck_assert_msg(counts[s][t] > ITERS / 2 - 45, "cam%d->cam%d drawn %d of %d times", s, t, counts[s][t],
                              ITERS);
            else
                ck_assert_msg(counts[s][t] == 0, "unlisted cam%d->cam%d drawn %d times", s, t, counts[s][t]);
        }
    ld_train_destroy(&tr);
    /* without pairs: every ordered pair (about ITERS/6 each), never s == t */
    tiny_config(&cfg, root, "");
    tr = ld_test_train_new(&cfg);
    count_draws(tr, ITERS, counts);
    for (int s = 0; s < N_DOMAINS; s++)
        for (int t = 0; t < N_DOMAINS; t++)
            ck_assert_msg(s == t ? counts[s][t] == 0 : counts[s][t] > ITERS / 6 - 25, "cam%d->cam%d drawn %d times",
                          s, t, counts[s][t]);
    ld_train_destroy(&tr);
    ld_test_rmtree(dir);
    free(dir), free(root);
}
END_TEST

START_TEST(resume_with_pairs_is_bit_exact)
{
    char *dir = ld_test_tmpdir(), *root = synth_data(dir);
    char *ck_b = ld_test_path(dir, "b.ckpt"), *mod_a = ld_test_path(dir, "a.safetensors");
    ld_train_config_t cfg;
    tiny_config(&cfg, root, "cam1:cam2,cam2:cam1");
    ck_assert_int_eq(ld_train_config_set(&cfg, "batch", "2"), 0);
    ck_assert_int_eq(ld_train_config_set(&cfg, "langevin-steps", "2"), 0);
    ld_meta_t *same;
    ck_assert_int_eq(ld_meta_new(&same), 0);
    ck_assert_int_eq(ld_meta_set(same, "pairs", "cam1:cam2,cam2:cam1"), 0);
    ld_test_train_resume_bit_exact(&cfg, NULL, same, 5, 10, 4, dir);
    ld_train_t *tr;

    /* the model file says what it was trained for */
    ld_ebm_t *m;
    ld_meta_t *meta;
    ck_assert_int_eq(ld_model_load(mod_a, &m, &meta, NULL), 0);
    ck_assert_str_eq(ld_meta_get(meta, "train.pairs"), "cam1:cam2,cam2:cam1");
    ld_meta_destroy(&meta);
    ld_ebm_destroy(&m);

    /* pairs belong to the trajectory: another list (even reordered) is refused */
    ld_meta_t *other;
    ck_assert_int_eq(ld_meta_new(&other), 0);
    ck_assert_int_eq(ld_meta_set(other, "pairs", "cam2:cam1,cam1:cam2"), 0);
    ld_expect_err(ld_train_resume(ck_b, other, &tr), LD_EINVAL);
    ck_assert_msg(strstr(ld_errdetail(),
                         "--pairs cam2:cam1,cam1:cam2 differs from the checkpoint's cam1:cam2,cam2:cam1"),
                  "%s", ld_errdetail());

    /* a checkpoint from before the key was trained on every pair */
    char *old = ld_test_path(dir, "old.ckpt");
    ld_test_drop_meta_key(ck_b, old, "train.pairs");
    ck_assert_msg(ld_train_resume(old, NULL, &tr) == 0, "%s", ld_errdetail());
    ck_assert_str_eq(ld_train_config(tr)->pairs, "");
    int counts[N_DOMAINS][N_DOMAINS];
    count_draws(tr, 40, counts);
    ck_assert_msg(counts[0][1] + counts[0][2] + counts[1][0] + counts[2][0] > 0, "only the old pairs were drawn");
    ld_train_destroy(&tr);

    ld_meta_destroy(&same);
    ld_meta_destroy(&other);
    ld_test_rmtree(dir);
    free(dir), free(root), free(ck_b), free(mod_a), free(old);
}
END_TEST

/* The preview grid of a run with the given pairs, read back. */
static void preview_of(const char *dir, const char *root, const char *pairs, ld_image_t *out)
{
    ld_train_config_t cfg;
    tiny_config(&cfg, root, pairs);
    ld_train_t *tr = ld_test_train_new(&cfg);
    char *path = ld_test_path(dir, "preview.png");
    ck_assert_msg(ld_train_preview(tr, path) == 0, "%s", ld_errdetail());
    ck_assert_int_eq(ld_png_read(path, out), 0);
    ld_train_destroy(&tr);
    free(path);
}

/* Whether the tile at (col, row) is the grid's background (nothing drawn). */
static int blank_tile(const ld_image_t *g, int col, int row)
{
    const int tile = S + 2;
    for (int y = row * tile; y < row * tile + S; y++)
        for (int x = col * tile; x < col * tile + S; x++)
            for (int c = 0; c < 3; c++)
                if (ld_image_at(g, x, y)[c] != 0)
                    return 0;
    return 1;
}

START_TEST(preview_shows_only_trained_pairs)
{
    char *dir = ld_test_tmpdir(), *root = synth_data(dir);
    const int tile = S + 2, block = 5; /* 4 snapshots and a real crop per target */
    ld_image_t all, some, one;
    preview_of(dir, root, "", &all);
    ck_assert_int_eq(all.height, N_DOMAINS * tile);
    ck_assert_int_eq(all.width, (1 + (N_DOMAINS - 1) * block) * tile);
    /* cam0 -> cam1, cam2; cam2 -> cam1: rows cam0 and cam2, cam2's row ends after one block */
    preview_of(dir, root, "cam0:cam1,cam2:cam1,cam0:cam2", &some);
    ck_assert_int_eq(some.height, 2 * tile);
    ck_assert_int_eq(some.width, (1 + 2 * block) * tile);
    ck_assert(!blank_tile(&some, 1 + block, 0) && !blank_tile(&some, block, 1) && blank_tile(&some, 1 + block, 1));
    /* one pair: one row, one block; the source crop is cam1's, as in row 1 of the full grid */
    preview_of(dir, root, "cam1:cam0", &one);
    ck_assert_int_eq(one.height, tile);
    ck_assert_int_eq(one.width, (1 + block) * tile);
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++)
            ck_assert(!memcmp(ld_image_at(&one, x, y), ld_image_at(&all, x, tile + y), 3));
    ld_image_free(&all);
    ld_image_free(&some);
    ld_image_free(&one);
    ld_test_rmtree(dir);
    free(dir), free(root);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("pairs");
    TCase *tc = ld_tcase("pairs", 180);
    tcase_add_test(tc, parse_pairs_and_errors);
    tcase_add_test(tc, model_file_train_pairs);
    tcase_add_test(tc, pairs_setting_errors_name_the_pair);
    tcase_add_test(tc, only_listed_pairs_are_drawn);
    tcase_add_test(tc, resume_with_pairs_is_bit_exact);
    tcase_add_test(tc, preview_shows_only_trained_pairs);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
