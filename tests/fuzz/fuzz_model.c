/* fuzz_model: the model file loader on arbitrary bytes: the safetensors
 * reader from memory (ld_st_open_mem) and ld_model_load (through a memory
 * file). Either accepts and hands out tensors inside the buffer that agree
 * with their declared sizes, or refuses with an error; never a crash, a
 * leak or an out-of-bounds read. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "ld_error.h"
#include "ld_model.h"
#include "ld_safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len);

static void check_tensors(const ld_st_t *st)
{
    volatile unsigned sum = 0;
    for (size_t i = 0; i < ld_st_n_tensors(st); i++) {
        const ld_st_tensor_t *t = ld_st_tensor(st, i);
        if (t->nbytes != t->numel * ld_dtype_size(t->dtype) || ld_st_find(st, t->name) != t)
            abort();
        const uint8_t *p = t->data;
        for (size_t k = 0; k < t->nbytes; k++)
            sum += p[k];
    }
    const ld_meta_t *meta = ld_st_meta(st);
    for (size_t i = 0; i < ld_meta_count(meta); i++)
        if (strcmp(ld_meta_get(meta, ld_meta_key(meta, i)), ld_meta_value(meta, i)) != 0)
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    fuzz_quiet();
    ld_st_t *st = NULL;
    if (ld_st_open_mem(data, len, "fuzz", &st) == 0) {
        check_tensors(st);
        ld_st_close(&st);
    }
    ld_ebm_t *ebm = NULL;
    ld_meta_t *meta = NULL;
    char hash[65];
    if (ld_model_load(fuzz_file(data, len), &ebm, &meta, hash) == 0) {
        if (ld_ebm_arch_validate(ld_ebm_arch(ebm)) != 0 || strlen(hash) != 64)
            abort();
        ld_ebm_destroy(&ebm);
        ld_meta_destroy(&meta);
    }
    return 0;
}
