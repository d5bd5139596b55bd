/* ldc: the `langdaug` command line's subcommands and their shared helpers.
 *
 * Each subcommand is `int ldc_<name>_main(int argc, char **argv)` with
 * argv[0] = the subcommand name; it returns the process exit status:
 *   0 success, 1 runtime failure (bad file, I/O...), 2 usage error
 *   (unknown/malformed option or value, missing required option).
 * To add one: write client/ldc_<name>.c, declare its main below, and add a
 * line to the table in client/langdaug.c.
 *
 * Conventions (helpers below, defined in client/langdaug.c):
 *   - options with getopt_long through ldc_getopt(), which reports unknown
 *     options and missing values itself;
 *   - values parsed with ld_cli_* (common/ld_cli.h); on failure call
 *     ldc_usage_error(cmd, "%s", ld_errdetail());
 *   - library failures reported with ldc_fail(cmd, rc). */
#ifndef LDC_H
#define LDC_H

#include <getopt.h>

int ldc_energy_main(int argc, char **argv);
int ldc_init_model_main(int argc, char **argv);
int ldc_synth_main(int argc, char **argv);
int ldc_sample_main(int argc, char **argv);
int ldc_train_main(int argc, char **argv);
int ldc_pull_main(int argc, char **argv);
int ldc_status_main(int argc, char **argv);
int ldc_bench_main(int argc, char **argv);
int ldc_keygen_main(int argc, char **argv);

/* getopt_long with the CLI's error reporting: returns the option character
 * (or a long option's val), -1 after the last option, or '?' once it has
 * printed "langdaug <cmd>: unknown option '--x'" / "option '--x' needs a
 * value" (the caller then returns 2). optstring need not start with ':'.
 * The dispatcher resets getopt before each subcommand. */
int ldc_getopt(const char *cmd, int argc, char **argv, const char *optstring,
               const struct option *longopts);

/* Prints "langdaug <cmd>: <message>" and "Try 'langdaug <cmd> --help'." to
 * stderr; returns 2. */
int ldc_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prints "langdaug <cmd>: <ld_strerror(rc)>: <ld_errdetail()>" to stderr;
 * returns 1. */
int ldc_fail(const char *cmd, int rc);

/* Rejects leftover positional arguments (argv[optind..]): prints a usage
 * error and returns 2, or returns 0 when there are none. */
int ldc_no_operands(const char *cmd, int argc, char **argv);

#endif
