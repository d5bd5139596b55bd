/* `langdaug sample` and `langdaug synth` end to end: on synthetic data and a
 * random model written by the test, the snapshots, masks, CSV and grid are
 * checked against the library (dataset crops, energies), runs are
 * reproducible and independent of the thread count, step size and noise
 * default to the model's training settings, LAB models' chains run in LAB
 * with RGB outputs, --keep luminance, and bad input fails with clear
 * messages and the documented exit codes. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ld_colour.h"
#include "ld_dataset.h"
#include "ld_ebm.h"
#include "ld_error.h"
#include "ld_langevin.h"
#include "ld_model.h"
#include "ld_png.h"
#include "ld_synth.h"

#define S 32

typedef struct {
    char *dir, *data, *model, *lab_model, *grey_model, *out;
} fixture_t;

static ld_synth_opts_t synth_opts(void)
{
    ld_synth_opts_t o;
    ld_synth_defaults(&o);
    o.n_domains = 2;
    o.per_domain = 2;
    o.size = 48;
    o.seed = 4;
    return o;
}

/* A random model (the same weights for the same channels) taking images in
 * colour space cs; extra (may be NULL) adds metadata keys. */
static void save_model(const char *path, int channels, ld_colour_space_t cs, const ld_meta_t *extra)
{
    ld_ebm_arch_t a = { .image_channels = channels, .mask_classes = 2, .size = S, .colour_space = cs };
    ck_assert_int_eq(ld_ebm_arch_set_widths(&a, "8,12"), 0);
    ck_assert_int_eq(ld_ebm_arch_set_domains(&a, "cam0,cam1,cam2,cam3"), 0);
    ld_ebm_t *m = NULL;
    ck_assert_int_eq(ld_ebm_new(&a, &m), 0);
    ld_ebm_init_random(m, 11);
    ck_assert_msg(ld_model_save(path, m, extra, NULL) == 0, "%s", ld_errdetail());
    ld_ebm_destroy(&m);
}

static fixture_t setup(void)
{
    fixture_t f;
    f.dir = ld_test_tmpdir();
    f.data = ld_test_path(f.dir, "data");
    f.model = ld_test_path(f.dir, "rgb.safetensors");
    f.lab_model = ld_test_path(f.dir, "lab.safetensors");
    f.grey_model = ld_test_path(f.dir, "grey.safetensors");
    f.out = ld_test_path(f.dir, "out");
    ld_synth_opts_t so = synth_opts();
    ck_assert_int_eq(ld_synth_write(f.data, &so), 0);
    save_model(f.model, 3, LD_COLOUR_RGB, NULL);
    save_model(f.lab_model, 3, LD_COLOUR_LAB, NULL);
    save_model(f.grey_model, 1, LD_COLOUR_RGB, NULL);
    return f;
}

static void teardown(fixture_t *f)
{
    ld_test_rmtree(f->dir);
    free(f->dir);
    free(f->data);
    free(f->model);
    free(f->lab_model);
    free(f->grey_model);
    free(f->out);
}

/* Runs the CLI with output captured into dir/log.txt; returns the exit code
 * and leaves the log text in a static buffer. */
static char log_text[16384];

static int run_cli(const char *dir, const char *args)
{
    char *log = ld_test_path(dir, "log.txt");
    int rc = ld_test_system("'%s/langdaug' %s >'%s' 2>&1", ld_test_build_dir(), args, log);
    char *text = ld_test_read_file(log, NULL);
    snprintf(log_text, sizeof log_text, "%s", text);
    free(text);
    free(log);
    return rc;
}

static void read_png(const char *dir, const char *rel, ld_image_t *img)
{
    char *p = ld_test_path(dir, rel);
    int rc = ld_png_read(p, img);
    ck_assert_msg(rc == 0, "%s: %s", p, ld_errdetail());
    free(p);
}

typedef struct {
    char file[64], source[16], target[16], source_file[64];
    int step, chain, x, y;
    double energy;
    unsigned long long seed;
} row_t;

