/* bench_gpu_decode: decode throughput of a dense model on a backend, at
 * batch 1 against the HBM roofline, and against the batch size.
 *
 *   bench_gpu_decode --model DIR [--device cuda:N|cpu] [--batch 1,2,4,...]
 *                    [--prompt P] [--steps S] [--warmup W] [--bw-gib G]
 *                    [--threads T] [--name NAME]
 *   bench_gpu_decode --probe
 *
 * --probe says whether this build can run on a GPU here (bench/gpu/run.sh
 * asks it first): "gpu: N device(s)" and exit 0, "no GPU found: <reason>"
 * and exit 3, or "no CUDA backend built" and exit 4.
 *
 * For each batch size B: B sequences of P random tokens are prefilled
 * (whole sequences per forward call, up to 2048 tokens a call), then W
 * untimed and S timed decode steps run, each one forward call of B tokens
 * (one per sequence) that returns B rows of logits to the host, as the
 * engine's decode step does. Tokens are random ids, so no sampling time is
 * counted. A step's time is wall-clock around native_forward_run(), which
 * ends with the logits' download, so the backend's queue is drained in it.
 *
 * The roofline (issue 14): a decode step must read every weight the token
 * touches once, so at batch 1
 *   roofline tok/s = read bandwidth / weight bytes per token,
 * weight bytes per token = every layer's matrices and norms, the final norm,
 * the output head and one embedding row. The bandwidth is measured in the
 * same process: on CUDA by a read-only kernel over --bw-gib GiB (default 4,
 * bench/gpu/hbm_read.h); on the CPU by memcpy (read + write counted), only
 * so the program can be checked without a GPU. At batch B the same bytes
 * serve B tokens: mem_bound_tok_s = B x roofline tok/s (compute bound not
 * counted).
 *
 * Output: JSON lines on stdout, one for the bandwidth and one per batch
 * size (medians and the 10th/90th percentile of the step times). Without a
 * CUDA backend in the build, or without a GPU, it prints why and exits 0.
 * Exit 1 on a model or backend error, 2 on bad usage.
 */
#include "bench/gpu/bench_util.h"
#include "engines/native/backend/cpu/ops_cpu.h"
#include "engines/native/model/forward.h"
#include "engines/native/model/model.h"
#include "engines/native/runtime/kvcache.h"
#ifdef CASCADE_HAVE_CUDA
#include "bench/gpu/hbm_read.h"
#include "engines/native/backend/cuda/ops_cuda.h"
#endif

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_BATCHES 32
#define PREFILL_TOKENS 2048     /* tokens per prefill call */

static void usage(void)
{
    fprintf(stderr, "usage: bench_gpu_decode --model DIR [--device cuda:N|cpu] [--batch 1,2,4,...] "
                    "[--prompt P] [--steps S] [--warmup W] [--bw-gib G] [--threads T] "
                    "[--name NAME]\n");
    exit(2);
}

static long parse_int(const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        usage();
    return v;
}

/* The q-quantile of n sorted values (nearest rank). */
static double quantile(const double *v, int n, double q)
{
    int i = (int)(q * (n - 1) + 0.5);
    return v[i < 0 ? 0 : i >= n ? n - 1 : i];
}

static size_t mat_bytes(const struct native_mat *m)
{
    return m->rows ? (size_t)m->rows * (size_t)m->cols * native_dtype_size(m->dtype) : 0;
}

/* What one decode token must read of the weights (see the header). */
static double weight_bytes_per_token(const struct native_model *m)
{
    const struct native_model_config *c = &m->cfg;
    double b = 0;
    for (int l = 0; l < c->n_layers; l++) {
        const struct native_layer *L = &m->layers[l];
        const struct native_mat *mats[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up,
                                            &L->w_down};
        for (int i = 0; i < 7; i++)
            b += (double)mat_bytes(mats[i]);
        b += 2.0 * c->dim * sizeof(float);
    }
    b += (double)mat_bytes(&m->lm_head) + (double)c->dim * sizeof(float) +
         (double)c->dim * native_dtype_size(m->embed.dtype);
    return b;
}

