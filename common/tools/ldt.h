/* ldc: the `langdaug` command line's subcommands and their shared helpers.
 *
 * Each subcommand is `int ldt_<name>_main(int argc, char **argv)` with
 * argv[0] = the subcommand name; it returns the process exit status:
 *   0 success, 1 runtime failure (bad file, I/O...), 2 usage error
 *   (unknown/malformed option or value, missing required option).
 * To add one: write client/ldt_<name>.c, declare its main below, and add a
 * line to the table in client/langdaug.c.
 *
 * Conventions (helpers below, defined in client/langdaug.c):
 *   - options with getopt_long through ldt_getopt(), which reports unknown
 *     options and missing values itself;
 *   - values parsed with ld_cli_* (common/ld_text.h); on failure call
 *     ldt_usage_error(cmd, "%s", ld_errdetail());
 *   - library failures reported with ldt_fail(cmd, rc). */
#ifndef LDT_H
#define LDT_H

#include <getopt.h>

int ldt_energy_main(int argc, char **argv);
int ldt_init_model_main(int argc, char **argv);
int ldt_synth_main(int argc, char **argv);
int ldt_sample_main(int argc, char **argv);
int ldt_train_main(int argc, char **argv);
int ldt_train_ae_main(int argc, char **argv);
int ldt_pull_main(int argc, char **argv);
int ldt_status_main(int argc, char **argv);
int ldt_bench_main(int argc, char **argv);
int ldt_keygen_main(int argc, char **argv);

/* getopt_long with the CLI's error reporting: returns the option character
 * (or a long option's val), -1 after the last option, or '?' once it has
 * printed "langdaug <cmd>: unknown option '--x'" / "option '--x' needs a
 * value" (the caller then returns 2). optstring need not start with ':'.
 * The dispatcher resets getopt before each subcommand. */
int ldt_getopt(const char *cmd, int argc, char **argv, const char *optstring,
               const struct option *longopts);

/* Prints "langdaug <cmd>: <message>" and "Try 'langdaug <cmd> --help'." to
 * stderr; returns 2. */
int ldt_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prints "langdaug <cmd>: <ld_strerror(rc)>: <ld_errdetail()>" to stderr;
 * returns 1. */
int ldt_fail(const char *cmd, int rc);

/* Rejects leftover positional arguments (argv[optind..]): prints a usage
 * error and returns 2, or returns 0 when there are none. */
int ldt_no_operands(const char *cmd, int argc, char **argv);

#endif
