/* fuzz_safetensors: a .safetensors file's header (engines/native/model/safetensors.c)
 * from arbitrary bytes, through safetensors_open_memory().
 *
 * On top of memory errors it checks the promise the model loader relies on:
 * every tensor handed out lies wholly inside the file's data, its byte count
 * is dtype size x shape, and a lookup by name finds it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engines/native/model/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    struct safetensors *st = safetensors_open_memory(data, size, "fuzz.safetensors", err, sizeof err);
    if (!st)
        return 0;
    size_t n = safetensors_count(st);
    for (size_t i = 0; i < n; i++) {
        const struct st_tensor *t = safetensors_at(st, i);
        const uint8_t *p = t->data;
        if (!t->name || p < data || p > data + size || t->nbytes > (size_t)(data + size - p))
            abort();
        if (t->ndim < 0 || t->ndim > SAFETENSORS_MAX_DIMS || t->numel < 0)
            abort();
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++)
            numel *= t->shape[d];
        if (numel != t->numel || (t->numel && t->nbytes % (size_t)t->numel))
            abort();
        if (safetensors_find(st, t->name) != t)
            abort();
    }
    safetensors_free(st);
    return 0;
}
