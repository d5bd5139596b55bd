/* ldt_train_ae: `langdaug train-ae`, training the autoencoder (ld_aetrain).
 *
 * The training settings are the keys of ld_aetrain_settings() (one long
 * option each); the options below are about this run only. Everything that
 * can be checked (values, data, output paths) is checked before the first
 * iteration. The run ends with an evaluation on the held-out images,
 * printed per domain and kept in the model file. SIGINT/SIGTERM stop the
 * run between iterations, save a checkpoint of the last finished iteration
 * (and the curves so far) and exit 1; the run continues with --resume.
 * A diverged run writes nothing and exits 1. */
#include "ldt.h"
#include "ldt_run.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ld_aetrain.h"
#include "ld_afile.h"
#include "ld_error.h"
#include "ld_log.h"
#include "ld_text.h"

#define CMD "train-ae"

enum {
    OPT_OUT = 1000, OPT_ITERS, OPT_RESUME, OPT_CHECKPOINT, OPT_CHECKPOINT_EVERY, OPT_PREVIEW, OPT_PREVIEW_EVERY,
    OPT_EVAL_EVERY, OPT_CURVE, OPT_EVAL_CURVE, OPT_QUIET, OPT_HELP, OPT_CONFIG_BASE = 2000
};

typedef struct {
    ldt_outputs_t o;
    const char *curve, *eval_curve;
    int64_t iters, checkpoint_every, preview_every, eval_every;
    int quiet;
    ld_meta_t *settings;      /* training keys as given, in order */
    char *command;            /* the command line, for provenance */
} args_t;

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: langdaug train-ae --data ROOT --out AE.safetensors [options]\n"
            "       langdaug train-ae --resume CHECKPOINT --out AE.safetensors --iters N [options]\n"
            "Trains the autoencoder (aeconv) to reconstruct crops of the source domains; reports PSNR and SSIM\n"
            "(luminance, 11x11 Gaussian window, sigma 1.5) per domain on held-out images.\n"
            "\nRun options:\n"
            "  --out PATH             autoencoder file to write when training ends (required)\n"
            "  --iters N              total iterations (default 5000; counts the resumed ones)\n"
            "  --resume CKPT          continue a run bit-exactly from a checkpoint\n"
            "  --checkpoint PATH      checkpoint file (default: --resume's, else OUT.ckpt)\n"
            "  --checkpoint-every N   iterations between checkpoints (default 500; one at the end always)\n"
            "  --preview DIR          write grids (original | reconstruction) DIR/preview_<iteration>.png\n"
            "  --preview-every N      iterations between previews (default 500)\n"
            "  --eval-every N         iterations between held-out evaluations (default 500; one at the end always)\n"
            "  --curve CSV            write the loss curve (iteration,loss,mse,l1,grad_diff) at the end\n"
            "  --eval-curve CSV       write the evaluations (iteration,<domain>_psnr,_ssim,_vessel_contrast,...)\n"
            "  --quiet                no progress output or info messages\n"
            "  --help                 this text\n"
            "\nTraining settings (kept in the checkpoint and the model as train_ae.<key>; a resumed run must\n"
            "not change those marked *):\n");
    ld_aetrain_config_t def;
    ld_aetrain_config_defaults(&def);
    ld_settings_help(ld_aetrain_settings(), &def, f);
}

static int parse_run_option(int c, const char *value, args_t *a)
{
    switch (c) {
    case OPT_OUT: a->o.out = value; return 0;
    case OPT_RESUME: a->o.resume = value; return 0;
    case OPT_CHECKPOINT: a->o.checkpoint = value; return 0;
    case OPT_PREVIEW: a->o.preview_dir = value; return 0;
    case OPT_CURVE: a->curve = value; return 0;
    case OPT_EVAL_CURVE: a->eval_curve = value; return 0;
    case OPT_ITERS: return ldt_parse_count(CMD, "--iters", value, 1, &a->iters);
    case OPT_CHECKPOINT_EVERY: return ldt_parse_count(CMD, "--checkpoint-every", value, 0, &a->checkpoint_every);
    case OPT_PREVIEW_EVERY: return ldt_parse_count(CMD, "--preview-every", value, 1, &a->preview_every);
    case OPT_EVAL_EVERY: return ldt_parse_count(CMD, "--eval-every", value, 0, &a->eval_every);
    default: return ldt_usage_error(CMD, "unexpected option");
    }
}

static struct option *longopts(void)
{
    static const struct option run_opts[] = {
        { "out", required_argument, NULL, OPT_OUT },
        { "iters", required_argument, NULL, OPT_ITERS },
        { "resume", required_argument, NULL, OPT_RESUME },
        { "checkpoint", required_argument, NULL, OPT_CHECKPOINT },
        { "checkpoint-every", required_argument, NULL, OPT_CHECKPOINT_EVERY },
        { "preview", required_argument, NULL, OPT_PREVIEW },
        { "preview-every", required_argument, NULL, OPT_PREVIEW_EVERY },
        { "eval-every", required_argument, NULL, OPT_EVAL_EVERY },
        { "curve", required_argument, NULL, OPT_CURVE },
        { "eval-curve", required_argument, NULL, OPT_EVAL_CURVE },
        { "quiet", no_argument, NULL, OPT_QUIET },
        { "help", no_argument, NULL, OPT_HELP },
    };
    return ldt_longopts(run_opts, sizeof run_opts / sizeof run_opts[0], ld_aetrain_settings(), OPT_CONFIG_BASE);
}

