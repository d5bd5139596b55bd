/* fuzz_util: shared helpers of the fuzz targets (see fuzz_util.h). */
#include "fuzz_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ld_error.h"
#include "ld_log.h"
#include "ld_model.h"
#include "ld_synth.h"

const char *fuzz_file(const uint8_t *data, size_t len)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("fuzz-input", MFD_CLOEXEC);
        if (fd < 0) {
            perror("memfd_create");
            abort();
        }
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 || (len && pwrite(fd, data, len, 0) != (ssize_t)len)) {
        perror("fuzz input file");
        abort();
    }
    return path;
}

void fuzz_quiet(void)
{
    ld_log_set(NULL, NULL, LD_LOG_ERROR);
}

static void setup_failed(const char *tag, const char *what)
{
    fprintf(stderr, "fuzz %s setup: %s: %s\n", tag, what, ld_errdetail());
    exit(1);
}

void fuzz_engine_files(const char *tag, fuzz_engine_files_t *out)
{
    snprintf(out->dir, sizeof out->dir, "/tmp/fuzz-%.20s-XXXXXX", tag);
    if (!mkdtemp(out->dir))
        setup_failed(tag, "mkdtemp");
    snprintf(out->data, sizeof out->data, "%s/data", out->dir);
    snprintf(out->model, sizeof out->model, "%s/model.safetensors", out->dir);
    ld_synth_opts_t so;
    ld_synth_defaults(&so);
    so.n_domains = 2;
    so.per_domain = 1;
    so.size = 40;
    if (ld_synth_write(out->data, &so) < 0)
        setup_failed(tag, "dataset");
    ld_ebm_arch_t arch = { .image_channels = 3, .mask_classes = 2, .size = 16 };
    ld_ebm_t *ebm = NULL;
    if (ld_ebm_arch_set_widths(&arch, "4,8") < 0 || ld_ebm_arch_set_domains(&arch, "cam0,cam1") < 0 ||
        ld_ebm_new(&arch, &ebm) < 0)
        setup_failed(tag, "model");
    ld_ebm_init_random(ebm, 1);
    if (ld_model_save(out->model, ebm, NULL, NULL) < 0)
        setup_failed(tag, "model file");
    ld_ebm_destroy(&ebm);
}

void fuzz_remove_dir(const char *dir)
{
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        setup_failed(dir, "cleanup");
}
