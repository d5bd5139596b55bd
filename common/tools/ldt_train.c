/* ldt_train: `langdaug train`, contrastive-divergence training (ld_train).
 *
 * The training settings are the keys of ld_train_config (one long option
 * each); the options below are about this run only. Everything that can be
 * checked (values, data, output paths) is checked before the first
 * iteration. SIGINT/SIGTERM stop the run between Langevin steps, save a
 * checkpoint of the last finished iteration and exit 1; the run continues
 * with --resume. */
#include "ldt.h"

#include <inttypes.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ld_afile.h"
#include "ld_text.h"
#include "ld_error.h"
#include "ld_log.h"
#include "ld_train.h"

#define CMD "train"

enum {
    OPT_OUT = 1000, OPT_ITERS, OPT_RESUME, OPT_CHECKPOINT, OPT_CHECKPOINT_EVERY, OPT_PREVIEW,
    OPT_PREVIEW_EVERY, OPT_CURVE, OPT_QUIET, OPT_HELP, OPT_CONFIG_BASE = 2000
};

typedef struct {
    const char *out, *resume, *checkpoint, *preview_dir, *curve;
    int64_t iters, checkpoint_every, preview_every;
    int quiet;
    ld_meta_t *settings;      /* training keys as given, in order */
    char *command;            /* the command line, for provenance */
} args_t;

static atomic_int g_cancel; /* set by the signal handler: lock-free, so async-signal-safe */

static void on_signal(int sig)
{
    (void)sig;
    atomic_store(&g_cancel, 1);
}

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
    for (size_t i = 0; i < ld_train_config_n_keys(); i++) {
        const char *help;
        int trajectory;
        const char *key = ld_train_config_key(i, &help, &trajectory);
        char value[64];
        ld_train_config_get(&def, key, value, sizeof value);
        fprintf(f, "  --%-16s %s %s%s%s%s\n", key, trajectory ? "*" : " ", help, value[0] ? " (default " : "",
                value, value[0] ? ")" : "");
    }
}

/* getopt table: the run options, then one entry per training key. */
static struct option *build_longopts(void)
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
    size_t n_run = sizeof run_opts / sizeof run_opts[0], n_cfg = ld_train_config_n_keys();
    struct option *opts = calloc(n_run + n_cfg + 1, sizeof *opts);
    if (!opts)
        return NULL;
    memcpy(opts, run_opts, sizeof run_opts);
    for (size_t i = 0; i < n_cfg; i++)
        opts[n_run + i] = (struct option){ ld_train_config_key(i, NULL, NULL), required_argument, NULL,
                                           OPT_CONFIG_BASE + (int)i };
    return opts;
}

