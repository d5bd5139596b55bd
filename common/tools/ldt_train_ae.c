/* ldt_train_ae: `langdaug train-ae`, training the autoencoder (ld_aetrain).
 *
 * The training settings are the keys of ld_aetrain_settings() (one long
 * option each); the run options are ldt_run's, plus --eval-every and
 * --eval-curve. Everything that
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
#include "ld_text.h"

#define CMD "train-ae"

enum { OPT_EVAL_EVERY = LDT_OPT_OWN, OPT_EVAL_CURVE };

typedef struct {
    ldt_run_args_t r;           /* the run options train shares */
    const char *eval_curve;
    int64_t eval_every;
} args_t;

static int own_option(int c, const char *value, ldt_run_args_t *a, void *user)
{
    args_t *ae = user;
    if (c == OPT_EVAL_EVERY)
        return ldt_parse_count(CMD, "--eval-every", value, 0, &ae->eval_every);
    ae->eval_curve = value;
    ldt_outputs_add(&a->o, "--eval-curve", value);
    return 0;
}

static int run_start(int argc, char **argv, args_t *ae)
{
    static const struct option own[] = {
        { "eval-every", required_argument, NULL, OPT_EVAL_EVERY },
        { "eval-curve", required_argument, NULL, OPT_EVAL_CURVE },
    };
    ld_aetrain_config_t def;
    ld_aetrain_config_defaults(&def);
    const ldt_run_cmd_t cmd = {
        .cmd = CMD,
        .what = "Trains the autoencoder (aeconv) to reconstruct crops of the source domains; reports PSNR and SSIM\n"
                "(luminance, 11x11 Gaussian window, sigma 1.5) per domain on held-out images.\n",
        .out_file = "AE.safetensors",
        .out_help = "autoencoder file to write",
        .iters = 5000,
        .preview_help = "grids (original | reconstruction)",
        .curve_help = "the loss curve (iteration,loss,mse,l1,grad_diff)",
        .own = own,
        .n_own = sizeof own / sizeof own[0],
        .own_help =
            "  --eval-every N         iterations between held-out evaluations (default 500; one at the end always)\n"
            "  --eval-curve CSV       write the evaluations (iteration,<domain>_psnr,_ssim,_vessel_contrast,...)\n",
        .settings_help =
            "Training settings (kept in the checkpoint and the model as train_ae.<key>; a resumed run must\n"
            "not change those marked *):\n",
        .settings = ld_aetrain_settings(),
        .defaults = &def,
    };
    ae->eval_curve = NULL;
    ae->eval_every = 500;
    return ldt_run_start(&cmd, argc, argv, &ae->r, own_option, ae);
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
    int rc = a->r.curve ? write_curve(tr, a->r.curve) : LD_OK;
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
        rc = ldt_provenance(a->r.command, a->r.o.resume, &prov);
    if (!rc)
        rc = ld_aetrain_save_model(tr, a->r.o.out, prov, hash);
    ld_meta_destroy(&prov);
    if (!rc)
        rc = write_curves(tr, a);
    if (rc)
        return ldt_fail(CMD, rc);
    if (a->r.quiet)
        return 0;
    char dur[32];
    ldt_format_duration(seconds, dur, sizeof dur);
    print_eval(tr, &ev);
    fprintf(stderr, "langdaug %s: wrote %s (sha256 %.16s...) after %" PRId64 " iterations in %s\n", CMD, a->r.o.out,
            hash, ld_aetrain_iteration(tr), dur);
    return 0;
}

/* ---- the run ------------------------------------------------------------------------ */

/* A new run's settings: invalid ones are a usage error (exit 2). */
static int new_run(const args_t *a, ld_aetrain_t **tr)
{
    ld_aetrain_config_t cfg;
    ld_aetrain_config_defaults(&cfg);
    for (size_t i = 0; i < ld_meta_count(a->r.settings); i++)
        ld_settings_set(ld_aetrain_settings(), &cfg, ld_meta_key(a->r.settings, i), ld_meta_value(a->r.settings, i));
    if (ld_aetrain_config_validate(&cfg))
        return ldt_usage_error(CMD, "%s", ld_errdetail());
    int rc = ld_aetrain_new(&cfg, tr);
    return rc ? ldt_fail(CMD, rc) : 0;
}

static int open_run(const args_t *a, ld_aetrain_t **tr)
{
    int rc = ldt_absolute_data_paths(a->r.settings);
    if (rc)
        return ldt_fail(CMD, rc);
    if (!a->r.o.resume && (rc = new_run(a, tr)))
        return rc;
    if (a->r.o.resume && (rc = ld_aetrain_resume(a->r.o.resume, a->r.settings, tr)))
        return ldt_fail(CMD, rc);
    if ((rc = ldt_check_iters(CMD, a->r.iters, ld_aetrain_iteration(*tr))))
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
    ldt_progress_begin(&prog, CMD, a->r.quiet, ld_aetrain_iteration(tr), a->r.iters);
    ld_aetrain_run_opts_t ro = { .iters = a->r.iters, .checkpoint = a->r.o.checkpoint,
                                 .checkpoint_every = a->r.checkpoint_every, .preview_dir = a->r.o.preview_dir,
                                 .preview_every = a->r.preview_every, .eval_every = a->eval_every,
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
    ld_aetrain_t *tr = NULL;
    int status = run_start(argc, argv, &a);
    if (status == 0)
        status = open_run(&a, &tr);
    if (status == 0)
        status = train_loop(tr, &a);
    ld_aetrain_destroy(&tr);
    ldt_run_args_free(&a.r);
    return status < 0 ? 0 : status;
}
