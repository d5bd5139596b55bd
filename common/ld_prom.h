/* ld_prom: a langdaugd StatusReply as Prometheus metrics, in the text
 * exposition format version 0.0.4.
 *
 * The one place that names the metrics, their types, units and help text:
 * `langdaug status --prometheus` formats the reply it fetched, and the
 * daemon's metrics_listen endpoint builds a StatusReply and formats it here,
 * so the two cannot drift. Fields the reply leaves out (an older daemon, or
 * refused_handshakes without CURVE) give no metric rather than a zero.
 *
 * Invariants of the output: every family has exactly one # HELP and one
 * # TYPE line before its samples and appears once; label values are escaped
 * (backslash, double quote, newline) and valid UTF-8 (invalid bytes of a
 * peer-chosen client name become U+FFFD); counters end in _total, sizes in
 * _bytes, durations in _seconds. */
#ifndef LD_PROM_H
#define LD_PROM_H

#include <stddef.h>

#include "langdaug.pb-c.h"

/* Content-Type of the exposition. */
#define LD_PROM_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Formats r into a malloc'ed NUL-terminated text (*out, caller frees) of
 * *len bytes. Returns 0, or LD_ENOMEM. */
int ld_prom_format(const Langdaug__V1__StatusReply *r, char **out, size_t *len);

#endif
