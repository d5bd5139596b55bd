/* The langdaug command line: --help/--version, usage errors (exit 2 with a
 * message naming the problem, nothing written), init-model determinism and
 * config files, and `energy` against direct ld_ebm_energy /
 * ld_ebm_backward_params calls on the same model and inputs. Also the strict
 * value parsers and CSV quoting of ld_text. Runs build/langdaug (env LD_BUILD). */
#include "testutil.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ld_text.h"
#include "ld_ebm.h"
#include "ld_error.h"
#include "ld_model.h"
#include "ld_rng.h"
#include "ld_safetensors.h"

/* ---- helpers ---------------------------------------------------------------- */

static char *dir;

static void setup(void)
{
    dir = ld_test_tmpdir();
}

static void teardown(void)
{
    ld_test_rmtree(dir);
    free(dir);
}

/* dir/name in a static rotating buffer: valid for the next few calls only
 * (long-lived paths use ld_test_path). */
static const char *at(const char *name)
{
    static char bufs[8][512];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", dir, name);
    return b;
}

static char *out_text, *err_text;

/* Runs `langdaug <args>`, capturing stdout/stderr; returns the exit status. */
static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run(const char *fmt, ...)
{
    char args[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    int st = ld_test_system("%s/langdaug %s >%s 2>%s", ld_test_build_dir(), args, at("stdout.txt"),
                            at("stderr.txt"));
    free(out_text);
    free(err_text);
    out_text = ld_test_read_file(at("stdout.txt"), NULL);
    err_text = ld_test_read_file(at("stderr.txt"), NULL);
    return st;
}

static void expect_usage_error(const char *args, const char *needle)
{
    int st = run("%s", args);
    ck_assert_msg(st == 2, "'langdaug %s' exited %d (stderr: %s)", args, st, err_text);
    ck_assert_msg(strstr(err_text, needle) != NULL, "'langdaug %s': stderr '%s' lacks '%s'", args, err_text, needle);
}

static int same_file(const char *a, const char *b)
{
    size_t la, lb;
    char *x = ld_test_read_file(a, &la), *y = ld_test_read_file(b, &lb);
    int same = la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return same;
}

#define SMALL_MODEL "--image-channels 3 --mask-classes 2 --size 16 --widths 4,8,8 --domains A,B"

typedef struct {
    int n, c, s;
    float *image;
    uint8_t *mask;
    int32_t *target;
} inputs_t;

static inputs_t make_inputs(int n, int c, int s, int classes, int domains, uint64_t seed)
{
    inputs_t in = {n, c, s, NULL, NULL, NULL};
    size_t img = (size_t)n * c * s * s, pix = (size_t)n * s * s;
    in.image = malloc(img * sizeof(float) + 1);
    in.mask = malloc(pix + 1);
    in.target = malloc((size_t)n * sizeof(int32_t) + 1);
    ld_rng_t rng;
    ld_rng_init(&rng, seed, 0);
    for (size_t i = 0; i < img; i++)
        in.image[i] = (float)(2 * ld_rng_uniform(&rng) - 1);
    for (size_t i = 0; i < pix; i++)
        in.mask[i] = (uint8_t)ld_rng_below(&rng, (uint32_t)classes);
    for (int i = 0; i < n; i++)
        in.target[i] = (int32_t)(i % domains);
    return in;
}

static void free_inputs(inputs_t *in)
{
    free(in->image);
    free(in->mask);
    free(in->target);
}

/* Writes the inputs; target as I64 when wide; omit = a tensor left out. */
static void write_inputs(const char *path, const inputs_t *in, int wide, const char *omit)
{
    ld_st_writer_t *w;
    int64_t di[4] = {in->n, in->c, in->s, in->s}, dm[3] = {in->n, in->s, in->s}, dt[1] = {in->n};
    int64_t *t64 = malloc((size_t)in->n * 8 + 1);
    for (int i = 0; i < in->n; i++)
        t64[i] = in->target[i];
    ck_assert_int_eq(ld_st_writer_new(&w), 0);
    if (!omit || strcmp(omit, "image"))
        ck_assert_int_eq(ld_st_writer_add(w, "image", LD_DT_F32, 4, di, in->image), 0);
    if (!omit || strcmp(omit, "mask"))
        ck_assert_int_eq(ld_st_writer_add(w, "mask", LD_DT_U8, 3, dm, in->mask), 0);
    ck_assert_int_eq(ld_st_writer_add(w, "target", wide ? LD_DT_I64 : LD_DT_I32, 1, dt, wide ? (void *)t64 : (void *)in->target), 0);
    ck_assert_int_eq(ld_st_writer_write(w, path, NULL), 0);
    ld_st_writer_destroy(&w);
    free(t64);
}

static const float *f32_of(const ld_st_t *st, const char *name, size_t numel)
{
    const ld_st_tensor_t *t = ld_st_find(st, name);
    ck_assert_msg(t != NULL, "output lacks '%s'", name);
    ck_assert_int_eq(t->dtype, LD_DT_F32);
    ck_assert_uint_eq(t->numel, numel);
    float *x = malloc(numel * sizeof *x + 1);
    memcpy(x, t->data, t->nbytes);
    return x;
}

/* ---- help, version, usage errors ------------------------------------------------ */

START_TEST(help_and_version)
{
    ck_assert_int_eq(run("--help"), 0);
    ck_assert_ptr_nonnull(strstr(out_text, "energy"));
    ck_assert_ptr_nonnull(strstr(out_text, "init-model"));
    ck_assert_int_eq(run("--version"), 0);
    ck_assert_int_eq(strncmp(out_text, "langdaug ", 9), 0);
    ck_assert_int_eq(run("energy --help"), 0);
    ck_assert_ptr_nonnull(strstr(out_text, "Usage: langdaug energy"));
    ck_assert_int_eq(run("init-model -h"), 0);
    ck_assert_ptr_nonnull(strstr(out_text, "Usage: langdaug init-model"));
    ck_assert_int_eq(run("help init-model"), 0);
    ck_assert_ptr_nonnull(strstr(out_text, "Usage: langdaug init-model"));
    ck_assert_int_eq(run("--log-level debug energy --help"), 0);
    ck_assert_ptr_nonnull(strstr(out_text, "Usage: langdaug energy"));
}
END_TEST

START_TEST(usage_errors_exit_2)
{
    static const char *const cases[][2] = {
        {"", "Usage: langdaug"},
        {"frobnicate", "unknown command 'frobnicate'"},
        {"--frob", "unknown option '--frob'"},
        {"--log-level loud energy --help", "--log-level: 'loud'"},
        {"energy --bogus", "unknown or ambiguous option '--bogus'"},
        {"energy -Z", "unknown option '-Z'"},
        {"energy --model", "option '--model' needs a value"},
        {"energy --help=1", "option '--help=1' does not take a value"},
        {"energy --in x --out y", "--model is required"},
        {"energy --model m --out y", "--in is required"},
        {"energy --model m --in x --out y --batch 0", "--batch: 0 is out of range"},
        {"energy --model m --in x --out y --batch abc", "--batch: 'abc' is not an integer"},
        {"energy --model m --in x --out y --threads 1.5", "--threads: '1.5' is not an integer"},
        {"energy --model m --in x --out y --threads ' 2'", "--threads: ' 2' is not an integer"},
        {"energy --model m --in x --out y stray", "unexpected argument 'stray'"},
        {"init-model", "--out is required"},
        {"init-model --out OUT --size 63", "invalid architecture"},
        {"init-model --out OUT --size 0", "--size: 0 is out of range"},
        {"init-model --out OUT --widths 32,,64", "--widths"},
        {"init-model --out OUT --domains A,A", "--domains"},
        {"init-model --out OUT --seed -1", "--seed: '-1' is not a non-negative integer"},
        {"init-model --out OUT --seed 18446744073709551616", "--seed: 18446744073709551616 is out of range"},
        {"init-model --out OUT --image-channels 5", "--image-channels: 5 is out of range [1, 4]"},
        {"init-model --out OUT --mask-classes x", "--mask-classes: 'x' is not an integer"},
        {"init-model --out OUT --config", "option '--config' needs a value"},
        {"init-model --out OUT --colour-space Lab", "--colour-space: 'Lab' is not rgb or lab"},
        {"init-model --out OUT --colour-space lab --image-channels 1", "colour space lab needs 3 image channels"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char args[512];
        const char *out = at("OUT.safetensors");
        /* substitute the output path so we can check nothing was written */
        const char *s = cases[i][0], *hit = strstr(s, "OUT");
        if (hit)
            snprintf(args, sizeof args, "%.*s%s%s", (int)(hit - s), s, out, hit + 3);
        else
            snprintf(args, sizeof args, "%s", s);
        expect_usage_error(args, cases[i][1]);
        ck_assert_msg(access(out, F_OK) != 0, "'%s' wrote a file", args);
    }
}
END_TEST

START_TEST(config_file_errors)
{
    static const char *const cases[][2] = {
        {"size = 16\nwidths = 4,8\ncolour = red\n", "cfg:3: unknown key 'colour'"},
        {"[model]\nsize = 16\n", "cfg:2: sections are not used here ([model])"},
        {"size = 16\nsize = 32\n", "cfg:2: 'size' is set twice"},
        {"size = 16\nsize 64\n", "cfg:2: expected 'key = value'"},
        {"size = big\n", "cfg:1: size: 'big' is not an integer"},
        {"# comment\n\nimage_channels = 9\n", "cfg:3: image_channels: 9 is out of range"},
        {"domains = A,,B\n", "cfg:1: domains"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        ld_test_write_file(at("cfg"), cases[i][0], strlen(cases[i][0]));
        char args[1024];
        snprintf(args, sizeof args, "init-model --out %s --config %s", at("m.safetensors"), at("cfg"));
        expect_usage_error(args, cases[i][1]);
        ck_assert_int_ne(access(at("m.safetensors"), F_OK), 0);
    }
    /* a line longer than the parser's buffer is reported, not split */
    char longline[600];
    memset(longline, 'A', sizeof longline);
    memcpy(longline, "domains = ", 10);
    longline[sizeof longline - 2] = '\n';
    longline[sizeof longline - 1] = '\0';
    ld_test_write_file(at("cfg"), longline, strlen(longline));
    char args[1024];
    snprintf(args, sizeof args, "init-model --out %s --config %s", at("m.safetensors"), at("cfg"));
    expect_usage_error(args, "cfg:1: line too long");
    /* a missing config file is a runtime failure */
    ck_assert_int_eq(run("init-model --out %s --config %s", at("m.safetensors"), at("none.cfg")), 1);
    ck_assert_ptr_nonnull(strstr(err_text, "none.cfg"));
}
END_TEST

/* ---- init-model ----------------------------------------------------------------- */

START_TEST(init_model_deterministic)
{
    ck_assert_int_eq(run("init-model --out %s " SMALL_MODEL " --seed 5", at("a.safetensors")), 0);
    char hash_a[65] = "";
    sscanf(out_text, "%64s", hash_a);
    ck_assert_int_eq(run("init-model " SMALL_MODEL " --seed 5 -o %s", at("b.safetensors")), 0);
    ck_assert_int_eq(run("init-model --out %s " SMALL_MODEL " --seed 6", at("c.safetensors")), 0);
    ck_assert(same_file(at("a.safetensors"), at("b.safetensors")));
    ck_assert(!same_file(at("a.safetensors"), at("c.safetensors")));

    /* the printed hash is the file's identity */
    ld_ebm_t *m;
    ld_meta_t *meta;
    char hash[65];
    ck_assert_msg(ld_model_load(at("a.safetensors"), &m, &meta, hash) == 0, "%s", ld_errdetail());
    ck_assert_str_eq(hash, hash_a);
    const ld_ebm_arch_t *a = ld_ebm_arch(m);
    ck_assert_int_eq(a->size, 16);
    ck_assert_int_eq(a->n_blocks, 2);
    ck_assert_int_eq(a->widths[2], 8);
    ck_assert_int_eq(a->n_domains, 2);
    ck_assert_str_eq(a->domains[1], "B");
    ck_assert_str_eq(ld_meta_get(meta, "init_seed"), "5");
    /* weights are initialised, not left at zero */
    size_t nonzero = 0;
    for (size_t i = 0; i < ld_ebm_numel(m); i++)
        nonzero += ld_ebm_params(m)[i] != 0;
    ck_assert_uint_gt(nonzero, ld_ebm_numel(m) / 2);
    ld_meta_destroy(&meta);
    ld_ebm_destroy(&m);

    /* a config file with the same settings gives the same file; the command
     * line wins over the config */
    const char *cfg = "; small model\nimage-channels = 3\nmask_classes = 2\nsize = 32\n"
                      "widths = 4,8,8\ndomains = A,B\nseed = 5\n";
    ld_test_write_file(at("small.cfg"), cfg, strlen(cfg));
    ck_assert_int_eq(run("init-model --size 16 --config %s --out %s", at("small.cfg"), at("d.safetensors")), 0);
    ck_assert(same_file(at("a.safetensors"), at("d.safetensors")));
    ck_assert_int_eq(run("init-model --config %s --out %s", at("small.cfg"), at("e.safetensors")), 0);
    ck_assert(!same_file(at("a.safetensors"), at("e.safetensors")));
    ck_assert_int_eq(ld_model_load(at("e.safetensors"), &m, NULL, NULL), 0);
    ck_assert_int_eq(ld_ebm_arch(m)->size, 32);
    ld_ebm_destroy(&m);

    /* defaults make a valid model */
    ck_assert_int_eq(run("init-model --out %s", at("default.safetensors")), 0);
    ck_assert_int_eq(ld_model_load(at("default.safetensors"), &m, NULL, NULL), 0);
    ck_assert_int_eq(ld_ebm_arch(m)->image_channels, 3);
    ck_assert_int_eq(ld_ebm_arch(m)->size, 64);
    ck_assert_int_eq(ld_ebm_arch(m)->n_blocks, 4);
    ck_assert_int_eq(ld_ebm_arch(m)->n_domains, 3);
    ck_assert_int_eq(ld_ebm_arch(m)->colour_space, LD_COLOUR_RGB);
    ld_ebm_destroy(&m);

    /* a LAB model: the only difference from the RGB one is the metadata */
    ck_assert_int_eq(run("init-model --out %s " SMALL_MODEL " --seed 5 --colour-space lab", at("lab.safetensors")), 0);
    ck_assert_int_eq(ld_model_load(at("lab.safetensors"), &m, &meta, NULL), 0);
    ck_assert_int_eq(ld_ebm_arch(m)->colour_space, LD_COLOUR_LAB);
    ck_assert_str_eq(ld_meta_get(meta, "colour_space"), "lab");
    ld_ebm_t *rgb;
    ck_assert_int_eq(ld_model_load(at("a.safetensors"), &rgb, NULL, NULL), 0);
    ck_assert_int_eq(memcmp(ld_ebm_params(m), ld_ebm_params(rgb), ld_ebm_numel(m) * sizeof(float)), 0);
    ld_ebm_destroy(&rgb);
    ld_meta_destroy(&meta);
    ld_ebm_destroy(&m);
}
END_TEST

/* ---- energy ------------------------------------------------------------------------- */

START_TEST(energy_matches_direct_call)
{
    char *model = ld_test_path(dir, "m.safetensors");
    ck_assert_int_eq(run("init-model --out %s " SMALL_MODEL " --seed 3", model), 0);
    ld_ebm_t *m;
    char hash[65];
    ck_assert_int_eq(ld_model_load(model, &m, NULL, hash), 0);
    const int n = 5, c = 3, s = 16;
    const size_t img = (size_t)c * s * s;
    inputs_t in = make_inputs(n, c, s, 2, 2, 99);
    write_inputs(at("in.safetensors"), &in, 0, NULL);

    /* direct: all samples in one call, one thread */
    ld_ebm_ws_t *ws;
    ck_assert_int_eq(ld_ebm_ws_new(ld_ebm_arch(m), n, 1, &ws), 0);
    float e_ref[5], *g_ref = malloc(n * img * sizeof(float));
    ck_assert_int_eq(ld_ebm_energy(m, ws, n, in.image, in.mask, in.target, e_ref, g_ref), 0);

    /* the CLI in batches of 2 with 2 threads: bit-identical (ld_ebm.h's
     * determinism contract), each sample in its place */
    ck_assert_msg(run("energy --model %s --in %s --out %s --batch 2 --threads 2", model, at("in.safetensors"),
                      at("out.safetensors")) == 0, "%s", err_text);
    ld_st_t *st;
    ck_assert_int_eq(ld_st_open(at("out.safetensors"), &st), 0);
    const float *e = f32_of(st, "energy", n), *g = f32_of(st, "grad", n * img);
    ck_assert_int_eq(ld_st_find(st, "grad")->ndim, 4);
    ck_assert_int_eq(ld_st_find(st, "grad")->shape[1], c);
    ck_assert_int_eq(memcmp(e, e_ref, sizeof e_ref), 0);
    ck_assert_int_eq(memcmp(g, g_ref, n * img * sizeof(float)), 0);
    ck_assert_str_eq(ld_meta_get(ld_st_meta(st), "model_sha256"), hash);
    ck_assert_ptr_null(ld_st_find(st, "grad.stem.weight"));
    ck_assert(e_ref[0] != e_ref[1]); /* distinct samples, not a constant */
    free((void *)e);
    free((void *)g);
    ld_st_close(&st);

    /* I64 targets and --param-grad: weight gradient of sum(E) */
    write_inputs(at("in64.safetensors"), &in, 1, NULL);
    ck_assert_msg(run("energy -m %s -i %s -o %s --param-grad --threads 2", model, at("in64.safetensors"),
                      at("out2.safetensors")) == 0, "%s", err_text);
    float *gp_ref = calloc(ld_ebm_numel(m), sizeof(float)), ones[5] = {1, 1, 1, 1, 1};
    ck_assert_int_eq(ld_ebm_backward_params(m, ws, n, in.image, in.mask, in.target, ones, NULL, gp_ref), 0);
    ck_assert_int_eq(ld_st_open(at("out2.safetensors"), &st), 0);
    e = f32_of(st, "energy", n);
    ck_assert_int_eq(memcmp(e, e_ref, sizeof e_ref), 0);
    free((void *)e);
    for (size_t i = 0; i < ld_ebm_n_tensors(m); i++) {
        const ld_ebm_tensor_t *p = ld_ebm_tensor(m, i);
        char name[128];
        snprintf(name, sizeof name, "grad.%s", p->name);
        const float *gp = f32_of(st, name, p->numel);
        ck_assert_int_eq(ld_st_find(st, name)->ndim, p->ndim);
        float scale = 0;
        for (size_t j = 0; j < p->numel; j++)
            scale = fabsf(gp_ref[p->offset + j]) > scale ? fabsf(gp_ref[p->offset + j]) : scale;
        double err = ld_test_max_rel_err(gp, gp_ref + p->offset, p->numel, 1e-3 * scale + 1e-30);
        ck_assert_msg(err < 1e-4, "%s: relative error %g", name, err);
        free((void *)gp);
    }
    ld_st_close(&st);

    /* zero samples: empty outputs */
    inputs_t none = make_inputs(0, c, s, 2, 2, 1);
    write_inputs(at("none.safetensors"), &none, 0, NULL);
    ck_assert_msg(run("energy -m %s -i %s -o %s", model, at("none.safetensors"), at("out3.safetensors")) == 0, "%s",
                  err_text);
    ck_assert_int_eq(ld_st_open(at("out3.safetensors"), &st), 0);
    ck_assert_uint_eq(ld_st_find(st, "energy")->numel, 0);
    ck_assert_int_eq(ld_st_find(st, "grad")->shape[0], 0);
    ld_st_close(&st);

    free_inputs(&none);
    free(gp_ref);
    free(g_ref);
    free_inputs(&in);
    ld_ebm_ws_destroy(&ws);
    ld_ebm_destroy(&m);
    free(model);
}
END_TEST

START_TEST(energy_rejects_bad_inputs)
{
    char *model = ld_test_path(dir, "m.safetensors"), *out = ld_test_path(dir, "out.safetensors");
    ck_assert_int_eq(run("init-model --out %s " SMALL_MODEL, model), 0);
    inputs_t in = make_inputs(2, 3, 16, 2, 2, 5);

    in.mask[16 * 16 + 7] = 2; /* sample 1: class 2 of a 2-class model */
    write_inputs(at("in.safetensors"), &in, 0, NULL);
    ck_assert_int_eq(run("energy -m %s -i %s -o %s", model, at("in.safetensors"), out), 1);
    ck_assert_msg(strstr(err_text, "mask of sample 1 has class 2 at pixel 7"), "%s", err_text);
    in.mask[16 * 16 + 7] = 1;

    in.target[0] = 2;
    write_inputs(at("in.safetensors"), &in, 1, NULL);
    ck_assert_int_eq(run("energy -m %s -i %s -o %s", model, at("in.safetensors"), out), 1);
    ck_assert_msg(strstr(err_text, "target[0] = 2 is not a domain index"), "%s", err_text);
    in.target[0] = 0;

    write_inputs(at("in.safetensors"), &in, 0, "mask");
    ck_assert_int_eq(run("energy -m %s -i %s -o %s", model, at("in.safetensors"), out), 1);
    ck_assert_msg(strstr(err_text, "no tensor 'mask'"), "%s", err_text);

    inputs_t small = make_inputs(2, 3, 8, 2, 2, 5);
    write_inputs(at("in.safetensors"), &small, 0, NULL);
    ck_assert_int_eq(run("energy -m %s -i %s -o %s", model, at("in.safetensors"), out), 1);
    ck_assert_msg(strstr(err_text, "tensor 'image' has shape [2,3,8,8], the model needs [2,3,16,16]"), "%s",
                  err_text);
    free_inputs(&small);

    inputs_t grey = make_inputs(2, 1, 16, 2, 2, 5);
    write_inputs(at("in.safetensors"), &grey, 0, NULL);
    ck_assert_int_eq(run("energy -m %s -i %s -o %s", model, at("in.safetensors"), out), 1);
    ck_assert_msg(strstr(err_text, "the model needs [2,3,16,16]"), "%s", err_text);
    free_inputs(&grey);

    /* mask as I32 */
    ld_st_writer_t *w;
    int64_t di[4] = {2, 3, 16, 16}, dm[3] = {2, 16, 16}, dt[1] = {2};
    int32_t *mask32 = calloc(2 * 16 * 16, sizeof *mask32);
    ck_assert_int_eq(ld_st_writer_new(&w), 0);
    ck_assert_int_eq(ld_st_writer_add(w, "image", LD_DT_F32, 4, di, in.image), 0);
    ck_assert_int_eq(ld_st_writer_add(w, "mask", LD_DT_I32, 3, dm, mask32), 0);
    ck_assert_int_eq(ld_st_writer_add(w, "target", LD_DT_I32, 1, dt, in.target), 0);
    ck_assert_int_eq(ld_st_writer_write(w, at("in.safetensors"), NULL), 0);
    ld_st_writer_destroy(&w);
    free(mask32);
    ck_assert_int_eq(run("energy -m %s -i %s -o %s", model, at("in.safetensors"), out), 1);
    ck_assert_msg(strstr(err_text, "tensor 'mask' has dtype I32, expected U8"), "%s", err_text);

    /* not a model */
    ck_assert_int_eq(run("energy -m %s -i %s -o %s", at("in.safetensors"), at("in.safetensors"), out), 1);
    ck_assert_msg(strstr(err_text, "metadata key 'format' is missing"), "%s", err_text);
    ck_assert_int_eq(run("energy -m %s -i %s -o %s", at("missing"), at("in.safetensors"), out), 1);
    ck_assert_msg(strstr(err_text, "missing"), "%s", err_text);

    ck_assert_int_ne(access(out, F_OK), 0); /* nothing written by any failure */
    free_inputs(&in);
    free(model);
    free(out);
}
END_TEST

/* ---- ld_text parsers ----------------------------------------------------------------- */

START_TEST(value_parsers)
{
    int i = 7;
    ck_assert_int_eq(ld_text_parse_int("--n", "42", 0, 100, &i), 0);
    ck_assert_int_eq(i, 42);
    ck_assert_int_eq(ld_text_parse_int("--n", "-3", -5, 5, &i), 0);
    ck_assert_int_eq(i, -3);
    static const char *const not_ints[] = {"", " 1", "1 ", "+1", "0x10", "1e3", "12a", "--1", "-"};
    for (size_t k = 0; k < sizeof not_ints / sizeof *not_ints; k++) {
        i = 7;
        ck_assert_msg(ld_text_parse_int("--n", not_ints[k], -100, 100, &i) == LD_EINVAL, "'%s' accepted",
                      not_ints[k]);
        ck_assert_int_eq(i, 7);
        ck_assert_ptr_nonnull(strstr(ld_errdetail(), "--n: '"));
    }
    ld_expect_err(ld_text_parse_int("--n", "101", 0, 100, &i), LD_ERANGE);
    ck_assert_str_eq(ld_errdetail(), "--n: 101 is out of range [0, 100]");
    ld_expect_err(ld_text_parse_int("--n", "99999999999999999999", INT32_MIN, INT32_MAX, &i), LD_ERANGE);
    ld_expect_err(ld_text_parse_int("--n", "2147483648", INT32_MIN, INT32_MAX, &i), LD_ERANGE);
    ld_expect_err(ld_text_parse_int("--n", NULL, 0, 1, &i), LD_EINVAL);

    uint64_t u;
    ck_assert_int_eq(ld_text_parse_u64("--seed", "18446744073709551615", &u), 0);
    ck_assert(u == UINT64_MAX);
    ld_expect_err(ld_text_parse_u64("--seed", "-1", &u), LD_EINVAL);
    ld_expect_err(ld_text_parse_u64("--seed", "18446744073709551616", &u), LD_ERANGE);

    double d;
    float f;
    ck_assert_int_eq(ld_text_parse_double("--eta", "2.5e-3", 0, 1, &d), 0);
    ck_assert(d == 2.5e-3);
    ld_expect_err(ld_text_parse_double("--eta", "nan", 0, 1, &d), LD_ERANGE);
    ld_expect_err(ld_text_parse_double("--eta", "inf", 0, 1e308, &d), LD_ERANGE);
    ld_expect_err(ld_text_parse_double("--eta", "1,5", 0, 10, &d), LD_EINVAL);
    ld_expect_err(ld_text_parse_double("--eta", "", 0, 10, &d), LD_EINVAL);
    ld_expect_err(ld_text_parse_double("--eta", "-0.5", 0, 10, &d), LD_ERANGE);
    ld_expect_err(ld_text_parse_float("--eta", "1e300", 0, 1e308, &f), LD_ERANGE);
    ck_assert_int_eq(ld_text_parse_float("--eta", "0.25", 0, 1, &f), 0);
    ck_assert(f == 0.25f);

    int v[4], n = -1;
    ck_assert_int_eq(ld_text_parse_int_list("--widths", "32,64,128", 1, 4096, v, 4, &n), 0);
    ck_assert_int_eq(n, 3);
    ck_assert_int_eq(v[2], 128);
    ld_expect_err(ld_text_parse_int_list("--widths", "32,,64", 1, 4096, v, 4, &n), LD_EINVAL);
    ld_expect_err(ld_text_parse_int_list("--widths", "32,", 1, 4096, v, 4, &n), LD_EINVAL);
    ld_expect_err(ld_text_parse_int_list("--widths", "", 1, 4096, v, 4, &n), LD_EINVAL);
    ld_expect_err(ld_text_parse_int_list("--widths", "1,2,3,4,5", 1, 4096, v, 4, &n), LD_ERANGE);
    ld_expect_err(ld_text_parse_int_list("--widths", "1,0", 1, 4096, v, 4, &n), LD_ERANGE);
    ck_assert_int_eq(n, 3); /* unchanged on failure */
}
END_TEST

/* Fields with a separator, quote or line break are quoted, inner quotes
 * doubled; anything else is written as is. */
START_TEST(utf8_validation)
{
    ck_assert(ld_text_is_utf8(""));
    ck_assert(ld_text_is_utf8("plain ascii"));
    ck_assert(ld_text_is_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));   /* 2, 3 and 4 bytes */
    ck_assert(ld_text_is_utf8("\xf4\x8f\xbf\xbf"));                             /* U+10FFFF */
    ck_assert(!ld_text_is_utf8("caf\xc3"));                                       /* truncated at the end */
    ck_assert(!ld_text_is_utf8("\xc3("));                                         /* bad continuation */
    ck_assert(!ld_text_is_utf8("\xc0\xaf"));                                      /* overlong '/' */
    ck_assert(!ld_text_is_utf8("\xe0\x80\xaf"));                                  /* overlong, 3 bytes */
    ck_assert(!ld_text_is_utf8("\xed\xa0\x80"));                                  /* surrogate U+D800 */
    ck_assert(!ld_text_is_utf8("\xf4\x90\x80\x80"));                              /* above U+10FFFF */
    ck_assert(!ld_text_is_utf8("\xff"));
    ck_assert(!ld_text_is_utf8("ok\x80"));                                        /* lone continuation */
    ck_assert_uint_eq(ld_text_utf8_len((const unsigned char *)"\xe2\x82\xac"), 3);
    ck_assert_uint_eq(ld_text_utf8_len((const unsigned char *)"\xf0\x8f\xbf\xbf"), 0);   /* overlong, 4 bytes */
}
END_TEST

START_TEST(csv_field_quoting)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        { "plain", "plain" },
        { "", "" },
        { "semi;colon", "semi;colon" },
        { "a,b", "\"a,b\"" },
        { "say \"hi\"", "\"say \"\"hi\"\"\"" },
        { "two\nlines", "\"two\nlines\"" },
        { "cr\r", "\"cr\r\"" },
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        ck_assert_ptr_nonnull(f);
        ld_text_csv_field(f, cases[k].in);
        ck_assert_int_eq(fclose(f), 0);
        ck_assert_str_eq(buf, cases[k].out);
        free(buf);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("cli");
    TCase *tc = ld_tcase("cli", 60);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, help_and_version);
    tcase_add_test(tc, usage_errors_exit_2);
    tcase_add_test(tc, config_file_errors);
    tcase_add_test(tc, init_model_deterministic);
    tcase_add_test(tc, energy_matches_direct_call);
    tcase_add_test(tc, energy_rejects_bad_inputs);
    tcase_add_test(tc, value_parsers);
    tcase_add_test(tc, utf8_validation);
    tcase_add_test(tc, csv_field_quoting);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
