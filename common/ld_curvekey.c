/* ld_curvekey: CurveZMQ key files (see ld_curvekey.h).
 *
 * Invariant: a key handed out has exactly 40 characters of the Z85
 * alphabet and decodes to 32 bytes; secret key bytes are wiped from the
 * stack buffers that held them. */
#include "ld_curvekey.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "ld_afile.h"
#include "ld_error.h"
#include "ld_log.h"

static const char z85_alphabet[] =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

static void wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n--)
        *v++ = 0;
}

/* Decodes 40 Z85 characters; rejects characters outside the alphabet and
 * 5-character groups whose value exceeds 2^32 - 1. */
static int z85_decode(const char *z85, uint8_t out[LD_CURVE_KEY_BYTES])
{
    for (int g = 0; g < LD_CURVE_KEY_Z85 / 5; g++) {
        uint64_t v = 0;
        for (int k = 0; k < 5; k++) {
            const char *p = z85[g * 5 + k] ? strchr(z85_alphabet, z85[g * 5 + k]) : NULL;
            if (!p)
                return -1;
            v = v * 85 + (uint64_t)(p - z85_alphabet);
        }
        if (v > 0xffffffffu)
            return -1;
        for (int k = 0; k < 4; k++)
            out[g * 4 + k] = (uint8_t)(v >> (24 - 8 * k));
    }
    return 0;
}

int ld_curvekey_parse_key(const char *name, const char *text, size_t len, char z85[LD_CURVE_KEY_Z85 + 1],
                       uint8_t *raw)
{
    int found = 0, line = 0;
    size_t pos = 0;
    while (pos < len) {
        size_t end = pos;
        while (end < len && text[end] != '\n')
            end++;
        line++;
        size_t a = pos, b = end;
        while (a < b && (text[a] == ' ' || text[a] == '\t' || text[a] == '\r'))
            a++;
        while (b > a && (text[b - 1] == ' ' || text[b - 1] == '\t' || text[b - 1] == '\r'))
            b--;
        pos = end + 1;
        if (a == b || text[a] == '#')
            continue;
        if (found)
            return ld_seterr(LD_EFORMAT, "%s:%d: a second key line (a key file holds one key)", name, line);
        uint8_t bytes[LD_CURVE_KEY_BYTES];
        if (b - a != LD_CURVE_KEY_Z85)
            return ld_seterr(LD_EFORMAT, "%s:%d: expected a %d-character Z85 key, got %zu characters", name, line,
                             LD_CURVE_KEY_Z85, b - a);
        memcpy(z85, text + a, LD_CURVE_KEY_Z85);
        z85[LD_CURVE_KEY_Z85] = '\0';
        if (z85_decode(z85, bytes) < 0) {
            wipe(z85, LD_CURVE_KEY_Z85);
            return ld_seterr(LD_EFORMAT, "%s:%d: not a Z85 key (character outside the Z85 alphabet or group "
                             "out of range)", name, line);
        }
        if (raw)
            memcpy(raw, bytes, sizeof bytes);
        wipe(bytes, sizeof bytes);
        found = 1;
    }
    if (!found)
        return ld_seterr(LD_EFORMAT, "%s: no key (only blank or '#' comment lines)", name);
    return 0;
}

static int read_small_file(const char *path, int fd, char *buf, size_t cap, size_t *len)
{
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return ld_seterr(LD_EIO, "%s: cannot read: %s", path, strerror(errno));
        if (r == 0)
            break;
        n += (size_t)r;
        if (n == cap)
            return ld_seterr(LD_EFORMAT, "%s: longer than %zu bytes: not a key file", path, cap - 1);
    }
    *len = n;
    return 0;
}

/* Opens without following a FIFO's wait (O_NONBLOCK) and insists on a
 * regular file. */
static int open_key_file(const char *path, struct stat *st)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return ld_seterr(LD_EIO, "%s: cannot open: %s", path, strerror(errno));
    if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
        close(fd);
        return ld_seterr(LD_EIO, "%s: not a regular file", path);
    }
    return fd;
}

static int read_key_fd(const char *path, int fd, char z85[LD_CURVE_KEY_Z85 + 1], uint8_t *raw)
{
    char buf[LD_CURVE_FILE_MAX + 1];
    size_t len = 0;
    int rc = read_small_file(path, fd, buf, sizeof buf, &len);
    close(fd);
    if (rc == 0)
        rc = ld_curvekey_parse_key(path, buf, len, z85, raw);
    wipe(buf, sizeof buf);
    return rc;
}

