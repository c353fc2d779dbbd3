/* fuzz_craft — the Cache-Craft metadata parser (blend/craft.c): every input either decodes
 * into metadata that re-encodes to the same bytes, or is rejected; never a crash. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/blend.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bl_craft_meta md;
    if (bl_craft_decode(data, size, &md) != RK_OK) {
        if (md.inter || md.intra || md.token_inter || md.prev_ids || md.n_tokens)
            abort(); /* a rejected input leaves the struct zeroed */
        return 0;
    }
    rk_buf b = RK_BUF_INIT;
    if (bl_craft_encode(&md, &b) != RK_OK || b.len != size || memcmp(b.data, data, size) != 0)
        abort(); /* decoded metadata must re-encode to its exact bytes */
    /* the budget arithmetic on parsed metadata stays in [0, 1] */
    double cfo = bl_variant_cfo(&md, md.n_tokens, md.prev_ids, md.n_prev, 1.0);
    if (!(cfo >= 0.0 && cfo <= 1.0))
        abort();
    rk_buf_free(&b);
    bl_craft_meta_clear(&md);
    return 0;
}
