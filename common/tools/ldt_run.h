/* ldt_run: what the training commands (`langdaug train-ae`, and `train`
 * once it moves over) share around a long run: options built from a
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

/* getopt table: run[0..n_run) then one required-argument option per
 * settings key, with val = base + row index; NULL when out of memory.
 * The caller frees it. */
struct option *ldt_longopts(const struct option *run, size_t n_run, const ld_settings_t *t, int base);

/* Checks `value` for settings key `key` on a scratch config and records it
 * in `given` (key -> value, in order); exit status. */
int ldt_setting_option(const char *cmd, const ld_settings_t *t, void *scratch, const char *key, const char *value,
                       ld_meta_t *given);

/* A count option ("--iters") in [min, INT64_MAX/2]; exit status. */
int ldt_parse_count(const char *cmd, const char *what, const char *value, int64_t min, int64_t *out);

/* 2 with a message when a resumed run is already past --iters, else 0. */
int ldt_check_iters(const char *cmd, int64_t iters, int64_t iteration);

/* "langdaug <argv...>" with shell quoting where needed; NULL when out of
 * memory. The caller frees it. */
char *ldt_join_command(int argc, char **argv);

/* Makes the settings "data" and "manifest" in given absolute paths (so a
 * resumed run works from anywhere). */
int ldt_absolute_data_paths(ld_meta_t *given);

typedef struct {
    const char *out;            /* model file (required) */
    const char *resume;         /* checkpoint resumed, or NULL */
    const char *checkpoint;     /* NULL: resume's, else OUT.ckpt (set by ldt_prepare_outputs) */
    const char *preview_dir;    /* NULL = none; created */
    const char *files[4];       /* more outputs (NULL-terminated), e.g. the curve */
    const char *file_opts[4];   /* their options, for messages */
    char *checkpoint_owned;     /* freed by the caller */
} ldt_outputs_t;

/* Fills in the checkpoint path, creates the preview folder and checks that
 * every output can be written (fails now, not after hours); exit status. */
int ldt_prepare_outputs(const char *cmd, ldt_outputs_t *o);

/* created (SOURCE_DATE_EPOCH when set, for reproducible files, else now),
 * command and resumed_from (when resume is not NULL). Caller owns *out. */
int ldt_provenance(const char *command, const char *resume, ld_meta_t **out);

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
