/* ldd_err: error detail with context (see ldd_err.h). */
#include "ldd_err.h"

#include <stdarg.h>
#include <stdio.h>

#include "ld_error.h"

int ldd_err_wrap(int rc, const char *fmt, ...)
{
    char context[512], detail[1024];
    snprintf(detail, sizeof detail, "%s", ld_errdetail());
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(context, sizeof context, fmt, ap);
    va_end(ap);
    return ld_seterr(rc, "%s: %s", context, detail);
}
