/* test_ldd_config: the daemon's config table (ldd_config.h): defaults,
 * ranges at their boundaries, text values a file could not read back,
 * the config file (duplicates, sections, syntax errors with their line),
 * --print-config reading back to the same config, command-line options over
 * the file (the model list replaced, not appended), the cross-key rules
 * of a build, and which keys a reload keeps (those the table marks, and
 * only those). No engine is loaded. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ld_error.h"
#include "ld_log.h"
#include "ldd_config.h"

static void expect_set_refused(ldd_config_t *cfg, const char *key, const char *value, const char *needle)
{
    ck_assert_msg(ldd_config_set(cfg, key, value, "here") < 0, "%s = '%s' accepted", key, value);
    ck_assert_msg(strstr(ld_errdetail(), needle), "'%s' lacks '%s'", ld_errdetail(), needle);
}

START_TEST(defaults_are_in_force)
{
    ldd_config_t cfg;
    ck_assert_int_eq(ldd_config_defaults(&cfg), 0);
    ck_assert_int_eq(cfg.max_clients, 64);
    ck_assert_int_eq(cfg.max_credits, 16);
    ck_assert_int_eq(cfg.max_queue_memory, 512);
    ck_assert_str_eq(cfg.bind, "tcp://*:5555");
    ck_assert(isnan(cfg.step_size) && isnan(cfg.noise)); /* auto */
    ck_assert_int_eq(cfg.n_models, 0);
    ldd_config_free(&cfg);
}
END_TEST

START_TEST(ranges_hold_at_their_boundaries)
{
    ldd_config_t cfg;
    ck_assert_int_eq(ldd_config_defaults(&cfg), 0);
    ck_assert_int_eq(ldd_config_set(&cfg, "max_clients", "4096", "here"), 0);
    ck_assert_int_eq(cfg.max_clients, 4096);
    expect_set_refused(&cfg, "max_clients", "4097", "here: max_clients");
    ck_assert_int_eq(ldd_config_set(&cfg, "max_clients", "1", "here"), 0);
    expect_set_refused(&cfg, "max_clients", "0", "max_clients");
    ck_assert_int_eq(cfg.max_clients, 1); /* a refused value changes nothing */
    ck_assert_int_eq(ldd_config_set(&cfg, "idle_timeout", "0.1", "here"), 0);
    expect_set_refused(&cfg, "idle_timeout", "0.09", "idle_timeout");
    ck_assert_int_eq(ldd_config_set(&cfg, "step_size", "auto", "here"), 0);
    ck_assert_int_eq(ldd_config_set(&cfg, "step_size", "0.5", "here"), 0);
    ck_assert(cfg.step_size == 0.5);
    expect_set_refused(&cfg, "step_size", "fast", "neither auto nor a number");
    expect_set_refused(&cfg, "nosuchkey", "1", "unknown key 'nosuchkey'");
    expect_set_refused(&cfg, "steps", "10,10", "ascending");
    expect_set_refused(&cfg, "log_level", "loud", "not one of");
    expect_set_refused(&cfg, "metrics_listen", "nowhere", "metrics_listen");
    double lo, hi;
    ck_assert_int_eq(ldd_config_range("noise", &lo, &hi), 0);
    ck_assert(lo == 0 && hi == 100);
    ck_assert_int_lt(ldd_config_range("max_clients", &lo, &hi), 0);
    ldd_config_free(&cfg);
}
END_TEST

/* Values a config file line could not carry unchanged are refused. */
START_TEST(values_must_read_back)
{
    ldd_config_t cfg;
    ck_assert_int_eq(ldd_config_defaults(&cfg), 0);
    expect_set_refused(&cfg, "data", " lead", "surrounding spaces");
    expect_set_refused(&cfg, "data", "trail ", "surrounding spaces");
    expect_set_refused(&cfg, "data", "a\nb", "control character");
    expect_set_refused(&cfg, "data", "a ;b", "comment");
    ck_assert_int_eq(ldd_config_set(&cfg, "data", "a;b", "here"), 0);
    char longv[300];
    memset(longv, 'x', sizeof longv - 1);
    longv[sizeof longv - 1] = '\0';
    expect_set_refused(&cfg, "data", longv, "longer than a config file line");
    ldd_config_free(&cfg);
}
END_TEST

