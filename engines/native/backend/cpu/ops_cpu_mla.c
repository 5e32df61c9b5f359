/* ops_cpu_mla.c: placeholder until helper H2's kernels land (issue 13). */
#include "engines/native/backend/cpu/cpu_internal.h"

#include <stdio.h>
#include <stdlib.h>

void cpu_mla_attention(struct native_backend *b, float *out, const float *q, struct native_kv *kv,
                       int layer, const struct native_batch *batch, const struct native_mla *p,
                       float *scratch)
{
    (void)b; (void)out; (void)q; (void)kv; (void)layer; (void)batch; (void)p; (void)scratch;
    fprintf(stderr, "cpu_mla_attention: not built yet\n");
    abort();
}
