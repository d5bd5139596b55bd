/* ld_text: strict whole-string parsing of option and config values, CSV
 * field quoting and formatted strings (see ld_text.h). strtoll/strtod do the conversion; these
 * wrappers add the checks they leave out: empty text, leading space or sign
 * tricks, trailing junk, overflow, NaN/Inf, and range. */
#include "ld_text.h"
#include "ld_error.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* strtoll/strtoull accept leading spaces and '+': refuse both up front. */
static int starts_like_integer(const char *s, int allow_minus)
{
    if (allow_minus && *s == '-')
        s++;
    return isdigit((unsigned char)*s);
}

int ld_text_parse_i64(const char *what, const char *s, int64_t min, int64_t max, int64_t *out)
{
    if (!s || !starts_like_integer(s, 1))
        return ld_seterr(LD_EINVAL, "%s: '%s' is not an integer", what, s ? s : "");
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end)
        return ld_seterr(LD_EINVAL, "%s: '%s' is not an integer", what, s);
    if (errno == ERANGE || v < min || v > max)
        return ld_seterr(LD_ERANGE, "%s: %s is out of range [%lld, %lld]", what, s, (long long)min,
                         (long long)max);
    *out = v;
    return LD_OK;
}

int ld_text_parse_int(const char *what, const char *s, int min, int max, int *out)
{
    int64_t v;
    int rc = ld_text_parse_i64(what, s, min, max, &v);
    if (rc == LD_OK)
        *out = (int)v;
    return rc;
}

int ld_text_parse_u64(const char *what, const char *s, uint64_t *out)
{
    if (!s || !starts_like_integer(s, 0))
        return ld_seterr(LD_EINVAL, "%s: '%s' is not a non-negative integer", what, s ? s : "");
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end)
        return ld_seterr(LD_EINVAL, "%s: '%s' is not a non-negative integer", what, s);
    if (errno == ERANGE)
        return ld_seterr(LD_ERANGE, "%s: %s is out of range [0, %llu]", what, s, (unsigned long long)UINT64_MAX);
    *out = v;
    return LD_OK;
}

int ld_text_parse_double(const char *what, const char *s, double min, double max, double *out)
{
    if (!s || !*s || isspace((unsigned char)*s))
        return ld_seterr(LD_EINVAL, "%s: '%s' is not a number", what, s ? s : "");
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end || end == s)
        return ld_seterr(LD_EINVAL, "%s: '%s' is not a number", what, s);
    if (!isfinite(v) || errno == ERANGE)
        return ld_seterr(LD_ERANGE, "%s: %s is not a finite number", what, s);
    if (v < min || v > max)
        return ld_seterr(LD_ERANGE, "%s: %s is out of range [%g, %g]", what, s, min, max);
    *out = v;
    return LD_OK;
}

int ld_text_parse_float(const char *what, const char *s, double min, double max, float *out)
{
    double v;
    int rc = ld_text_parse_double(what, s, min, max, &v);
    if (rc == LD_OK && !isfinite((float)v))
        rc = ld_seterr(LD_ERANGE, "%s: %s does not fit a 32-bit float", what, s);
    if (rc == LD_OK)
        *out = (float)v;
    return rc;
}

int ld_text_parse_int_list(const char *what, const char *s, int min, int max, int *out, int max_n,
                          int *n_out)
{
    if (!s || !*s)
        return ld_seterr(LD_EINVAL, "%s: empty list", what);
    int n = 0;
    const char *p = s;
    for (;;) {
        size_t len = strcspn(p, ",");
        if (len == 0)
            return ld_seterr(LD_EINVAL, "%s: '%s' has an empty item", what, s);
        if (n == max_n)
            return ld_seterr(LD_ERANGE, "%s: '%s' has more than %d items", what, s, max_n);
        char item[32];
        if (len >= sizeof item)
            return ld_seterr(LD_EINVAL, "%s: item '%.*s' is not an integer", what, (int)len, p);
        memcpy(item, p, len);
        item[len] = '\0';
        int rc = ld_text_parse_int(what, item, min, max, &out[n]);
        if (rc)
            return rc;
        n++;
        if (!p[len])
            break;
        p += len + 1;
    }
    *n_out = n;
    return LD_OK;
}

void ld_text_csv_field(FILE *f, const char *s)
{
    if (!strpbrk(s, ",\"\r\n")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

int ld_text_format(char **out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(out, fmt, ap);
    va_end(ap);
    if (n >= 0)
        return LD_OK;
    *out = NULL;
    return ld_seterr(LD_ENOMEM, "out of memory");
}

size_t ld_text_utf8_len(const unsigned char *s)
{
    size_t n = s[0] < 0x80 ? 1 : (s[0] & 0xE0) == 0xC0 ? 2 : (s[0] & 0xF0) == 0xE0 ? 3 : (s[0] & 0xF8) == 0xF0 ? 4 : 0;
    for (size_t i = 1; i < n; i++)   /* stops at a NUL: it is not a continuation byte */
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    if ((n == 2 && s[0] < 0xC2) || (n == 3 && s[0] == 0xE0 && s[1] < 0xA0) ||
        (n == 3 && s[0] == 0xED && s[1] >= 0xA0) || (n == 4 && s[0] == 0xF0 && s[1] < 0x90) ||
        (n == 4 && (s[0] > 0xF4 || (s[0] == 0xF4 && s[1] >= 0x90))))
        return 0;
    return n;
}

bool ld_text_is_utf8(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        size_t n = ld_text_utf8_len(p);
        if (!n)
            return false;
        p += n;
    }
    return true;
}