/* Loads text as a config file on top of the defaults; returns the code. */
static int load_text(const char *text, ldd_config_t *cfg)
{
    char *dir = ld_test_tmpdir(), *path = ld_test_path(dir, "d.conf");
    ld_test_write_file(path, text, strlen(text));
    ck_assert_int_eq(ldd_config_defaults(cfg), 0);
    int rc = ldd_config_load_file(cfg, path);
    ld_test_rmtree(dir);
    free(path);
    free(dir);
    return rc;
}

static void expect_file_refused(const char *text, const char *needle)
{
    ldd_config_t cfg;
    ck_assert_int_lt(load_text(text, &cfg), 0);
    ck_assert_msg(strstr(ld_errdetail(), needle), "'%s' lacks '%s'", ld_errdetail(), needle);
    ldd_config_free(&cfg);
}

START_TEST(file_errors_name_the_line)
{
    expect_file_refused("max_clients = 5\n\nmax_clients = 6\n", "d.conf:3: key 'max_clients' already set on line 1");
    expect_file_refused("# c\n[s]\nworkers = 2\n", "d.conf:3: key 'workers' inside section [s]");
    expect_file_refused("workers = 2\nnonsense\n", "d.conf:2: syntax error");
    expect_file_refused("workers = two\n", "d.conf:1: workers");
    ldd_config_t cfg;
    ck_assert_int_eq(load_text("model = a\nmodel = b\n; comment\nworkers = 3\n", &cfg), 0);
    ck_assert_int_eq(cfg.n_models, 2);
    ck_assert_str_eq(cfg.models[1], "b");
    ck_assert_int_eq(cfg.workers, 3);
    ldd_config_free(&cfg);
}
END_TEST

static char *printed(const ldd_config_t *cfg)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ldd_config_print(cfg, f);
    fclose(f);
    return buf;
}

START_TEST(print_config_reads_back)
{
    ldd_config_t cfg, again;
    ck_assert_int_eq(load_text("model = m1\nmodel = m2\ndata = /d\nstep_size = 0.1\nnoise = auto\nseed = 18446744073709551615\n"
                               "idle_timeout = 0.3\nkeep = luminance\nmetrics_listen = 127.0.0.1:9464\n", &cfg), 0);
    char *first = printed(&cfg);
    ck_assert_int_eq(load_text(first, &again), 0);
    char *second = printed(&again);
    ck_assert_str_eq(first, second);
    ck_assert(again.seed == UINT64_MAX && again.step_size == 0.1 && isnan(again.noise) && again.n_models == 2);
    ldd_config_t copy;
    ck_assert_int_eq(ldd_config_copy(&again, &copy), 0);
    ldd_config_free(&again);
    char *third = printed(&copy);
    ck_assert_str_eq(first, third);
    free(first), free(second), free(third);
    ldd_config_free(&cfg);
    ldd_config_free(&copy);
}
END_TEST

START_TEST(options_override_the_file)
{
    char *dir = ld_test_tmpdir(), *path = ld_test_path(dir, "d.conf");
    const char *text = "model = file1\nmodel = file2\ndata = /d\nworkers = 2\n";
    ld_test_write_file(path, text, strlen(text));
    char *argv[] = { "langdaugd", "-c", path, "--workers", "5", "--model", "cli", "--max-clients", "7", NULL };
    ldd_options_t opts;
    ck_assert_int_eq(ldd_options_parse(9, argv, &opts), 0);
    ck_assert_int_eq(opts.action, LDD_RUN);
    ck_assert_int_eq(opts.n_overrides, 3);
    ldd_config_t cfg;
    ck_assert_int_eq(ldd_config_build(&opts, &cfg), 0);
    ck_assert_int_eq(cfg.workers, 5);
    ck_assert_int_eq(cfg.max_clients, 7);
    ck_assert_int_eq(cfg.n_models, 1); /* --model replaces the file's list */
    ck_assert_str_eq(cfg.models[0], "cli");
    ldd_config_free(&cfg);
    ldd_options_free(&opts);
    char *bad[] = { "langdaugd", "--no-such", NULL };
    ck_assert_int_lt(ldd_options_parse(2, bad, &opts), 0);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "unknown option '--no-such'"));
    char *stray[] = { "langdaugd", "extra", NULL };
    ck_assert_int_lt(ldd_options_parse(2, stray, &opts), 0);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "unexpected argument 'extra'"));
    char *novalue[] = { "langdaugd", "--workers", NULL };
    ck_assert_int_lt(ldd_options_parse(2, novalue, &opts), 0);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "needs a value"));
    ld_test_rmtree(dir);
    free(path), free(dir);
}
END_TEST

