/* emu.cc: the fiber runtime and an "emu-cuda" backend for test_backend_ops
 * (run.sh): memory is host memory; the FP8 matmul, MLA and MoE ops run the
 * CUDA kernel sources through the emulation; every other op is the CPU
 * backend's. A CUDA thread is a fiber with its own 128 KiB stack; the block
 * scheduler resumes each unfinished fiber in turn until all have returned,
 * and a barrier is a generation counter a fiber yields on. */
#include "engines/native/backend/cuda/cuda_internal.h"
extern "C" {
#include "engines/native/backend/cpu/ops_cpu.h"
}

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#define EMU_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define EMU_UNPOISON(p, n) ((void)(p), (void)(n))
#endif
extern "C" void emu_switch(void **save_sp, void *load_sp);
dim3 threadIdx, blockIdx;
dim3 blockDim, gridDim;
float emu_dyn_smem[64 * 1024];
emu_block *emu_cur;
long emu_blocks, emu_launches;

#define EMU_STACK (128 * 1024)
static void *emu_sched_sp;
static void **emu_sp;
static char *emu_stacks;
static int *emu_done;
static int emu_running;
static const std::function<void()> *emu_fn;

void emu_yield(void)
{
    emu_switch(&emu_sp[emu_running], emu_sched_sp);
}

static void emu_entry(void)
{
    (*emu_fn)();
    emu_done[emu_running] = 1;
    void *dummy;
    emu_switch(&dummy, emu_sched_sp);
    abort();
}

void emu_run(dim3 grid, dim3 block, size_t smem, const std::function<void()> &fn)
{
    if (smem > sizeof(emu_dyn_smem) || block.y != 1 || block.z != 1 || grid.z != 1 || block.x % 32 ||
        block.x > 1024) {
        fprintf(stderr, "emu: unsupported launch\n");
        abort();
    }
    if (!emu_sp) {
        emu_sp = new void *[1024];
        emu_stacks = (char *)aligned_alloc(64, (size_t)1024 * EMU_STACK);
        emu_done = new int[1024];
    }
    emu_launches++;
    blockDim = block;
    gridDim = grid;
    emu_fn = &fn;
    for (unsigned by = 0; by < grid.y; by++)
        for (unsigned bx = 0; bx < grid.x; bx++) {
            emu_block eb;
            eb.bar.n = (int)block.x;
            for (int w = 0; w < 32; w++)
                eb.wbar[w].n = 32;
            emu_cur = &eb;
            memset(emu_dyn_smem, 0xff, smem);   /* garbage, as on the GPU */
            blockIdx = dim3(bx, by);
            /* A fiber that finished left its frames' redzones poisoned
             * (it never returned through them). */
            EMU_UNPOISON(emu_stacks, (size_t)block.x * EMU_STACK);
            for (unsigned t = 0; t < block.x; t++) {
                uintptr_t top = ((uintptr_t)(emu_stacks + (size_t)(t + 1) * EMU_STACK)) & ~(uintptr_t)15;
                void **sp = (void **)(top - 8);
                *--sp = (void *)emu_entry;
                for (int r = 0; r < 6; r++)
                    *--sp = 0;
                emu_sp[t] = sp;
                emu_done[t] = 0;
            }
            int left = (int)block.x;
            long rounds = 0;
            while (left > 0) {
                for (unsigned t = 0; t < block.x; t++) {
                    if (emu_done[t])
                        continue;
                    emu_running = (int)t;
                    threadIdx = dim3(t);
                    emu_switch(&emu_sched_sp, emu_sp[t]);
                    if (emu_done[t])
                        left--;
                }
                if (++rounds > 100000000L) {
                    fprintf(stderr, "emu: deadlock\n");
                    abort();
                }
            }
            emu_blocks++;
        }
}

void cuda_report(struct cuda_backend *cb, cudaError_t e, const char *what, const char *file, int line)
{
    fprintf(stderr, "emu-cuda: error %d: %s (%s:%d)\n", e, what, file, line);
    if (!cb->last_error)
        cb->last_error = e;
}

void *cuda_scratch(struct cuda_backend *cb, enum cuda_scratch_slot slot, size_t bytes)
{
    if (bytes > cb->scratch_bytes[slot]) {
        free(cb->scratch[slot]);
        cb->scratch[slot] = malloc(bytes);
        cb->scratch_bytes[slot] = bytes;
        memset(cb->scratch[slot], 0xee, bytes);
    }
    return cb->scratch[slot];
}

