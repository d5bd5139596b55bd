/* ld_afile: temporary file + fsync + rename + directory fsync.
 * Invariant: while a handle exists, exactly one temporary file
 * "<path>.tmp.<pid>.<n>" exists for it; after commit or abort, none does. */
#include "ld_afile.h"
#include "ld_error.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct ld_afile_s {
    FILE *fp;
    char *path;
    char *tmp;
    int failed; /* a write failed: commit must refuse */
};

int ld_afile_open(const char *path, ld_afile_t **out)
{
    *out = NULL;
    if (!path || !*path)
        return ld_seterr(LD_EINVAL, "atomic write: empty path");
    ld_afile_t *self = calloc(1, sizeof *self);
    if (!self)
        return ld_seterr(LD_ENOMEM, "%s: out of memory", path);
    size_t n = strlen(path);
    self->path = strdup(path);
    self->tmp = malloc(n + 32);
    if (!self->path || !self->tmp)
        goto fail_nomem;
    /* open() with 0666 lets the umask decide the mode, as for any file the
     * user creates; O_EXCL plus a unique suffix makes the name ours. */
    static atomic_uint seq;
    int fd = -1;
    for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
        snprintf(self->tmp, n + 32, "%s.tmp.%d.%u", path, (int)getpid(), atomic_fetch_add(&seq, 1));
        fd = open(self->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0 && errno != EEXIST)
            break;
    }
    if (fd < 0) {
        int rc = ld_seterr(LD_EIO, "%s: cannot create temporary file: %s", path, strerror(errno));
        free(self->tmp);
        self->tmp = NULL;
        ld_afile_abort(&self);
        return rc;
    }
    self->fp = fdopen(fd, "wb");
    if (!self->fp) {
        close(fd);
        goto fail_nomem;
    }
    *out = self;
    return LD_OK;
fail_nomem:
    ld_afile_abort(&self);
    return ld_seterr(LD_ENOMEM, "%s: out of memory", path);
}

FILE *ld_afile_fp(ld_afile_t *self)
{
    return self->fp;
}

int ld_afile_write(ld_afile_t *self, const void *buf, size_t len)
{
    if (len && fwrite(buf, 1, len, self->fp) != len) {
        self->failed = 1;
        return ld_seterr(LD_EIO, "%s: write failed: %s", self->path, strerror(errno));
    }
    return LD_OK;
}

static void fsync_parent_dir(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return;
    int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    free(copy);
}

int ld_afile_commit(ld_afile_t **self_p)
{
    ld_afile_t *self = *self_p;
    int rc = LD_OK;
    if (self->failed || ferror(self->fp))
        rc = ld_seterr(LD_EIO, "%s: an earlier write failed", self->path);
    else if (fflush(self->fp) != 0 || fsync(fileno(self->fp)) != 0)
        rc = ld_seterr(LD_EIO, "%s: flush failed: %s", self->path, strerror(errno));
    int close_rc = fclose(self->fp);
    self->fp = NULL;
    if (rc == LD_OK && close_rc != 0)
        rc = ld_seterr(LD_EIO, "%s: close failed: %s", self->path, strerror(errno));
    if (rc == LD_OK && rename(self->tmp, self->path) != 0)
        rc = ld_seterr(LD_EIO, "%s: rename failed: %s", self->path, strerror(errno));
    if (rc == LD_OK) {
        fsync_parent_dir(self->path);
        free(self->tmp);
        self->tmp = NULL; /* renamed: nothing left to remove */
    }
    ld_afile_abort(self_p);
    return rc;
}

void ld_afile_abort(ld_afile_t **self_p)
{
    ld_afile_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    if (self->fp)
        fclose(self->fp);
    if (self->tmp)
        unlink(self->tmp);
    free(self->tmp);
    free(self->path);
    free(self);
    *self_p = NULL;
}

int ld_afile_write_all(const char *path, const void *buf, size_t len)
{
    ld_afile_t *af;
    int rc = ld_afile_open(path, &af);
    if (rc)
        return rc;
    rc = ld_afile_write(af, buf, len);
    if (rc) {
        ld_afile_abort(&af);
        return rc;
    }
    return ld_afile_commit(&af);
}

int ld_afile_mkdir(const char *path)
{
    struct stat st;
    if (mkdir(path, 0777) == 0 || (errno == EEXIST && stat(path, &st) == 0 && S_ISDIR(st.st_mode)))
        return LD_OK;
    return ld_seterr(LD_EIO, "%s: cannot create folder: %s", path, strerror(errno));
}

int ld_afile_read_all(const char *path, size_t max_len, char **buf_out, size_t *len_out)
{
    /* O_NONBLOCK: opening a FIFO must not wait for a writer (it is then
     * refused as not a regular file); regular-file reads ignore it. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return ld_seterr(errno == ENOENT ? LD_ENOENT : LD_EIO, "%s: cannot open: %s", path,
                         strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return ld_seterr(LD_EIO, "%s: not a regular file", path);
    }
    if ((uintmax_t)sb.st_size > max_len) {
        close(fd);
        return ld_seterr(LD_ERANGE, "%s: larger than %zu bytes", path, max_len);
    }
    size_t len = (size_t)sb.st_size;
    char *buf = malloc(len + 1);
    if (!buf) {
        close(fd);
        return ld_seterr(LD_ENOMEM, "%s: cannot allocate %zu bytes", path, len);
    }
    size_t got = 0;
    while (got < len) {
        ssize_t r = read(fd, buf + got, len - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int rc = ld_seterr(LD_EIO, "%s: read failed after %zu of %zu bytes: %s", path, got, len,
                               r < 0 ? strerror(errno) : "file shrank");
            free(buf);
            close(fd);
            return rc;
        }
        got += (size_t)r;
    }
    close(fd);
    buf[len] = '\0';
    *buf_out = buf;
    *len_out = len;
    return LD_OK;
}
