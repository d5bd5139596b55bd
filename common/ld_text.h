/* ld_text: strict parsing of command-line and config values, the CSV
 * quoting the commands use for the tables they write, UTF-8 validation (for
 * text that goes into JSON and Prometheus labels), and formatted strings
 * with the error convention.
 *
 * Each parser takes `what` (the option or key being parsed, e.g. "--threads"
 * or "model.conf:3: size") and the text; it accepts the whole string or
 * nothing: no leading/trailing spaces, no trailing junk, no silent wrap or
 * truncation. On failure it returns LD_EINVAL (not a number / malformed
 * list) or LD_ERANGE (outside [min, max]) with a detail such as
 * "--threads: 'abc' is not an integer" and leaves *out unchanged (except
 * ld_text_parse_int_list, which may have written some items). */
#ifndef LD_TEXT_H
#define LD_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Decimal integer in [min, max] ("-3", "42"; no "+", no hex). */
int ld_text_parse_int(const char *what, const char *s, int min, int max, int *out);
int ld_text_parse_i64(const char *what, const char *s, int64_t min, int64_t max, int64_t *out);
/* Unsigned decimal in [0, 2^64-1] (seeds). */
int ld_text_parse_u64(const char *what, const char *s, uint64_t *out);
/* Finite floating-point number in [min, max]. */
int ld_text_parse_double(const char *what, const char *s, double min, double max, double *out);
int ld_text_parse_float(const char *what, const char *s, double min, double max, float *out);
/* Comma-separated integers, each in [min, max], 1..max_n items, no empty
 * items ("32,64,128"). *n_out = number of items. */
int ld_text_parse_int_list(const char *what, const char *s, int min, int max,
                          int *out, int max_n, int *n_out);

/* Writes s to f as one CSV field (RFC 4180): as is, or in double quotes with
 * inner quotes doubled when it holds a comma, quote, CR or LF. */
void ld_text_csv_field(FILE *f, const char *s);

/* Length of the valid UTF-8 sequence that starts at s (1-4), 0 if the bytes
 * there are not one (overlong, surrogate, above U+10FFFF, truncated). */
size_t ld_text_utf8_len(const unsigned char *s);
/* Whether the NUL-terminated s is valid UTF-8 throughout. */
bool ld_text_is_utf8(const char *s);

/* A printf-formatted string (a path, a name) into *out, malloc'ed; on
 * failure *out = NULL and LD_ENOMEM with the detail "out of memory". */
int ld_text_format(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