static int parse_one(int c, args_t *a, ld_aetrain_config_t *scratch)
{
    if (c == '?')
        return 2;
    if (c == OPT_HELP) {
        usage(stdout);
        return -1;
    }
    if (c == OPT_QUIET) {
        a->quiet = 1;
        if (ld_log_level > LD_LOG_WARN)
            ld_log_set(NULL, NULL, LD_LOG_WARN);
        return 0;
    }
    if (c >= OPT_CONFIG_BASE) {
        const ld_settings_t *t = ld_aetrain_settings();
        return ldt_setting_option(CMD, t, scratch, t->rows[c - OPT_CONFIG_BASE].key, optarg, a->settings);
    }
    return parse_run_option(c, optarg, a);
}

/* Parses argv into a; returns 0, or the exit status (2 usage error, or -1
 * after --help). */
static int parse_args(int argc, char **argv, args_t *a)
{
    struct option *opts = longopts();
    ld_aetrain_config_t scratch;
    ld_aetrain_config_defaults(&scratch);
    if (!opts || ld_meta_new(&a->settings)) {
        free(opts);
        return ldt_fail(CMD, LD_ENOMEM);
    }
    a->iters = 5000;
    a->checkpoint_every = a->preview_every = a->eval_every = 500;
    int c, status = 0;
    while (!status && (c = ldt_getopt(CMD, argc, argv, "", opts)) != -1)
        status = parse_one(c, a, &scratch);
    free(opts);
    if (status)
        return status;
    if ((status = ldt_no_operands(CMD, argc, argv)))
        return status;
    if (!a->o.out)
        return ldt_usage_error(CMD, "--out AE.safetensors is required");
    if (!a->o.resume && !ld_meta_get(a->settings, "data") && !ld_meta_get(a->settings, "manifest"))
        return ldt_usage_error(CMD, "--data ROOT (or --manifest CSV) is required unless --resume is given");
    a->o.files[0] = a->curve;
    a->o.file_opts[0] = "--curve";
    a->o.files[a->curve != NULL] = a->eval_curve;
    a->o.file_opts[a->curve != NULL] = "--eval-curve";
    return 0;
}

/* ---- outputs ---------------------------------------------------------------------- */

static int write_curve(const ld_aetrain_t *tr, const char *path)
{
    int64_t rows;
    const float *h = ld_aetrain_history(tr, &rows);
    ld_afile_t *af;
    int rc = ld_afile_open(path, &af);
    if (rc)
        return rc;
    FILE *f = ld_afile_fp(af);
    fprintf(f, "iteration,loss,mse,l1,grad_diff\n");
    for (int64_t i = 0; i < rows; i++) {
        const float *r = h + i * LD_AETRAIN_HISTORY_COLS;
        fprintf(f, "%" PRId64 ",%.9g,%.9g,%.9g,%.9g\n", i + 1, r[0], r[1], r[2], r[3]);
    }
    return ld_afile_commit(&af);
}

static int write_eval_curve(const ld_aetrain_t *tr, const char *path)
{
    const ld_dataset_t *ds = ld_aetrain_dataset(tr);
    ld_afile_t *af;
    int rc = ld_afile_open(path, &af);
    if (rc)
        return rc;
    FILE *f = ld_afile_fp(af);
    fprintf(f, "iteration");
    for (int d = 0; d < ld_dataset_n_domains(ds); d++) {
        static const char *const metric[] = { "psnr", "ssim", "vessel_contrast" };
        for (int k = 0; k < 3; k++) {
            char name[LD_NAME_MAX + 24];
            snprintf(name, sizeof name, "%s_%s", ld_dataset_domain(ds, d), metric[k]);
            fputc(',', f);
            ld_text_csv_field(f, name);
        }
    }
    fputc('\n', f);
    for (size_t i = 0; i < ld_aetrain_n_evals(tr); i++) {
        ld_aetrain_eval_t ev;
        ld_aetrain_eval_at(tr, i, &ev);
        fprintf(f, "%" PRId64, ev.iteration);
        for (int d = 0; d < ev.n_domains; d++)
            fprintf(f, ",%.4f,%.5f,%.4f", ev.psnr[d], ev.ssim[d], ev.contrast[d]);
        fputc('\n', f);
    }
    return ld_afile_commit(&af);
}

static int write_curves(const ld_aetrain_t *tr, const args_t *a)
{
    int rc = a->curve ? write_curve(tr, a->curve) : LD_OK;
    if (!rc && a->eval_curve)
        rc = write_eval_curve(tr, a->eval_curve);
    return rc;
}

