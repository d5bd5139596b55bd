/* langdaugd: the sampler daemon's entry point.
 *
 * Exit status: 0 after a clean stop (SIGTERM/SIGINT drained) or a print
 * action; 1 when the models, dataset or sockets cannot be set up; 2 for a
 * bad command line or config file (the message names option, file, line). */
#include <signal.h>
#include <stdio.h>

#include "ld_error.h"
#include "ld_log.h"
#include "ldd_config.h"
#include "ldd_engine.h"
#include "ldd_notify.h"
#include "ldd_server.h"

static int usage_error(const char *detail)
{
    fprintf(stderr, "langdaugd: %s\nTry 'langdaugd --help'.\n", detail);
    return 2;
}

static int serve(const ldd_options_t *opts, ldd_config_t *cfg)
{
    ldd_log_init(ldd_config_log_level(cfg));
    signal(SIGPIPE, SIG_IGN);
    ldd_engine_t *engine = NULL;
    int rc = ldd_engine_load(cfg, &engine);
    if (rc < 0) {
        ld_error("cannot start: %s: %s", ld_strerror(rc), ld_errdetail());
        ldd_config_free(cfg);
        return 1;
    }
    ldd_server_t *server = NULL;
    rc = ldd_server_new(opts, cfg, engine, &server);
    if (rc < 0) {
        ld_error("cannot start: %s", ld_errdetail());
        return 1;
    }
    int status = ldd_server_run(server);
    ldd_server_destroy(&server);
    return status;
}

int main(int argc, char **argv)
{
    ldd_options_t opts;
    if (ldd_options_parse(argc, argv, &opts) < 0)
        return usage_error(ld_errdetail());
    int status = 0;
    if (opts.action == LDD_HELP) {
        ldd_config_print_usage(stdout);
    } else if (opts.action == LDD_VERSION_ACTION) {
        printf("langdaugd %s\n", LD_VERSION);
    } else if (opts.action == LDD_PRINT_EXAMPLE) {
        ldd_config_print_example(stdout);
    } else {
        ldd_config_t cfg;
        if (ldd_config_build(&opts, &cfg) < 0) {
            status = usage_error(ld_errdetail());
        } else if (opts.action == LDD_PRINT_CONFIG) {
            ldd_config_print(&cfg, stdout);
            ldd_config_free(&cfg);
        } else {
            status = serve(&opts, &cfg);
        }
    }
    ldd_options_free(&opts);
    return status;
}
