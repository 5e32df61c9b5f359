/* test_comm_nccl: comm.h's collectives over NCCL on the GPUs of this machine
 * (label gpu; exit 77 with the reason where there is none).
 *
 * World = the number of GPUs (at most 4), so one GPU checks NCCL at world 1:
 * init, an all-reduce, the counts exchange and the rows of an all-to-all
 * (a rank's own rows included), an all-gather in place, a barrier. Each rank
 * is a thread with its device's buffers; values are small integers, so the
 * sums are exact in any order and NCCL's order does not matter. With two
 * GPUs or more, stories260K (when ../shared has it) also runs tensor-parallel
 * over them, against the CPU: same argmax, log-probs within 1e-3. */
#include "engines/native/backend/comm.h"
#include "engines/native/backend/cuda/comm_nccl.h"
#include "engines/native/backend/cuda/ops_cuda.h"
#include "engines/native/backend/device.h"
#include "engines/native/model/forward.h"
#include "engines/native/model/model.h"
#include "engines/native/model/parallel.h"
#include "engines/native/runtime/kvcache.h"

#include "test.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { ROWS = 7, WIDTH = 5, N = 1000 };

struct rank_arg {
    struct native_comm *c;
    int device;
    int bad;
};

static void *rank_main(void *p)
{
    struct rank_arg *a = p;
    const int W = a->c->world, r = a->c->rank;
    float *d = NULL, *d2 = NULL, h[N];
    if (cudaSetDevice(a->device) != cudaSuccess || cudaMalloc((void **)&d, sizeof(float) * N) ||
        cudaMalloc((void **)&d2, sizeof(float) * N)) {
        a->bad++;
        return NULL;
    }
    /* all_reduce_sum: rank r holds i + r; the sum is W*i + W(W-1)/2. */
    for (int i = 0; i < N; i++)
        h[i] = (float)(i + r);
    cudaMemcpy(d, h, sizeof(h), cudaMemcpyHostToDevice);
    if (native_comm_all_reduce_sum(a->c, NULL, d, N) != 0)
        a->bad++;
    cudaMemcpy(h, d, sizeof(h), cudaMemcpyDeviceToHost);
    for (int i = 0; i < N; i++)
        if (h[i] != (float)(W * i + W * (W - 1) / 2))
            a->bad++;

    /* Counts: rank r sends (r + p) % 3 rows to p (zero for some, itself too). */
    int32_t sc[NATIVE_MAX_WORLD], sd[NATIVE_MAX_WORLD], rc[NATIVE_MAX_WORLD], rd[NATIVE_MAX_WORLD];
    int off = 0;
    for (int q = 0; q < W; q++) {
        sc[q] = (r + q) % 3;
        sd[q] = off;
        off += sc[q];
    }
    if (native_comm_exchange_counts(a->c, NULL, sc, rc) != 0)
        a->bad++;
    int total = 0;
    for (int q = 0; q < W; q++) {
        if (rc[q] != (q + r) % 3)
            a->bad++;
        rd[q] = total;
        total += rc[q];
    }
    /* Rows: (from, to, index, 0, 0). */
    for (int q = 0; q < W; q++)
        for (int i = 0; i < sc[q]; i++) {
            float *row = h + (sd[q] + i) * WIDTH;
            row[0] = (float)r, row[1] = (float)q, row[2] = (float)i, row[3] = row[4] = 0;
        }
    cudaMemcpy(d, h, sizeof(float) * (size_t)off * WIDTH, cudaMemcpyHostToDevice);
    if (native_comm_all_to_all(a->c, NULL, d, sc, sd, d2, rc, rd, sizeof(float) * WIDTH) != 0)
        a->bad++;
    cudaMemcpy(h, d2, sizeof(float) * (size_t)total * WIDTH, cudaMemcpyDeviceToHost);
    for (int q = 0; q < W; q++)
        for (int i = 0; i < rc[q]; i++) {
            const float *row = h + (rd[q] + i) * WIDTH;
            if (row[0] != (float)q || row[1] != (float)r || row[2] != (float)i)
                a->bad++;
        }

    /* An all-gather in place: rank r's rows of x to the same place everywhere. */
    const int lo = ROWS * r / W, hi = ROWS * (r + 1) / W;
    for (int i = 0; i < ROWS; i++)
        h[i] = i >= lo && i < hi ? (float)(10 * i + 1) : -1.0f;
    cudaMemcpy(d, h, sizeof(float) * ROWS, cudaMemcpyHostToDevice);
    for (int q = 0; q < W; q++) {
        sc[q] = hi - lo, sd[q] = lo;
        rd[q] = ROWS * q / W, rc[q] = ROWS * (q + 1) / W - rd[q];
    }
    if (native_comm_all_to_all(a->c, NULL, d, sc, sd, d, rc, rd, sizeof(float)) != 0)
        a->bad++;
    cudaMemcpy(h, d, sizeof(float) * ROWS, cudaMemcpyDeviceToHost);
    for (int i = 0; i < ROWS; i++)
        if (h[i] != (float)(10 * i + 1))
            a->bad++;
    if (native_comm_barrier(a->c) != 0)
        a->bad++;
    cudaFree(d);
    cudaFree(d2);
    return NULL;
}