/* "langdaug train --data 'a b' ..." with shell quoting where needed. */
static char *join_command(int argc, char **argv)
{
    size_t len = 16;
    for (int i = 0; i < argc; i++)
        len += 4 * strlen(argv[i]) + 3;
    char *s = malloc(len), *p = s;
    if (!s)
        return NULL;
    p += sprintf(p, "langdaug");
    for (int i = 0; i < argc; i++) {
        int plain = argv[i][0] != '\0' && strspn(argv[i], "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                                          "0123456789-_.,/:=+@%") == strlen(argv[i]);
        *p++ = ' ';
        if (plain) {
            p += sprintf(p, "%s", argv[i]);
            continue;
        }
        *p++ = '\'';
        for (const char *c = argv[i]; *c; c++)
            p += *c == '\'' ? sprintf(p, "'\\''") : sprintf(p, "%c", *c);
        *p++ = '\'';
    }
    *p = '\0';
    return s;
}

static int parse_count(const char *what, const char *value, int64_t min, int64_t *out)
{
    if (ld_text_parse_i64(what, value, min, INT64_MAX / 2, out))
        return ldt_usage_error(CMD, "%s", ld_errdetail());
    return 0;
}

static int parse_run_option(int c, const char *value, args_t *a)
{
    switch (c) {
    case OPT_OUT: a->out = value; return 0;
    case OPT_RESUME: a->resume = value; return 0;
    case OPT_CHECKPOINT: a->checkpoint = value; return 0;
    case OPT_PREVIEW: a->preview_dir = value; return 0;
    case OPT_CURVE: a->curve = value; return 0;
    case OPT_ITERS: return parse_count("--iters", value, 1, &a->iters);
    case OPT_CHECKPOINT_EVERY: return parse_count("--checkpoint-every", value, 0, &a->checkpoint_every);
    case OPT_PREVIEW_EVERY: return parse_count("--preview-every", value, 1, &a->preview_every);
    default: return ldt_usage_error(CMD, "unexpected option");
    }
}

/* Parses argv into a; returns 0, or the exit status (2 usage error, or -1
 * after --help). */
static int parse_args(int argc, char **argv, args_t *a)
{
    struct option *longopts = build_longopts();
    ld_train_config_t scratch;
    ld_train_config_defaults(&scratch);
    if (!longopts || ld_meta_new(&a->settings)) {
        free(longopts);
        return ldt_fail(CMD, LD_ENOMEM);
    }
    a->iters = 10000;
    a->checkpoint_every = 500;
    a->preview_every = 500;
    int c, status = 0;
    while (!status && (c = ldt_getopt(CMD, argc, argv, "", longopts)) != -1) {
        if (c == '?') {
            status = 2;
        } else if (c == OPT_HELP) {
            usage(stdout);
            status = -1;
        } else if (c == OPT_QUIET) {
            a->quiet = 1;
            if (ld_log_level > LD_LOG_WARN)
                ld_log_set(NULL, NULL, LD_LOG_WARN);
        } else if (c >= OPT_CONFIG_BASE) {
            const char *key = ld_train_config_key((size_t)(c - OPT_CONFIG_BASE), NULL, NULL);
            if (ld_train_config_set(&scratch, key, optarg))
                status = ldt_usage_error(CMD, "%s", ld_errdetail());
            else if (ld_meta_set(a->settings, key, optarg))
                status = ldt_fail(CMD, LD_ENOMEM);
        } else {
            status = parse_run_option(c, optarg, a);
        }
    }
    free(longopts);
    if (status)
        return status;
    if ((status = ldt_no_operands(CMD, argc, argv)))
        return status;
    if (!a->out)
        return ldt_usage_error(CMD, "--out MODEL.safetensors is required");
    if (!a->resume && !ld_meta_get(a->settings, "data") && !ld_meta_get(a->settings, "manifest"))
        return ldt_usage_error(CMD, "--data ROOT (or --manifest CSV) is required unless --resume is given");
    return 0;
}

/* Fails now, not after hours of training, if path cannot be written. */
static int check_writable(const char *what, const char *path)
{
    ld_afile_t *af;
    int rc = ld_afile_open(path, &af);
    if (rc) {
        fprintf(stderr, "langdaug %s: %s %s cannot be written: %s\n", CMD, what, path, ld_errdetail());
        return 1;
    }
    ld_afile_abort(&af);
    return 0;
}

static int prepare_outputs(args_t *a, char **checkpoint_owned)
{
    if (!a->checkpoint) {
        if (a->resume) {
            a->checkpoint = a->resume;
        } else {
            size_t n = strlen(a->out) + 6;
            *checkpoint_owned = malloc(n);
            if (!*checkpoint_owned)
                return ldt_fail(CMD, LD_ENOMEM);
            snprintf(*checkpoint_owned, n, "%s.ckpt", a->out);
            a->checkpoint = *checkpoint_owned;
        }
    }
    if (a->preview_dir && ld_afile_mkdir(a->preview_dir)) {
        fprintf(stderr, "langdaug %s: --preview: %s\n", CMD, ld_errdetail());
        return 1;
    }
    if (check_writable("--out", a->out) || check_writable("--checkpoint", a->checkpoint) ||
        (a->curve && check_writable("--curve", a->curve)))
        return 1;
    if (a->preview_dir) {
        char probe[4200];
        snprintf(probe, sizeof probe, "%s/preview_check.png", a->preview_dir);
        if (check_writable("--preview folder", probe))
            return 1;
    }
    return 0;
}

/* ---- progress --------------------------------------------------------------- */

typedef struct {
    int tty, quiet;
    int64_t start_iteration, iters;
    double start, last_print;
    const ld_train_t *train;
} progress_t;

/* On a terminal, log messages first clear the progress line (the next
 * progress update redraws it below them). */
static void log_over_progress(int level, const char *msg, void *user)
{
    (void)user;
    fprintf(stderr, "\r%-110s\rlangdaug: %s: %s\n", "", ld_log_level_name(level), msg);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void format_duration(double s, char *buf, size_t len)
{
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, len, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else
        snprintf(buf, len, "%ldm%02lds", t / 60, t % 60);
}

static void on_progress(const ld_train_stats_t *st, void *user)
{
    progress_t *p = user;
    double now = now_s();
    int last = st->iteration == p->iters;
    if (p->quiet || (!last && now - p->last_print < (p->tty ? 0.2 : 10.0) && st->iteration != p->start_iteration + 1))
        return;
    p->last_print = now;
    double done = (double)(st->iteration - p->start_iteration);
    double rate = done / (now - p->start > 1e-9 ? now - p->start : 1e-9);
    char eta[32];
    format_duration((double)(p->iters - st->iteration) / (rate > 0 ? rate : 1e-9), eta, sizeof eta);
    const ld_ebm_arch_t *arch = ld_ebm_arch(ld_train_model(p->train));
    char line[400];
    snprintf(line, sizeof line,
             "iter %" PRId64 "/%" PRId64 " %s->%s loss %.4f E+ %.4f E- %.4f |g| %.3g %.2f it/s ETA %s",
             st->iteration, p->iters, arch->domains[st->source], arch->domains[st->target], st->loss, st->e_pos,
             st->e_neg, st->grad_norm, rate, eta);
    if (p->tty)
        fprintf(stderr, "\r%-110s", line);
    else
        fprintf(stderr, "langdaug train: %s\n", line);
    fflush(stderr);
}

/* ---- outputs -------------------------------------------------------------------- */

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
    for (int64_t i = 0; i < rows; i++)
        fprintf(f, "%" PRId64 ",%.9g,%.9g,%.9g\n", i + 1, h[i * LD_TRAIN_HISTORY_COLS],
                h[i * LD_TRAIN_HISTORY_COLS + 1], h[i * LD_TRAIN_HISTORY_COLS + 2]);
    return ld_afile_commit(&af);
}

/* created: SOURCE_DATE_EPOCH when set (reproducible files), else now. */
static int provenance(const args_t *a, ld_meta_t **out)
{
    time_t t = time(NULL);
    const char *sde = getenv("SOURCE_DATE_EPOCH");
    if (sde && *sde)
        t = (time_t)strtoll(sde, NULL, 10);
    struct tm tm;
    char created[32];
    gmtime_r(&t, &tm);
    strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", &tm);
    int rc = ld_meta_new(out);
    if (!rc)
        rc = ld_meta_set(*out, "created", created);
    if (!rc)
        rc = ld_meta_set(*out, "command", a->command ? a->command : "");
    if (!rc && a->resume)
        rc = ld_meta_set(*out, "resumed_from", a->resume);
    return rc;
}

static int finish(ld_train_t *train, const args_t *a, double seconds)
{
    ld_meta_t *prov = NULL;
    char hash[65];
    int rc = provenance(a, &prov);
    if (!rc)
        rc = ld_train_save_model(train, a->out, prov, hash);
    ld_meta_destroy(&prov);
    if (!rc && a->curve)
        rc = write_curve(train, a->curve);
    if (rc)
        return ldt_fail(CMD, rc);
    char dur[32];
    format_duration(seconds, dur, sizeof dur);
    if (!a->quiet)
        fprintf(stderr, "langdaug train: wrote %s (sha256 %.16s...) after %" PRId64 " iterations in %s\n", a->out,
                hash, ld_train_iteration(train), dur);
    return 0;
}

/* Data paths are kept absolute, so that --resume works from anywhere. */
static int absolute_paths(ld_meta_t *settings)
{
    static const char *const keys[] = { "data", "manifest" };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const char *v = ld_meta_get(settings, keys[i]);
        char *abs = v ? realpath(v, NULL) : NULL;
        int rc = abs ? ld_meta_set(settings, keys[i], abs) : LD_OK;
        free(abs);
        if (rc)
            return rc;
    }
    return LD_OK;
}

