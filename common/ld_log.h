/* ld_log: level-checked logging through a callback the caller sets.
 *
 * The library never writes to stdout/stderr on its own: it calls the sink set
 * with ld_log_set(). The default sink writes "langdaug: <level>: msg" to stderr,
 * so command-line tools work without setup. The level check happens in the
 * macro, before any argument is evaluated or formatted. Part of liblangdaug's
 * installed headers: everything declared here is exported (LD_EXTERN). */
#ifndef LD_LOG_H
#define LD_LOG_H

#include "ld_export.h"

enum { LD_LOG_ERROR = 0, LD_LOG_WARN = 1, LD_LOG_INFO = 2, LD_LOG_DEBUG = 3 };

typedef void (*ld_log_fn)(int level, const char *msg, void *user);

/* The current threshold; messages with level > ld_log_level are dropped. */
LD_EXTERN extern _Atomic int ld_log_level; /* a reload may set it while other threads log */

/* Sets the sink (NULL restores the default stderr sink) and threshold.
 * Not thread-safe against concurrent logging: call at start-up. */
LD_EXTERN void ld_log_set(ld_log_fn fn, void *user, int level);

/* Formats and emits unconditionally; use the macros instead. */
LD_EXTERN void ld_log_emit(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* "error", "warning", "info", "debug". */
LD_EXTERN const char *ld_log_level_name(int level);

/* Parses "error|warn|warning|info|debug" (any case) into *level: 0, or
 * LD_EINVAL with the detail "'NAME' is not one of error, warning, info,
 * debug" and *level unchanged. */
LD_EXTERN int ld_log_level_parse(const char *name, int *level);

#define LD_LOG_AT(lvl, ...) \
    do { if ((lvl) <= ld_log_level) ld_log_emit((lvl), __VA_ARGS__); } while (0)
#define ld_error(...) LD_LOG_AT(LD_LOG_ERROR, __VA_ARGS__)
#define ld_warn(...) LD_LOG_AT(LD_LOG_WARN, __VA_ARGS__)
#define ld_info(...) LD_LOG_AT(LD_LOG_INFO, __VA_ARGS__)
#define ld_debug(...) LD_LOG_AT(LD_LOG_DEBUG, __VA_ARGS__)

#endif
