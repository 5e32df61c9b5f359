/* emulation stand-in for H4's cuda_internal.h: the fields and helpers the
 * FP8/MLA/MoE files use, over host memory. */
#ifndef CASCADE_NATIVE_CUDA_INTERNAL_H
#define CASCADE_NATIVE_CUDA_INTERNAL_H
#include "engines/native/backend/ops.h"
#include "emu.h"

#define CUDA_KV_BLOCK_SIZE 16
enum cuda_scratch_slot { CUDA_SCRATCH_MATMUL, CUDA_SCRATCH_FP8, CUDA_SCRATCH_MLA, CUDA_SCRATCH_MOE,
                         CUDA_SCRATCH_HOST_IDS, CUDA_SCRATCH_COUNT };
struct cuda_batch {
    const struct native_batch *host;
    const int32_t *host_token, *host_pos, *host_out_rows;
    int n_tokens, n_seqs, n_out;
    int32_t *token, *pos, *seq, *out_rows, *block_off, *blocks;
    int32_t *dev, *staging;
    size_t cap, used;
};
struct cuda_backend {
    struct native_backend base;
    cudaStream_t stream;
    struct cuda_batch batch;
    void *scratch[CUDA_SCRATCH_COUNT];
    size_t scratch_bytes[CUDA_SCRATCH_COUNT];
    int last_error;
};
struct native_kv {
    struct native_kv_desc desc;
    float *data;
    int block_size;
    int n_blocks;
    size_t layer_stride;
    size_t block_stride;
    size_t bytes;
};
void cuda_report(struct cuda_backend *cb, cudaError_t e, const char *what, const char *file, int line);
#define CUDA_CHECK(cb, call)                                                   \
    __extension__({                                                            \
        cudaError_t cuda_check_e_ = (call);                                    \
        if (cuda_check_e_ != cudaSuccess)                                      \
            cuda_report((cb), cuda_check_e_, #call, __FILE__, __LINE__);      \
        cuda_check_e_ != cudaSuccess;                                          \
    })
#define CUDA_LAUNCHED(cb, name) CUDA_CHECK(cb, cudaGetLastError())
static inline struct cuda_backend *cuda_cb(struct native_backend *b) { return (struct cuda_backend *)b; }
static inline void cuda_enter(struct cuda_backend *) {}
void *cuda_scratch(struct cuda_backend *cb, enum cuda_scratch_slot slot, size_t bytes);
void cuda_fp8_matmul(struct cuda_backend *cb, int n, const float *x, const struct native_mat *w,
                     float *y, int accumulate);
extern int cuda_fp8_exact;
void cuda_mla_attention(struct native_backend *b, float *out, const float *q, struct native_kv *kv,
                        int layer, const struct native_batch *batch, const struct native_mla *p,
                        float *scratch);
void cuda_moe_gate(struct native_backend *b, int32_t *ids, float *weights, const float *logits,
                   int n, const struct native_moe_gate *g);
void cuda_moe_experts(struct native_backend *b, float *y, const float *x, int n, const int32_t *ids,
                      const float *weights, int top_k, const struct native_moe_experts *e,
                      float *scratch);
void cuda_moe_combine(struct native_backend *b, float *y, const float *rows, int n,
                      const float *weights, int top_k, int dim);
#endif
