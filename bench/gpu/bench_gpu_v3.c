/* bench_gpu_v3: DeepSeek-V3 MoE layers at their real dimensions, FP8, a few
 * stacked, on a backend: the time of a decode step at several batch sizes
 * against the step's memory bound.
 *
 *   bench_gpu_v3 [--device cuda:N|cpu] [--layers L] [--batch 1,32,256]
 *                [--ctx P] [--steps S] [--experts E] [--bw-gib G] [--threads T]
 *
 * The layer and the step are bench/common/v3_layer.h's: L copies of one
 * layer's random FP8 weights (11.5 GB each with all 256 experts; a GPU
 * backend copies each, so a step streams L distinct copies), each sequence
 * at position P of its own latent cache. For each batch size B: one
 * warm-up step, then S timed steps, each with a fresh random residual so the
 * gate picks new experts; then one more step with a synchronization after
 * each part, for the breakdown (those synchronizations cost time of their
 * own, so the step time is the unsynchronized one).
 *
 * The bound: the bytes the step must read (v3l_step_bytes: attention weights
 * and scales, router, shared expert, every distinct expert the gate chose in
 * each layer, the latent caches) over the read bandwidth measured in the same
 * process (CUDA: bench/gpu/hbm_read.h over --bw-gib GiB; CPU: memcpy, read +
 * write counted, only so the program can be checked without a GPU).
 * of_bound = bound / measured step time.
 *
 * --experts E (a multiple of 8, >= 16) shrinks the layer for smoke tests;
 * the figures of issue 14 are taken with the default 256.
 *
 * Output: JSON lines. Without a CUDA backend in the build, or without a GPU,
 * it prints why and exits 0. Exit 1 on an error, 2 on bad usage.
 */
#include "bench/common/v3_layer.h"
#include "bench/gpu/bench_util.h"
#include "engines/native/backend/cpu/ops_cpu.h"
#ifdef CASCADE_HAVE_CUDA
#include "bench/gpu/hbm_read.h"
#include "engines/native/backend/cuda/ops_cuda.h"
#endif

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_BATCHES 16

static void usage(void)
{
    fprintf(stderr, "usage: bench_gpu_v3 [--device cuda:N|cpu] [--layers L] [--batch 1,32,256] "
                    "[--ctx P] [--steps S] [--experts E] [--bw-gib G] [--threads T]\n");
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

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), bench_cmp_double);
    return v[n / 2];
}

int main(int argc, char **argv)
{
    const char *device = "cuda:0";
    int batches[MAX_BATCHES] = {1, 32, 256}, n_batches = 3;
    long layers = 4, ctx = 1024, steps = 10, experts = V3L_NE, bw_gib = 4, threads = 0;
    char err[512];

    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        const char *a = argv[i], *v = argv[++i];
        if (!strcmp(a, "--device"))
            device = v;
        else if (!strcmp(a, "--layers"))
            layers = parse_int(v, 1, 61);
        else if (!strcmp(a, "--ctx"))
            ctx = parse_int(v, 1, 163840);
        else if (!strcmp(a, "--steps"))
            steps = parse_int(v, 1, 1000);
        else if (!strcmp(a, "--experts"))
            experts = parse_int(v, 16, V3L_NE);
        else if (!strcmp(a, "--bw-gib"))
            bw_gib = parse_int(v, 1, 64);
        else if (!strcmp(a, "--threads"))
            threads = parse_int(v, 0, 1024);
        else if (!strcmp(a, "--batch")) {
            n_batches = 0;
            for (const char *s = v; *s;) {
                char *end;
                long b = strtol(s, &end, 10);
                if (end == s || b < 1 || b > 1024 || n_batches == MAX_BATCHES ||
                    (*end && *end != ','))
                    usage();
                batches[n_batches++] = (int)b;
                s = *end == ',' ? end + 1 : end;
            }
        } else
            usage();
    }
    if (!n_batches || experts % V3L_NGROUP)
        usage();

    struct native_backend *be = NULL;
    char dev_name[160];
    double bw = 0, bw_median = 0;
    int is_cpu = !strcmp(device, "cpu");
    if (is_cpu) {
        if (!(be = ops_cpu_new((int)threads, 0))) {
            fprintf(stderr, "bench_gpu_v3: the CPU backend could not start\n");
            return 1;
        }
        snprintf(dev_name, sizeof(dev_name), "cpu (%s kernels, %d threads)", ops_cpu_kernels(be),
                 ops_cpu_threads(be));
        bw = bw_median = bench_cpu_copy_bandwidth();
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
            fprintf(stderr, "bench_gpu_v3: read bandwidth: %s\n", err);
            return 1;
        }
        if (!(be = ops_cuda_new(dev, err, sizeof(err)))) {
            fprintf(stderr, "bench_gpu_v3: %s: %s\n", device, err);
            return 1;
        }
        snprintf(dev_name, sizeof(dev_name), "%s", ops_cuda_name(be));