static int open_run(const args_t *a, ld_train_t **train)
{
    int rc = absolute_paths(a->settings);
    if (rc)
        return ldt_fail(CMD, rc);
    if (a->resume) {
        rc = ld_train_resume(a->resume, a->settings, train);
    } else {
        ld_train_config_t cfg;
        ld_train_config_defaults(&cfg);
        for (size_t i = 0; i < ld_meta_count(a->settings) && !rc; i++)
            rc = ld_train_config_set(&cfg, ld_meta_key(a->settings, i), ld_meta_value(a->settings, i));
        if (!rc)
            rc = ld_train_new(&cfg, train);
    }
    if (rc)
        return ldt_fail(CMD, rc);
    if (ld_train_iteration(*train) > a->iters) {
        fprintf(stderr, "langdaug %s: --iters %" PRId64 " is below the checkpoint's iteration %" PRId64 "\n", CMD,
                a->iters, ld_train_iteration(*train));
        ld_train_destroy(train);
        return 2;
    }
    return 0;
}

static int train_loop(ld_train_t *train, const args_t *a)
{
    progress_t prog = { .tty = isatty(STDERR_FILENO), .quiet = a->quiet, .iters = a->iters, .train = train,
                        .start_iteration = ld_train_iteration(train) };
    prog.start = prog.last_print = now_s();
    ld_train_run_opts_t ro = { .iters = a->iters, .checkpoint = a->checkpoint,
                               .checkpoint_every = a->checkpoint_every, .preview_dir = a->preview_dir,
                               .preview_every = a->preview_every, .progress = on_progress, .user = &prog,
                               .cancel = &g_cancel };
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    if (prog.tty && !prog.quiet)
        ld_log_set(log_over_progress, NULL, ld_log_level);
    int rc = ld_train_run(train, &ro);
    if (prog.tty && !prog.quiet)
        ld_log_set(NULL, NULL, ld_log_level);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (prog.tty && !prog.quiet)
        fputc('\n', stderr);
    if (rc) {
        if (rc == LD_ECANCELED && a->curve)
            write_curve(train, a->curve);
        return ldt_fail(CMD, rc);
    }
    return finish(train, a, now_s() - prog.start);
}

int ldt_train_main(int argc, char **argv)
{
    args_t a;
    memset(&a, 0, sizeof a);
    char *checkpoint_owned = NULL;
    ld_train_t *train = NULL;
    int status = parse_args(argc, argv, &a);
    if (status == 0 && !(a.command = join_command(argc, argv)))
        status = ldt_fail(CMD, LD_ENOMEM);
    if (status == 0)
        status = prepare_outputs(&a, &checkpoint_owned);
    if (status == 0)
        status = open_run(&a, &train);
    if (status == 0)
        status = train_loop(train, &a);
    ld_train_destroy(&train);
    ld_meta_destroy(&a.settings);
    free(a.command);
    free(checkpoint_owned);
    return status < 0 ? 0 : status;
}
