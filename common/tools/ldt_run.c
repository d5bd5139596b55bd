/* ldt_run: the training commands' shared run chores (see ldt_run.h).
 *
 * Invariants: every output is probed with an atomic write that is aborted
 * (nothing left behind) before any work starts; the signal handler only
 * stores to a lock-free atomic. */
#include "ldt_run.h"
#include "ldt.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ld_afile.h"
#include "ld_error.h"
#include "ld_log.h"
#include "ld_text.h"

#define PROGRESS_WIDTH 110

/* Checks `value` for settings key `key` on a scratch config and records it
 * in `given` (key -> value, in order); exit status. */
static int setting_option(const char *cmd, const ld_settings_t *t, void *scratch, const char *key, const char *value,
                       ld_meta_t *given)
{
    if (ld_settings_set(t, scratch, key, value))
        return ldt_usage_error(cmd, "%s", ld_errdetail());
    int rc = ld_meta_set(given, key, value);
    if (rc)
        return ldt_fail(cmd, rc);
    return 0;
}

int ldt_parse_count(const char *cmd, const char *what, const char *value, int64_t min, int64_t *out)
{
    if (ld_text_parse_i64(what, value, min, INT64_MAX / 2, out))
        return ldt_usage_error(cmd, "%s", ld_errdetail());
    return 0;
}

int ldt_check_iters(const char *cmd, int64_t iters, int64_t iteration)
{
    if (iteration <= iters)
        return 0;
    fprintf(stderr, "langdaug %s: --iters %lld is below the checkpoint's iteration %lld\n", cmd, (long long)iters,
            (long long)iteration);
    return 2;
}

/* "langdaug <argv...>" with shell quoting where needed; NULL when out of
 * memory. The caller frees it. */
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

int ldt_absolute_data_paths(ld_meta_t *given)
{
    static const char *const keys[] = { "data", "manifest" };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const char *v = ld_meta_get(given, keys[i]);
        char *abs = v ? realpath(v, NULL) : NULL;
        int rc = abs ? ld_meta_set(given, keys[i], abs) : LD_OK;
        free(abs);
        if (rc)
            return rc;
    }
    return LD_OK;
}

static int check_writable(const char *cmd, const char *what, const char *path)
{
    ld_afile_t *af;
    if (ld_afile_open(path, &af)) {
        fprintf(stderr, "langdaug %s: %s %s cannot be written: %s\n", cmd, what, path, ld_errdetail());
        return 1;
    }
    ld_afile_abort(&af);
    return 0;
}

static int default_checkpoint(const char *cmd, ldt_outputs_t *o)
{
    if (o->checkpoint)
        return 0;
    if (o->resume) {
        o->checkpoint = o->resume;
        return 0;
    }
    size_t n = strlen(o->out) + 6;
    if (!(o->checkpoint_owned = malloc(n)))
        return ldt_fail(cmd, ld_seterr(LD_ENOMEM, "out of memory for the checkpoint path"));
    snprintf(o->checkpoint_owned, n, "%s.ckpt", o->out);
    o->checkpoint = o->checkpoint_owned;
    return 0;
}

/* Fills in the checkpoint path, creates the preview folder and checks that
 * every output can be written (fails now, not after hours); exit status. */
static int prepare_outputs(const char *cmd, ldt_outputs_t *o)
{
    int status = default_checkpoint(cmd, o);
    if (status)
        return status;
    if (o->preview_dir && ld_afile_mkdir(o->preview_dir)) {
        fprintf(stderr, "langdaug %s: --preview: %s\n", cmd, ld_errdetail());
        return 1;
    }
    if (check_writable(cmd, "--out", o->out) || check_writable(cmd, "--checkpoint", o->checkpoint))
        return 1;
    for (int i = 0; i < 4 && o->files[i]; i++)
        if (check_writable(cmd, o->file_opts[i], o->files[i]))
            return 1;
    if (o->preview_dir) {
        char probe[4200];
        snprintf(probe, sizeof probe, "%s/preview_check.png", o->preview_dir);
        return check_writable(cmd, "--preview folder", probe);
    }
    return 0;
}

int ldt_provenance(const char *command, const char *resume, ld_meta_t **out)
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
        rc = ld_meta_set(*out, "command", command ? command : "");
    if (!rc && resume)
        rc = ld_meta_set(*out, "resumed_from", resume);
    return rc;
}

void ldt_outputs_add(ldt_outputs_t *o, const char *opt, const char *path)
{
    int i = 0;
    while (i < 3 && o->files[i] && strcmp(o->file_opts[i], opt) != 0)
        i++;
    o->files[i] = path;
    o->file_opts[i] = opt;
}

/* ---- the run options ---- */

