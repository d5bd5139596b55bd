/* ld_log: the log sink. Messages are formatted into a bounded stack buffer
 * and handed to the sink in one call, so concurrent threads never interleave
 * within a line. */
#include "ld_log.h"
#include "ld_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

_Atomic int ld_log_level = LD_LOG_INFO;

static void default_sink(int level, const char *msg, void *user)
{
    (void)user;
    fprintf(stderr, "langdaug: %s: %s\n", ld_log_level_name(level), msg);
}

static ld_log_fn sink = default_sink;
static void *sink_user;

void ld_log_set(ld_log_fn fn, void *user, int level)
{
    sink = fn ? fn : default_sink;
    sink_user = fn ? user : NULL;
    ld_log_level = level;
}

void ld_log_emit(int level, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    sink(level, buf, sink_user);
}

const char *ld_log_level_name(int level)
{
    static const char *const names[] = { "error", "warning", "info", "debug" };
    if (level < LD_LOG_ERROR || level > LD_LOG_DEBUG)
        return "log";
    return names[level];
}

int ld_log_level_parse(const char *name, int *level)
{
    static const struct { const char *name; int level; } levels[] = {
        { "error", LD_LOG_ERROR }, { "warn", LD_LOG_WARN }, { "warning", LD_LOG_WARN },
        { "info", LD_LOG_INFO }, { "debug", LD_LOG_DEBUG },
    };
    for (size_t i = 0; name && i < sizeof levels / sizeof levels[0]; i++)
        if (!strcasecmp(name, levels[i].name)) {
            *level = levels[i].level;
            return LD_OK;
        }
    return ld_seterr(LD_EINVAL, "'%s' is not one of error, warning, info, debug", name ? name : "(null)");
}