static int read_rows(const char *out, row_t *rows, int max)
{
    char *p = ld_test_path(out, "samples.csv");
    FILE *f = fopen(p, "r");
    ck_assert_ptr_nonnull(f);
    char line[512];
    ck_assert_ptr_nonnull(fgets(line, sizeof line, f));
    ck_assert_str_eq(line, "file,source,target,step,energy,chain,seed,source_file,crop_x,crop_y\n");
    int n = 0;
    while (n < max && fgets(line, sizeof line, f)) {
        row_t *r = &rows[n++];
        int got = sscanf(line, "%63[^,],%15[^,],%15[^,],%d,%lf,%d,%llu,%63[^,],%d,%d", r->file, r->source,
                         r->target, &r->step, &r->energy, &r->chain, &r->seed, r->source_file, &r->x, &r->y);
        ck_assert_msg(got == 10, "bad row: %s", line);
    }
    fclose(f);
    free(p);
    return n;
}

/* The 8-bit value a snapshot PNG holds for v in [-1, 1]. */
static int to_u8(float v)
{
    float q = (v + 1) * 127.5f;
    return (int)lrintf(q < 0 ? 0 : q > 255 ? 255 : q);
}

/* The snapshot of `step` of the chain from `crop` as the library's
 * primitives make it: the crop converted to the model's colour space, the
 * chain run there, back to RGB, the keep setting applied. */
static void library_snapshot(const ld_ebm_t *m, ld_ebm_ws_t *ws, ld_keep_t keep, const float *crop,
                             const uint8_t *cls, uint64_t chain, int step, float *snap, float *energy)
{
    const int lab = ld_ebm_arch(m)->colour_space == LD_COLOUR_LAB;
    float x[3 * S * S], x0[3 * S * S];
    memcpy(x, crop, sizeof x);
    if (lab)
        ld_colour_rgb_to_lab(x, x, S * S);
    memcpy(x0, x, sizeof x);
    ld_langevin_params_t lp = { .step_size = 0.5f, .noise = 0.01f, .steps = step ? step : 1, .seed = 5 };
    lp.n_snapshots = 1;
    lp.snapshots[0] = step;
    int32_t t = 2;
    ck_assert_int_eq(ld_langevin_run(m, ws, &lp, 1, x, cls, &t, &chain, snap, energy, NULL), 0);
    if (step == 0)
        memcpy(snap, crop, sizeof x);
    else if (lab && keep == LD_KEEP_LUMINANCE)
        ld_colour_keep_luminance_lab(x0, snap, S * S);
    if (step > 0 && lab)
        ld_colour_lab_to_rgb(snap, snap, S * S);
    else if (step > 0 && keep == LD_KEEP_LUMINANCE)
        ld_colour_keep_luminance(crop, snap, S * S);
}

/* 3 chains cam0 -> cam2 with snapshots 0,2,4 of `model` (extra options
 * `keep_opt`): every PNG, mask and CSV energy is what the library gives
 * for the crop the CSV row names. */