static void test_collectives(int world)
{
    int devices[NATIVE_MAX_WORLD];
    struct native_comm *comms[NATIVE_MAX_WORLD];
    struct rank_arg args[NATIVE_MAX_WORLD];
    pthread_t th[NATIVE_MAX_WORLD];
    char err[256];
    for (int i = 0; i < world; i++)
        devices[i] = i;
    int rc = native_comm_nccl_new_all(world, devices, comms, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "native_comm_nccl_new_all: %s\n", err);
    CHECK(rc == 0);
    if (rc != 0)
        return;
    for (int r = 0; r < world; r++) {
        args[r] = (struct rank_arg){comms[r], devices[r], 0};
        pthread_create(&th[r], NULL, rank_main, &args[r]);
    }
    int bad = 0;
    for (int r = 0; r < world; r++) {
        pthread_join(th[r], NULL);
        bad += args[r].bad;
        native_comm_free(comms[r]);
    }
    printf("NCCL collectives at world %d: %d wrong\n", world, bad);
    CHECK(bad == 0);
}

/* Log-probs of one prefill of stories260K on backend be. */
static int score(const struct native_model *m, struct native_backend *be, float *out, int n)
{
    char err[512];
    struct native_kv_desc kvd;
    native_forward_kv_desc(m, &kvd);
    struct kvcache *kv = kvcache_new(be, &kvd, be->ops->kv_block_bytes(be, &kvd) * 4, err,
                                     sizeof(err));
    struct native_forward_opts fo = {.max_tokens = n, .max_out = n, .n_ctx = 64};
    struct native_forward *fw = kv ? native_forward_new(m, be, &fo, err, sizeof(err)) : NULL;
    int32_t blocks[4], tok[64], pos[64], seq[64], rows[64];
    if (!fw || kvcache_alloc(kv, kvcache_blocks_for(kv, n), blocks) != 0) {
        fprintf(stderr, "score: %s\n", err);
        native_forward_free(fw);
        kvcache_free(kv);
        return -1;
    }
    struct native_seq_view view = {blocks, kvcache_blocks_for(kv, n)};
    for (int i = 0; i < n; i++)
        tok[i] = (i * 37 + 1) % m->cfg.vocab_size, pos[i] = i, seq[i] = 0, rows[i] = i;
    struct native_batch b = {n, tok, pos, seq, &view, 1, rows, n};
    memcpy(out, native_forward_run(fw, kvcache_kv(kv), &b),
           sizeof(float) * (size_t)n * (size_t)m->cfg.vocab_size);
    const char *e = native_parallel_error(be);
    native_forward_free(fw);
    kvcache_free(kv);
    return e ? -1 : 0;
}

static void test_model(int world)
{
    char path[512], err[512];
    snprintf(path, sizeof(path), "%s/models/stories260K/stories260K.bin", test_shared_dir());
    struct native_model *m = NULL;
    if (access(path, R_OK) != 0 || native_model_load(path, &m, err, sizeof(err)) != 0) {
        TEST_SKIP("stories260K over %d GPUs: %s not readable", world, path);
        return;
    }
    enum { T = 16 };
    const int V = m->cfg.vocab_size;
    float *cpu = malloc(sizeof(float) * T * (size_t)V), *gpu = malloc(sizeof(float) * T * (size_t)V);
    struct native_device cd = {0}, gd = {.kind = NATIVE_DEVICE_CUDA, .n = world};
    for (int i = 0; i < world; i++)
        gd.ids[i] = i;
    struct native_backend *bc = native_device_backend(&cd, 1, 0, err, sizeof(err));
    struct native_backend *bg = native_parallel_on_device(m, &gd, world, 1, 1, 0, err, sizeof(err));
    if (!bg)
        fprintf(stderr, "native_parallel_on_device: %s\n", err);
    CHECK(bc && bg);
    if (bc && bg && score(m, bc, cpu, T) == 0 && score(m, bg, gpu, T) == 0) {
        double worst = 0;
        int same = 1;
        for (int t = 0; t < T; t++) {
            const float *x = cpu + (size_t)t * V, *y = gpu + (size_t)t * V;
            double lx = 0, ly = 0, mx = -INFINITY, my = -INFINITY;
            int ax = 0, ay = 0;
            for (int i = 0; i < V; i++) {
                if (x[i] > mx)
                    mx = x[i], ax = i;
                if (y[i] > my)
                    my = y[i], ay = i;
            }
            for (int i = 0; i < V; i++)
                lx += exp(x[i] - mx), ly += exp(y[i] - my);
            for (int i = 0; i < V; i++) {
                double d = fabs((x[i] - mx - log(lx)) - (y[i] - my - log(ly)));
                worst = d > worst ? d : worst;
            }
            same &= ax == ay;
        }
        printf("stories260K at tp %d on GPUs vs one CPU rank: max |dlogprob| %.3g, argmax %s\n",
               world, worst, same ? "same" : "DIFFERS");
        CHECK(same && worst < 1e-3);
    } else {
        CHECK(!"stories260K ran on the GPUs");
    }
    native_backend_free(bc);
    native_backend_free(bg);
    free(cpu);
    free(gpu);
    native_model_free(m);
}

int main(void)
{
    char why[256];
    int n = ops_cuda_device_count(why, sizeof(why));
    if (n <= 0) {
        printf("SKIP: no CUDA device: %s\n", why);
        return 77;
    }
    const int world = n > 4 ? 4 : n;
    test_collectives(world);
    if (world >= 2)
        test_model(world);
    TEST_MAIN_END();
}