int ld_curvekey_read_key(const char *path, char z85[LD_CURVE_KEY_Z85 + 1], uint8_t *raw)
{
    struct stat st;
    int fd = open_key_file(path, &st);
    if (fd < 0)
        return fd;
    return read_key_fd(path, fd, z85, raw);
}

int ld_curvekey_read_secret_key(const char *path, char z85[LD_CURVE_KEY_Z85 + 1])
{
    struct stat st;
    int fd = open_key_file(path, &st);
    if (fd < 0)
        return fd;
    if (st.st_mode & (S_IROTH | S_IWOTH)) {
        close(fd);
        return ld_seterr(LD_EINVAL, "%s: secret key file is accessible to other users (mode %04o); "
                         "chmod 600 it", path, (unsigned)(st.st_mode & 07777));
    }
    if (st.st_mode & (S_IRGRP | S_IWGRP))
        ld_warn("%s: secret key file is accessible to its group (mode %04o)", path, (unsigned)(st.st_mode & 07777));
    return read_key_fd(path, fd, z85, NULL);
}

int ld_curvekey_public_key(const char *secret_z85, char public_z85[LD_CURVE_KEY_Z85 + 1])
{
    if (zmq_curve_public(public_z85, secret_z85) != 0)
        return ld_seterr(errno == ENOTSUP ? LD_ENOTSUP : LD_EINVAL, "cannot compute a public key: %s",
                         zmq_strerror(errno));
    return 0;
}

static int write_key_file(const char *path, const char *comment, const char *z85, int secret)
{
    ld_afile_t *af = NULL;
    mode_t old = 0;
    if (secret)
        old = umask(077); /* the temporary file never grants others access, even briefly */
    int rc = ld_afile_open(path, &af);
    if (secret)
        umask(old);
    if (rc < 0)
        return rc;
    if (secret && fchmod(fileno(ld_afile_fp(af)), 0600) != 0) {
        rc = ld_seterr(LD_EIO, "%s: cannot set mode 0600: %s", path, strerror(errno));
        ld_afile_abort(&af);
        return rc;
    }
    char text[256];
    int n = snprintf(text, sizeof text, "# %s\n%s\n", comment, z85);
    rc = ld_afile_write(af, text, (size_t)n);
    wipe(text, sizeof text);
    if (rc < 0) {
        ld_afile_abort(&af);
        return rc;
    }
    return ld_afile_commit(&af);
}

int ld_curvekey_write_keypair(const char *prefix, int overwrite, char public_z85[LD_CURVE_KEY_Z85 + 1])
{
    if (!prefix || !*prefix)
        return ld_seterr(LD_EINVAL, "key pair: empty output prefix");
    size_t n = strlen(prefix) + 5;
    char *key_path = malloc(n), *pub_path = malloc(n);
    if (!key_path || !pub_path) {
        free(key_path);
        free(pub_path);
        return ld_seterr(LD_ENOMEM, "%s: out of memory", prefix);
    }
    snprintf(key_path, n, "%s.key", prefix);
    snprintf(pub_path, n, "%s.pub", prefix);
    char pub[LD_CURVE_KEY_Z85 + 1], sec[LD_CURVE_KEY_Z85 + 1];
    int rc = 0;
    if (!overwrite && (access(key_path, F_OK) == 0 || access(pub_path, F_OK) == 0))
        rc = ld_seterr(LD_EINVAL, "%s: a key pair already exists (%s or %s); remove it first or overwrite it (keygen --force)",
                       prefix, key_path, pub_path);
    else if (zmq_curve_keypair(pub, sec) != 0)
        rc = ld_seterr(errno == ENOTSUP ? LD_ENOTSUP : LD_EIO, "cannot make a key pair: %s", zmq_strerror(errno));
    if (rc == 0)
        rc = write_key_file(key_path, "langdaug CURVE secret key: keep it private (public key in the .pub file)",
                            sec, 1);
    if (rc == 0)
        rc = write_key_file(pub_path, "langdaug CURVE public key", pub, 0);
    if (rc == 0 && public_z85)
        memcpy(public_z85, pub, sizeof pub);
    wipe(sec, sizeof sec);
    free(key_path);
    free(pub_path);
    return rc;
}