static void check_sample_output(const fixture_t *f, const char *model, ld_keep_t keep)
{
    char args[4096];
    snprintf(args, sizeof args,
             "sample --model '%s' --data '%s' --source cam0 --target cam2 --batch 3 --steps 4 "
             "--snapshots 0,2,4 --step-size 0.5 --noise 0.01 --seed 5 --keep %s --out '%s'",
             model, f->data, ld_keep_name(keep), f->out);
    ck_assert_msg(run_cli(f->dir, args) == 0, "%s", log_text);
    ck_assert_msg(strstr(log_text, "image-steps/s") != NULL, "%s", log_text);

    row_t rows[16];
    ck_assert_int_eq(read_rows(f->out, rows, 16), 9);
    ld_synth_opts_t so = synth_opts();
    ld_dataset_opts_t dopts = { .root = f->data, .domains = "cam0", .maskmap = ld_synth_maskmap(&so) };
    ld_dataset_t *ds = NULL;
    ck_assert_int_eq(ld_dataset_open(&dopts, &ds), 0);
    ld_ebm_t *m = NULL;
    ck_assert_int_eq(ld_model_load(model, &m, NULL, NULL), 0);
    char summary[128];
    snprintf(summary, sizeof summary, "chains in %s, keep %s", ld_colour_space_name(ld_ebm_arch(m)->colour_space),
             ld_keep_name(keep));
    ck_assert_msg(strstr(log_text, summary) != NULL, "%s", log_text);
    ld_ebm_ws_t *ws = NULL;
    ck_assert_int_eq(ld_ebm_ws_new(ld_ebm_arch(m), 1, 1, &ws), 0);
    int seen[3][3] = { { 0 } };
    for (int i = 0; i < 9; i++) {
        const row_t *r = &rows[i];
        ck_assert(!strcmp(r->source, "cam0") && !strcmp(r->target, "cam2") && r->seed == 5);
        ck_assert(r->chain >= 0 && r->chain < 3 && (r->step == 0 || r->step == 2 || r->step == 4));
        ck_assert(isfinite(r->energy));
        seen[r->chain][r->step / 2]++;
        ld_image_t img, mask;
        read_png(f->out, r->file, &img);
        char mask_rel[80];
        snprintf(mask_rel, sizeof mask_rel, "mask/%s", r->file + strlen("image/"));
        read_png(f->out, mask_rel, &mask);
        ck_assert(img.width == S && img.height == S && img.channels == 3 && mask.channels == 1);

        /* The crop named by the row, cut by the library. */
        int item = -1;
        for (int k = 0; k < ld_dataset_n_items(ds, 0); k++)
            if (!strcmp(ld_dataset_item_name(ds, 0, k), r->source_file))
                item = k;
        ck_assert_msg(item >= 0, "unknown source file %s", r->source_file);
        ld_crop_t cr = { .domain = 0, .item = item, .x = r->x, .y = r->y, .size = S };
        float crop[3 * S * S];
        uint8_t cls[S * S];
        ck_assert_int_eq(ld_dataset_extract(ds, &cr, crop, cls), 0);
        for (int p = 0; p < S * S; p++)
            ck_assert_uint_eq(mask.data[p], cls[p] ? 255 : 0); /* written through the mask map */
        /* The same chain from the library's pieces: same pixels and energy
         * (step 0: the crop itself, and its energy) */
        float snap[3 * S * S], e;
        library_snapshot(m, ws, keep, crop, cls, (uint64_t)r->chain, r->step, snap, &e);
        for (int c = 0; c < 3; c++)
            for (int p = 0; p < S * S; p++)
                ck_assert_msg(img.data[3 * p + c] == to_u8(snap[c * S * S + p]), "%s: value %d, library %d",
                              r->file, img.data[3 * p + c], to_u8(snap[c * S * S + p]));
        ck_assert_msg(fabs(e - r->energy) <= 1e-4 * fmax(1, fabs(e)), "energy %g vs csv %g", e, r->energy);
        ld_image_free(&img);
        ld_image_free(&mask);
    }
    for (int j = 0; j < 3; j++)
        for (int k = 0; k < 3; k++)
            ck_assert_int_eq(seen[j][k], 1);
    ld_image_t grid;
    read_png(f->out, "grid.png", &grid);
    /* mask, start, 3 snapshots; 32 px tiles enlarged 4x to 128 px, nearest neighbour */
    const int side = 4 * S;
    ck_assert_int_eq(grid.width, 5 * (side + 2) + 2);
    ck_assert_int_eq(grid.height, 3 * (side + 2) + 2);
    int varies = 0;
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) {
            const uint8_t *a = ld_image_at(&grid, 2 + (side + 2) + 4 * x, 2 + 4 * y);
            for (int d = 1; d < 16; d++)
                ck_assert_int_eq(memcmp(a, ld_image_at(&grid, 2 + (side + 2) + 4 * x + d % 4, 2 + 4 * y + d / 4), 3), 0);
            varies += memcmp(a, ld_image_at(&grid, 2 + (side + 2), 2), 3) != 0;
        }
    ck_assert_int_gt(varies, 0); /* the start crop is there, not a flat fill */
    ld_image_free(&grid);
    ld_ebm_ws_destroy(&ws);
    ld_ebm_destroy(&m);
    ld_dataset_destroy(&ds);
}

