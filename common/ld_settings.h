/* ld_settings: a run's settings described by one table, which drives
 * option parsing (ld_settings_set), printing (ld_settings_get, which reads
 * back exactly), help text, validation of ranges, the "<prefix><key>"
 * entries a checkpoint or model file keeps in its metadata, and resuming
 * from them with command-line overrides.
 *
 * A table row says where a key lives in the caller's config struct (offset
 * and size, LD_SETTING_FIELD), its type, its range (numbers; min and max of
 * both halves of a pair) and its role in a run:
 *   trajectory  1: fixed for a run (a resumed run must keep it);
 *               0: saved, but may change on resume (data paths);
 *              -1: not saved (a property of the machine, e.g. threads).
 * A row's `clears` (may be NULL) names a string key emptied when this key
 * is overridden on resume (--data replaces --manifest and back).
 *
 * Errors name the option: "--lr: 'fast' is not a number" (LD_EINVAL or
 * LD_ERANGE), "unknown <what> '<key>'" (LD_ENOENT). */
#ifndef LD_SETTINGS_H
#define LD_SETTINGS_H

#include <stddef.h>
#include <stdio.h>

#include "ld_adam.h"
#include "ld_safetensors.h"

typedef enum {
    LD_SET_STR,    /* char array; value shorter than the array */
    LD_SET_INT,    /* int in [min, max] */
    LD_SET_U64,    /* uint64_t (seeds) */
    LD_SET_DBL,    /* finite double in [min, max] */
    LD_SET_PAIR,   /* double[2] "a,b", both in [min, max] */
    LD_SET_COLOUR  /* ld_colour_space_t: rgb or lab */
} ld_setting_type_t;

typedef struct {
    const char *key;
    ld_setting_type_t type;
    size_t off, size;
    double min, max;
    int trajectory;      /* 1, 0 or -1, see above */
    const char *clears;  /* NULL, or the key emptied when this one is overridden on resume */
    const char *help;    /* one line */
} ld_setting_t;

/* offset and size of field f of struct type T, for a table row */
#define LD_SETTING_FIELD(T, f) offsetof(T, f), sizeof(((T *)0)->f)

/* A key added after files were first written, and the value files without
 * it were made with. */
typedef struct {
    const char *key, *value;
} ld_setting_added_t;

typedef struct {
    const ld_setting_t *rows;
    size_t n;
    size_t cfg_size;                /* sizeof the config struct */
    const char *what;               /* "training setting", in errors */
    const char *prefix;             /* metadata key prefix, e.g. "train_ae." */
    const ld_setting_added_t *added;/* may be NULL */
    size_t n_added;
} ld_settings_t;

/* The row of key, or NULL. */
const ld_setting_t *ld_settings_find(const ld_settings_t *t, const char *key);
/* Sets key in cfg from text (see the errors above). */
int ld_settings_set(const ld_settings_t *t, void *cfg, const char *key, const char *value);
/* The value as text that ld_settings_set reads back exactly. */
int ld_settings_get(const ld_settings_t *t, const void *cfg, const char *key, char *buf, size_t len);
/* Adds "<prefix><key>" = value for every saved key (trajectory >= 0). */
int ld_settings_to_meta(const ld_settings_t *t, const void *cfg, ld_meta_t *meta);
/* Sets every saved key of cfg from "<prefix><key>" in meta (a key in
 * t->added may be absent: its recorded value is used). label names the
 * file in LD_EFORMAT details. */
int ld_settings_from_meta(const ld_settings_t *t, void *cfg, const ld_meta_t *meta, const char *label);
/* Applies overrides (key -> value, as given on a command line) to cfg:
 * a trajectory key must keep cfg's value (LD_EINVAL: "--lr 0.002 differs
 * from the checkpoint's 0.001; ..."); others replace it (and empty the key
 * their row clears). cfg is unchanged on error. */
int ld_settings_override(const ld_settings_t *t, void *cfg, const ld_meta_t *overrides);
/* One help line per key: "  --key  * help (default value)", * marking
 * trajectory keys; defaults from cfg. */
void ld_settings_help(const ld_settings_t *t, const void *cfg, FILE *f);

/* ---- Adam's settings, shared by the trainers ---- */

typedef struct {
    double lr, betas[2], eps;
} ld_settings_adam_t;

/* The rows lr, betas, eps of config type T whose member m is an
 * ld_settings_adam_t (all fixed for a run). */
#define LD_SETTINGS_ADAM_ROWS(T, m)                                                                     \
    { "lr", LD_SET_DBL, LD_SETTING_FIELD(T, m.lr), 1e-12, 1e9, 1, NULL, "Adam learning rate" },        \
    { "betas", LD_SET_PAIR, LD_SETTING_FIELD(T, m.betas), 0, 1, 1, NULL, "Adam beta1,beta2" },         \
    { "eps", LD_SET_DBL, LD_SETTING_FIELD(T, m.eps), 1e-30, 1, 1, NULL, "Adam epsilon" }

/* a's values as Adam's parameters, checked (ld_adam_validate). */
int ld_settings_adam_params(const ld_settings_adam_t *a, ld_adam_params_t *p);

#endif
