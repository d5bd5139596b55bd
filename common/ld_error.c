/* ld_error: error names and the per-thread detail message. */
#include "ld_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char tls_detail[512];

const char *ld_strerror(int err)
{
    switch (err) {
    case LD_OK: return "success";
    case LD_ENOMEM: return "out of memory";
    case LD_EINVAL: return "invalid argument";
    case LD_EIO: return "input/output error";
    case LD_EFORMAT: return "malformed data";
    case LD_ERANGE: return "value out of range";
    case LD_ENOENT: return "not found";
    case LD_EPROTO: return "protocol error";
    case LD_ETIMEDOUT: return "timed out";
    case LD_EAGAIN: return "try again";
    case LD_ENUMERIC: return "numeric failure (NaN/Inf or divergence)";
    case LD_ESTATE: return "invalid state";
    case LD_ENOTSUP: return "not supported";
    case LD_ECANCELED: return "canceled";
    default: return "unknown error";
    }
}

int ld_seterr(int err, const char *fmt, ...)
{
    /* Format into a local buffer first: callers may pass ld_errdetail() as
     * an argument ("%s: %s", path, ld_errdetail()) to add context. */
    char buf[sizeof tls_detail];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    memcpy(tls_detail, buf, sizeof buf);
    return err;
}

const char *ld_errdetail(void)
{
    return tls_detail;
}

void ld_clearerr(void)
{
    tls_detail[0] = '\0';
}