START_TEST(sample_writes_consistent_outputs)
{
    fixture_t f = setup();
    check_sample_output(&f, f.model, LD_KEEP_NONE);
    teardown(&f);
}
END_TEST

/* A LAB model's chains run in LAB and come out in RGB; keep luminance on
 * LAB and RGB models. */
START_TEST(sample_lab_model_and_keep_luminance)
{
    fixture_t f = setup();
    check_sample_output(&f, f.lab_model, LD_KEEP_NONE);
    check_sample_output(&f, f.lab_model, LD_KEEP_LUMINANCE);
    check_sample_output(&f, f.model, LD_KEEP_LUMINANCE);
    teardown(&f);
}
END_TEST

static void compare_outputs(const char *a, const char *b)
{
    ck_assert_int_eq(ld_test_system("cmp -s '%s/samples.csv' '%s/samples.csv'", a, b), 0);
    static const char *files[] = { "image/c000_s0003.png", "image/c001_s0006.png", "mask/c001_s0006.png",
                                   "grid.png" };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        ld_image_t x, y;
        read_png(a, files[i], &x);
        read_png(b, files[i], &y);
        ck_assert(x.width == y.width && x.height == y.height && x.channels == y.channels);
        ck_assert_msg(!memcmp(x.data, y.data, (size_t)x.width * (size_t)x.height * (size_t)x.channels), "%s differs",
                      files[i]);
        ld_image_free(&x);
        ld_image_free(&y);
    }
}

START_TEST(sample_reproducible_across_threads)
{
    fixture_t f = setup();
    char args[4096], *out2 = ld_test_path(f.dir, "out2");
    for (int threads = 1; threads <= 2; threads++) {
        snprintf(args, sizeof args,
                 "sample --model '%s' --data '%s' --source cam1 --target cam3 --batch 2 --steps 6 "
                 "--snapshots 3,6 --step-size 0.3 --noise 0.02 --seed 9 --threads %d --out '%s'",
                 f.model, f.data, threads, threads == 1 ? f.out : out2);
        ck_assert_msg(run_cli(f.dir, args) == 0, "%s", log_text);
    }
    compare_outputs(f.out, out2);
    /* A different seed moves the chains differently. */
    snprintf(args, sizeof args,
             "sample --model '%s' --data '%s' --source cam1 --target cam3 --batch 2 --steps 6 "
             "--snapshots 3,6 --step-size 0.3 --noise 0.02 --seed 10 --out '%s'",
             f.model, f.data, out2);
    ck_assert_msg(run_cli(f.dir, args) == 0, "%s", log_text);
    ck_assert_int_ne(ld_test_system("cmp -s '%s/samples.csv' '%s/samples.csv'", f.out, out2), 0);
    free(out2);
    teardown(&f);
}
END_TEST

/* The RGB model's weights with train.step-size / train.noise metadata. */
static char *save_trained_model(const char *dir, const char *name, const char *step_size, const char *noise)
{
    char *path = ld_test_path(dir, name);
    ld_meta_t *meta = NULL;
    ck_assert_int_eq(ld_meta_new(&meta), 0);
    ck_assert_int_eq(ld_meta_set(meta, "train.step-size", step_size), 0);
    ck_assert_int_eq(ld_meta_set(meta, "train.noise", noise), 0);
    save_model(path, 3, LD_COLOUR_RGB, meta);
    ld_meta_destroy(&meta);
    return path;
}

/* Two chains cam1 -> cam3 with snapshots 3,6 (what compare_outputs reads),
 * plus langevin options; returns the exit status. */
