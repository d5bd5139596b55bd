/* fuzz_util: helpers shared by the libFuzzer targets of tests/fuzz/.
 *
 * Loaders that only take a path (PNG, model, config) are fed through an
 * in-memory file: fuzz_file() rewrites one memfd with the input and returns
 * its /proc/self/fd path, so no input ever touches the disk. */
#ifndef FUZZ_UTIL_H
#define FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* The path of a memory file now holding exactly data[len]. Aborts (a
 * harness failure, not a finding) if the memfd cannot be written. */
const char *fuzz_file(const uint8_t *data, size_t len);

/* Silences the library's log below errors (the inputs are mostly bad). */
void fuzz_quiet(void);

/* The files a daemon engine loads, for targets that need one: a small random
 * model (3 image channels, 2 mask classes, size 16, widths 4,8, domains
 * cam0,cam1, seed 1) and a synthetic dataset of those two domains (one 40 px
 * image each), in a new folder under /tmp named after `tag`. Sets dir (remove
 * it with fuzz_remove_dir once everything is loaded), data and model. Exits
 * with a message if anything fails (a harness failure, not a finding). */
typedef struct {
    char dir[64], data[96], model[128];
} fuzz_engine_files_t;
void fuzz_engine_files(const char *tag, fuzz_engine_files_t *out);
void fuzz_remove_dir(const char *dir);

#endif