struct native_buf { void *dev; size_t bytes; };
/* ---- the backend ---- */
struct emu_backend {
    struct cuda_backend cb;
    struct native_backend *cpu;
};
static struct native_backend *CPU(struct native_backend *b) { return ((struct emu_backend *)b)->cpu; }

static struct native_buf *e_alloc(struct native_backend *, size_t bytes)
{
    struct native_buf *nb = (struct native_buf *)malloc(sizeof(*nb));
    nb->dev = malloc(bytes);
    memset(nb->dev, 0xcd, bytes);
    nb->bytes = bytes;
    return nb;
}
static void e_free(struct native_backend *, struct native_buf *nb) { if (nb) { free(nb->dev); free(nb); } }
static void *e_addr(struct native_backend *, struct native_buf *nb) { return nb->dev; }
static void e_up(struct native_backend *, struct native_buf *nb, size_t off, const void *src, size_t n)
{ memcpy((char *)nb->dev + off, src, n); }
static void e_down(struct native_backend *, void *dst, struct native_buf *nb, size_t off, size_t n)
{ memcpy(dst, (char *)nb->dev + off, n); }
static void e_sync(struct native_backend *) {}
static const void *e_map(struct native_backend *, const void *host, size_t n)
{ void *p = malloc(n); memcpy(p, host, n); return p; }
static void e_unmap(struct native_backend *, const void *a) { free((void *)a); }
static struct native_kv *e_kv_new(struct native_backend *b, const struct native_kv_desc *d, int n, char *err, size_t el)
{ return CPU(b)->ops->kv_new(CPU(b), d, n, err, el); }
static void e_kv_free(struct native_backend *b, struct native_kv *kv) { CPU(b)->ops->kv_free(CPU(b), kv); }
static size_t e_kv_bytes(struct native_backend *b, const struct native_kv_desc *d) { return CPU(b)->ops->kv_block_bytes(CPU(b), d); }

/* H4's packed mirror: token, pos, seq, out_rows, block_off, blocks */
static void e_begin(struct native_backend *b, const struct native_batch *bt)
{
    struct cuda_batch *m = &((struct emu_backend *)b)->cb.batch;
    size_t need = 3 * (size_t)bt->n_tokens + bt->n_out + bt->n_seqs + 1;
    for (int q = 0; q < bt->n_seqs; q++)
        need += bt->seqs[q].n_blocks > 0 ? bt->seqs[q].n_blocks : 0;
    free(m->staging);
    m->staging = (int32_t *)malloc(need * 4);
    m->dev = m->staging;
    int nt = bt->n_tokens;
    int32_t *s = m->staging;
    if (bt->token) memcpy(s, bt->token, 4 * nt); else memset(s, 0, 4 * nt);
    memcpy(s + nt, bt->pos, 4 * nt);
    memcpy(s + 2 * nt, bt->seq, 4 * nt);
    if (bt->n_out) memcpy(s + 3 * nt, bt->out_rows, 4 * bt->n_out);
    int32_t *off = s + 3 * nt + bt->n_out, *blocks = off + bt->n_seqs + 1;
    off[0] = 0;
    for (int q = 0; q < bt->n_seqs; q++) {
        int nb = bt->seqs[q].n_blocks > 0 ? bt->seqs[q].n_blocks : 0;
        memcpy(blocks + off[q], bt->seqs[q].blocks, 4 * nb);
        off[q + 1] = off[q] + nb;
    }
    m->host = bt; m->host_token = bt->token; m->host_pos = bt->pos; m->host_out_rows = bt->out_rows;
    m->n_tokens = nt; m->n_seqs = bt->n_seqs; m->n_out = bt->n_out; m->used = need;
    m->token = s; m->pos = s + nt; m->seq = s + 2 * nt; m->out_rows = s + 3 * nt;
    m->block_off = off; m->blocks = blocks;
}

