/* test_native_model.c: the runtime as a library on the real stories260K.
 *
 * Greedy decoding from BOS for 256 positions must reproduce the model
 * README's reference text exactly, through the llama2.c loader and through
 * the safetensors copy the converter makes (F32: the same tokens; F16/BF16:
 * the weights round, so only loading and sane text are checked). Prefill as
 * one matrix-matrix batch must give the logits of token-by-token decoding.
 * Broken files must give errors naming the file and the tensor. */
#include "engines/native/model/convert.h"
#include "engines/native/model/forward.h"
#include "engines/native/runtime/kvcache.h"
#include "engines/native/model/model.h"
#include "engines/native/backend/cpu/ops_cpu.h"
#include "engines/native/runtime/prompt.h"
#include "engines/native/runtime/sampler.h"
#include "engines/native/model/synth.h"
#include "tokenizer/tokenizer.h"
#include "tests/unit/test.h"

#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <unistd.h>

static char model_path[1024], tok_path[1024], ref_path[1024];

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    fclose(f);
    if (s) {
        s[n] = '\0';
        *len = (size_t)n;
    }
    return s;
}

/* The reference text without the newlines the reference runner printed after it. */
static char *reference_text(void)
{
    size_t n;
    char *s = read_file(ref_path, &n);
    if (!s)
        return NULL;
    while (n > 0 && s[n - 1] == '\n')
        s[--n] = '\0';
    return s;
}

/* Greedy from the prompt to `steps` positions with a single sequence; returns
 * the decoded text (malloc'd). The prompt is prefilled as one batch. */
static char *greedy(const struct native_model *m, const struct tokenizer *tok, const char *prompt,
                    int steps, unsigned flags, int threads)
{
    char err[256];
    struct tok_ids ids = {0};
    prompt_encode_text(tok, PROMPT_PLAIN, prompt, strlen(prompt), &ids);
    const struct native_model_config *c = &m->cfg;
    struct native_backend *be = ops_cpu_new(threads, flags);
    struct native_kv_desc kvd;
    native_forward_kv_desc(m, &kvd);
    struct kvcache *kv = be ? kvcache_new(be, &kvd, (size_t)64 << 20, err, sizeof(err)) : NULL;
    struct native_forward_opts fo = {.max_tokens = (int)ids.n, .max_out = 1, .n_ctx = steps};
    struct native_forward *fw = kv ? native_forward_new(m, be, &fo, err, sizeof(err)) : NULL;
    struct sampler *smp = sampler_new(c->vocab_size);
    if (!be || !kv || !fw || !smp) {
        fprintf(stderr, "greedy: %s\n", err);
        return NULL;
    }
    int nb = kvcache_blocks_for(kv, steps);
    int32_t blocks[64];
    kvcache_alloc(kv, nb, blocks);
    struct native_seq_view sv = {blocks, nb};
    int32_t *pos = calloc(ids.n, 4), *seq = calloc(ids.n, 4);
    for (size_t i = 0; i < ids.n; i++)
        pos[i] = (int32_t)i;
    int32_t last = (int32_t)ids.n - 1;
    struct native_batch b = {(int)ids.n, ids.v, pos, seq, &sv, 1, &last, 1};
    const float *logits = native_forward_run(fw, kvcache_kv(kv), &b);
    struct sampler_params sp = {0, 1, 0};
    uint64_t rng = 0;
    struct tok_decoder d;
    tok_decoder_init(&d, tok);
    d.prev = ids.v[ids.n - 1];
    size_t cap = 65536, len = 0;
    char *text = malloc(cap);
    for (int p = (int)ids.n;; p++) {
        int32_t next = sampler_sample(smp, logits, &sp, &rng);
        if (native_model_is_eos(m, next))
            break;
        len += tok_decoder_push(&d, next, text + len, cap - len);
        if (p >= steps)
            break;
        int32_t zero = 0;
        struct native_batch one = {1, &next, &p, &zero, &sv, 1, &zero, 1};
        logits = native_forward_run(fw, kvcache_kv(kv), &one);
    }
    len += tok_decoder_flush(&d, text + len, cap - len);
    text[len] = '\0';
    free(pos);
    free(seq);
    tok_ids_free(&ids);
    sampler_free(smp);
    native_forward_free(fw);
    kvcache_free(kv);
    native_backend_free(be);
    return text;
}