#else
        (void)dev;
        (void)bw_gib;
        printf("no CUDA backend built (configure where nvcc is, with CASCADE_CUDA=ON)\n");
        return 0;
#endif
    } else {
        usage();
    }

    double t_fill = bench_now_s();
    struct v3l_host *h = v3l_host_new((int)experts, (int)threads, 1, err, sizeof(err));
    if (!h) {
        fprintf(stderr, "bench_gpu_v3: %s\n", err);
        native_backend_free(be);
        return 1;
    }
    t_fill = bench_now_s() - t_fill;
    printf("{\"bench\":\"v3_layer_setup\",\"device\":\"%s\",\"read_gb_s_best\":%.1f,"
           "\"read_gb_s_median\":%.1f,\"layer_gb\":%.2f,\"experts\":%ld,\"host_fill_s\":%.1f}\n",
           dev_name, bw / 1e9, bw_median / 1e9, (double)v3l_host_bytes(h) / 1e9, experts, t_fill);
    fflush(stdout);

    int rc = 0;
    double *t_step = malloc(sizeof(double) * (size_t)steps);
    double *bound = malloc(sizeof(double) * (size_t)steps);
    double *dist = malloc(sizeof(double) * (size_t)steps);
    if (!t_step || !bound || !dist) {
        fprintf(stderr, "bench_gpu_v3: out of memory\n");
        rc = 1;
    }
    int max_b = 0;
    for (int bi = 0; bi < n_batches; bi++)
        max_b = batches[bi] > max_b ? batches[bi] : max_b;
    double t_map = bench_now_s();
    struct v3l *v = rc ? NULL : v3l_new(be, h, (int)layers, max_b, (int)ctx, err, sizeof(err));
    if (!rc && !v) {
        fprintf(stderr, "bench_gpu_v3: %s\n", err);
        rc = 1;
    }
    t_map = bench_now_s() - t_map;
    for (int bi = 0; !rc && bi < n_batches; bi++) {
        const int B = batches[bi];
        for (int it = -1; it < steps; it++) {   /* it = -1: warm-up */
            v3l_new_input(v, B);
            double t0 = bench_now_s();
            v3l_step(v, B, NULL);
            double dt = bench_now_s() - t0;
            int nd = 0;
            double bytes = v3l_step_bytes(v, B, &nd);
            if (it < 0)
                continue;
            t_step[it] = dt;
            bound[it] = bytes / bw;
            dist[it] = nd;
        }
        double parts[V3L_N_PARTS];
        v3l_new_input(v, B);
        v3l_step(v, B, parts);
#ifdef CASCADE_HAVE_CUDA
        if (!is_cpu && ops_cuda_error(be)) {
            fprintf(stderr, "bench_gpu_v3: CUDA error at batch %d: %s\n", B, ops_cuda_error(be));
            rc = 1;
            break;
        }
#endif
        double s_med = median(t_step, (int)steps), b_med = median(bound, (int)steps);
        double s_min = t_step[0], s_max = t_step[steps - 1];
        printf("{\"bench\":\"v3_layer_decode\",\"device\":\"%s\",\"layers\":%ld,"
               "\"distinct_copies\":%d,\"batch\":%d,\"ctx\":%ld,\"steps\":%ld,\"map_s\":%.1f,"
               "\"step_ms_median\":%.3f,\"step_ms_min\":%.3f,\"step_ms_max\":%.3f,"
               "\"per_layer_ms\":%.3f,\"bound_ms_median\":%.3f,\"of_bound\":%.3f,"
               "\"distinct_experts_per_layer\":%.1f",
               dev_name, layers, v3l_distinct_copies(v), B, ctx, steps, t_map, s_med * 1e3,
               s_min * 1e3, s_max * 1e3, s_med * 1e3 / (double)layers, b_med * 1e3, b_med / s_med,
               median(dist, (int)steps) / (double)layers);
        for (int k = 0; k < V3L_N_PARTS; k++)
            printf(",\"%s_ms_synced\":%.3f", v3l_part_name[k], parts[k] * 1e3);
        printf("}\n");
        fflush(stdout);
    }
    v3l_free(v);
    free(t_step);
    free(bound);
    free(dist);
    v3l_host_free(h);
    native_backend_free(be);
    return rc;
}
