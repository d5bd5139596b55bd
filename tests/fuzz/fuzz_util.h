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

#endif
