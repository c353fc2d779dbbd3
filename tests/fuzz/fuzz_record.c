/* fuzz_record — the chunk record parser (chunkcache/record.c): every input either decodes
 * into a record that re-encodes to the same bytes, or is rejected; never a crash. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cc_record r;
    size_t used = 0;
    if (cc_record_decode(data, size, &r, &used) != RK_OK)
        return 0;
    if (used > size)
        abort();
    rk_buf b = RK_BUF_INIT;
    if (cc_record_encode(&r, &b) != RK_OK || b.len != used || memcmp(b.data, data, used) != 0)
        abort(); /* a decoded record must re-encode to its exact bytes */
    rk_buf_free(&b);
    cc_record_clear(&r);
    return 0;
}
