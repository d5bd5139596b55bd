/* ldt_synth: `langdaug synth` writes the synthetic multi-domain fundus-like
 * data set (common/ld_synth.h) in the dataset folders layout. */
#include "ldt.h"

#include <stdio.h>

#include "ld_text.h"
#include "ld_error.h"
#include "ld_synth.h"

static const char usage[] =
    "Usage: langdaug synth --out DIR [options]\n"
    "Writes a small synthetic fundus-like data set: DIR/<camK>/{image,mask,fov}/NNN.png.\n"
    "Cameras differ in colour cast, contrast, gamma, blur, noise and vignetting; the\n"
    "vessel trees (mask 255), optic discs and circular fields of view come from one\n"
    "process shared by all of them. Deterministic in --seed; files written atomically.\n"
    "\n"
    "  --out DIR          output folder (created if needed)\n"
    "  --domains N        number of cameras, 1..8 (default 4)\n"
    "  --per-domain N     images per camera (default 12)\n"
    "  --size N           image side in pixels, 32..1024 (default 96)\n"
    "  --seed S           random seed (default 1)\n"
    "  --disc             also label the optic disc (mask 128; mask map \"0:0,255:1,128:2\")\n"
    "  -h, --help         this help\n";

int ldt_synth_main(int argc, char **argv)
{
    static const char cmd[] = "synth";
    static const struct option longopts[] = {
        { "out", required_argument, NULL, 'o' },      { "domains", required_argument, NULL, 'd' },
        { "per-domain", required_argument, NULL, 'n' }, { "size", required_argument, NULL, 's' },
        { "seed", required_argument, NULL, 'S' },     { "disc", no_argument, NULL, 'D' },
        { "help", no_argument, NULL, 'h' },           { NULL, 0, NULL, 0 },
    };
    ld_synth_opts_t o;
    ld_synth_defaults(&o);
    const char *out = NULL;
    int c, rc = 0;
    while ((c = ldt_getopt(cmd, argc, argv, "h", longopts)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'd': rc = ld_text_parse_int("--domains", optarg, 1, LD_SYNTH_MAX_DOMAINS, &o.n_domains); break;
        case 'n': rc = ld_text_parse_int("--per-domain", optarg, 1, LD_SYNTH_MAX_PER_DOMAIN, &o.per_domain); break;
        case 's': rc = ld_text_parse_int("--size", optarg, LD_SYNTH_MIN_SIZE, LD_SYNTH_MAX_SIZE, &o.size); break;
        case 'S': rc = ld_text_parse_u64("--seed", optarg, &o.seed); break;
        case 'D': o.disc = 1; break;
        case 'h': fputs(usage, stdout); return 0;
        default: return 2;
        }
        if (rc)
            return ldt_usage_error(cmd, "%s", ld_errdetail());
    }
    if (ldt_no_operands(cmd, argc, argv))
        return 2;
    if (!out)
        return ldt_usage_error(cmd, "--out DIR is required");
    rc = ld_synth_write(out, &o);
    if (rc)
        return ldt_fail(cmd, rc);
    printf("synth: wrote %d domains x %d images of %dx%d to %s (mask map \"%s\")\n", o.n_domains, o.per_domain,
           o.size, o.size, out, ld_synth_maskmap(&o));
    return 0;
}