static void test_config(void)
{
    char err[256];
    struct native_model *m;
    CHECK(native_model_load(model_path, &m, err, sizeof(err)) == 0);
    CHECK(m->format == NATIVE_MODEL_LLAMA2C);
    CHECK(m->cfg.dim == 64 && m->cfg.hidden_dim == 172 && m->cfg.n_layers == 5);
    CHECK(m->cfg.n_heads == 8 && m->cfg.n_kv_heads == 4 && m->cfg.head_dim == 8);
    CHECK(m->cfg.vocab_size == 512 && m->cfg.max_pos == 512 && m->cfg.tied_embeddings);
    CHECK(m->cfg.rope_layout == NATIVE_ROPE_ADJACENT);
    CHECK(native_model_is_eos(m, 1) && native_model_is_eos(m, 2) && !native_model_is_eos(m, 3));
    native_model_free(m);
}

static void test_reference(const char *path, const char *what, int exact)
{
    char err[256];
    struct native_model *m = NULL;
    struct tokenizer *tok = NULL;
    enum prompt_style style;
    int rc = native_model_load(path, &m, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "%s: %s\n", what, err);
    CHECK(rc == 0);
    if (rc != 0)
        return;
    CHECK(prompt_tokenizer_load(m, NULL, &tok, &style, err, sizeof(err)) == 0);
    char *ref = reference_text();
    CHECK(ref != NULL);
    static const unsigned sets[3] = {0, OPS_CPU_NO_AVX512, OPS_CPU_PORTABLE};
    static const char *const names[3] = {"default", "avx2", "portable"};
    for (int k = 0; k < 3; k++) {
        char *text = greedy(m, tok, "", 256, sets[k], 2);
        CHECK(text != NULL);
        if (exact) {
            if (text && ref && strcmp(text, ref) != 0)
                fprintf(stderr, "%s (%s kernels) differs from the reference:\n%s\n", what,
                        names[k], text);
            CHECK(text && ref && strcmp(text, ref) == 0);
        } else {
            /* Rounded weights: a story that starts the same way. */
            CHECK(text && strncmp(text, "Once upon a time", 16) == 0);
        }
        free(text);
    }
    free(ref);
    tokenizer_free(tok);
    native_model_free(m);
}

/* Prefill as one batch vs feeding the prompt one token at a time: the same
 * logits bit for bit (every kernel's result is independent of the batch). */
static void test_prefill_matches_decode(void)
{
    char err[256];
    struct native_model *m;
    struct tokenizer *tok;
    enum prompt_style style;
    native_model_load(model_path, &m, err, sizeof(err));
    prompt_tokenizer_load(m, NULL, &tok, &style, err, sizeof(err));
    struct tok_ids ids = {0};
    const char *prompt = "Once upon a time, a little dog named Max found a shiny stone.";
    prompt_encode_text(tok, style, prompt, strlen(prompt), &ids);
    CHECK(ids.n > 10);
    const struct native_model_config *c = &m->cfg;
    struct native_backend *be = ops_cpu_new(2, 0);
    struct native_kv_desc kvd;
    native_forward_kv_desc(m, &kvd);
    struct kvcache *kv1 = kvcache_new(be, &kvd, 1 << 20, err, 256);
    struct kvcache *kv2 = kvcache_new(be, &kvd, 1 << 20, err, 256);
    struct native_forward_opts fo = {.max_tokens = (int)ids.n, .max_out = (int)ids.n, .n_ctx = 128};
    struct native_forward *fw = native_forward_new(m, be, &fo, err, 256);
    int32_t bl1[8], bl2[8];
    kvcache_alloc(kv1, 8, bl1);
    kvcache_alloc(kv2, 8, bl2);
    /* Scatter sequence 2's blocks in another order: paging must not matter. */
    int32_t tmp = bl2[0];
    bl2[0] = bl2[3];
    bl2[3] = tmp;
    struct native_seq_view sv1 = {bl1, 8}, sv2 = {bl2, 8};
    int n = (int)ids.n;
    int32_t *pos = calloc(n, 4), *seq = calloc(n, 4), *rows = calloc(n, 4);
    for (int i = 0; i < n; i++)
        pos[i] = rows[i] = i;
    float *all = malloc((size_t)n * c->vocab_size * 4);
    struct native_batch b = {n, ids.v, pos, seq, &sv1, 1, rows, n};
    memcpy(all, native_forward_run(fw, kvcache_kv(kv1), &b), (size_t)n * c->vocab_size * 4);
    int diff = 0;
    for (int i = 0; i < n; i++) {
        int32_t zero = 0;
        struct native_batch one = {1, &ids.v[i], &pos[i], &zero, &sv2, 1, &zero, 1};
        const float *l = native_forward_run(fw, kvcache_kv(kv2), &one);
        diff += memcmp(l, all + (size_t)i * c->vocab_size, (size_t)c->vocab_size * 4) != 0;
    }
    CHECK(diff == 0);
    free(all);
    free(pos);
    free(seq);
    free(rows);
    tok_ids_free(&ids);
    native_forward_free(fw);
    kvcache_free(kv1);
    kvcache_free(kv2);
    native_backend_free(be);
    tokenizer_free(tok);
    native_model_free(m);
}

