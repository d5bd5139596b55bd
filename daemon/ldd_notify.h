/* ldd_notify: systemd Type=notify messages and the log sink.
 *
 * sd_notify() is a no-op when $NOTIFY_SOCKET is unset, so the daemon calls
 * these unconditionally. The watchdog interval comes from $WATCHDOG_USEC
 * (sd_watchdog_enabled); the loop pings at half of it.
 *
 * Log lines go to stderr, one per message. Under systemd ($JOURNAL_STREAM
 * set) they carry a "<N>" syslog priority prefix that journald turns into
 * the entry's priority; otherwise "langdaugd: <level>: ". */
#ifndef LDD_NOTIFY_H
#define LDD_NOTIFY_H

#include <stdint.h>

void ldd_notify_ready(const char *status);
void ldd_notify_stopping(void);
void ldd_notify_reloading(void);
void ldd_notify_status(const char *status);
void ldd_notify_watchdog(void);
/* The watchdog interval in microseconds, or 0 when not requested. */
uint64_t ldd_notify_watchdog_usec(void);

/* Installs the stderr log sink at the given level. */
void ldd_log_init(int level);

#endif
