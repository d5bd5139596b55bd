/* ld_log: the log sink. Messages are formatted into a bounded stack buffer
 * and handed to the sink in one call, so concurrent threads never interleave
 * within a line. */
#include "ld_log.h"

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

int ld_log_level_parse(const char *name)
{
    if (!strcasecmp(name, "error")) return LD_LOG_ERROR;
    if (!strcasecmp(name, "warn") || !strcasecmp(name, "warning")) return LD_LOG_WARN;
    if (!strcasecmp(name, "info")) return LD_LOG_INFO;
    if (!strcasecmp(name, "debug")) return LD_LOG_DEBUG;
    return -1;
}
