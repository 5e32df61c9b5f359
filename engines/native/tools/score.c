/* cascade-score: the log-probabilities a model gives a fixed token sequence,
 * through the library directly (loader, a backend, KV cache, forward
 * pass; no scheduler), for comparison with a reference implementation.
 *
 *   cascade-score --model DIR --tokens 0,5,17,... [--prefill P]
 *                 [--mla absorb|naive] [--batch-with N] [--seed S]
 *                 [--device cpu|cuda:N[,M...]] [--tp N] [--ep N] [--threads T]
 *                 [--portable] [--no-bf16] [--bf16-dp|--bf16-fma]
 *
 * --device runs the same steps on a GPU (default cpu), so the CUDA backend's
 * log-probs can be compared with the CPU's and the reference's; a CUDA op
 * that failed makes the run fail (exit 1) rather than print its output.
 *
 * --tp N / --ep N run the model over N ranks in this process, tensor- and
 * expert-parallel (model/parallel.h): one rank per GPU named, or on the CPU
 * N backends of --threads threads each, as threads of this process. They
 * default to the number of GPUs named (1 on the CPU; ep 1 for a dense
 * model), so that the output can be compared with a single rank's.
 *
 * The first P tokens (default: all) run as one prefill step whose logits
 * are taken at every position; each later token runs as its own decode
 * step, teacher-forced, so every position 0..n-1 gets a row. Row i is the
 * distribution of the token after position i. stdout gets
 *   {"device": "cpu (avx512bf16, 1 threads)", "logprobs": [[vocab floats], ...]}
 * (n rows): the backend that ran (its kernels decide the rounding: the
 * AVX-512 BF16 ones round a BF16 matmul's input to BF16) and the
 * log-softmax of the engine's logits, computed in double.
 *
 * --batch-with N runs N more sequences of random tokens (seeded by --seed)
 * in the same forward steps: each has its own prompt, prefilled in chunks
 * of random size, then decodes, so the scored sequence shares every step
 * with prefill and decode tokens of others, placed before and after it. A
 * forward pass that lets one sequence's tokens touch another's shows up as
 * a difference from the run without them.
 *
 * Exit status: 0, 1 on a model or run error (the message names what failed),
 * 2 on bad usage.
 */
#include "engines/native/backend/cpu/ops_cpu.h"
#include "engines/native/backend/device.h"
#include "engines/native/model/forward.h"
#include "engines/native/model/model.h"
#include "engines/native/model/parallel.h"
#include "engines/native/runtime/kvcache.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TOKENS 65536
#define MAX_OTHERS 64
#define MAX_CHUNK 4     /* the other sequences' prefill chunks: 1..MAX_CHUNK tokens */

static void usage(void)
{
    fprintf(stderr, "usage: cascade-score --model DIR --tokens ID,ID,... [--prefill P] "
                    "[--mla absorb|naive] [--batch-with N] [--seed S] [--device cpu|cuda:N] "
                    "[--tp N] [--ep N] [--threads T] [--portable] [--no-bf16]\n"
                    "       [--bf16-dp|--bf16-fma]\n");
    exit(2);
}

/* A whole decimal number in [lo, hi], or exit through usage(). */
static long parse_int(const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        usage();
    return v;
}

/* "0,5,17" -> ids; -1 on anything else. */
static int parse_tokens(const char *s, int32_t *ids, int cap)
{
    int n = 0;
    while (*s) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || end == s || v < 0 || v > INT32_MAX || n == cap)
            return -1;
        ids[n++] = (int32_t)v;
        if (*end == ',')
            end++;
        else if (*end)
            return -1;
        s = end;
    }
    return n;
}

/* splitmix64: the other sequences' tokens and chunk sizes. */
static uint64_t next_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* One sequence of the run: its tokens, how many have gone through the
 * model, and its KV blocks. */
struct seq {
    int32_t *tok;
    int len, done;
    int32_t *blocks;
    int n_blocks;
};

