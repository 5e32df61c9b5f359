/* bench_v3_layer: one DeepSeek-V3 MoE layer at its real dimensions, FP8
 * weights with 128x128 block scales, random values, on the CPU backend;
 * the time of a decode step against the memory bound.
 *
 *   bench_v3_layer [--threads N] [--batch B] [--steps S] [--ctx P] [--no-thp]
 *
 * The layer and the step are bench/common/v3_layer.h's (shared with the GPU
 * benchmark bench/gpu/bench_gpu_v3.c): hidden 7168; MLA with q_lora_rank
 * 1536, kv_lora_rank 512, 128 heads of qk_nope 128 + qk_rope 64, v_head_dim
 * 128; 256 routed experts of moe_intermediate_size 2048, top-8, n_group 8,
 * topk_group 4, routed_scaling_factor 2.5; one shared expert. Every
 * projection is FP8 (as in the published checkpoint) except the router
 * (BF16) and the norms (F32). All 256 experts are allocated and filled
 * (11.3 GB), since the gate picks them from random weights: nothing is
 * shared or left unmapped.
 *
 * A step is what deepseek_v3.c runs per MoE layer for B decode tokens (one
 * per sequence, each at position P of its own cache): rmsnorm, q_a, q_a
 * norm, q_b, kv_a, latent norm, rope, kv_store, absorbed MLA, o_proj + the
 * residual, rmsnorm, router, moe_gate, the routed experts, the shared
 * expert. A fresh random residual before each step lets the gate pick new
 * experts every time.
 *
 * The bound: the bytes the step must read (the attention's FP8 weights and
 * scales, the router, the shared expert, every distinct expert the gate
 * chose in that step, and the B latent caches) over the copy bandwidth
 * measured in the same process right before that step: memcpy of 256 MiB
 * on every thread, best of 3, counted as 2 x bytes / time (read + write), as
 * bench_native does. of_bound is the median over the steps of bound / time.
 */
#include "bench/common/v3_layer.h"
#include "engines/native/backend/cpu/ops_cpu.h"
#include "engines/native/backend/cpu/threadpool.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- Copy bandwidth ---- */

struct copy_arg {
    char *dst;
    const char *src;
    size_t n;
};

static void copy_task(void *arg, int task, int thread)
{
    (void)thread;
    struct copy_arg *a = arg;
    memcpy(a[task].dst, a[task].src, a[task].n);
}

/* Copy bandwidth on every thread, best of reps, as 2 x bytes / time. */
static double copy_bandwidth(struct threadpool *pool, int threads, char *src, char *dst, size_t n,
                             int reps)
{
    struct copy_arg a[64];
    for (int i = 0; i < threads; i++)
        a[i] = (struct copy_arg){dst + n / threads * i, src + n / threads * i, n / threads};
    double best = 0;
    for (int rep = 0; rep < reps; rep++) {
        double t0 = now_s();
        threadpool_run(pool, copy_task, a, threads);
        double bw = 2.0 * (double)(n / threads * threads) / (now_s() - t0);
        best = bw > best ? bw : best;
    }
    return best;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int threads = 2, B = 1, steps = 5, P = 1024, use_thp = 1;
    char err[256];
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--no-thp"))
            use_thp = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--no-thp"))
            i--;
        else if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch"))
            B = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps"))
            steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--ctx"))
            P = atoi(argv[i + 1]);
    }
    if (threads < 1 || threads > 64 || B < 1 || B > 64 || steps < 1 || steps > 100 || P < 1) {
        fprintf(stderr, "usage: bench_v3_layer [--threads N] [--batch B] [--steps S] [--ctx P] [--no-thp]\n");
        return 2;
    }
    struct native_backend *be = ops_cpu_new(threads, 0);
    struct threadpool *pool = threadpool_new(threads);
    /* The copy benchmark runs again right before every step (the machine
     * is shared, so its bandwidth moves), and each step is set against the
     * bandwidth measured next to it. */
    const size_t copy_n = (size_t)256 << 20;
    char *copy_src = malloc(copy_n), *copy_dst = malloc(copy_n);
    if (!be || !pool || !copy_src || !copy_dst) {
        fprintf(stderr, "bench_v3_layer: out of memory\n");
        return 1;
    }
    memset(copy_src, 1, copy_n);
    memset(copy_dst, 2, copy_n);

    /* ---- Weights, KV cache (B sequences of P random latents), activations ---- */
    double t_fill = now_s();
    struct v3l_host *h = v3l_host_new(V3L_NE, threads, use_thp, err, sizeof(err));
    struct v3l *v = h ? v3l_new(be, h, 1, B, P, err, sizeof(err)) : NULL;
    if (!v) {
        fprintf(stderr, "bench_v3_layer: %s\n", err);
        return 1;
    }
    t_fill = now_s() - t_fill;

    double *t_part[V3L_N_PARTS];
    for (int k = 0; k < V3L_N_PARTS; k++)
        t_part[k] = calloc((size_t)steps, sizeof(double));
    double parts[V3L_N_PARTS];
    double *t_step = calloc((size_t)steps, sizeof(double)), *t_attn = calloc((size_t)steps, sizeof(double));
    double *bound = calloc((size_t)steps, sizeof(double));
    double *step_bytes = calloc((size_t)steps, sizeof(double));
    double *bw_step = calloc((size_t)steps, sizeof(double)), *ratio = calloc((size_t)steps, sizeof(double));
    int *distinct = calloc((size_t)steps, sizeof(int));
    for (int it = -1; it < steps; it++) {   /* it = -1: warm-up, not recorded */
        v3l_new_input(v, B);
        const double copy_bw = copy_bandwidth(pool, threads, copy_src, copy_dst, copy_n, 3);
        /* On the CPU every op has finished when it returns, so timing each
         * part (a synchronize after it) costs nothing. */
        double t0 = now_s();
        v3l_step(v, B, parts);
        double t2 = now_s();
        if (it < 0)
            continue;
        for (int k = 0; k < V3L_N_PARTS; k++)
            t_part[k][it] = parts[k];
        int nd = 0;
        const double bytes = v3l_step_bytes(v, B, &nd);
        t_step[it] = t2 - t0;
        t_attn[it] = parts[V3L_ATTN_PROJ] + parts[V3L_MLA] + parts[V3L_O_PROJ];
        bound[it] = bytes / copy_bw;
        step_bytes[it] = bytes;
        bw_step[it] = copy_bw;
        ratio[it] = bound[it] / t_step[it];
        distinct[it] = nd;
    }
    double *cp = malloc(sizeof(double) * (size_t)steps);