static void print_eval(const ld_aetrain_t *tr, const ld_aetrain_eval_t *ev)
{
    const ld_dataset_t *ds = ld_aetrain_dataset(tr);
    fprintf(stderr, "langdaug %s: held-out reconstruction at iteration %" PRId64 " (%d crops per domain):\n", CMD,
            ev->iteration, ld_aetrain_config(tr)->eval_crops);
    for (int d = 0; d < ev->n_domains; d++)
        fprintf(stderr, "  %-16s PSNR %6.2f dB  SSIM %.4f  vessel contrast kept %.3f  (%d held-out images)\n",
                ld_dataset_domain(ds, d), ev->psnr[d], ev->ssim[d], ev->contrast[d], ld_aetrain_n_val(tr, d));
}

static int finish(ld_aetrain_t *tr, const args_t *a, double seconds)
{
    ld_aetrain_eval_t ev;
    ld_meta_t *prov = NULL;
    char hash[65];
    int rc = ld_aetrain_evaluate(tr, &ev);
    if (!rc)
        rc = ldt_provenance(a->command, a->o.resume, &prov);
    if (!rc)
        rc = ld_aetrain_save_model(tr, a->o.out, prov, hash);
    ld_meta_destroy(&prov);
    if (!rc)
        rc = write_curves(tr, a);
    if (rc)
        return ldt_fail(CMD, rc);
    if (a->quiet)
        return 0;
    char dur[32];
    ldt_format_duration(seconds, dur, sizeof dur);
    print_eval(tr, &ev);
    fprintf(stderr, "langdaug %s: wrote %s (sha256 %.16s...) after %" PRId64 " iterations in %s\n", CMD, a->o.out,
            hash, ld_aetrain_iteration(tr), dur);
    return 0;
}

/* ---- the run ------------------------------------------------------------------------ */

/* A new run's settings: invalid ones are a usage error (exit 2). */
static int new_run(const args_t *a, ld_aetrain_t **tr)
{
    ld_aetrain_config_t cfg;
    ld_aetrain_config_defaults(&cfg);
    for (size_t i = 0; i < ld_meta_count(a->settings); i++)
        ld_settings_set(ld_aetrain_settings(), &cfg, ld_meta_key(a->settings, i), ld_meta_value(a->settings, i));
    if (ld_aetrain_config_validate(&cfg))
        return ldt_usage_error(CMD, "%s", ld_errdetail());
    int rc = ld_aetrain_new(&cfg, tr);
    return rc ? ldt_fail(CMD, rc) : 0;
}

static int open_run(const args_t *a, ld_aetrain_t **tr)
{
    int rc = ldt_absolute_data_paths(a->settings);
    if (rc)
        return ldt_fail(CMD, rc);
    if (!a->o.resume && (rc = new_run(a, tr)))
        return rc;
    if (a->o.resume && (rc = ld_aetrain_resume(a->o.resume, a->settings, tr)))
        return ldt_fail(CMD, rc);
    if ((rc = ldt_check_iters(CMD, a->iters, ld_aetrain_iteration(*tr))))
        ld_aetrain_destroy(tr);
    return rc;
}

static void on_progress(const ld_aetrain_stats_t *st, void *user)
{
    char what[160];
    snprintf(what, sizeof what, "loss %.5f mse %.5f l1 %.5f gd %.5f |g| %.3g", st->loss.loss, st->loss.mse,
             st->loss.l1, st->loss.grad_diff, st->grad_norm);
    ldt_progress_print(user, st->iteration, what);
}

static int train_loop(ld_aetrain_t *tr, const args_t *a)
{
    ldt_progress_t prog;
    ldt_progress_begin(&prog, CMD, a->quiet, ld_aetrain_iteration(tr), a->iters);
    ld_aetrain_run_opts_t ro = { .iters = a->iters, .checkpoint = a->o.checkpoint,
                                 .checkpoint_every = a->checkpoint_every, .preview_dir = a->o.preview_dir,
                                 .preview_every = a->preview_every, .eval_every = a->eval_every,
                                 .progress = on_progress, .user = &prog, .cancel = ldt_cancel_catch() };
    int rc = ld_aetrain_run(tr, &ro);
    ldt_cancel_release();
    ldt_progress_end(&prog);
    if (rc) {
        if (rc == LD_ECANCELED)
            write_curves(tr, a);
        return ldt_fail(CMD, rc);
    }
    return finish(tr, a, ldt_progress_seconds(&prog));
}

int ldt_train_ae_main(int argc, char **argv)
{
    args_t a;
    memset(&a, 0, sizeof a);
    ld_aetrain_t *tr = NULL;
    int status = parse_args(argc, argv, &a);
    if (status == 0 && !(a.command = ldt_join_command(argc, argv)))
        status = ldt_fail(CMD, LD_ENOMEM);
    if (status == 0)
        status = ldt_prepare_outputs(CMD, &a.o);
    if (status == 0)
        status = open_run(&a, &tr);
    if (status == 0)
        status = train_loop(tr, &a);
    ld_aetrain_destroy(&tr);
    ld_meta_destroy(&a.settings);
    free(a.command);
    free(a.o.checkpoint_owned);
    return status < 0 ? 0 : status;
}
