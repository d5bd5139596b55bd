/* ldt_train: `langdaug train`, contrastive-divergence training (ld_train).
 *
 * The training settings are the keys of ld_train_settings() (one long
 * option each); the options below are about this run only. Everything that
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
#include "ld_log.h"
#include "ld_train.h"

#define CMD "train"

enum {
    OPT_OUT = 1000, OPT_ITERS, OPT_RESUME, OPT_CHECKPOINT, OPT_CHECKPOINT_EVERY, OPT_PREVIEW,
    OPT_PREVIEW_EVERY, OPT_CURVE, OPT_QUIET, OPT_HELP, OPT_CONFIG_BASE = 2000
};

typedef struct {
    ldt_outputs_t o;
    const char *curve;
    int64_t iters, checkpoint_every, preview_every;
    int quiet;
    ld_meta_t *settings;      /* training keys as given, in order */
    char *command;            /* the command line, for provenance */
} args_t;

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: langdaug train --data ROOT --out MODEL.safetensors [options]\n"
            "       langdaug train --resume CHECKPOINT --out MODEL.safetensors --iters N [options]\n"
            "Trains the conditional energy model E(image | mask, target domain) by contrastive divergence.\n"
            "\nRun options:\n"
            "  --out PATH             model file to write (the EMA weights) when training ends (required)\n"
            "  --iters N              total iterations (default 10000; counts the resumed ones)\n"
            "  --resume CKPT          continue a run bit-exactly from a checkpoint\n"
            "  --checkpoint PATH      checkpoint file (default: --resume's, else OUT.ckpt)\n"
            "  --checkpoint-every N   iterations between checkpoints (default 500; one at the end always)\n"
            "  --preview DIR          write preview grids DIR/preview_<iteration>.png\n"
            "  --preview-every N      iterations between previews (default 500)\n"
            "  --curve CSV            write the training curve (iteration,loss,e_pos,e_neg) at the end\n"
            "  --quiet                no progress output or info messages\n"
            "  --help                 this text\n"
            "\nTraining settings (kept in the checkpoint; a resumed run must not change those marked *):\n");
    ld_train_config_t def;
    ld_train_config_defaults(&def);
    ld_settings_help(ld_train_settings(), &def, f);
}

static int parse_run_option(int c, const char *value, args_t *a)
{
    switch (c) {
    case OPT_OUT: a->o.out = value; return 0;
    case OPT_RESUME: a->o.resume = value; return 0;
    case OPT_CHECKPOINT: a->o.checkpoint = value; return 0;
    case OPT_PREVIEW: a->o.preview_dir = value; return 0;
    case OPT_CURVE: a->curve = value; return 0;
    case OPT_ITERS: return ldt_parse_count(CMD, "--iters", value, 1, &a->iters);
    case OPT_CHECKPOINT_EVERY: return ldt_parse_count(CMD, "--checkpoint-every", value, 0, &a->checkpoint_every);
    case OPT_PREVIEW_EVERY: return ldt_parse_count(CMD, "--preview-every", value, 1, &a->preview_every);
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
        { "curve", required_argument, NULL, OPT_CURVE },
        { "quiet", no_argument, NULL, OPT_QUIET },
        { "help", no_argument, NULL, OPT_HELP },
    };
    return ldt_longopts(run_opts, sizeof run_opts / sizeof run_opts[0], ld_train_settings(), OPT_CONFIG_BASE);
}

static int parse_one(int c, args_t *a, ld_train_config_t *scratch)
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
        const ld_settings_t *t = ld_train_settings();
        return ldt_setting_option(CMD, t, scratch, t->rows[c - OPT_CONFIG_BASE].key, optarg, a->settings);
    }
    return parse_run_option(c, optarg, a);
}

/* Parses argv into a; returns 0, or the exit status (2 usage error, or -1
 * after --help). */
static int parse_args(int argc, char **argv, args_t *a)
{
    struct option *opts = longopts();
    ld_train_config_t scratch;
    ld_train_config_defaults(&scratch);
    if (!opts || ld_meta_new(&a->settings)) {
        free(opts);
        return ldt_fail(CMD, LD_ENOMEM);
    }
    a->iters = 10000;
    a->checkpoint_every = a->preview_every = 500;
    int c, status = 0;
    while (!status && (c = ldt_getopt(CMD, argc, argv, "", opts)) != -1)
        status = parse_one(c, a, &scratch);
    free(opts);
    if (status)
        return status;
    if ((status = ldt_no_operands(CMD, argc, argv)))
        return status;
    if (!a->o.out)
        return ldt_usage_error(CMD, "--out MODEL.safetensors is required");
    if (!a->o.resume && !ld_meta_get(a->settings, "data") && !ld_meta_get(a->settings, "manifest"))
        return ldt_usage_error(CMD, "--data ROOT (or --manifest CSV) is required unless --resume is given");
    a->o.files[0] = a->curve;
    a->o.file_opts[0] = "--curve";
    return 0;
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

static int finish(ld_train_t *train, const args_t *a, double seconds)
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

static int new_run(const args_t *a, ld_train_t **train)
{
    ld_train_config_t cfg;
    ld_train_config_defaults(&cfg);
    int rc = LD_OK;
    for (size_t i = 0; i < ld_meta_count(a->settings) && !rc; i++)
        rc = ld_train_config_set(&cfg, ld_meta_key(a->settings, i), ld_meta_value(a->settings, i));
    return rc ? rc : ld_train_new(&cfg, train);
}

static int open_run(const args_t *a, ld_train_t **train)
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

static int train_loop(ld_train_t *train, const args_t *a)
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
    args_t a;
    memset(&a, 0, sizeof a);
    ld_train_t *train = NULL;
    int status = parse_args(argc, argv, &a);
    if (status == 0 && !(a.command = ldt_join_command(argc, argv)))
        status = ldt_fail(CMD, LD_ENOMEM);
    if (status == 0)
        status = ldt_prepare_outputs(CMD, &a.o);
    if (status == 0)
        status = open_run(&a, &train);
    if (status == 0)
        status = train_loop(train, &a);
    ld_train_destroy(&train);
    ld_meta_destroy(&a.settings);
    free(a.command);
    free(a.o.checkpoint_owned);
    return status < 0 ? 0 : status;
}
