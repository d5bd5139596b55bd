/* ldt_run: what the training commands (`langdaug train`, `train-ae`) share
 * around a long run: the run options they both take (--out, --iters,
 * --resume, --checkpoint, --checkpoint-every, --preview, --preview-every,
 * --curve, --quiet, --help) with their usage text, options built from a
 * settings table, outputs checked before the first iteration, the progress
 * line, SIGINT/SIGTERM as a cancel flag, and the provenance a model file
 * records.
 *
 * Conventions as in ldt.h: functions that report to the user print
 * "langdaug <cmd>: ..." and return an exit status (0 ok, 1 failure,
 * 2 usage error). */
#ifndef LDT_RUN_H
#define LDT_RUN_H

#include <getopt.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "ld_safetensors.h"
#include "ld_settings.h"

/* A count option ("--iters") in [min, INT64_MAX/2]; exit status. */
int ldt_parse_count(const char *cmd, const char *what, const char *value, int64_t min, int64_t *out);

/* 2 with a message when a resumed run is already past --iters, else 0. */
int ldt_check_iters(const char *cmd, int64_t iters, int64_t iteration);

/* Makes the settings "data" and "manifest" in given absolute paths (so a
 * resumed run works from anywhere). */
int ldt_absolute_data_paths(ld_meta_t *given);

typedef struct {
    const char *out;            /* model file (required) */
    const char *resume;         /* checkpoint resumed, or NULL */
    const char *checkpoint;     /* NULL: resume's, else OUT.ckpt (set by ldt_run_start) */
    const char *preview_dir;    /* NULL = none; created */
    const char *files[4];       /* more outputs (NULL-terminated), e.g. the curve */
    const char *file_opts[4];   /* their options, for messages */
    char *checkpoint_owned;     /* freed by the caller */
} ldt_outputs_t;

/* Adds (or, for an option given again, replaces) an output to check. */
void ldt_outputs_add(ldt_outputs_t *o, const char *opt, const char *path);

/* created (SOURCE_DATE_EPOCH when set, for reproducible files, else now),
 * command and resumed_from (when resume is not NULL). Caller owns *out. */
int ldt_provenance(const char *command, const char *resume, ld_meta_t **out);

/* ---- the run options ---- */

enum {
    LDT_OPT_OUT = 1000, LDT_OPT_ITERS, LDT_OPT_RESUME, LDT_OPT_CHECKPOINT, LDT_OPT_CHECKPOINT_EVERY, LDT_OPT_PREVIEW,
    LDT_OPT_PREVIEW_EVERY, LDT_OPT_CURVE, LDT_OPT_QUIET, LDT_OPT_HELP,
    LDT_OPT_OWN = 1100,    /* a command's own run options take values from here */
    LDT_OPT_SETTING = 2000 /* settings row i is LDT_OPT_SETTING + i */
};

/* What a training command says about itself. */
typedef struct {
    const char *cmd;            /* "train" */
    const char *what;           /* what it does, lines ending in \n (after the usage lines) */
    const char *out_file;       /* "MODEL.safetensors", in the usage lines and errors */
    const char *out_help;       /* what --out writes, "model file to write (the EMA weights)" */
    int64_t iters;              /* default --iters */
    const char *preview_help;   /* what --preview writes, "preview grids" */
    const char *curve_help;     /* what --curve writes, "the training curve (iteration,...)" */
    const struct option *own;   /* the command's own run options (val >= LDT_OPT_OWN), n_own of them */
    size_t n_own;
    const char *own_help;       /* their help lines ("" when none) */
    const char *settings_help;  /* the heading of the settings' help lines */
    const ld_settings_t *settings;
    const void *defaults;       /* a config with the defaults (help text; scratch for checks) */
} ldt_run_cmd_t;

typedef struct {
    ldt_outputs_t o;
    const char *curve;          /* --curve, or NULL */
    int64_t iters, checkpoint_every, preview_every;
    int quiet;
    ld_meta_t *settings;        /* settings keys as given, in order */
    char *command;              /* the command line, for provenance */
} ldt_run_args_t;

/* One of the command's own options (c from its `own` table); exit status. */
typedef int (*ldt_own_option_fn)(int c, const char *value, ldt_run_args_t *a, void *user);

/* Parses argv into a (own options go to own(..., user)), checks that --out
 * and, unless --resume, the data are given, records the command line and
 * prepares the outputs (checkpoint path filled in, preview folder created,
 * every output probed: fails now, not after hours). Returns 0, an exit status,
 * or -1 after --help (exit 0). */
int ldt_run_start(const ldt_run_cmd_t *c, int argc, char **argv, ldt_run_args_t *a, ldt_own_option_fn own,
                  void *user);
void ldt_run_args_free(ldt_run_args_t *a);

/* ---- the progress line ---- */

typedef struct {
    const char *cmd;
    int tty, quiet;
    int64_t start_iteration, iters;
    double start, last_print;
} ldt_progress_t;

/* Starts the clock; on a terminal, log messages clear the line first. */
void ldt_progress_begin(ldt_progress_t *p, const char *cmd, int quiet, int64_t start_iteration, int64_t iters);
/* Prints "iter i/N <what> R it/s ETA T": on a terminal over the same line
 * at most 5 times a second, else a line every 10 s (and the first and
 * last iterations). */
void ldt_progress_print(ldt_progress_t *p, int64_t iteration, const char *what);
/* Ends the line and restores logging. */
void ldt_progress_end(ldt_progress_t *p);
/* Seconds since ldt_progress_begin, and "1h02m" / "3m05s". */
double ldt_progress_seconds(const ldt_progress_t *p);
void ldt_format_duration(double s, char *buf, size_t len);

/* ---- interruption ---- */

/* SIGINT/SIGTERM set the returned flag (lock-free, so async-signal-safe)
 * until ldt_cancel_release() restores the previous handlers. */
const atomic_int *ldt_cancel_catch(void);
void ldt_cancel_release(void);

#endif