#define MEDIAN(arr) (memcpy(cp, (arr), sizeof(double) * (size_t)steps),                  \
                     qsort(cp, (size_t)steps, sizeof(double), cmp_double), cp[steps / 2])
    const double med_step = MEDIAN(t_step), med_attn = MEDIAN(t_attn), med_bound = MEDIAN(bound);
    const double med_bw = MEDIAN(bw_step), med_ratio = MEDIAN(ratio);
    double lo = ratio[0], hi = ratio[0];
    for (int i = 1; i < steps; i++) {
        lo = ratio[i] < lo ? ratio[i] : lo;
        hi = ratio[i] > hi ? ratio[i] : hi;
    }
    /* of_bound: the median over steps of (that step's bound / its time). */
    printf("{\"scenario\":\"v3_layer_decode\",\"kernels\":\"%s\",\"threads\":%d,\"batch\":%d,"
           "\"ctx\":%d,\"thp\":%d,\"steps\":%d,\"fill_s\":%.1f,\"copy_gb_s_median\":%.2f,"
           "\"step_ms_median\":%.2f,\"attn_ms_median\":%.2f,\"bound_ms_median\":%.2f,"
           "\"of_bound_median\":%.3f,\"of_bound_min\":%.3f,\"of_bound_max\":%.3f,\"steps_ms\":[",
           ops_cpu_kernels(be), threads, B, P, use_thp, steps, t_fill, med_bw / 1e9,
           med_step * 1e3, med_attn * 1e3, med_bound * 1e3, med_ratio, lo, hi);
    for (int i = 0; i < steps; i++)
        printf("%s%.2f", i ? "," : "", t_step[i] * 1e3);
    printf("],\"bound_ms\":[");
    for (int i = 0; i < steps; i++)
        printf("%s%.2f", i ? "," : "", bound[i] * 1e3);
    printf("],\"copy_gb_s\":[");
    for (int i = 0; i < steps; i++)
        printf("%s%.1f", i ? "," : "", bw_step[i] / 1e9);
    printf("],\"step_mb\":[");
    for (int i = 0; i < steps; i++)
        printf("%s%.1f", i ? "," : "", step_bytes[i] / 1e6);
    printf("],\"distinct_experts\":[");
    for (int i = 0; i < steps; i++)
        printf("%s%d", i ? "," : "", distinct[i]);
    printf("]");
    for (int k = 0; k < V3L_N_PARTS; k++) {
        printf(",\"%s_ms\":%.2f", v3l_part_name[k], MEDIAN(t_part[k]) * 1e3);
    }
#undef MEDIAN
    printf(",\"attn_weight_bytes\":%zu,\"expert_bytes\":%zu}\n", v3l_attn_bytes(), v3l_expert_bytes());
    v3l_free(v);
    v3l_host_free(h);
    threadpool_free(pool);
    native_backend_free(be);
    return 0;
}