static int run_chains_to(const fixture_t *f, const char *model, const char *out, const char *langevin)
{
    char args[4096];
    snprintf(args, sizeof args,
             "sample --model '%s' --data '%s' --source cam1 --target cam3 --batch 2 --steps 6 --snapshots 3,6 "
             "--seed 9 %s --out '%s'",
             model, f->data, langevin, out);
    return run_cli(f->dir, args);
}

START_TEST(sample_langevin_defaults_to_the_trained_settings)
{
    fixture_t f = setup();
    char *trained = save_trained_model(f.dir, "trained.safetensors", "0.3", "0.02");
    char *out2 = ld_test_path(f.dir, "out2");
    ck_assert_msg(run_chains_to(&f, trained, f.out, "") == 0, "%s", log_text);
    ck_assert_msg(strstr(log_text, "step size 0.3 (as trained), noise 0.02 (as trained)"), "%s", log_text);
    ck_assert_msg(run_chains_to(&f, f.model, out2, "--step-size 0.3 --noise 0.02") == 0, "%s", log_text);
    compare_outputs(f.out, out2);
    /* a given option wins over the model */
    ck_assert_msg(run_chains_to(&f, trained, out2, "--step-size 0.5") == 0, "%s", log_text);
    ck_assert_msg(strstr(log_text, "step size 0.5 (given), noise 0.02 (as trained)"), "%s", log_text);
    ck_assert_int_ne(ld_test_system("cmp -s '%s/samples.csv' '%s/samples.csv'", f.out, out2), 0);
    ck_assert_msg(run_chains_to(&f, trained, out2, "--noise 0.05") == 0, "%s", log_text);
    ck_assert_int_ne(ld_test_system("cmp -s '%s/samples.csv' '%s/samples.csv'", f.out, out2), 0);
    /* a model without the keys: the fixed defaults */
    ck_assert_msg(run_chains_to(&f, f.model, f.out, "") == 0, "%s", log_text);
    ck_assert_msg(strstr(log_text, "step size 1 (default: not in the model), noise 0.005 (default: not in the model)"),
                  "%s", log_text);
    ck_assert_msg(run_chains_to(&f, f.model, out2, "--step-size 1 --noise 0.005") == 0, "%s", log_text);
    compare_outputs(f.out, out2);
    free(out2);
    free(trained);
    teardown(&f);
}
END_TEST

