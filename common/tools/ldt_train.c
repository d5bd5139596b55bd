/* ldt_train: `langdaug train`, contrastive-divergence training (ld_train).
 *
 * The training settings are the keys of ld_train_settings() (one long
 * option each); the run options are ldt_run's. Everything that
 * can be checked (values, data, output paths) is checked before the first
 * iteration. SIGINT/SIGTERM stop the run between Langevin steps, save a
 * checkpoint of the last finished iteration (and the curve so far) and
 * exit 1; the run continues with --resume. */
#include "ldt.h"
#include "ldt_run.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ld_afile.h"
#include "ld_error.h"
#include "ld_train.h"

#define CMD "train"

static int run_start(int argc, char **argv, ldt_run_args_t *a)
{
    ld_train_config_t def;
    ld_train_config_defaults(&def);
    const ldt_run_cmd_t cmd = {
        .cmd = CMD,
        .what = "Trains the conditional energy model E(image | mask, target domain) by contrastive divergence.\n",
        .out_file = "MODEL.safetensors",
        .out_help = "model file to write (the EMA weights)",
        .iters = 10000,
        .preview_help = "preview grids",
        .curve_help = "the training curve (iteration,loss,e_pos,e_neg)",
        .own_help = "",
        .settings_help = "Training settings (kept in the checkpoint; a resumed run must not change those marked *):\n",
        .settings = ld_train_settings(),
        .defaults = &def,
    };
    return ldt_run_start(&cmd, argc, argv, a, NULL, NULL);
}

/* ---- outputs ---------------------------------------------------------------------- */

static int write_curve(const ld_train_t *train, const char *path)
{
    int64_t rows;
    const float *h = ld_train_history(train, &rows);
    ld_afile_t *af;
    int rc = ld_afile_open(path, &af);
    if (rc)
        return rc;
    FILE *f = ld_afile_fp(af);
    fprintf(f, "iteration,loss,e_pos,e_neg\n");
    for (int64_t i = 0; i < rows; i++) {
        const float *r = h + i * LD_TRAIN_HISTORY_COLS;
        fprintf(f, "%" PRId64 ",%.9g,%.9g,%.9g\n", i + 1, r[0], r[1], r[2]);
    }
    return ld_afile_commit(&af);
}

static int finish(ld_train_t *train, const ldt_run_args_t *a, double seconds)
{
    ld_meta_t *prov = NULL;
    char hash[65];
    int rc = ldt_provenance(a->command, a->o.resume, &prov);
    if (!rc)
        rc = ld_train_save_model(train, a->o.out, prov, hash);
    ld_meta_destroy(&prov);
    if (!rc && a->curve)
        rc = write_curve(train, a->curve);
    if (rc)
        return ldt_fail(CMD, rc);
    if (a->quiet)
        return 0;
    char dur[32];
    ldt_format_duration(seconds, dur, sizeof dur);
    fprintf(stderr, "langdaug %s: wrote %s (sha256 %.16s...) after %" PRId64 " iterations in %s\n", CMD, a->o.out,
            hash, ld_train_iteration(train), dur);
    return 0;
}

/* ---- the run ------------------------------------------------------------------------ */

static int new_run(const ldt_run_args_t *a, ld_train_t **train)
{
    ld_train_config_t cfg;
    ld_train_config_defaults(&cfg);
    int rc = LD_OK;
    for (size_t i = 0; i < ld_meta_count(a->settings) && !rc; i++)
        rc = ld_train_config_set(&cfg, ld_meta_key(a->settings, i), ld_meta_value(a->settings, i));
    return rc ? rc : ld_train_new(&cfg, train);
}

static int open_run(const ldt_run_args_t *a, ld_train_t **train)
{
    int rc = ldt_absolute_data_paths(a->settings);
    if (!rc)
        rc = a->o.resume ? ld_train_resume(a->o.resume, a->settings, train) : new_run(a, train);
    if (rc)
        return ldt_fail(CMD, rc);
    if ((rc = ldt_check_iters(CMD, a->iters, ld_train_iteration(*train))))
        ld_train_destroy(train);
    return rc;
}

typedef struct {
    ldt_progress_t prog;
    const ld_ebm_arch_t *arch;
    ld_train_stats_t stats;  /* of the last iteration */
} progress_t;

static void on_progress(const void *stats, void *user)
{
    const ld_train_stats_t *st = stats;
    progress_t *p = user;
    char what[300];
    snprintf(what, sizeof what, "%s->%s loss %.4f E+ %.4f E- %.4f |g| %.3g", p->arch->domains[st->source],
             p->arch->domains[st->target], st->loss, st->e_pos, st->e_neg, st->grad_norm);
    ldt_progress_print(&p->prog, st->iteration, what);
}

static int train_loop(ld_train_t *train, const ldt_run_args_t *a)
{
    progress_t p = { .arch = ld_ebm_arch(ld_train_model(train)) };
    ldt_progress_begin(&p.prog, CMD, a->quiet, ld_train_iteration(train), a->iters);
    ld_train_run_opts_t ro = { .iters = a->iters, .checkpoint = a->o.checkpoint,
                               .checkpoint_every = a->checkpoint_every, .preview_dir = a->o.preview_dir,
                               .preview_every = a->preview_every, .progress = on_progress, .user = &p,
                               .stats = &p.stats, .cancel = ldt_cancel_catch() };
    int rc = ld_train_run(train, &ro);
    ldt_cancel_release();
    ldt_progress_end(&p.prog);
    if (rc) {
        if (rc == LD_ECANCELED && a->curve)
            write_curve(train, a->curve);
        return ldt_fail(CMD, rc);
    }
    return finish(train, a, ldt_progress_seconds(&p.prog));
}

int ldt_train_main(int argc, char **argv)
{
    ldt_run_args_t a;
    ld_train_t *train = NULL;
    int status = run_start(argc, argv, &a);
    if (status == 0)
        status = open_run(&a, &train);
    if (status == 0)
        status = train_loop(train, &a);
    ld_train_destroy(&train);
    ldt_run_args_free(&a);
    return status < 0 ? 0 : status;
}
