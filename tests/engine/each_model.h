/* each_model.h — run a check over a list of models: the engine tests' shared loop. */
#ifndef RAGKV_TEST_ENGINE_EACH_MODEL_H
#define RAGKV_TEST_ENGINE_EACH_MODEL_H

#include <stddef.h>

#include "testutil.h"

/* Run call with `model` naming each entry of the array models[] (synthetic shape names), then
 * the real stories260K model's path when it is present. */
#define EACH_MODEL_OF(models, call)                                            \
    do {                                                                       \
        for (size_t mi_ = 0; mi_ < sizeof(models) / sizeof((models)[0]); mi_++) { \
            const char *model = (models)[mi_];                                 \
            call;                                                              \
        }                                                                      \
        const char *real_ = rk_test_model_path("stories260K.bin");             \
        if (real_) {                                                           \
            const char *model = real_;                                         \
            call;                                                              \
        }                                                                      \
    } while (0)

#endif