START_TEST(sample_rejects_unreadable_trained_settings)
{
    fixture_t f = setup();
    static const struct { const char *step_size, *noise, *needle, *option; } cases[] = {
        { "fast", "0.01", "metadata 'train.step-size': 'fast' is not a number", "--step-size" },
        { "0.3", "-1", "metadata 'train.noise': -1 is out of range", "--noise" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *bad = save_trained_model(f.dir, "bad.safetensors", cases[i].step_size, cases[i].noise);
        ck_assert_int_eq(run_chains_to(&f, bad, f.out, ""), 1);
        ck_assert_msg(strstr(log_text, bad) && strstr(log_text, cases[i].needle) && strstr(log_text, cases[i].option),
                      "%s", log_text);
        /* given options do not read the metadata */
        ck_assert_msg(run_chains_to(&f, bad, f.out, "--step-size 0.3 --noise 0.02") == 0, "%s", log_text);
        free(bad);
    }
    teardown(&f);
}
END_TEST

/* A grey copy of two synthetic domains, in the folders layout. */
static void write_grey_data(const char *root)
{
    ld_synth_opts_t so = synth_opts();
    static const char *subs[3] = { "image", "mask", "fov" };
    for (int d = 0; d < 2; d++) {
        for (int k = 0; k < 3; k++)
            ck_assert_int_eq(ld_test_system("mkdir -p '%s/cam%d/%s'", root, d, subs[k]), 0);
        for (int i = 0; i < 2; i++) {
            ld_image_t pic[3], grey;
            ck_assert_int_eq(ld_synth_render(&so, d, i, &pic[0], &pic[1], &pic[2]), 0);
            ck_assert_int_eq(ld_image_convert(&pic[0], 1, &grey), 0);
            ld_image_free(&pic[0]);
            pic[0] = grey;
            for (int k = 0; k < 3; k++) {
                char path[4096];
                snprintf(path, sizeof path, "%s/cam%d/%s/%03d.png", root, d, subs[k], i);
                ck_assert_int_eq(ld_png_write(path, &pic[k]), 0);
                ld_image_free(&pic[k]);
            }
        }
    }
}

START_TEST(sample_center_crops_and_grey_data)
{
    fixture_t f = setup();
    char args[4096], *grey = ld_test_path(f.dir, "grey");
    write_grey_data(grey);
    /* Centre crops: chain j starts from item j of the domain, centred. */
    snprintf(args, sizeof args,
             "sample --model '%s' --data '%s' --source cam1 --target cam0 --batch 2 --steps 2 "
             "--crop center --out '%s'",
             f.grey_model, grey, f.out);
    ck_assert_msg(run_cli(f.dir, args) == 0, "%s", log_text);
    row_t rows[4];
    ck_assert_int_eq(read_rows(f.out, rows, 4), 2);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(rows[i].step, 2);
        ck_assert_int_eq(rows[i].x, (48 - S) / 2);
        ck_assert_int_eq(rows[i].y, (48 - S) / 2);
        char want[32];
        snprintf(want, sizeof want, "image/%03d.png", rows[i].chain);
        ck_assert_str_eq(rows[i].source_file, want);
        ld_image_t img;
        read_png(f.out, rows[i].file, &img);
        ck_assert_int_eq(img.channels, 1);
        ld_image_free(&img);
    }
    /* The RGB model refuses grey data. */
    snprintf(args, sizeof args, "sample --model '%s' --data '%s' --source cam1 --target cam0 --out '%s'", f.model,
             grey, f.out);
    ck_assert_int_eq(run_cli(f.dir, args), 1);
    ck_assert_msg(strstr(log_text, "1-channel") != NULL, "%s", log_text);
    /* Grey images have no colour to change. */
    snprintf(args, sizeof args, "sample --model '%s' --data '%s' --source cam1 --target cam0 --keep luminance "
             "--out '%s'", f.grey_model, grey, f.out);
    ck_assert_int_eq(run_cli(f.dir, args), 1);
    ck_assert_msg(strstr(log_text, "keep = luminance needs 3-channel images; the model has 1 channel(s)"), "%s",
                  log_text);
    free(grey);
    teardown(&f);
}
END_TEST

