/* ld_curvekey: CurveZMQ key files (ZeroMQ CURVE encryption and authentication).
 *
 * A key file is text holding one 40-character Z85 key, as zmq_curve_keypair()
 * makes it, on a line of its own; blank lines and lines starting with '#'
 * are ignored, so a file may carry a comment:
 *
 *     # langdaug CURVE public key (written by `langdaug keygen`)
 *     rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7
 *
 * `langdaug keygen --out PREFIX` writes PREFIX.key (the secret key, mode
 * 0600) and PREFIX.pub (the public key), both atomically. The public key of
 * a secret key is computed (zmq_curve_public), so a secret key file is all
 * a server or client needs of its own pair; peers need the .pub file.
 *
 * Errors: LD_EIO (cannot open/read), LD_EFORMAT (not exactly one valid Z85
 * key; the detail names the file and line), LD_ENOTSUP (libzmq built
 * without CURVE). Key text is never put into error details. */
#ifndef LD_CURVEKEY_H
#define LD_CURVEKEY_H

#include <stddef.h>
#include <stdint.h>

#define LD_CURVE_KEY_Z85 40   /* characters of a Z85 key */
#define LD_CURVE_KEY_BYTES 32
#define LD_CURVE_FILE_MAX 4096 /* a longer file is not a key file */

/* Parses key file text (len bytes, need not be NUL-terminated) into z85
 * (NUL-terminated) and, when raw is non-NULL, its 32 bytes. `name` is used
 * in error details. */
int ld_curvekey_parse_key(const char *name, const char *text, size_t len, char z85[LD_CURVE_KEY_Z85 + 1],
                       uint8_t *raw);

/* Reads a key file (public or secret). */
int ld_curvekey_read_key(const char *path, char z85[LD_CURVE_KEY_Z85 + 1], uint8_t *raw);

/* Reads a secret key file and refuses it (LD_EINVAL) when other users may
 * read or write it; warns when its group may. */
int ld_curvekey_read_secret_key(const char *path, char z85[LD_CURVE_KEY_Z85 + 1]);

/* The public key of a Z85 secret key. */
int ld_curvekey_public_key(const char *secret_z85, char public_z85[LD_CURVE_KEY_Z85 + 1]);

/* Makes a new key pair and writes PREFIX.key (secret, mode 0600, created
 * with no access for others at any moment) and PREFIX.pub (mode 0644 minus
 * the umask), each atomically. Refuses (LD_EINVAL) to replace an existing
 * PREFIX.key or PREFIX.pub unless overwrite is set. public_z85 (may be
 * NULL) receives the public key. */
int ld_curvekey_write_keypair(const char *prefix, int overwrite, char public_z85[LD_CURVE_KEY_Z85 + 1]);

#endif
