/* ldd_mem: allocation for the daemon, where running out of memory is fatal:
 * each helper logs the failed size through ld_log and aborts, so callers
 * never handle NULL. (The library, by contrast, returns LD_ENOMEM.) */
#ifndef LDD_MEM_H
#define LDD_MEM_H

#include <stddef.h>

void *ldd_xmalloc(size_t size);
void *ldd_xcalloc(size_t n, size_t size);
void *ldd_xrealloc(void *p, size_t size);
char *ldd_xstrdup(const char *s);

#endif