static const struct option run_opts[] = {
    { "out", required_argument, NULL, LDT_OPT_OUT },
    { "iters", required_argument, NULL, LDT_OPT_ITERS },
    { "resume", required_argument, NULL, LDT_OPT_RESUME },
    { "checkpoint", required_argument, NULL, LDT_OPT_CHECKPOINT },
    { "checkpoint-every", required_argument, NULL, LDT_OPT_CHECKPOINT_EVERY },
    { "preview", required_argument, NULL, LDT_OPT_PREVIEW },
    { "preview-every", required_argument, NULL, LDT_OPT_PREVIEW_EVERY },
    { "curve", required_argument, NULL, LDT_OPT_CURVE },
    { "quiet", no_argument, NULL, LDT_OPT_QUIET },
    { "help", no_argument, NULL, LDT_OPT_HELP },
};
#define N_RUN_OPTS (sizeof run_opts / sizeof run_opts[0])

static void run_usage(const ldt_run_cmd_t *c, FILE *f)
{
    fprintf(f,
            "Usage: langdaug %s --data ROOT --out %s [options]\n"
            "       langdaug %s --resume CHECKPOINT --out %s --iters N [options]\n%s"
            "\nRun options:\n"
            "  --out PATH             %s when training ends (required)\n"
            "  --iters N              total iterations (default %lld; counts the resumed ones)\n"
            "  --resume CKPT          continue a run bit-exactly from a checkpoint\n"
            "  --checkpoint PATH      checkpoint file (default: --resume's, else OUT.ckpt)\n"
            "  --checkpoint-every N   iterations between checkpoints (default 500; one at the end always)\n"
            "  --preview DIR          write %s DIR/preview_<iteration>.png\n"
            "  --preview-every N      iterations between previews (default 500)\n"
            "  --curve CSV            write %s at the end\n%s"
            "  --quiet                no progress output or info messages\n"
            "  --help                 this text\n"
            "\n%s",
            c->cmd, c->out_file, c->cmd, c->out_file, c->what, c->out_help, (long long)c->iters, c->preview_help,
            c->curve_help, c->own_help, c->settings_help);
    ld_settings_help(c->settings, c->defaults, f);
}

/* getopt table: the run options, the command's own, then one
 * required-argument option per settings row (val LDT_OPT_SETTING + row). */
static struct option *run_longopts(const ldt_run_cmd_t *c)
{
    const ld_settings_t *t = c->settings;
    struct option *opts = calloc(N_RUN_OPTS + c->n_own + t->n + 1, sizeof *opts);
    if (!opts)
        return NULL;
    memcpy(opts, run_opts, sizeof run_opts);
    if (c->n_own)
        memcpy(opts + N_RUN_OPTS, c->own, c->n_own * sizeof *c->own);
    for (size_t i = 0; i < t->n; i++)
        opts[N_RUN_OPTS + c->n_own + i] = (struct option){ t->rows[i].key, required_argument, NULL,
                                                           LDT_OPT_SETTING + (int)i };
    return opts;
}

static int run_option(const ldt_run_cmd_t *c, int opt, const char *value, ldt_run_args_t *a)
{
    switch (opt) {
    case LDT_OPT_OUT: a->o.out = value; return 0;
    case LDT_OPT_RESUME: a->o.resume = value; return 0;
    case LDT_OPT_CHECKPOINT: a->o.checkpoint = value; return 0;
    case LDT_OPT_PREVIEW: a->o.preview_dir = value; return 0;
    case LDT_OPT_CURVE: a->curve = value; ldt_outputs_add(&a->o, "--curve", value); return 0;
    case LDT_OPT_ITERS: return ldt_parse_count(c->cmd, "--iters", value, 1, &a->iters);
    case LDT_OPT_CHECKPOINT_EVERY: return ldt_parse_count(c->cmd, "--checkpoint-every", value, 0, &a->checkpoint_every);
    case LDT_OPT_PREVIEW_EVERY: return ldt_parse_count(c->cmd, "--preview-every", value, 1, &a->preview_every);
    default: return ldt_usage_error(c->cmd, "unexpected option");
    }
}

/* One option: -1 after --help, else an exit status. */
static int parse_one(const ldt_run_cmd_t *c, int opt, ldt_run_args_t *a, void *scratch, ldt_own_option_fn own,
                     void *user)
{
    if (opt == '?')
        return 2;
    if (opt == LDT_OPT_HELP) {
        run_usage(c, stdout);
        return -1;
    }
    if (opt == LDT_OPT_QUIET) {
        a->quiet = 1;
        if (ld_log_level > LD_LOG_WARN)
            ld_log_set(NULL, NULL, LD_LOG_WARN);
        return 0;
    }
    if (opt >= LDT_OPT_SETTING)
        return setting_option(c->cmd, c->settings, scratch, c->settings->rows[opt - LDT_OPT_SETTING].key, optarg,
                                  a->settings);
    if (opt >= LDT_OPT_OWN)
        return own(opt, optarg, a, user);
    return run_option(c, opt, optarg, a);
}

