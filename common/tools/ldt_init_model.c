/* langdaug init-model: writes a randomly initialised model.
 *
 * Settings come from defaults, then --config FILE (key = value lines, keys as
 * the option names, '-' or '_'), then the command line: a command-line
 * option wins over the config file whatever their order. The output depends
 * only on the settings and --seed (no timestamps), so the same command
 * writes the same bytes. */
#include "ldt.h"
#include "ld_text.h"
#include "ld_colour.h"
#include "ld_ebm.h"
#include "ld_error.h"
#include "ld_model.h"
#include "ld_safetensors.h"

#include <errno.h>
#include <ini.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define CMD "init-model"

static const char usage_text[] =
    "Usage: langdaug init-model --out M.safetensors [options]\n"
    "\n"
    "Writes a randomly initialised energy model (PyTorch-default initialisation,\n"
    "deterministic in --seed).\n"
    "\n"
    "Options:\n"
    "  -o, --out FILE              the model file to write (atomically)\n"
    "      --image-channels C      image channels, 1..4 (default 3)\n"
    "      --mask-classes K        mask classes, 1..16 (default 2)\n"
    "      --size S                crop side, a multiple of 2^blocks (default 64)\n"
    "      --widths W0,W1,..       channel widths; blocks = count - 1\n"
    "                              (default 32,64,128,128,256)\n"
    "      --domains A,B,..        domain names, in target-index order (default A,B,C)\n"
    "      --colour-space rgb|lab  the image input: sRGB, or scaled CIE LAB (3 channels)\n"
    "                              (default rgb)\n"
    "      --seed N                initialisation seed (default 0)\n"
    "  -c, --config FILE           key = value file with the keys above\n"
    "                              (image-channels, mask-classes, size, widths,\n"
    "                              domains, colour-space, seed); the command\n"
    "                              line wins\n"
    "  -h, --help                  this help\n"
    "\n"
    "Prints \"<sha256>  <file>\" on success.\n";

typedef struct {
    ld_ebm_arch_t arch;
    uint64_t seed;
} init_settings_t;

/* The settings keys; an option's index here is its getopt value - KEY_BASE. */
static const char *const keys[] = {"image-channels", "mask-classes", "size", "widths", "domains", "colour-space",
                                   "seed"};
#define N_KEYS (int)(sizeof keys / sizeof *keys)
#define KEY_BASE 256

/* "image_channels" and "image-channels" are the same key; -1 if unknown. */
static int key_index(const char *name)
{
    char norm[32];
    size_t n = strlen(name);
    if (n >= sizeof norm)
        return -1;
    for (size_t i = 0; i <= n; i++)
        norm[i] = name[i] == '_' ? '-' : name[i];
    for (int k = 0; k < N_KEYS; k++)
        if (strcmp(keys[k], norm) == 0)
            return k;
    return -1;
}

/* Applies one setting; `what` names its source in errors. */
static int apply(init_settings_t *s, int key, const char *value, const char *what)
{
    ld_ebm_arch_t *a = &s->arch;
    int rc;
    switch (key) {
    case 0: return ld_text_parse_int(what, value, 1, LD_EBM_MAX_IMAGE_CHANNELS, &a->image_channels);
    case 1: return ld_text_parse_int(what, value, 1, LD_EBM_MAX_CLASSES, &a->mask_classes);
    case 2: return ld_text_parse_int(what, value, 1, LD_EBM_MAX_SIZE, &a->size);
    case 3: rc = ld_ebm_arch_set_widths(a, value); break;
    case 4: rc = ld_ebm_arch_set_domains(a, value); break;
    case 5: return ld_colour_space_parse(what, value, &a->colour_space);
    default: return ld_text_parse_u64(what, value, &s->seed);
    }
    if (rc) {
        char detail[400];
        snprintf(detail, sizeof detail, "%s", ld_errdetail());
        ld_seterr(rc, "%s: %s", what, detail);
    }
    return rc;
}

typedef struct {
    FILE *f;
    const char *path;
    int line;          /* lines read so far = the line being handled */
    int too_long;      /* a line did not fit inih's buffer */
    int err_line;      /* line of the first handler error, 0 = none */
    unsigned seen;     /* bit per key: set already (duplicates are errors) */
    init_settings_t *s;
} config_t;

static char *config_reader(char *str, int num, void *stream)
{
    config_t *c = stream;
    if (!fgets(str, num, c->f))
        return NULL;
    c->line++;
    size_t n = strlen(str);
    if (n == (size_t)num - 1 && str[n - 1] != '\n' && !feof(c->f)) {
        c->too_long = 1;
        return NULL; /* ends parsing; reported below */
    }
    return str;
}

