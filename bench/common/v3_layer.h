/* v3_layer.h: DeepSeek-V3 MoE layers at their real dimensions, FP8 with
 * 128x128 block scales and random values, driven on any backend through the
 * op table, for the layer benchmarks (bench/gpu/bench_gpu_v3.c; the layer is
 * the one bench/native/bench_v3_layer.c times on the CPU).
 *
 * The layer (config.json of deepseek-ai/DeepSeek-V3): hidden 7168; MLA with
 * q_lora_rank 1536, kv_lora_rank 512, 128 heads of qk_nope 128 + qk_rope 64,
 * v_head_dim 128; 256 routed experts of moe_intermediate_size 2048, top-8,
 * n_group 8, topk_group 4, routed_scaling_factor 2.5; one shared expert.
 * Every projection is FP8 except the router (BF16) and the norms (F32).
 *
 * Two objects:
 *   - struct v3l_host: one layer's random weights in host memory (11.5 GB
 *     with all 256 experts), filled once on every thread. Every expert is
 *     filled, since the gate picks them from random weights.
 *   - struct v3l: n_layers copies of those weights mapped on a backend with
 *     map_weights() (a GPU backend copies each one, so the stack reads
 *     n_layers distinct copies; the CPU maps the host bytes in place, so its
 *     layers share them), one latent KV cache of n_layers layers holding
 *     max_batch sequences of `ctx` random positions, and the activations.
 * A decode step (v3l_step) is what deepseek_v3.c runs per MoE layer for
 * `batch` decode tokens, one per sequence at position ctx: rmsnorm, q_a,
 * q_a norm, q_b, kv_a, latent norm, rope, kv_store, absorbed MLA, o_proj +
 * the residual, rmsnorm, router, moe_gate, routed experts, shared expert;
 * layer after layer on the same residual.
 *
 * Ownership: v3l borrows the backend and the host weights; both must outlive
 * it. Threads: one thread drives a v3l (the backend's rule, ops.h).
 */
#ifndef CASCADE_BENCH_V3_LAYER_H
#define CASCADE_BENCH_V3_LAYER_H

#include "engines/native/backend/ops.h"

#include <stddef.h>

enum {
    V3L_HID = 7168, V3L_QLORA = 1536, V3L_KVLORA = 512, V3L_NH = 128, V3L_NOPE = 128,
    V3L_ROPE = 64, V3L_VD = 128, V3L_NE = 256, V3L_INTER = 2048, V3L_TOPK = 8,
    V3L_NGROUP = 8, V3L_TOPKG = 4, V3L_QHD = V3L_NOPE + V3L_ROPE,
};

/* The parts v3l_step times when asked (per layer, summed over layers). */
enum { V3L_ATTN_PROJ, V3L_MLA, V3L_O_PROJ, V3L_ROUTER_GATE, V3L_EXPERTS, V3L_SHARED, V3L_N_PARTS };
extern const char *const v3l_part_name[V3L_N_PARTS];

struct v3l_host;
struct v3l;

/* One layer's weights with n_experts routed experts (V3L_NE for the real
 * layer; fewer, a multiple of 8 and >= 16, only for smoke tests), filled on
 * `threads` threads, in transparent huge pages when thp. NULL with err set. */
struct v3l_host *v3l_host_new(int n_experts, int threads, int thp, char *err, size_t errlen);
void v3l_host_free(struct v3l_host *h);
size_t v3l_host_bytes(const struct v3l_host *h);

/* Bytes one layer's attention weights, one expert, and the router take. */
size_t v3l_attn_bytes(void);
size_t v3l_expert_bytes(void);
size_t v3l_router_bytes(int n_experts);

/* n_layers layers of h's weights on backend be, for decode steps of up to
 * max_batch tokens at position ctx (the weights are mapped once for every
 * batch size). NULL with err set (out of memory on the backend, or the KV
 * cache refused). */
struct v3l *v3l_new(struct native_backend *be, const struct v3l_host *h, int n_layers,
                    int max_batch, int ctx, char *err, size_t errlen);
void v3l_free(struct v3l *v);

/* A fresh random residual (so the gate picks new experts), uploaded and
 * waited for; not part of a step. */
void v3l_new_input(struct v3l *v, int batch);

/* One decode step of `batch` (<= max_batch) tokens through every layer. With parts non-NULL the backend is
 * synchronized after each part and parts[k] gets the seconds of part k
 * summed over the layers (the synchronizations cost time of their own, so
 * time whole steps with parts NULL). Returns when the step has finished. */
void v3l_step(struct v3l *v, int batch, double parts[V3L_N_PARTS]);

/* After a step of `batch` tokens: the bytes it had to read (attention weights and scales,
 * router, shared expert, every distinct expert the gate chose in each layer,
 * the latent caches), and the distinct experts chosen, summed over layers. */
double v3l_step_bytes(struct v3l *v, int batch, int *distinct);

/* 1 when the backend gave each layer its own copy of the weights. */
int v3l_distinct_copies(const struct v3l *v);

#endif