long emu_fp8_calls, emu_mla_calls, emu_gate_calls, emu_exp_calls;
static void e_matmul(struct native_backend *b, int n, const float *x, int n_w, const struct native_mat *w,
                     float *const *y, int acc)
{
    for (int j = 0; j < n_w; j++) {
        if (w[j].dtype == NATIVE_F8_E4M3) {
            emu_fp8_calls++;
            cuda_fp8_matmul(&((struct emu_backend *)b)->cb, n, x, &w[j], y[j], acc);
        } else {
            float *yy[1] = {y[j]};
            CPU(b)->ops->matmul(CPU(b), n, x, 1, &w[j], yy, acc);
        }
    }
}
static void e_rms(struct native_backend *b, float *y, const float *x, const float *w, int n, int d, int s, float e)
{ CPU(b)->ops->rmsnorm(CPU(b), y, x, w, n, d, s, e); }
static void e_rope(struct native_backend *b, float *x, int n, int h, int hs, int rs, const int32_t *pos, const struct native_rope *r)
{ CPU(b)->ops->rope(CPU(b), x, n, h, hs, rs, pos, r); }
static void e_kvs(struct native_backend *b, struct native_kv *kv, int l, const struct native_batch *bt, const float *a, int as,
                  const float *bb, int bs)
{ CPU(b)->ops->kv_store(CPU(b), kv, l, bt, a, as, bb, bs); }
static void e_att(struct native_backend *b, float *o, const float *q, struct native_kv *kv, int l, const struct native_batch *bt,
                  int h, int g, int hd)
{ CPU(b)->ops->attention(CPU(b), o, q, kv, l, bt, h, g, hd); }
static void e_mla(struct native_backend *b, float *o, const float *q, struct native_kv *kv, int l, const struct native_batch *bt,
                  const struct native_mla *p, float *sc)
{ emu_mla_calls++; cuda_mla_attention(b, o, q, kv, l, bt, p, sc); }
static void e_swiglu(struct native_backend *b, float *h, const float *g, const float *u, size_t n)
{ CPU(b)->ops->swiglu(CPU(b), h, g, u, n); }
static void e_embed(struct native_backend *b, float *x, const struct native_mat *t, const int32_t *ids, int n)
{ CPU(b)->ops->embed(CPU(b), x, t, ids, n); }
static void e_gather(struct native_backend *b, float *d, const float *s, const int32_t *r, int n, int dim)
{ CPU(b)->ops->gather(CPU(b), d, s, r, n, dim); }
static void e_gate(struct native_backend *b, int32_t *ids, float *w, const float *l, int n, const struct native_moe_gate *g)
{ emu_gate_calls++; cuda_moe_gate(b, ids, w, l, n, g); }
static void e_exp(struct native_backend *b, float *y, const float *x, int n, const int32_t *ids, const float *w, int k,
                  const struct native_moe_experts *e, float *sc)
{ emu_exp_calls++; cuda_moe_experts(b, y, x, n, ids, w, k, e, sc); }
static void e_comb(struct native_backend *b, float *y, const float *rows, int n, const float *w, int k, int dim)
{ cuda_moe_combine(b, y, rows, n, w, k, dim); }
static void e_bfree(struct native_backend *b)
{
    struct emu_backend *eb = (struct emu_backend *)b;
    native_backend_free(eb->cpu);
    fprintf(stderr, "emu-cuda: %ld launches, %ld blocks; calls: fp8 %ld, mla %ld, gate %ld, experts %ld; error %d\n",
            emu_launches, emu_blocks, emu_fp8_calls, emu_mla_calls, emu_gate_calls, emu_exp_calls, eb->cb.last_error);
    free(eb);
}

static struct native_ops emu_ops;
extern "C" struct native_backend *emu_cuda_new(void)
{
    emu_ops.name = "emu-cuda";
    emu_ops.buf_alloc = e_alloc; emu_ops.buf_free = e_free; emu_ops.buf_addr = e_addr;
    emu_ops.upload = e_up; emu_ops.download = e_down; emu_ops.synchronize = e_sync; emu_ops.host_visible = 0;
    emu_ops.map_weights = e_map; emu_ops.unmap_weights = e_unmap;
    emu_ops.kv_new = e_kv_new; emu_ops.kv_free = e_kv_free; emu_ops.kv_block_bytes = e_kv_bytes;
    emu_ops.kv_block_size = 16;
    emu_ops.begin_batch = e_begin; emu_ops.matmul = e_matmul; emu_ops.rmsnorm = e_rms; emu_ops.rope = e_rope;
    emu_ops.kv_store = e_kvs; emu_ops.attention = e_att; emu_ops.mla_attention = e_mla; emu_ops.swiglu = e_swiglu;
    emu_ops.embed = e_embed; emu_ops.gather = e_gather; emu_ops.moe_gate = e_gate; emu_ops.moe_experts = e_exp; emu_ops.moe_combine = e_comb;
    emu_ops.free = e_bfree;
    struct emu_backend *eb = (struct emu_backend *)calloc(1, sizeof(*eb));
    eb->cb.base.ops = &emu_ops;
    eb->cpu = ops_cpu_new(1, 0);
    return &eb->cb.base;
}
