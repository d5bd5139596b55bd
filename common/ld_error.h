/* ld_error: the library's one error convention.
 *
 * Every fallible library function returns 0 (LD_OK) or a negative LD_E* code.
 * ld_strerror() names the code; ld_errdetail() gives the most recent detailed
 * message recorded on the calling thread by ld_seterr() (for example
 * "model.safetensors: tensor 'stem.weight' has shape [8,5,1,1], expected [8,4,1,1]").
 * The detail is thread-local, so worker threads never overwrite each other's.
 * The library never aborts or exits on bad input. Part of liblangdaug's
 * installed headers: everything declared here is exported (LD_EXTERN). */
#ifndef LD_ERROR_H
#define LD_ERROR_H

#include "ld_export.h"

enum {
    LD_OK = 0,
    LD_ENOMEM = -1,    /* out of memory */
    LD_EINVAL = -2,    /* invalid argument */
    LD_EIO = -3,       /* file or system I/O failed */
    LD_EFORMAT = -4,   /* malformed file or message */
    LD_ERANGE = -5,    /* value outside its allowed range */
    LD_ENOENT = -6,    /* no such file, domain or item */
    LD_EPROTO = -7,    /* protocol violation */
    LD_ETIMEDOUT = -8, /* timed out */
    LD_EAGAIN = -9,    /* try again later */
    LD_ENUMERIC = -10, /* NaN/Inf or diverging numbers */
    LD_ESTATE = -11,   /* operation not valid in this state */
    LD_ENOTSUP = -12,  /* unsupported feature or version */
    LD_ECANCELED = -13 /* interrupted on request */
};

/* Static name of an error code; never NULL. */
LD_EXTERN const char *ld_strerror(int err);

/* Records a printf-style detail for the calling thread and returns err,
 * so that callers can write `return ld_seterr(LD_EFORMAT, "...", ...);`.
 * The arguments may include ld_errdetail() itself, to add context to the
 * detail a callee recorded. */
LD_EXTERN int ld_seterr(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The calling thread's last detail message ("" if none). Valid until the
 * next ld_seterr() on the same thread. */
LD_EXTERN const char *ld_errdetail(void);

/* Clears the calling thread's detail message. */
LD_EXTERN void ld_clearerr(void);

#endif
