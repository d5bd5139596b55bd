/* fuzz_config: the daemon's config file parser (ldd_config_load_file) on
 * arbitrary text. A file is either refused with a detail naming the file
 * and line, or accepted; an accepted config printed with ldd_config_print
 * must read back to the same config (printed identically). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "ld_error.h"
#include "ldd_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len);

static char *print(const ldd_config_t *cfg, size_t *len)
{
    char *text = NULL;
    FILE *f = open_memstream(&text, len);
    if (!f)
        abort();
    ldd_config_print(cfg, f);
    fclose(f);
    return text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    fuzz_quiet();
    ldd_config_t cfg;
    if (ldd_config_defaults(&cfg) != 0)
        abort();
    const char *path = fuzz_file(data, len);
    if (ldd_config_load_file(&cfg, path) != 0) {
        if (strncmp(ld_errdetail(), path, strlen(path)) != 0)
            abort(); /* every refusal names the file */
        ldd_config_free(&cfg);
        return 0;
    }
    size_t n1, n2;
    char *first = print(&cfg, &n1);
    ldd_config_t again;
    if (ldd_config_defaults(&again) != 0 || ldd_config_load_file(&again, fuzz_file((const uint8_t *)first, n1)) != 0) {
        fprintf(stderr, "printed config does not load: %s\n%s", ld_errdetail(), first);
        abort();
    }
    char *second = print(&again, &n2);
    if (n1 != n2 || memcmp(first, second, n1) != 0) {
        fprintf(stderr, "config changed on a round trip:\n%s---\n%s", first, second);
        abort();
    }
    free(first);
    free(second);
    ldd_config_free(&cfg);
    ldd_config_free(&again);
    return 0;
}
