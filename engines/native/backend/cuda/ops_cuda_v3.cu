/* ops_cuda_v3.cu: placeholder until H5's kernels land.
 *
 * The DeepSeek-V3 ops of the CUDA backend (FP8 block-scaled matmul, MLA
 * attention, MoE gate and experts) live in ops_cuda_fp8.cu, ops_cuda_mla.cu
 * and ops_cuda_moe.cu. Until a file exists, CMake defines the matching
 * CUDA_PLACEHOLDER_FP8 / _MLA / _MOE for this file, and the entry point here
 * reports "not built" as the op's error (ops_cuda_error()) instead of
 * computing anything: a run through a missing op fails loudly, never with
 * silent garbage. Delete this file once all three have landed.
 */
#include "engines/native/backend/cuda/cuda_internal.h"

#if defined(CUDA_PLACEHOLDER_FP8) || defined(CUDA_PLACEHOLDER_MLA) || defined(CUDA_PLACEHOLDER_MOE)
static void placeholder(struct cuda_backend *cb, const char *op)
{
    char text[160];
    snprintf(text, sizeof(text), "%s: not built into this CUDA backend yet (placeholder)", op);
    if (!cb->last_error) {
        cb->last_error = -100;
        snprintf(cb->error, sizeof(cb->error), "%s", text);
        fprintf(stderr, "cuda: %s\n", text);
    }
    cb->n_errors++;
}
#endif

#ifdef CUDA_PLACEHOLDER_FP8
int cuda_fp8_exact = 1;

void cuda_fp8_matmul(struct cuda_backend *cb, int n, const float *x, const struct native_mat *w, float *y,
                     int accumulate)
{
    (void)n;
    (void)x;
    (void)w;
    (void)y;
    (void)accumulate;
    placeholder(cb, "matmul F8_E4M3");
}
#endif

#ifdef CUDA_PLACEHOLDER_MLA
void cuda_mla_attention(struct native_backend *b, float *out, const float *q, struct native_kv *kv, int layer,
                        const struct native_batch *batch, const struct native_mla *p, float *scratch)
{
    (void)out;
    (void)q;
    (void)kv;
    (void)layer;
    (void)batch;
    (void)p;
    (void)scratch;
    placeholder(cuda_cb(b), "mla_attention");
}
#endif

#ifdef CUDA_PLACEHOLDER_MOE
void cuda_moe_gate(struct native_backend *b, int32_t *ids, float *weights, const float *logits, int n,
                   const struct native_moe_gate *g)
{
    (void)ids;
    (void)weights;
    (void)logits;
    (void)n;
    (void)g;
    placeholder(cuda_cb(b), "moe_gate");
}

void cuda_moe_experts(struct native_backend *b, float *y, const float *x, int n, const int32_t *ids,
                      const float *weights, int top_k, const struct native_moe_experts *e, float *scratch)
{
    (void)y;
    (void)x;
    (void)n;
    (void)ids;
    (void)weights;
    (void)top_k;
    (void)e;
    (void)scratch;
    placeholder(cuda_cb(b), "moe_experts");
}
#endif
