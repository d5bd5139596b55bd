/* ldd_mem: fatal-on-OOM allocation (see ldd_mem.h). Zero sizes are rounded
 * up to one byte so that a NULL return always means failure. */
#include "ldd_mem.h"

#include <stdlib.h>
#include <string.h>

#include "ld_log.h"

static void *checked(void *p, size_t size)
{
    if (!p) {
        ld_error("out of memory (allocating %zu bytes)", size);
        abort();
    }
    return p;
}

void *ldd_xmalloc(size_t size)
{
    return checked(malloc(size ? size : 1), size);
}

void *ldd_xcalloc(size_t n, size_t size)
{
    return checked(calloc(n ? n : 1, size ? size : 1), n * size);
}

void *ldd_xrealloc(void *p, size_t size)
{
    return checked(realloc(p, size ? size : 1), size);
}

char *ldd_xstrdup(const char *s)
{
    return checked(strdup(s), strlen(s) + 1);
}
