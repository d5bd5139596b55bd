/* fuzz_status_request: what the daemon does with the bytes of a status
 * request (daemon/ldd_server.c answer_status): decode a StatusRequest, and
 * answer a bad one with an error reply that decodes as one. */
#include <stdlib.h>
#include <string.h>

#include "langdaug.pb-c.h"
#include "ldd_status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    Langdaug__V1__StatusRequest *r = langdaug__v1__status_request__unpack(NULL, len, data);
    size_t out_len = 0;
    void *reply;
    if (r) {
        /* what the daemon reads of it; packing must fit the size it claims
         * (protobuf-c keeps unknown fields, so the bytes may differ) */
        volatile uint32_t version = r->has_version ? r->version : 0;
        (void)version;
        size_t n = langdaug__v1__status_request__get_packed_size(r);
        uint8_t *buf = malloc(n ? n : 1);
        if (langdaug__v1__status_request__pack(r, buf) > n)
            abort();
        free(buf);
        langdaug__v1__status_request__free_unpacked(r, NULL);
        return 0;
    }
    reply = ldd_status_error_reply(LANGDAUG__V1__ERROR_CODE__ERROR_MALFORMED,
                                   "expected one frame holding a StatusRequest", &out_len);
    Langdaug__V1__StatusReply *back = langdaug__v1__status_reply__unpack(NULL, out_len, reply);
    if (!back || !back->error || back->error->code != LANGDAUG__V1__ERROR_CODE__ERROR_MALFORMED)
        abort();
    langdaug__v1__status_reply__free_unpacked(back, NULL);
    free(reply);
    return 0;
}