static void expect_build_refused(char **argv, int argc, const char *needle)
{
    ldd_options_t opts;
    ck_assert_int_eq(ldd_options_parse(argc, argv, &opts), 0);
    ldd_config_t cfg;
    ck_assert_int_lt(ldd_config_build(&opts, &cfg), 0);
    ck_assert_msg(strstr(ld_errdetail(), needle), "'%s' lacks '%s'", ld_errdetail(), needle);
    ldd_options_free(&opts);
}

START_TEST(build_checks_cross_keys)
{
    char *dir = ld_test_tmpdir(), *path = ld_test_path(dir, "empty.conf");
    ld_test_write_file(path, "", 0);
    char *none[] = { "langdaugd", "-c", path, "--data", "/d", NULL };
    expect_build_refused(none, 5, "no model");
    char *both[] = { "langdaugd", "-c", path, "--model", "m", "--data", "/d", "--manifest", "/m.csv", NULL };
    expect_build_refused(both, 9, "exactly one of 'data'");
    char *steps[] = { "langdaugd", "-c", path, "--model", "m", "--data", "/d", "--steps", "5,60", "--max-steps",
                      "59", NULL };
    expect_build_refused(steps, 11, "step 60 is beyond max_steps = 59");
    char *curve[] = { "langdaugd", "-c", path, "--model", "m", "--data", "/d", "--curve-secret-key-file", "k", NULL };
    expect_build_refused(curve, 9, "curve_allowed_keys_dir");
    char *missing[] = { "langdaugd", "-c", "/nonexistent/x.conf", "--model", "m", "--data", "/d", NULL };
    expect_build_refused(missing, 7, "cannot open");
    ld_test_rmtree(dir);
    free(path), free(dir);
}
END_TEST

/* A reload keeps the running value of every key that needs a restart and
 * takes every other key's new value. */
START_TEST(reload_keeps_restart_keys)
{
    ldd_config_t running, fresh;
    ck_assert_int_eq(load_text("workers = 2\nhandshake_timeout = 0.3\n", &running), 0);
    ck_assert_int_eq(load_text("workers = 2\nhandshake_timeout = 0.3\n", &fresh), 0);
    ck_assert_int_eq(ldd_config_keep_restart_keys(&fresh, &running), 0);
    ldd_config_free(&fresh);
    static const char text[] = "bind = tcp://*:6000\nstatus = ipc:///tmp/s\nworkers = 3\nhandshake_timeout = 0.7\n"
                               "max_pending_connections = 7\nmetrics_listen = 127.0.0.1:9000\n"
                               "curve_secret_key_file = /k\nchain_batch = 9\nmax_clients = 3\n"
                               "curve_allowed_keys_dir = /keys\n";
    ck_assert_int_eq(load_text(text, &fresh), 0);
    ld_log_level = LD_LOG_ERROR; /* the seven warnings */
    ck_assert_int_eq(ldd_config_keep_restart_keys(&fresh, &running), 7);
    ck_assert_str_eq(fresh.bind, running.bind);
    ck_assert(fresh.workers == 2 && fresh.handshake_timeout == 0.3 && fresh.max_pending_connections == 100);
    ck_assert(!*fresh.metrics_listen && !*fresh.curve_secret_key_file && !strcmp(fresh.status, running.status));
    ck_assert(fresh.chain_batch == 9 && fresh.max_clients == 3 && !strcmp(fresh.curve_allowed_keys_dir, "/keys"));
    ldd_config_free(&running);
    ldd_config_free(&fresh);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ldd_config");
    TCase *tc = ld_tcase("config", 30);
    tcase_add_test(tc, defaults_are_in_force);
    tcase_add_test(tc, ranges_hold_at_their_boundaries);
    tcase_add_test(tc, values_must_read_back);
    tcase_add_test(tc, file_errors_name_the_line);
    tcase_add_test(tc, print_config_reads_back);
    tcase_add_test(tc, options_override_the_file);
    tcase_add_test(tc, build_checks_cross_keys);
    tcase_add_test(tc, reload_keeps_restart_keys);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
