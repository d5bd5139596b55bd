/* ld_afile: atomic file writes (and the two other file chores the library
 * shares: creating a folder, reading a whole file).
 *
 * Every file langdaug writes goes through here: data is written to a
 * temporary file in the destination's directory, flushed and fsync'ed, then
 * renamed over the destination, and the directory is fsync'ed. A reader sees
 * the old file or the new one, never a mix; a crash or a full disk at any
 * point leaves the old file intact and removes nothing else.
 *
 *   ld_afile_open()  -> writing -> ld_afile_commit()  (destination replaced)
 *                              \-> ld_afile_abort()   (temporary removed)
 * Both commit and abort destroy the handle and NULL the caller's pointer. */
#ifndef LD_AFILE_H
#define LD_AFILE_H

#include <stddef.h>
#include <stdio.h>

typedef struct ld_afile_s ld_afile_t;

/* Starts an atomic write of `path`. Caller owns *out until commit/abort. */
int ld_afile_open(const char *path, ld_afile_t **out);

/* The stdio stream to write to (for libpng and fprintf). */
FILE *ld_afile_fp(ld_afile_t *self);

/* Writes len bytes; returns 0 or LD_EIO (e.g. disk full). */
int ld_afile_write(ld_afile_t *self, const void *buf, size_t len);

/* Flushes, fsyncs and renames into place. On any failure the temporary file
 * is removed, the destination is untouched and an error is returned. */
int ld_afile_commit(ld_afile_t **self_p);

/* Discards the temporary file. Safe on NULL. */
void ld_afile_abort(ld_afile_t **self_p);

/* Convenience: atomically replaces `path` with the given bytes. */
int ld_afile_write_all(const char *path, const void *buf, size_t len);

/* Creates the folder `path` (its parent must exist); a folder already there
 * is fine. Anything else there, or a failed mkdir, is LD_EIO naming path. */
int ld_afile_mkdir(const char *path);

/* Reads the whole regular file `path` into a malloc'ed buffer with a NUL
 * after the data (the caller frees *buf_out); *len_out gets the size.
 * Errors, each naming path: LD_ENOENT (missing), LD_EIO (cannot open, not a
 * regular file, e.g. a FIFO, which is refused rather than waited on, or a
 * read failed), LD_ERANGE (over max_len bytes), LD_ENOMEM. */
int ld_afile_read_all(const char *path, size_t max_len, char **buf_out, size_t *len_out);

#endif