static int config_handler(void *user, const char *section, const char *name, const char *value)
{
    config_t *c = user;
    if (c->err_line)
        return 0;
    char what[600];
    snprintf(what, sizeof what, "%s:%d: %s", c->path, c->line, name);
    int k = key_index(name);
    if (section[0])
        ld_seterr(LD_EINVAL, "%s:%d: sections are not used here ([%s])", c->path, c->line, section);
    else if (k < 0)
        ld_seterr(LD_EINVAL, "%s:%d: unknown key '%s' (known: image-channels, mask-classes, size, widths, "
                  "domains, colour-space, seed)", c->path, c->line, name);
    else if (c->seen & (1u << k))
        ld_seterr(LD_EINVAL, "%s:%d: '%s' is set twice", c->path, c->line, name);
    else if (apply(c->s, k, value, what) == LD_OK) {
        c->seen |= 1u << k;
        return 1;
    }
    c->err_line = c->line;
    return 0;
}

/* Returns 0, or the exit status after printing the error. */
static int read_config(const char *path, init_settings_t *s)
{
    config_t c = {.path = path, .s = s};
    if (!(c.f = fopen(path, "r"))) {
        int e = errno;
        return ldt_fail(CMD, ld_seterr(e == ENOENT ? LD_ENOENT : LD_EIO, "%s: cannot open: %s", path, strerror(e)));
    }
    ini_allow_multiline = false; /* an indented line is a line of its own, not a continuation */
    ini_stop_on_first_error = true;
    int line = ini_parse_stream(config_reader, &c, config_handler, &c);
    fclose(c.f);
    if (c.too_long)
        return ldt_usage_error(CMD, "%s:%d: line too long", path, c.line);
    if (line > 0 && (!c.err_line || line < c.err_line))
        return ldt_usage_error(CMD, "%s:%d: expected 'key = value'", path, line);
    if (line != 0 || c.err_line)
        return line < 0 ? ldt_fail(CMD, ld_seterr(LD_ENOMEM, "%s: out of memory", path))
                        : ldt_usage_error(CMD, "%s", ld_errdetail());
    return 0;
}

static void default_settings(init_settings_t *s)
{
    memset(s, 0, sizeof *s);
    s->arch.image_channels = 3;
    s->arch.mask_classes = 2;
    s->arch.size = 64;
    /* the defaults are valid by construction */
    (void)ld_ebm_arch_set_widths(&s->arch, "32,64,128,128,256");
    (void)ld_ebm_arch_set_domains(&s->arch, "A,B,C");
}

/* Returns -1 to go on, or the exit status. */
static int parse_options(int argc, char **argv, init_settings_t *s, const char **out)
{
    static const struct option longopts[] = {
        {"out", required_argument, NULL, 'o'},
        {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {"image-channels", required_argument, NULL, KEY_BASE + 0},
        {"mask-classes", required_argument, NULL, KEY_BASE + 1},
        {"size", required_argument, NULL, KEY_BASE + 2},
        {"widths", required_argument, NULL, KEY_BASE + 3},
        {"domains", required_argument, NULL, KEY_BASE + 4},
        {"colour-space", required_argument, NULL, KEY_BASE + 5},
        {"seed", required_argument, NULL, KEY_BASE + 6},
        {NULL, 0, NULL, 0},
    };
    const char *config = NULL, *given[N_KEYS] = {NULL};
    int c;
    *out = NULL;
    default_settings(s);
    while ((c = ldt_getopt(CMD, argc, argv, "o:c:h", longopts)) != -1) {
        if (c == 'o')
            *out = optarg;
        else if (c == 'c')
            config = optarg;
        else if (c == 'h') {
            fputs(usage_text, stdout);
            return 0;
        } else if (c >= KEY_BASE && c < KEY_BASE + N_KEYS)
            given[c - KEY_BASE] = optarg;
        else
            return 2;
    }
    if (ldt_no_operands(CMD, argc, argv))
        return 2;
    if (!*out)
        return ldt_usage_error(CMD, "--out is required");
    int status = config ? read_config(config, s) : 0;
    for (int k = 0; status == 0 && k < N_KEYS; k++) {
        char what[40];
        snprintf(what, sizeof what, "--%s", keys[k]);
        if (given[k] && apply(s, k, given[k], what) != LD_OK)
            status = ldt_usage_error(CMD, "%s", ld_errdetail());
    }
    if (status == 0 && ld_ebm_arch_validate(&s->arch) != LD_OK)
        status = ldt_usage_error(CMD, "invalid architecture: %s", ld_errdetail());
    return status ? status : -1;
}

int ldt_init_model_main(int argc, char **argv)
{
    init_settings_t s;
    const char *out;
    int status = parse_options(argc, argv, &s, &out);
    if (status >= 0)
        return status;
    ld_ebm_t *m = NULL;
    ld_meta_t *extra = NULL;
    char hash[65], seed[24];
    snprintf(seed, sizeof seed, "%" PRIu64, s.seed);
    int rc = ld_ebm_new(&s.arch, &m);
    if (rc == LD_OK) {
        ld_ebm_init_random(m, s.seed);
        rc = ld_meta_new(&extra);
    }
    if (rc == LD_OK && (rc = ld_meta_set(extra, "init_seed", seed)) == LD_OK)
        rc = ld_model_save(out, m, extra, hash);
    ld_meta_destroy(&extra);
    ld_ebm_destroy(&m);
    if (rc)
        return ldt_fail(CMD, rc);
    printf("%s  %s\n", hash, out);
    return 0;
}