START_TEST(sample_rejects_bad_input)
{
    fixture_t f = setup();
    char args[4096];
    static const struct {
        const char *model_kind; /* "rgb" / "grey" */
        const char *extra;
        int exit_code;
        const char *needle;
    } cases[] = {
        { "rgb", "--source cam0 --target nope", 1, "nope" },
        { "rgb", "--source nope --target cam1", 1, "nope" },
        { "grey", "--source cam0 --target cam1", 1, "channel" },
        { "rgb", "--source cam0 --target cam1 --maskmap 0:0,255:1,*:2", 1, "classes" },
        { "rgb", "--source cam0 --target cam1 --batch abc", 2, "--batch" },
        { "rgb", "--source cam0 --target cam1 --batch 0", 2, "--batch" },
        { "rgb", "--source cam0 --target cam1 --crop diagonal", 2, "diagonal" },
        { "rgb", "--source cam0 --target cam1 --keep colour", 2, "--keep: 'colour' is not none or luminance" },
        { "rgb", "--source cam0 --target cam1 --snapshots 4,2", 2, "snapshots" },
        { "rgb", "--source cam0 --target cam1 --steps 4 --snapshots 8", 2, "snapshot" },
        { "rgb", "--source cam0 --target cam1 --scale 0.5 --resize 40", 2, "--resize" },
        { "rgb", "--source cam0 --target cam1 --bogus", 2, "bogus" },
        { "rgb", "--source cam0 --target cam1 extra-operand", 2, "extra-operand" },
        { "rgb", "--source cam0", 2, "--target" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(args, sizeof args, "sample --model '%s' --data '%s' --out '%s' --steps 2 %s",
                 strcmp(cases[i].model_kind, "grey") ? f.model : f.grey_model, f.data, f.out, cases[i].extra);
        int rc = run_cli(f.dir, args);
        ck_assert_msg(rc == cases[i].exit_code, "'%s': exit %d, want %d:\n%s", cases[i].extra, rc,
                      cases[i].exit_code, log_text);
        ck_assert_msg(strstr(log_text, cases[i].needle) != NULL, "'%s': output lacks '%s':\n%s", cases[i].extra,
                      cases[i].needle, log_text);
    }
    ck_assert_int_eq(run_cli(f.dir, "sample --help"), 0);
    ck_assert(strstr(log_text, "Usage: langdaug sample") != NULL);
    ck_assert_int_ne(ld_test_system("test -e '%s/samples.csv'", f.out), 0); /* nothing written */
    teardown(&f);
}
END_TEST

START_TEST(synth_cli_writes_dataset)
{
    char *dir = ld_test_tmpdir(), *out = ld_test_path(dir, "syn"), args[2048];
    snprintf(args, sizeof args, "synth --out '%s' --domains 2 --per-domain 2 --size 40 --seed 3 --disc", out);
    ck_assert_msg(run_cli(dir, args) == 0, "%s", log_text);
    ld_synth_opts_t o = { .n_domains = 2, .per_domain = 2, .size = 40, .seed = 3, .disc = 1 };
    ld_image_t img, mask, fov, file;
    ck_assert_int_eq(ld_synth_render(&o, 1, 1, &img, &mask, &fov), 0);
    read_png(out, "cam1/image/001.png", &file);
    ck_assert_mem_eq(file.data, img.data, 40 * 40 * 3);
    ld_image_free(&file);
    read_png(out, "cam1/mask/001.png", &file);
    ck_assert_mem_eq(file.data, mask.data, 40 * 40);
    ld_image_free(&file);
    ld_image_free(&img);
    ld_image_free(&mask);
    ld_image_free(&fov);
    ck_assert_int_ne(ld_test_system("test -e '%s/cam2'", out), 0);

    static const struct { const char *args; int code; const char *needle; } bad[] = {
        { "synth --domains 2", 2, "--out" },
        { "synth --out x --domains 9", 2, "--domains" },
        { "synth --out x --size 8", 2, "--size" },
        { "synth --out x --seed -1", 2, "--seed" },
        { "synth --out x --what", 2, "what" },
        { "synth --out /proc/langdaug-no/such", 1, "/proc/langdaug-no" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = run_cli(dir, bad[i].args);
        ck_assert_msg(rc == bad[i].code, "'%s': exit %d:\n%s", bad[i].args, rc, log_text);
        ck_assert_msg(strstr(log_text, bad[i].needle) != NULL, "'%s':\n%s", bad[i].args, log_text);
    }
    ck_assert_int_eq(run_cli(dir, "synth --help"), 0);
    ck_assert(strstr(log_text, "Usage: langdaug synth") != NULL);
    ld_test_rmtree(dir);
    free(out);
    free(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sample_cli");
    TCase *tc = ld_tcase("sample_cli", 120);
    tcase_add_test(tc, sample_writes_consistent_outputs);
    tcase_add_test(tc, sample_lab_model_and_keep_luminance);
    tcase_add_test(tc, sample_reproducible_across_threads);
    tcase_add_test(tc, sample_langevin_defaults_to_the_trained_settings);
    tcase_add_test(tc, sample_rejects_unreadable_trained_settings);
    tcase_add_test(tc, sample_center_crops_and_grey_data);
    tcase_add_test(tc, sample_rejects_bad_input);
    tcase_add_test(tc, synth_cli_writes_dataset);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