/* Log-softmax of one row of logits, printed as a JSON array. */
static void print_row(const float *logits, int vocab, int first)
{
    double mx = -INFINITY, sum = 0;
    for (int i = 0; i < vocab; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    for (int i = 0; i < vocab; i++)
        sum += exp((double)logits[i] - mx);
    const double lse = mx + log(sum);
    fputs(first ? "[" : ",\n[", stdout);
    for (int i = 0; i < vocab; i++)
        printf("%s%.9g", i ? "," : "", (double)logits[i] - lse);
    putchar(']');
}

int main(int argc, char **argv)
{
    const char *model_path = NULL, *tokens = NULL, *device = NULL;
    long prefill = -1, others = 0, threads = 1, tp = 0, ep = 0;
    unsigned long long seed = 1;
    unsigned flags = 0;
    enum native_mla_mode mla = NATIVE_MLA_ABSORB;
    char err[512];

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--portable")) {
            flags |= OPS_CPU_PORTABLE;
            continue;
        }
        if (!strcmp(a, "--no-bf16")) {
            flags |= OPS_CPU_NO_BF16;   /* the float kernels for BF16 weights */
            continue;
        }
        /* One BF16 kernel set, not the faster: the two must print the same. */
        if (!strcmp(a, "--bf16-dp") || !strcmp(a, "--bf16-fma")) {
            flags |= !strcmp(a, "--bf16-dp") ? OPS_CPU_BF16_DP : OPS_CPU_BF16_FMA;
            continue;
        }
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--model"))
            model_path = v;
        else if (!strcmp(a, "--tokens"))
            tokens = v;
        else if (!strcmp(a, "--prefill"))
            prefill = parse_int(v, 1, MAX_TOKENS);
        else if (!strcmp(a, "--batch-with"))
            others = parse_int(v, 0, MAX_OTHERS);
        else if (!strcmp(a, "--seed"))
            seed = (unsigned long long)parse_int(v, 0, INT32_MAX);
        else if (!strcmp(a, "--device"))
            device = v;
        else if (!strcmp(a, "--tp"))
            tp = parse_int(v, 1, NATIVE_MAX_WORLD);
        else if (!strcmp(a, "--ep"))
            ep = parse_int(v, 1, NATIVE_MAX_WORLD);
        else if (!strcmp(a, "--threads"))
            threads = parse_int(v, 0, 1024);
        else if (!strcmp(a, "--mla") && !strcmp(v, "absorb"))
            mla = NATIVE_MLA_ABSORB;
        else if (!strcmp(a, "--mla") && !strcmp(v, "naive"))
            mla = NATIVE_MLA_NAIVE;
        else
            usage();
    }
    if (!model_path || !tokens)
        usage();
    struct native_device dev;
    if (native_device_parse(device, &dev, err, sizeof(err)) != 0) {
        fprintf(stderr, "cascade-score: --device: %s\n", err);
        return 2;
    }

    static int32_t target[MAX_TOKENS];
    int n = parse_tokens(tokens, target, MAX_TOKENS);
    if (n < 1) {
        fprintf(stderr, "cascade-score: --tokens must be a comma-separated list of token ids\n");
        return 2;
    }
    if (prefill < 0 || prefill > n)
        prefill = n;

    struct native_model *m = NULL;
    struct native_backend *be = NULL;
    struct kvcache *kv = NULL;
    struct native_forward *fw = NULL;
    struct seq seqs[MAX_OTHERS + 1];
    int n_seqs = (int)others + 1, rc = 1;
    int32_t *b_tok = NULL, *b_pos = NULL, *b_seq = NULL, *b_out = NULL;
    struct native_seq_view *views = NULL;
    memset(seqs, 0, sizeof(seqs));

    if (native_model_load(model_path, &m, err, sizeof(err)) != 0) {
        fprintf(stderr, "cascade-score: %s\n", err);
        return 1;
    }
    const struct native_model_config *c = &m->cfg;
    for (int i = 0; i < n; i++) {
        if (target[i] >= c->vocab_size) {
            fprintf(stderr, "cascade-score: token %d is outside the vocabulary (%d)\n", target[i],
                    c->vocab_size);
            goto out;
        }
    }

    /* Sequence 0 is the scored one; the others get random prompts a little
     * longer than it, so they are still running in its decode steps. */
    uint64_t rs = seed;
    seqs[0].tok = target;
    seqs[0].len = n;
    int n_ctx = n, max_step = (int)prefill;
    for (int s = 1; s < n_seqs; s++) {
        seqs[s].len = n + 1 + (int)(next_rand(&rs) % 8);
        seqs[s].tok = malloc(sizeof(int32_t) * (size_t)seqs[s].len);
        if (!seqs[s].tok)
            goto oom;
        for (int i = 0; i < seqs[s].len; i++)
            seqs[s].tok[i] = (int32_t)(next_rand(&rs) % (uint64_t)c->vocab_size);
        n_ctx = seqs[s].len > n_ctx ? seqs[s].len : n_ctx;
        max_step += MAX_CHUNK;
    }
    if (n_ctx > c->max_pos) {
        fprintf(stderr, "cascade-score: %d positions, but the model takes %d\n", n_ctx, c->max_pos);
        goto out;
    }

    struct native_kv_desc kvd;
    native_forward_kv_desc(m, &kvd);
    if (!(be = native_parallel_on_device(m, &dev, (int)tp, (int)ep, (int)threads, flags, err,
                                         sizeof(err)))) {
        fprintf(stderr, "cascade-score: %s\n", err);
        goto out;
    }
    const size_t block_bytes = be->ops->kv_block_bytes(be, &kvd);
    const int per_seq = (n_ctx + be->ops->kv_block_size - 1) / be->ops->kv_block_size;
    kv = kvcache_new(be, &kvd, block_bytes * (size_t)per_seq * (size_t)n_seqs, err, sizeof(err));
    struct native_forward_opts fo = {
        .max_tokens = max_step, .max_out = max_step, .n_ctx = n_ctx, .mla = mla};
    fw = kv ? native_forward_new(m, be, &fo, err, sizeof(err)) : NULL;
    if (!fw) {
        fprintf(stderr, "cascade-score: %s\n", err);
        goto out;
    }
    for (int s = 0; s < n_seqs; s++) {
        seqs[s].n_blocks = kvcache_blocks_for(kv, seqs[s].len);
        seqs[s].blocks = malloc(sizeof(int32_t) * (size_t)seqs[s].n_blocks);
        if (!seqs[s].blocks || kvcache_alloc(kv, seqs[s].n_blocks, seqs[s].blocks) != 0)
            goto oom;
    }
    b_tok = malloc(sizeof(int32_t) * (size_t)max_step);
    b_pos = malloc(sizeof(int32_t) * (size_t)max_step);
    b_seq = malloc(sizeof(int32_t) * (size_t)max_step);
    b_out = malloc(sizeof(int32_t) * (size_t)max_step);
    views = malloc(sizeof(*views) * (size_t)n_seqs);
    if (!b_tok || !b_pos || !b_seq || !b_out || !views)
        goto oom;
    for (int s = 0; s < n_seqs; s++)
        views[s] = (struct native_seq_view){seqs[s].blocks, seqs[s].n_blocks};

    /* The steps: until the scored sequence is through. In each, the others
     * go in two halves around it, so its tokens sit between other
     * sequences' rows; every token's logits are asked for, so the out-row
     * bookkeeping is exercised too. */
    char dev_name[256];
    native_parallel_describe(be, dev_name, sizeof(dev_name));
    printf("{\"device\": \"%s\", \"logprobs\": [", dev_name);
    int printed = 0;
    while (seqs[0].done < n) {
        int nt = 0, n_out = 0, target_first = 0, target_count = 0;
        for (int k = 0; k < n_seqs; k++) {
            /* order: others 1..half, the target, the rest */
            int half = (n_seqs - 1) / 2;
            int s = k < half ? k + 1 : k == half ? 0 : k;
            struct seq *q = &seqs[s];
            if (q->done >= q->len)
                continue;
            int take;
            if (s == 0)
                take = q->done == 0 ? (int)prefill : 1;
            else
                take = q->done == 0 ? 1 + (int)(next_rand(&rs) % MAX_CHUNK) : 1;
            if (take > q->len - q->done)
                take = q->len - q->done;
            if (s == 0) {
                target_first = n_out;
                target_count = take;
            }
            for (int i = 0; i < take; i++) {
                b_tok[nt] = q->tok[q->done + i];
                b_pos[nt] = q->done + i;
                b_seq[nt] = s;
                b_out[n_out++] = nt;
                nt++;
            }
            q->done += take;
        }
        struct native_batch batch = {
            .n_tokens = nt, .token = b_tok, .pos = b_pos, .seq = b_seq, .seqs = views,
            .n_seqs = n_seqs, .out_rows = b_out, .n_out = n_out};
        const float *logits = native_forward_run(fw, kvcache_kv(kv), &batch);
        const char *dev_err = native_parallel_error(be);
        if (dev_err) {
            fprintf(stderr, "cascade-score: %s\n", dev_err);
            goto out;
        }
        for (int i = 0; i < target_count; i++)
            print_row(logits + (size_t)(target_first + i) * (size_t)c->vocab_size, c->vocab_size,
                      printed++ == 0);
    }
    fputs("]}\n", stdout);
    rc = fflush(stdout) == 0 ? 0 : 1;
    goto out;

oom:
    fprintf(stderr, "cascade-score: out of memory\n");
out:
    free(b_tok);
    free(b_pos);
    free(b_seq);
    free(b_out);
    free(views);
    for (int s = 0; s < n_seqs; s++) {
        if (s > 0)
            free(seqs[s].tok);
        free(seqs[s].blocks);
    }
    native_forward_free(fw);
    kvcache_free(kv);
    native_backend_free(be);
    native_model_free(m);
    return rc;
}