/* splitmix64 for the random prompts and tokens */
static uint64_t next_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

int main(int argc, char **argv)
{
    const char *model_path = NULL, *device = "cuda:0", *name = NULL;
    int batches[MAX_BATCHES] = {1, 2, 4, 8, 16, 32, 64, 128, 256}, n_batches = 9;
    long prompt = 64, steps = 32, warmup = 3, bw_gib = 4, threads = 0;
    char err[512];

    if (argc == 2 && !strcmp(argv[1], "--probe")) {
#ifdef CASCADE_HAVE_CUDA
        char why[256];
        int n = ops_cuda_device_count(why, sizeof(why));
        if (n <= 0) {
            printf("no GPU found: %s\n", why);
            return 3;
        }
        printf("gpu: %d device(s)\n", n);
        return 0;
#else
        printf("no CUDA backend built (configure where nvcc is, with CASCADE_CUDA=ON)\n");
        return 4;
#endif
    }
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        const char *a = argv[i], *v = argv[++i];
        if (!strcmp(a, "--model"))
            model_path = v;
        else if (!strcmp(a, "--device"))
            device = v;
        else if (!strcmp(a, "--name"))
            name = v;
        else if (!strcmp(a, "--prompt"))
            prompt = parse_int(v, 1, 4096);
        else if (!strcmp(a, "--steps"))
            steps = parse_int(v, 1, 10000);
        else if (!strcmp(a, "--warmup"))
            warmup = parse_int(v, 0, 1000);
        else if (!strcmp(a, "--bw-gib"))
            bw_gib = parse_int(v, 1, 64);
        else if (!strcmp(a, "--threads"))
            threads = parse_int(v, 0, 1024);
        else if (!strcmp(a, "--batch")) {
            n_batches = 0;
            for (const char *s = v; *s;) {
                char *end;
                long b = strtol(s, &end, 10);
                if (end == s || b < 1 || b > 4096 || n_batches == MAX_BATCHES)
                    usage();
                batches[n_batches++] = (int)b;
                s = *end == ',' ? end + 1 : end;
                if (*end && *end != ',')
                    usage();
            }
        } else
            usage();
    }
    if (!model_path || !n_batches)
        usage();

    /* ---- The backend and the bandwidth ---- */
    struct native_backend *be = NULL;
    char dev_name[160];
    double bw = 0, bw_median = 0;
    const char *bw_method;
    if (!strcmp(device, "cpu")) {
        if (!(be = ops_cpu_new((int)threads, 0))) {
            fprintf(stderr, "bench_gpu_decode: the CPU backend could not start\n");
            return 1;
        }
        snprintf(dev_name, sizeof(dev_name), "cpu (%s kernels, %d threads)", ops_cpu_kernels(be),
                 ops_cpu_threads(be));
        bw = bw_median = bench_cpu_copy_bandwidth();
        bw_method = "memcpy 512 MiB, read+write counted, best of 3";
    } else if (!strncmp(device, "cuda:", 5)) {
        int dev = (int)parse_int(device + 5, 0, 64);
#ifdef CASCADE_HAVE_CUDA
        char why[256];
        if (ops_cuda_device_count(why, sizeof(why)) <= 0) {
            printf("no GPU found: %s\n", why);
            return 0;
        }
        bw = hbm_read_bandwidth(dev, (size_t)bw_gib << 30, 10, &bw_median, err, sizeof(err));
        if (bw <= 0) {
            fprintf(stderr, "bench_gpu_decode: read bandwidth: %s\n", err);
            return 1;
        }
        if (!(be = ops_cuda_new(dev, err, sizeof(err)))) {
            fprintf(stderr, "bench_gpu_decode: %s: %s\n", device, err);
            return 1;
        }
        snprintf(dev_name, sizeof(dev_name), "%s", ops_cuda_name(be));
        bw_method = "read-only kernel, 16-byte loads, best of 10";
#else
        (void)dev;
        printf("no CUDA backend built (configure where nvcc is, with CASCADE_CUDA=ON)\n");
        return 0;
#endif
    } else {
        usage();
    }
    printf("{\"bench\":\"read_bandwidth\",\"device\":\"%s\",\"method\":\"%s\",\"bytes\":%zu,"
           "\"gb_s_best\":%.1f,\"gb_s_median\":%.1f}\n",
           dev_name, bw_method, !strcmp(device, "cpu") ? (size_t)512 << 20 : (size_t)bw_gib << 30,
           bw / 1e9, bw_median / 1e9);
    fflush(stdout);

    /* ---- The model, one forward and one KV cache for the whole sweep ---- */
    struct native_model *m = NULL;
    struct native_forward *fw = NULL;
    struct kvcache *kv = NULL;
    int32_t *tok = NULL, *pos = NULL, *seq = NULL, *out_rows = NULL, *blocks = NULL;
    struct native_seq_view *views = NULL;
    double *t_step = NULL;
    int rc = 1;
    double t_load = bench_now_s();
    if (native_model_load(model_path, &m, err, sizeof(err)) != 0) {
        fprintf(stderr, "bench_gpu_decode: %s\n", err);
        goto out;
    }
    const struct native_model_config *c = &m->cfg;
    if (c->arch != NATIVE_ARCH_DENSE) {
        fprintf(stderr, "bench_gpu_decode: %s is not a dense model\n", model_path);
        goto out;
    }
    int max_b = 0;
    for (int i = 0; i < n_batches; i++)
        max_b = batches[i] > max_b ? batches[i] : max_b;
    const int n_ctx = (int)(prompt + warmup + steps);
    if (n_ctx > c->max_pos) {
        fprintf(stderr, "bench_gpu_decode: %d positions, the model takes %d\n", n_ctx, c->max_pos);
        goto out;
    }
    const int chunk_seqs = prompt >= PREFILL_TOKENS ? 1 : (int)(PREFILL_TOKENS / prompt);
    const int max_tokens = max_b > chunk_seqs * (int)prompt ? max_b : chunk_seqs * (int)prompt;
    const int max_out = max_b > chunk_seqs ? max_b : chunk_seqs;
    struct native_kv_desc kvd;
    native_forward_kv_desc(m, &kvd);
    const int per_seq = (n_ctx + be->ops->kv_block_size - 1) / be->ops->kv_block_size;
    const size_t kv_bytes = be->ops->kv_block_bytes(be, &kvd) * (size_t)per_seq * (size_t)max_b;
    if (!(kv = kvcache_new(be, &kvd, kv_bytes, err, sizeof(err)))) {
        fprintf(stderr, "bench_gpu_decode: KV cache (%.2f GB): %s\n", (double)kv_bytes / 1e9, err);
        goto out;
    }
    struct native_forward_opts fo = {.max_tokens = max_tokens, .max_out = max_out, .n_ctx = n_ctx,
                                     .mla = NATIVE_MLA_ABSORB};
    if (!(fw = native_forward_new(m, be, &fo, err, sizeof(err)))) {
        fprintf(stderr, "bench_gpu_decode: %s\n", err);
        goto out;
    }
    t_load = bench_now_s() - t_load;
    tok = malloc(sizeof(int32_t) * (size_t)max_tokens);
    pos = malloc(sizeof(int32_t) * (size_t)max_tokens);
    seq = malloc(sizeof(int32_t) * (size_t)max_tokens);
    out_rows = malloc(sizeof(int32_t) * (size_t)max_out);
    blocks = malloc(sizeof(int32_t) * (size_t)per_seq * (size_t)max_b);
    views = malloc(sizeof(*views) * (size_t)max_b);
    t_step = malloc(sizeof(double) * (size_t)steps);
    if (!tok || !pos || !seq || !out_rows || !blocks || !views || !t_step) {
        fprintf(stderr, "bench_gpu_decode: out of memory\n");
        goto out;
    }
    const double wbytes = weight_bytes_per_token(m);
    const double roofline = bw / wbytes;
    uint64_t rs = 42;

    /* ---- The sweep ---- */
    for (int bi = 0; bi < n_batches; bi++) {
        const int B = batches[bi];
        if (kvcache_alloc(kv, per_seq * B, blocks) != 0) {
            fprintf(stderr, "bench_gpu_decode: KV blocks for batch %d\n", B);
            goto out;
        }
        for (int s = 0; s < B; s++)
            views[s] = (struct native_seq_view){blocks + (size_t)s * per_seq, per_seq};
        /* prefill: whole sequences, chunk_seqs at a time */
        double t_pre = bench_now_s();
        for (int s0 = 0; s0 < B; s0 += chunk_seqs) {
            int nt = 0, no = 0;
            for (int s = s0; s < B && s < s0 + chunk_seqs; s++) {
                for (int p = 0; p < prompt; p++) {
                    tok[nt] = (int32_t)(next_rand(&rs) % (uint64_t)c->vocab_size);
                    pos[nt] = p;
                    seq[nt] = s;
                    nt++;
                }
                out_rows[no++] = nt - 1;
            }
            struct native_batch b = {nt, tok, pos, seq, views, B, out_rows, no};
            native_forward_run(fw, kvcache_kv(kv), &b);
        }
        t_pre = bench_now_s() - t_pre;
        /* decode */
        for (int it = -(int)warmup; it < steps; it++) {
            for (int s = 0; s < B; s++) {
                tok[s] = (int32_t)(next_rand(&rs) % (uint64_t)c->vocab_size);
                pos[s] = (int32_t)(prompt + warmup + it);
                seq[s] = s;
                out_rows[s] = s;
            }
            struct native_batch b = {B, tok, pos, seq, views, B, out_rows, B};
            double t0 = bench_now_s();
            native_forward_run(fw, kvcache_kv(kv), &b);
            double dt = bench_now_s() - t0;
            if (it >= 0)
                t_step[it] = dt;
        }
        kvcache_release(kv, blocks, per_seq * B);
#ifdef CASCADE_HAVE_CUDA
        if (strcmp(device, "cpu") && ops_cuda_error(be)) {
            fprintf(stderr, "bench_gpu_decode: CUDA error at batch %d: %s\n", B, ops_cuda_error(be));
            goto out;
        }
#endif
        qsort(t_step, (size_t)steps, sizeof(double), bench_cmp_double);
        const double med = quantile(t_step, (int)steps, 0.5);
        printf("{\"bench\":\"decode\",\"model\":\"%s\",\"device\":\"%s\",\"dtype\":\"%s\","
               "\"layers\":%d,\"dim\":%d,\"vocab\":%d,\"batch\":%d,\"prompt\":%ld,\"steps\":%ld,"
               "\"load_s\":%.2f,\"prefill_s\":%.3f,\"step_ms_median\":%.3f,\"step_ms_p10\":%.3f,"
               "\"step_ms_p90\":%.3f,\"tok_s\":%.1f,\"weight_bytes_per_token\":%.0f,"
               "\"read_gb_s\":%.1f,\"roofline_tok_s\":%.1f,\"mem_bound_tok_s\":%.1f,"
               "\"of_roofline\":%.3f}\n",
               name ? name : model_path, dev_name, native_dtype_name(m->layers[0].wq.dtype),
               c->n_layers, c->dim, c->vocab_size, B, prompt, steps, t_load, t_pre, med * 1e3,
               quantile(t_step, (int)steps, 0.1) * 1e3, quantile(t_step, (int)steps, 0.9) * 1e3,
               B / med, wbytes, bw / 1e9, roofline, B * roofline, B / med / (B * roofline));
        fflush(stdout);
    }
    rc = 0;
out:
    free(tok);
    free(pos);
    free(seq);
    free(out_rows);
    free(blocks);
    free(views);
    free(t_step);
    native_forward_free(fw);
    kvcache_free(kv);
    native_backend_free(be);
    native_model_free(m);
    return rc;
}