static void copy_prefix(const char *from, const char *to, size_t n)
{
    size_t len;
    char *s = read_file(from, &len);
    FILE *f = fopen(to, "wb");
    fwrite(s, 1, n < len ? n : len, f);
    fclose(f);
    free(s);
}

static int load_fails_with(const char *path, const char *needle1, const char *needle2)
{
    char err[512] = "";
    struct native_model *m = NULL;
    int rc = native_model_load(path, &m, err, sizeof(err));
    native_model_free(m);
    int ok = rc != 0 && m == NULL && strstr(err, needle1) && (!needle2 || strstr(err, needle2));
    if (!ok)
        fprintf(stderr, "expected an error with \"%s\" / \"%s\", got rc %d: %s\n", needle1,
                needle2 ? needle2 : "", rc, err);
    return ok;
}

static void test_bad_bin(const char *dir)
{
    char p[1200];
    snprintf(p, sizeof(p), "%s/cut.bin", dir);
    /* Header, embedding, norms, wq, wk, then the file ends inside wv. */
    copy_prefix(model_path, p, 28 + 4 * (32768 + 320 + 20480 + 10240 + 100));
    CHECK(load_fails_with(p, p, "tensor 'wv'"));
    copy_prefix(model_path, p, 20);
    CHECK(load_fails_with(p, p, "truncated"));
    copy_prefix(model_path, p, 1056540 - 4);
    CHECK(load_fails_with(p, p, "tensor 'freq_cis_imag'"));
    /* A header that does not describe the file. */
    size_t n;
    char *s = read_file(model_path, &n);
    int32_t bad[3] = {64, 172, 0};     /* 0 layers */
    memcpy(s, bad, sizeof(bad));
    FILE *f = fopen(p, "wb");
    fwrite(s, 1, n, f);
    fclose(f);
    CHECK(load_fails_with(p, p, "implausible"));
    int32_t seven = 7;
    memcpy(s + 8, &seven, 4);           /* 7 layers: more bytes than there are */
    f = fopen(p, "wb");
    fwrite(s, 1, n, f);
    fclose(f);
    CHECK(load_fails_with(p, p, "truncated"));
    int32_t three = 3;
    memcpy(s + 8, &three, 4);           /* 3 layers: bytes left over */
    f = fopen(p, "wb");
    fwrite(s, 1, n, f);
    fclose(f);
    CHECK(load_fails_with(p, p, "after the last tensor"));
    free(s);
    CHECK(load_fails_with("/nonexistent/model.bin", "/nonexistent/model.bin", NULL));
}

