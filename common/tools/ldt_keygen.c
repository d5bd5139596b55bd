/* ldt_keygen: `langdaug keygen`, a CURVE key pair for langdaugd and its
 * clients (format in common/ld_curvekey.h).
 *
 * Writes PREFIX.key (secret, mode 0600) and PREFIX.pub (public), each
 * atomically, and prints the public key. An existing pair is kept unless
 * --force is given: overwriting a secret key locks out everyone who trusts
 * its public key. */
#include <stdio.h>

#include "ld_curvekey.h"
#include "ld_error.h"
#include "ldt.h"

int ldt_keygen_main(int argc, char **argv);

#define CMD "keygen"

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: langdaug keygen --out PREFIX [--force]\n"
            "Makes a CURVE key pair: PREFIX.key (secret, mode 0600) and PREFIX.pub (public).\n"
            "The daemon takes its .key as curve_secret_key_file; each client's .pub goes into the\n"
            "daemon's curve_allowed_keys_dir; clients take their own .key and the daemon's .pub.\n"
            "\n"
            "  -o, --out PREFIX      output path prefix (required)\n"
            "  -f, --force           replace an existing PREFIX.key / PREFIX.pub\n"
            "  -h, --help            this help\n");
}

int ldt_keygen_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "out", required_argument, 0, 'o' },
        { "force", no_argument, 0, 'f' },
        { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    const char *prefix = NULL;
    int force = 0, opt;
    while ((opt = ldt_getopt(CMD, argc, argv, "o:fh", longopts)) != -1) {
        switch (opt) {
        case 'o': prefix = optarg; break;
        case 'f': force = 1; break;
        case 'h': usage(stdout); return 0;
        default: return 2;
        }
    }
    int rc = ldt_no_operands(CMD, argc, argv);
    if (rc)
        return rc;
    if (!prefix || !*prefix)
        return ldt_usage_error(CMD, "--out PREFIX is required");
    char pub[LD_CURVE_KEY_Z85 + 1];
    rc = ld_curvekey_write_keypair(prefix, force, pub);
    if (rc < 0)
        return ldt_fail(CMD, rc);
    printf("%s.key: secret key (keep it private)\n%s.pub: public key %s\n", prefix, prefix, pub);
    return 0;
}
