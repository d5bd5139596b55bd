/* fuzz_png: ld_png_read on arbitrary bytes (common/ld_png.h): it must
 * return an image or an error, never crash, leak or read out of bounds,
 * and a returned image must have the size it claims. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "ld_error.h"
#include "ld_png.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    fuzz_quiet();
    ld_image_t img;
    memset(&img, 0, sizeof img);
    if (ld_png_read(fuzz_file(data, len), &img) == 0) {
        if (img.width <= 0 || img.height <= 0 || img.channels < 1 || img.channels > 4)
            abort();
        /* touch every byte: ASan catches a buffer smaller than claimed */
        size_t n = (size_t)img.width * img.height * img.channels;
        volatile unsigned sum = 0;
        for (size_t i = 0; i < n; i++)
            sum += img.data[i];
        ld_image_free(&img);
    }
    return 0;
}
