/* ldd_notify: sd_notify messages and the stderr log sink (see ldd_notify.h). */
#include "ldd_notify.h"

#include <stdio.h>
#include <stdlib.h>
#include <systemd/sd-daemon.h>

#include "ld_log.h"

void ldd_notify_ready(const char *status)
{
    sd_notifyf(0, "READY=1\nSTATUS=%s", status);
}

void ldd_notify_stopping(void)
{
    sd_notify(0, "STOPPING=1\nSTATUS=draining");
}

void ldd_notify_reloading(void)
{
    sd_notify(0, "RELOADING=1\nSTATUS=reloading");
}

void ldd_notify_status(const char *status)
{
    sd_notifyf(0, "STATUS=%s", status);
}

void ldd_notify_watchdog(void)
{
    sd_notify(0, "WATCHDOG=1");
}

uint64_t ldd_notify_watchdog_usec(void)
{
    uint64_t usec = 0;
    return sd_watchdog_enabled(0, &usec) > 0 ? usec : 0;
}

/* syslog priorities of ld_log levels: err, warning, info, debug. */
static const int priority[] = { 3, 4, 6, 7 };

static void journal_sink(int level, const char *msg, void *user)
{
    (void)user;
    fprintf(stderr, "<%d>%s\n", priority[level < 0 ? 0 : level > 3 ? 3 : level], msg);
}

static void plain_sink(int level, const char *msg, void *user)
{
    (void)user;
    fprintf(stderr, "langdaugd: %s: %s\n", ld_log_level_name(level), msg);
}

void ldd_log_init(int level)
{
    const char *js = getenv("JOURNAL_STREAM");
    setvbuf(stderr, NULL, _IOLBF, 0);
    ld_log_set(js && *js ? journal_sink : plain_sink, NULL, level);
}