static int parse_args(const ldt_run_cmd_t *c, int argc, char **argv, ldt_run_args_t *a, ldt_own_option_fn own,
                      void *user)
{
    struct option *opts = run_longopts(c);
    void *scratch = malloc(c->settings->cfg_size);
    int opt, status = !opts || !scratch || ld_meta_new(&a->settings)
                          ? ldt_fail(c->cmd, ld_seterr(LD_ENOMEM, "out of memory for the options"))
                          : 0;
    if (scratch)
        memcpy(scratch, c->defaults, c->settings->cfg_size);
    a->iters = c->iters;
    a->checkpoint_every = a->preview_every = 500;
    while (!status && (opt = ldt_getopt(c->cmd, argc, argv, "", opts)) != -1)
        status = parse_one(c, opt, a, scratch, own, user);
    free(opts);
    free(scratch);
    if (status || (status = ldt_no_operands(c->cmd, argc, argv)))
        return status;
    if (!a->o.out)
        return ldt_usage_error(c->cmd, "--out %s is required", c->out_file);
    if (!a->o.resume && !ld_meta_get(a->settings, "data") && !ld_meta_get(a->settings, "manifest"))
        return ldt_usage_error(c->cmd, "--data ROOT (or --manifest CSV) is required unless --resume is given");
    return 0;
}

int ldt_run_start(const ldt_run_cmd_t *c, int argc, char **argv, ldt_run_args_t *a, ldt_own_option_fn own,
                  void *user)
{
    memset(a, 0, sizeof *a);
    int status = parse_args(c, argc, argv, a, own, user);
    if (status == 0 && !(a->command = join_command(argc, argv)))
        status = ldt_fail(c->cmd, ld_seterr(LD_ENOMEM, "out of memory for the command line"));
    if (status == 0)
        status = prepare_outputs(c->cmd, &a->o);
    return status;
}

void ldt_run_args_free(ldt_run_args_t *a)
{
    ld_meta_destroy(&a->settings);
    free(a->command);
    free(a->o.checkpoint_owned);
}

/* ---- the progress line ---- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void ldt_format_duration(double s, char *buf, size_t len)
{
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, len, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else
        snprintf(buf, len, "%ldm%02lds", t / 60, t % 60);
}

/* On a terminal, log messages first clear the progress line (the next
 * progress update redraws it below them). */
static void log_over_progress(int level, const char *msg, void *user)
{
    (void)user;
    fprintf(stderr, "\r%-*s\rlangdaug: %s: %s\n", PROGRESS_WIDTH, "", ld_log_level_name(level), msg);
}

void ldt_progress_begin(ldt_progress_t *p, const char *cmd, int quiet, int64_t start_iteration, int64_t iters)
{
    *p = (ldt_progress_t){ .cmd = cmd, .tty = isatty(STDERR_FILENO), .quiet = quiet,
                           .start_iteration = start_iteration, .iters = iters };
    p->start = p->last_print = now_s();
    if (p->tty && !p->quiet)
        ld_log_set(log_over_progress, NULL, ld_log_level);
}

void ldt_progress_print(ldt_progress_t *p, int64_t iteration, const char *what)
{
    double now = now_s();
    int edge = iteration == p->iters || iteration == p->start_iteration + 1;
    if (p->quiet || (!edge && now - p->last_print < (p->tty ? 0.2 : 10.0)))
        return;
    p->last_print = now;
    double rate = (double)(iteration - p->start_iteration) / (now - p->start > 1e-9 ? now - p->start : 1e-9);
    char eta[32], line[512];
    ldt_format_duration((double)(p->iters - iteration) / (rate > 0 ? rate : 1e-9), eta, sizeof eta);
    snprintf(line, sizeof line, "iter %lld/%lld %s %.2f it/s ETA %s", (long long)iteration, (long long)p->iters,
             what, rate, eta);
    if (p->tty)
        fprintf(stderr, "\r%-*s", PROGRESS_WIDTH, line);
    else
        fprintf(stderr, "langdaug %s: %s\n", p->cmd, line);
    fflush(stderr);
}

void ldt_progress_end(ldt_progress_t *p)
{
    if (!p->tty || p->quiet)
        return;
    ld_log_set(NULL, NULL, ld_log_level);
    fputc('\n', stderr);
}

double ldt_progress_seconds(const ldt_progress_t *p)
{
    return now_s() - p->start;
}

/* ---- interruption ---- */

static atomic_int g_cancel;
static struct sigaction g_old_int, g_old_term;

static void on_signal(int sig)
{
    (void)sig;
    atomic_store(&g_cancel, 1);
}

const atomic_int *ldt_cancel_catch(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &g_old_int);
    sigaction(SIGTERM, &sa, &g_old_term);
    return &g_cancel;
}

void ldt_cancel_release(void)
{
    sigaction(SIGINT, &g_old_int, NULL);
    sigaction(SIGTERM, &g_old_term, NULL);
}
