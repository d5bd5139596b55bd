/* ldd_err: adding context to the calling thread's error detail.
 *
 * ldd_err_wrap(rc, "model %s", path) is the short form of
 * ld_seterr(rc, "model %s: %s", path, ld_errdetail()), which ld_error.h
 * allows (ld_seterr formats through a local buffer); the daemon uses the
 * wrapper so that every context reads "<what>: <why>" the same way. */
#ifndef LDD_ERR_H
#define LDD_ERR_H

/* Sets the detail to "<formatted context>: <previous detail>" and returns rc. */
int ldd_err_wrap(int rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