static void rm_rf(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char p[2048];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        if (e->d_type == DT_DIR)
            rm_rf(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static int same_file(const char *a, const char *b)
{
    size_t na, nb;
    char *x = read_file(a, &na), *y = read_file(b, &nb);
    int same = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

/* The generator: the offline quickstart model (sharded, BF16 here) loads
 * through the sharded path and runs; the same seed gives the same bytes. */
static void test_synth(const char *dir)
{
    char a[1200], b[1200], fa[1400], fb[1400], err[512];
    struct synth_spec sp;
    CHECK(synth_preset("tiny", &sp) == 0);
    CHECK(synth_preset("no-such-preset", &sp) == -1);
    synth_preset("tiny", &sp);
    sp.n_shards = 3;
    sp.dtype = "BF16";
    snprintf(a, sizeof(a), "%s/synth_a", dir);
    snprintf(b, sizeof(b), "%s/synth_b", dir);
    CHECK(synth_write(&sp, a, err, sizeof(err)) == 0);
    CHECK(synth_write(&sp, b, err, sizeof(err)) == 0);
    snprintf(fa, sizeof(fa), "%s/model-00002-of-00003.safetensors", a);
    snprintf(fb, sizeof(fb), "%s/model-00002-of-00003.safetensors", b);
    CHECK(same_file(fa, fb));
    snprintf(fa, sizeof(fa), "%s/tokenizer.bin", a);
    snprintf(fb, sizeof(fb), "%s/tokenizer.bin", b);
    CHECK(same_file(fa, fb));

    struct native_model *m = NULL;
    struct tokenizer *tok = NULL;
    enum prompt_style style;
    int rc = native_model_load(a, &m, err, sizeof(err));
    if (rc)
        fprintf(stderr, "synth: %s\n", err);
    CHECK(rc == 0);
    if (rc)
        return;
    CHECK(m->embed.dtype == NATIVE_BF16 && m->cfg.n_layers == 5 && m->cfg.tied_embeddings);
    CHECK(prompt_tokenizer_load(m, NULL, &tok, &style, err, sizeof(err)) == 0 &&
          style == PROMPT_PLAIN);
    char *t1 = greedy(m, tok, "Hello, world", 40, 0, 2);
    char *t2 = greedy(m, tok, "Hello, world", 40, 0, 1);
    CHECK(t1 && t2 && strcmp(t1, t2) == 0);
    free(t1);
    free(t2);
    tokenizer_free(tok);
    native_model_free(m);
}

int main(void)
{
    const char *shared = test_shared_dir();
    snprintf(model_path, sizeof(model_path), "%s/models/stories260K/stories260K.bin", shared);
    snprintf(tok_path, sizeof(tok_path), "%s/models/stories260K/tok512.bin", shared);
    snprintf(ref_path, sizeof(ref_path), "%s/models/stories260K/reference_greedy_empty_prompt.txt", shared);
    char dir[] = "/tmp/cascade-native-model-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    test_synth(dir);
    if (access(model_path, R_OK) != 0) {
        TEST_SKIP("the stories260K checks: %s not found", model_path);
        rm_rf(dir);
        TEST_MAIN_END();
    }

    test_config();
    test_reference(model_path, "llama2.c .bin", 1);
    test_prefill_matches_decode();
    test_bad_bin(dir);

    /* The converter's safetensors copies. */
    char err[512];
    struct native_model *m;
    CHECK(native_model_load(model_path, &m, err, sizeof(err)) == 0);
    static const char *const dts[] = {"F32", "F16", "BF16"};
    for (int i = 0; i < 3; i++) {
        char out[1200];
        snprintf(out, sizeof(out), "%s/hf_%s", dir, dts[i]);
        int rc = convert_llama2c_to_hf(m, out, dts[i], tok_path, err, sizeof(err));
        if (rc)
            fprintf(stderr, "convert: %s\n", err);
        CHECK(rc == 0);
        struct native_model *h;
        CHECK(native_model_load(out, &h, err, sizeof(err)) == 0);
        if (h) {
            CHECK(h->format == NATIVE_MODEL_HF && h->cfg.rope_layout == NATIVE_ROPE_HALF);
            CHECK(h->cfg.dim == 64 && h->cfg.n_kv_heads == 4 && h->cfg.tied_embeddings);
            CHECK(fabsf(h->cfg.norm_eps - 1e-5f) < 1e-12f && h->cfg.rope_theta == 10000.0f);
            CHECK((int)h->embed.dtype == i);
            native_model_free(h);
        }
        test_reference(out, dts[i], i == 0);
    }
    native_model_free(m);
    rm_rf(dir);
    TEST_MAIN_END();
}
