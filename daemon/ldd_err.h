/* ldd_err: adding context to the calling thread's error detail.
 *
 * ld_seterr(rc, "model %s: %s", path, ld_errdetail()) would format the
 * detail into itself (the same thread-local buffer is source and
 * destination, which vsnprintf does not allow); ldd_err_wrap copies the
 * old detail first. */
#ifndef LDD_ERR_H
#define LDD_ERR_H

/* Sets the detail to "<formatted context>: <previous detail>" and returns rc. */
int ldd_err_wrap(int rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
