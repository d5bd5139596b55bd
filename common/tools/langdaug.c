/* langdaug: the command line. `langdaug [--log-level L] <command> [options]`.
 *
 * The dispatch table below maps a command name to its ldt_<name>_main(); to
 * add a command, add one line (see client/ldt.h). This file also holds the
 * helpers every subcommand shares for reporting errors, so that they all
 * speak the same way:
 *   usage errors   -> "langdaug <cmd>: <what>" + hint, exit 2
 *   runtime errors -> "langdaug <cmd>: <error name>: <detail>", exit 1 */
#include "ldt.h"
#include "ld_error.h"
#include "ld_log.h"
#include "ld_version.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;
    int (*main)(int argc, char **argv);
    const char *help;
} ldt_command_t;

static const ldt_command_t commands[] = {
    {"energy", ldt_energy_main, "energies and dE/dimage of images under a model"},
    {"init-model", ldt_init_model_main, "write a randomly initialised model"},
    {"synth", ldt_synth_main, "write a synthetic multi-domain fundus-like data set"},
    {"train", ldt_train_main, "train the energy model by contrastive divergence"},
    {"train-ae", ldt_train_ae_main, "train the autoencoder (reconstruction, held-out PSNR/SSIM)"},
    {"sample", ldt_sample_main, "Langevin chains from dataset crops, snapshots as PNG"},
    {"pull", ldt_pull_main, "pull labelled samples from samplers into a folder"},
    {"status", ldt_status_main, "show a sampler's status"},
    {"keygen", ldt_keygen_main, "write a CURVE key pair for encrypted, authenticated sockets"},
    {"bench", ldt_bench_main, "measure batches/s and MB/s received from samplers"},
};

#define N_COMMANDS (sizeof commands / sizeof *commands)

static void usage(FILE *f)
{
    fprintf(f, "Usage: langdaug [--log-level LEVEL] <command> [options]\n"
               "       langdaug <command> --help\n"
               "\n"
               "LangDAug: Langevin data augmentation with an energy-based model.\n"
               "\n"
               "Commands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n"
               "Options:\n"
               "  --log-level LEVEL  error, warn, info (default) or debug\n"
               "  -h, --help         this help\n"
               "  --version          print the version\n"
               "\n"
               "Exit status: 0 success, 1 failure, 2 usage error.\n");
}

int ldt_usage_error(const char *cmd, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "langdaug %s: %s\nTry 'langdaug %s --help'.\n", cmd, msg, cmd);
    return 2;
}

int ldt_fail(const char *cmd, int rc)
{
    const char *detail = ld_errdetail();
    fprintf(stderr, "langdaug %s: %s%s%s\n", cmd, ld_strerror(rc), *detail ? ": " : "", detail);
    return 1;
}

int ldt_getopt(const char *cmd, int argc, char **argv, const char *optstring, const struct option *longopts)
{
    /* A leading ':' makes getopt tell a missing value (':') from an unknown
     * option ('?'); opterr = 0 silences its own messages. */
    char spec[128];
    snprintf(spec, sizeof spec, ":%s", optstring[0] == ':' ? optstring + 1 : optstring);
    opterr = 0;
    int c = getopt_long(argc, argv, spec, longopts, NULL);
    if (c != '?' && c != ':')
        return c;
    const char *arg = optind > 0 && optind <= argc ? argv[optind - 1] : "";
    if (c == ':')
        ldt_usage_error(cmd, "option '%s' needs a value", arg);
    else if (strncmp(arg, "--", 2) == 0)
        ldt_usage_error(cmd, optopt ? "option '%s' does not take a value" : "unknown or ambiguous option '%s'",
                        arg);
    else
        ldt_usage_error(cmd, "unknown option '-%c'", optopt);
    return '?';
}

int ldt_no_operands(const char *cmd, int argc, char **argv)
{
    if (optind < argc)
        return ldt_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    return 0;
}

static const ldt_command_t *find_command(const char *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

/* Handles "--log-level L" / "--log-level=L"; returns how many arguments it
 * used, or -1 after printing an error. */
static int global_log_level(int argc, char **argv)
{
    const char *value = NULL;
    int used = 0;
    if (strncmp(argv[1], "--log-level=", 12) == 0) {
        value = argv[1] + 12;
        used = 1;
    } else if (strcmp(argv[1], "--log-level") == 0 && argc > 2) {
        value = argv[2];
        used = 2;
    } else {
        fprintf(stderr, "langdaug: option '--log-level' needs a value\n");
        return -1;
    }
    int level;
    if (ld_log_level_parse(value, &level) < 0) {
        fprintf(stderr, "langdaug: --log-level: %s\n", ld_errdetail());
        return -1;
    }
    ld_log_set(NULL, NULL, level);
    return used;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strncmp(argv[1], "--log-level", 11) == 0) {
        int used = global_log_level(argc, argv);
        if (used < 0)
            return 2;
        argv[used] = argv[0];
        argv += used;
        argc -= used;
    }
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(name, "--version") == 0) {
        printf("langdaug %s\n", LD_VERSION);
        return 0;
    }
    if (strcmp(name, "help") == 0) {
        if (argc == 2) {
            usage(stdout);
            return 0;
        }
        name = argv[2];
        argv[1] = argv[2];
        argv[2] = "--help";
    }
    const ldt_command_t *cmd = find_command(name);
    if (!cmd) {
        fprintf(stderr, "langdaug: unknown %s '%s'\nRun 'langdaug --help' for the list of commands.\n",
                name[0] == '-' ? "option" : "command", name);
        return 2;
    }
    optind = 0; /* full getopt reset: each command parses its own options */
    return cmd->main(argc - 1, argv + 1);
}
