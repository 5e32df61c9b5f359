/* fuzz_hf_config: a Hugging Face model folder's config.json
 * (engines/native/model/model.c), from arbitrary bytes through
 * native_model_config_parse(): the shape every buffer of the native engine
 * is sized from.
 *
 * An accepted config must be one the engine can size without overflow:
 * every dimension positive and within the loader's bounds, heads dividing
 * evenly, head_dim even, the numerics finite and positive. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "engines/native/model/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct native_model_config c;
    char err[512];
    if (native_model_config_parse((const char *)data, size, "config.json", &c, err, sizeof err) != 0)
        return 0;
    if (c.dim < 1 || c.hidden_dim < 1 || c.n_layers < 1 || c.n_heads < 1 || c.n_kv_heads < 1 ||
        c.n_heads % c.n_kv_heads != 0 || c.head_dim < 2 || c.head_dim % 2 || c.vocab_size < 1 ||
        c.max_pos < 1 || c.n_eos < 0 || c.n_eos > NATIVE_MAX_EOS)
        abort();
    if (!isfinite(c.norm_eps) || !(c.norm_eps > 0) || !isfinite(c.rope_theta) || !(c.rope_theta > 0) ||
        !isfinite(c.rope_scale) || !(c.rope_scale > 0))
        abort();
    return 0;
}
