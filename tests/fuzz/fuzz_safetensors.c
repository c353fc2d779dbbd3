/*
 * fuzz_safetensors.c — the safetensors header parser (engine/safetensors.c) and, through it,
 * the strict JSON parser (common/json.c). Every accepted header must describe tensors that
 * lie inside the input: the target reads every byte of every tensor, so ASan catches a
 * range check that lets one escape. The input is also fed to the JSON parser on its own and
 * to the Hugging Face config.json reader.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../engine/engine_impl.h" /* eng_hf_config_parse: the config.json reader */
#include "ragkv/json.h"
#include "ragkv/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a private copy, exactly `size` bytes, so that reads past the end are caught */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    eng_st_header *h;
    if (eng_st_parse(buf, size, &h) == RK_OK) {
        volatile uint8_t sink = 0;
        for (size_t i = 0; i < h->n; i++) {
            const eng_st_tensor *t = &h->t[i];
            if (t->end < t->begin || h->data_off + t->end > size)
                abort(); /* the parser promised this cannot happen */
            for (uint64_t b = t->begin; b < t->end; b++)
                sink ^= buf[h->data_off + b];
            if (eng_st_find(h, t->name) == NULL)
                abort();
        }
        (void)sink;
        eng_st_free(h);
    }
    rk_json *j;
    if (rk_json_parse((const char *)buf, size, &j) == RK_OK)
        rk_json_free(j);
    eng_model_info mi;
    memset(&mi, 0, sizeof(mi));
    (void)eng_hf_config_parse((const char *)buf, size, &mi);
    free(buf);
    return 0;
}
