/* ldd_config: the daemon's configuration, driven by one table of keys.
 *
 * Every setting is a row {name, type, default, min, max, help} in the table
 * of ldd_config.c. The same table parses the key = value config file (inih),
 * turns each key into a command-line option (--max-clients for max_clients),
 * prints the configuration in force (--print-config, a valid config file)
 * and the fully commented example (--print-example-config, which is
 * examples/langdaugd.conf). Defaults go through the same parser as file
 * values, so a default can never be out of range.
 *
 * step_size and noise may be `auto` (their default), stored as NAN: the
 * engine resolves it from the models' training settings when it loads
 * (ldd_engine.h), falling back to LDD_FALLBACK_STEP_SIZE / _NOISE.
 *
 * Precedence: defaults < config file < command line. `model` is a list: the
 * file may repeat the key; --model on the command line (repeatable) replaces
 * the file's list. The command-line overrides are kept in ldd_options_t so
 * that a reload (SIGHUP) re-reads the file and re-applies them.
 *
 * Ownership: ldd_config_t owns its strings; ldd_config_free() releases them. */
#ifndef LDD_CONFIG_H
#define LDD_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "ld_colour.h"
#include "ld_langevin.h"

#include "ld_version.h"

#define LDD_MAX_MODELS 16
#define LDD_DEFAULT_CONFIG "/etc/langdaug/langdaugd.conf"

/* What step_size / noise = auto become when no model file says what it was
 * trained with: the same fallback as `langdaug sample` (ld_langevin.h). */
#define LDD_FALLBACK_STEP_SIZE LD_LANGEVIN_FALLBACK_STEP_SIZE
#define LDD_FALLBACK_NOISE LD_LANGEVIN_FALLBACK_NOISE
#define LDD_STR(x) LD_LANGEVIN_STR(x)

typedef struct {
    char *models[LDD_MAX_MODELS];
    int n_models;
    char *data, *manifest, *subdir, *domains, *maskmap;
    double scale;
    int resize, min_side, size, whole_images;
    char *bind, *status;
    int workers, chain_batch;
    double step_size, noise;       /* NAN = auto */
    char *steps;
    ld_keep_t keep;                /* default of requests that do not say */
    int max_steps;
    int max_clients, max_credits, max_batch, max_message_size, queue_capacity, max_queue_memory;
    double idle_timeout, heartbeat_interval, drain_timeout, handshake_timeout;
    int max_pending_connections;
    uint64_t seed;
    char *log_level;
    char *curve_secret_key_file, *curve_allowed_keys_dir;
    char *metrics_listen;          /* "" = no metrics endpoint */
} ldd_config_t;

typedef enum {
    LDD_RUN = 0,
    LDD_PRINT_CONFIG,
    LDD_PRINT_EXAMPLE,
    LDD_HELP,
    LDD_VERSION_ACTION
} ldd_action_t;

/* What the command line said: the config path and the overrides, in order. */
typedef struct {
    ldd_action_t action;
    char *config_path;       /* NULL = LDD_DEFAULT_CONFIG, which may be absent */
    int n_overrides;
    char **override_keys;    /* table names ("max_clients") */
    char **override_values;
} ldd_options_t;

/* Parses argv. Returns 0, or LD_EINVAL with a detail naming the option
 * (unknown option, missing value, stray operand). Values are checked later,
 * by ldd_config_build(). */
int ldd_options_parse(int argc, char **argv, ldd_options_t *out);
void ldd_options_free(ldd_options_t *opts);

/* Defaults, then the config file, then the overrides. On failure *out is
 * left empty and the detail names file and line (or the option). */
int ldd_config_build(const ldd_options_t *opts, ldd_config_t *out);

/* Sets every key to its default. */
int ldd_config_defaults(ldd_config_t *cfg);
/* Reads a config file on top of cfg ("file:line: ..." details). */
int ldd_config_load_file(ldd_config_t *cfg, const char *path);
/* Sets one key from text; `where` prefixes the error detail. */
int ldd_config_set(ldd_config_t *cfg, const char *key, const char *value, const char *where);
void ldd_config_free(ldd_config_t *cfg);

/* Deep copy (for the reload thread). */
int ldd_config_copy(const ldd_config_t *src, ldd_config_t *dst);

/* The config in force, as a config file that ldd_config_load_file() reads back. */
void ldd_config_print(const ldd_config_t *cfg, FILE *out);
/* The commented example config, generated from the table. */
void ldd_config_print_example(FILE *out);
/* The --help text. */
void ldd_config_print_usage(FILE *out);

/* Key/value pairs of the config in force, for the status reply: calls fn
 * once per key (a list key once per item); value is formatted text. */
typedef void (*ldd_config_visit_fn)(const char *key, const char *value, void *user);
void ldd_config_visit(const ldd_config_t *cfg, ldd_config_visit_fn fn, void *user);

/* The LD_LOG_* level of log_level (validated when set, so always one). */
int ldd_config_log_level(const ldd_config_t *cfg);

/* The range a floating-point key accepts, from its table row: the engine
 * checks values taken from model files (auto) against the same bounds.
 * Returns 0, or LD_EINVAL for a key that is not floating-point. */
int ldd_config_range(const char *key, double *min, double *max);

/* A reload: every key whose table row says it needs a restart (sockets,
 * workers, CURVE server key, metrics endpoint) and differs between the
 * running config and the fresh one gets its running value back in fresh,
 * with a warning naming it. Returns the number of keys kept. */
int ldd_config_keep_restart_keys(ldd_config_t *fresh, const ldd_config_t *running);

#endif
