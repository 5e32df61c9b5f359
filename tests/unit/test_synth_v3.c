/* test_synth_v3: the tiny DeepSeek-V3 checkpoint writer (model/synth_v3.h).
 *
 * Writes the tiny preset in BF16, in FP8 and in FP8 without q LoRA into a
 * temporary folder and reads them back with the project's own readers:
 *   - safetensors_open on the folder (so through the index): every tensor the
 *     real checkpoint has, by name, with its dtype and shape, listed here from
 *     the architecture (not from the writer's list), and nothing else;
 *   - FP8: each scale tensor is [ceil(rows/128)][ceil(cols/128)], each block
 *     (partial ones included) holds a +-448 code (scale = max|w|/448), and
 *     q * scale_inv is within e4m3's rounding of the BF16 checkpoint's weight;
 *   - config.json: the HF field names and values, q_lora_rank null without q
 *     LoRA, quantization_config only in FP8, vocab_size = embedding rows;
 *   - the index: total_size, and every tensor mapped to the shard that has it;
 *   - tokenizer.json through tok_bpe_load: BOS/EOS as config.json says,
 *     DeepSeek-V3's added tokens, encode-then-decode round trips, learned
 *     merges that compress English, and the chat template's markers;
 *   - determinism: the same spec twice gives the same bytes, another seed not.
 */
#include "engines/native/backend/dtype.h"
#include "engines/native/model/safetensors.h"
#include "engines/native/model/synth_v3.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_bpe.h"

#include "tests/unit/test.h"

#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char root[256];

/* The tensor must exist with this dtype and shape (cols 0: a vector). */
static int expect(const struct safetensors *st, const char *dtype, int64_t rows, int64_t cols,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static int expect(const struct safetensors *st, const char *dtype, int64_t rows, int64_t cols,
                  const char *fmt, ...)
{
    char name[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof(name), fmt, ap);
    va_end(ap);
    const struct st_tensor *t = safetensors_find(st, name);
    int ok = t && !strcmp(t->dtype, dtype) && t->ndim == (cols ? 2 : 1) && t->shape[0] == rows &&
             (!cols || t->shape[1] == cols);
    if (!ok)
        fprintf(stderr, "tensor %s: %s, want %s [%lld, %lld]\n", name,
                t ? t->dtype : "missing", dtype, (long long)rows, (long long)cols);
    return ok;
}

static int64_t cdiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

/* A linear weight: BF16, or F8_E4M3 plus its F32 block scales. Counts the
 * tensors it expects into *n. */
static int expect_linear(const struct safetensors *st, int fp8, int64_t rows, int64_t cols,
                         const char *name, int *n)
{
    if (!fp8) {
        (*n)++;
        return expect(st, "BF16", rows, cols, "%s.weight", name);
    }
    *n += 2;
    return expect(st, "F8_E4M3", rows, cols, "%s.weight", name) &
           expect(st, "F32", cdiv(rows, 128), cdiv(cols, 128), "%s.weight_scale_inv", name);
}

/* Every tensor of one decoder layer, from the published architecture. */
static int expect_layer(const struct safetensors *st, const struct synth_v3_spec *s, int l, int *n)
{
    const int D = s->hidden, H = s->n_heads, f = s->fp8;
    char p[64], q[256];
    int ok = 1;
    snprintf(p, sizeof(p), "model.layers.%d.", l);
#define LIN(r, c, ...)                                                \
    do {                                                              \
        snprintf(q, sizeof(q), __VA_ARGS__);                          \
        ok &= expect_linear(st, f, (r), (c), q, n);                   \
    } while (0)
#define VEC(dt, r, ...)                                               \
    do {                                                              \
        ok &= expect(st, dt, (r), 0, __VA_ARGS__);                    \
        (*n)++;                                                       \
    } while (0)
    VEC("BF16", D, "%sinput_layernorm.weight", p);
    VEC("BF16", D, "%spost_attention_layernorm.weight", p);
    if (s->q_lora_rank) {
        LIN(s->q_lora_rank, D, "%sself_attn.q_a_proj", p);
        VEC("BF16", s->q_lora_rank, "%sself_attn.q_a_layernorm.weight", p);
        LIN(H * (s->qk_nope_dim + s->qk_rope_dim), s->q_lora_rank, "%sself_attn.q_b_proj", p);
    } else {
        LIN(H * (s->qk_nope_dim + s->qk_rope_dim), D, "%sself_attn.q_proj", p);
    }
    LIN(s->kv_lora_rank + s->qk_rope_dim, D, "%sself_attn.kv_a_proj_with_mqa", p);
    VEC("BF16", s->kv_lora_rank, "%sself_attn.kv_a_layernorm.weight", p);
    LIN(H * (s->qk_nope_dim + s->v_head_dim), s->kv_lora_rank, "%sself_attn.kv_b_proj", p);
    LIN(D, H * s->v_head_dim, "%sself_attn.o_proj", p);
    if (l < s->first_k_dense) {
        LIN(s->intermediate, D, "%smlp.gate_proj", p);
        LIN(s->intermediate, D, "%smlp.up_proj", p);
        LIN(D, s->intermediate, "%smlp.down_proj", p);
    } else {
        ok &= expect(st, "BF16", s->n_routed_experts, D, "%smlp.gate.weight", p);
        (*n)++;
        VEC("F32", s->n_routed_experts, "%smlp.gate.e_score_correction_bias", p);
        for (int e = 0; e < s->n_routed_experts; e++) {
            LIN(s->moe_intermediate, D, "%smlp.experts.%d.gate_proj", p, e);
            LIN(s->moe_intermediate, D, "%smlp.experts.%d.up_proj", p, e);
            LIN(D, s->moe_intermediate, "%smlp.experts.%d.down_proj", p, e);
        }
        int si = s->n_shared_experts * s->moe_intermediate;
        LIN(si, D, "%smlp.shared_experts.gate_proj", p);
        LIN(si, D, "%smlp.shared_experts.up_proj", p);
        LIN(D, si, "%smlp.shared_experts.down_proj", p);
    }
#undef LIN
#undef VEC
    return ok;
}

/* All tensors, and no others. */
static void check_tensors(const struct safetensors *st, const struct synth_v3_spec *s, int vocab)
{
    int n = 0, ok = 1;
    const int D = s->hidden;
    ok &= expect(st, "BF16", vocab, D, "model.embed_tokens.weight");
    ok &= expect(st, "BF16", D, 0, "model.norm.weight");
    ok &= expect(st, "BF16", vocab, D, "lm_head.weight");
    n += 3;
    for (int l = 0; l < s->n_layers + 1; l++)
        ok &= expect_layer(st, s, l, &n);
    /* The multi-token-prediction layer's own parts (index n_layers). */
    const int m = s->n_layers;
    ok &= expect(st, "BF16", vocab, D, "model.layers.%d.embed_tokens.weight", m);
    ok &= expect(st, "BF16", D, 0, "model.layers.%d.enorm.weight", m);
    ok &= expect(st, "BF16", D, 0, "model.layers.%d.hnorm.weight", m);
    ok &= expect(st, "BF16", D, 2 * D, "model.layers.%d.eh_proj.weight", m);
    ok &= expect(st, "BF16", D, 0, "model.layers.%d.shared_head.norm.weight", m);
    ok &= expect(st, "BF16", vocab, D, "model.layers.%d.shared_head.head.weight", m);
    n += 6;
    CHECK(ok);
    CHECK(safetensors_count(st) == (size_t)n);
}

/* The smallest (want_max 0) or largest scale of n. */
static float s_min_max(const void *data, int64_t n, int want_max)
{
    const float *s = data;
    float m = s[0];
    for (int64_t i = 1; i < n; i++)
        m = want_max ? fmaxf(m, s[i]) : fminf(m, s[i]);
    return m;
}

/* FP8: scale shapes, one +-448 code per block, and q * scale_inv close to the
 * same weight in the BF16 checkpoint (same seed, same name). */
static void check_fp8_against_bf16(const struct safetensors *f8, const struct safetensors *bf)
{
    int n_checked = 0, partial = 0, bad_max = 0, bad_close = 0, varied = 0;
    for (size_t i = 0; i < safetensors_count(f8); i++) {
        const struct st_tensor *q = safetensors_at(f8, i);
        if (strcmp(q->dtype, "F8_E4M3") != 0)
            continue;
        char sname[200];
        snprintf(sname, sizeof(sname), "%s_scale_inv", q->name);
        const struct st_tensor *sc = safetensors_find(f8, sname);
        const struct st_tensor *w = safetensors_find(bf, q->name);
        if (!sc || !w || strcmp(w->dtype, "BF16") || sc->ndim != 2 || q->ndim != 2) {
            bad_close++;
            continue;
        }
        const int64_t R = q->shape[0], C = q->shape[1], RB = cdiv(R, 128);
        const int64_t CB = cdiv(C, 128);
        if (sc->shape[0] != RB || sc->shape[1] != CB) {
            bad_close++;
            continue;
        }
        if (R % 128 || C % 128)
            partial++;
        float smin = s_min_max(sc->data, RB * CB, 0), smax = s_min_max(sc->data, RB * CB, 1);
        varied += RB * CB > 1 && smax > 1.3f * smin;
        const uint8_t *qb = q->data;
        const uint16_t *wb = w->data;
        const float *s = sc->data;
        for (int64_t rb = 0; rb < RB; rb++)
            for (int64_t cb = 0; cb < CB; cb++) {
                int has_max = 0;
                float scale = s[rb * CB + cb];
                double amax = 0;
                for (int64_t r = rb * 128; r < R && r < rb * 128 + 128; r++)
                    for (int64_t c = cb * 128; c < C && c < cb * 128 + 128; c++) {
                        uint8_t b = qb[r * C + c];
                        has_max |= (b & 0x7f) == 0x7e;
                        double deq = (double)dtype_e4m3_to_f32(b) * scale;
                        double ref = dtype_bf16_to_f32(wb[r * C + c]);
                        amax = fmax(amax, fabs(ref));
                        /* e4m3: half an ulp is 2^-4 relative (normals), or
                         * 2^-10 * scale absolute (subnormals); BF16 adds 2^-9. */
                        double tol = fabs(ref) * (1.0 / 16 + 1.0 / 256) + scale * 0x1p-9;
                        if (fabs(deq - ref) > tol)
                            bad_close++;
                    }
                /* scale = max|w| / 448 (the BF16 copy's max is within
                 * BF16's rounding of the writer's float max). */
                bad_max += !has_max || fabs(scale * 448.0 - amax) > amax * 0x1p-8;
            }
        n_checked++;
    }
    CHECK(n_checked > 100);
    CHECK(partial > 0);     /* q_a (96 rows), kv_a (80 rows), q_b (192 rows) */
    /* Blocks of one tensor have scales of their own (the writer's per-block
     * gain), so a kernel that reads the wrong block's scale is caught. */
    CHECK(varied > n_checked / 2);
    CHECK(bad_max == 0);
    CHECK(bad_close == 0);
}

static json_t *load_json(const char *dir, const char *file)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    return json_load_file(path, 0, NULL);
}

static int json_int_is(const json_t *o, const char *key, json_int_t v)
{
    const json_t *x = json_object_get(o, key);
    int ok = json_is_integer(x) && json_integer_value(x) == v;
    if (!ok)
        fprintf(stderr, "config %s: want %lld\n", key, (long long)v);
    return ok;
}

static int json_num_is(const json_t *o, const char *key, double v)
{
    const json_t *x = json_object_get(o, key);
    return json_is_number(x) && json_number_value(x) == v;
}

static int json_str_is(const json_t *o, const char *key, const char *v)
{
    const json_t *x = json_object_get(o, key);
    return json_is_string(x) && !strcmp(json_string_value(x), v);
}

static void check_config(const char *dir, const struct synth_v3_spec *s, int vocab)
{
    json_t *c = load_json(dir, "config.json");
    CHECK(c != NULL);
    if (!c)
        return;
    const json_t *arch = json_object_get(c, "architectures");
    CHECK(json_is_array(arch) && json_array_size(arch) == 1 &&
          !strcmp(json_string_value(json_array_get(arch, 0)) ? json_string_value(json_array_get(arch, 0)) : "",
                  "DeepseekV3ForCausalLM"));
    CHECK(json_str_is(c, "model_type", "deepseek_v3"));
    CHECK(json_int_is(c, "hidden_size", 256) && json_int_is(c, "intermediate_size", 512) &&
          json_int_is(c, "moe_intermediate_size", 128) && json_int_is(c, "num_hidden_layers", 3) &&
          json_int_is(c, "num_attention_heads", 4) && json_int_is(c, "num_key_value_heads", 4) &&
          json_int_is(c, "n_shared_experts", 1) && json_int_is(c, "n_routed_experts", 16) &&
          json_int_is(c, "kv_lora_rank", 64) && json_int_is(c, "qk_rope_head_dim", 16) &&
          json_int_is(c, "v_head_dim", 32) && json_int_is(c, "qk_nope_head_dim", 32) &&
          json_int_is(c, "n_group", 4) && json_int_is(c, "topk_group", 2) &&
          json_int_is(c, "num_experts_per_tok", 4) && json_int_is(c, "moe_layer_freq", 1) &&
          json_int_is(c, "first_k_dense_replace", 1) &&
          json_int_is(c, "max_position_embeddings", 163840) &&
          json_int_is(c, "num_nextn_predict_layers", 1) && json_int_is(c, "vocab_size", vocab) &&
          json_int_is(c, "bos_token_id", 0) && json_int_is(c, "eos_token_id", 1));
    CHECK(json_num_is(c, "routed_scaling_factor", 2.5) && json_num_is(c, "rms_norm_eps", 1e-6) &&
          json_num_is(c, "rope_theta", 10000));
    CHECK(json_str_is(c, "topk_method", "noaux_tc") && json_str_is(c, "scoring_func", "sigmoid") &&
          json_str_is(c, "hidden_act", "silu") && json_str_is(c, "torch_dtype", "bfloat16"));
    CHECK(json_is_true(json_object_get(c, "norm_topk_prob")) &&
          json_is_false(json_object_get(c, "tie_word_embeddings")));
    if (s->q_lora_rank)
        CHECK(json_int_is(c, "q_lora_rank", 96));
    else
        CHECK(json_is_null(json_object_get(c, "q_lora_rank")));
    const json_t *rs = json_object_get(c, "rope_scaling");
    CHECK(json_str_is(rs, "type", "yarn") && json_num_is(rs, "factor", 40) &&
          json_num_is(rs, "original_max_position_embeddings", 4096) &&
          json_num_is(rs, "beta_fast", 32) && json_num_is(rs, "beta_slow", 1) &&
          json_num_is(rs, "mscale", 1.0) && json_num_is(rs, "mscale_all_dim", 1.0));
    const json_t *qc = json_object_get(c, "quantization_config");
    if (s->fp8) {
        const json_t *bs = json_object_get(qc, "weight_block_size");
        CHECK(json_str_is(qc, "quant_method", "fp8") && json_str_is(qc, "fmt", "e4m3") &&
              json_str_is(qc, "activation_scheme", "dynamic") && json_array_size(bs) == 2 &&
              json_integer_value(json_array_get(bs, 0)) == 128 &&
              json_integer_value(json_array_get(bs, 1)) == 128);
    } else {
        CHECK(qc == NULL);
    }
    json_decref(c);
}

/* total_size is the sum of the tensors' bytes; every tensor is in the index
 * and its shard is the file it was read from. */
static void check_index(const char *dir, const struct safetensors *st)
{
    json_t *idx = load_json(dir, "model.safetensors.index.json");
    CHECK(idx != NULL);
    if (!idx)
        return;
    const json_t *map = json_object_get(idx, "weight_map");
    uint64_t total = 0;
    int bad = 0;
    for (size_t i = 0; i < safetensors_count(st); i++) {
        const struct st_tensor *t = safetensors_at(st, i);
        total += t->nbytes;
        const char *file = json_string_value(json_object_get(map, t->name));
        const char *base = strrchr(t->file, '/');
        if (!file || !base || strcmp(base + 1, file))
            bad++;
    }
    CHECK(bad == 0);
    CHECK(json_object_size(map) == safetensors_count(st));
    const json_t *ts = json_object_get(json_object_get(idx, "metadata"), "total_size");
    CHECK(json_is_integer(ts) && (uint64_t)json_integer_value(ts) == total);
    json_decref(idx);
}

static int round_trips(const struct tokenizer *t, const char *text, size_t *n_tokens)
{
    struct tok_ids ids = {0};
    char *back = NULL;
    size_t len = 0;
    int ok = tokenizer_encode(t, text, strlen(text), 0, &ids) == TOK_OK &&
             tok_decode(t, ids.v, ids.n, &back, &len) == TOK_OK && len == strlen(text) &&
             !memcmp(back, text, len);
    if (!ok)
        fprintf(stderr, "round trip failed: \"%s\" -> \"%s\"\n", text, back ? back : "(null)");
    if (n_tokens)
        *n_tokens = ids.n;
    free(back);
    tok_ids_free(&ids);
    return ok;
}

static void check_tokenizer(const char *dir, int vocab)
{
    char path[512], err[256] = "";
    struct tokenizer *t = NULL;
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    int rc = tok_bpe_load(path, &t, err, sizeof(err));
    if (rc != TOK_OK)
        fprintf(stderr, "tok_bpe_load: %s\n", err);
    CHECK(rc == TOK_OK && t != NULL);
    if (!t)
        return;
    CHECK(t->vocab_size == vocab);
    CHECK(t->bos_id == 0 && t->eos_id == 1);    /* as config.json */
    CHECK(tokenizer_lookup(t, "<\uff5cbegin\u2581of\u2581sentence\uff5c>") == 0);
    CHECK(tokenizer_lookup(t, "<\uff5cend\u2581of\u2581sentence\uff5c>") == 1);
    CHECK(tokenizer_lookup(t, "<\uff5c\u2581pad\u2581\uff5c>") == 2);
    int32_t user = tokenizer_lookup(t, "<\uff5cUser\uff5c>");
    int32_t asst = tokenizer_lookup(t, "<\uff5cAssistant\uff5c>");
    CHECK(user > 2 && user < vocab && asst > 2 && asst < vocab);
    CHECK(tokenizer_lookup(t, "<\uff5ctool\u2581outputs\u2581begin\uff5c>") > 0);
    CHECK(tokenizer_lookup(t, "<\uff5ctool\u2581output\u2581end\uff5c>") > 0);
    CHECK(tok_bpe_is_special(t, 0) && tok_bpe_is_special(t, 1) && !tok_bpe_is_special(t, user));

    static const char *const texts[] = {
        "Hello! How are you today?",
        "The assistant answered the user's question before the morning.",
        "def add(a, b):\n    return a + b\n",
        "na\xc3\xafve caf\xc3\xa9, \xe6\x9d\xb1\xe4\xba\xac, \xf0\x9f\x99\x82 and 1234567 \t tabs\r\n",
        "x",
    };
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
        CHECK(round_trips(t, texts[i], NULL));
    /* Learned merges compress the training language: far fewer tokens than
     * bytes for an English sentence made of its words. */
    size_t n = 0;
    const char *en = "The user asked the assistant a question, and the assistant gave an answer.";
    CHECK(round_trips(t, en, &n));
    CHECK(n > 0 && n * 3 < strlen(en));
    /* Every id decodes to something (no hole in the id space). */
    int holes = 0;
    for (int32_t id = 0; id < vocab; id++) {
        size_t len = 0;
        if (!tokenizer_token_bytes(t, -1, id, &len) || len == 0)
            holes++;
    }
    CHECK(holes == 0);
    /* The chat template finds its markers: BOS <User> text <Assistant>. */
    struct chat_turn turn = {"user", "Hi", 2};
    struct tok_ids ids = {0};
    CHECK(chat_template_encode(t, &turn, 1, 1, 0, &ids) == TOK_OK && ids.n >= 4 &&
          ids.v[0] == 0 && ids.v[1] == user && ids.v[ids.n - 1] == asst);
    tok_ids_free(&ids);
    tokenizer_free(t);
}

/* 1 when the two files hold the same bytes. */
static int same_file(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    while (same) {
        int ca = fgetc(fa), cb = fgetc(fb);
        if (ca != cb)
            same = 0;
        if (ca == EOF || cb == EOF)
            break;
    }
    if (fa)
        fclose(fa);
    if (fb)
        fclose(fb);
    return same;
}

/* Same files, same bytes (n_files > 0 of them). */
static int same_dir(const char *a, const char *b, int *n_files)
{
    DIR *d = opendir(a);
    int same = d != NULL;
    *n_files = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char pa[1024], pb[1024];
        snprintf(pa, sizeof(pa), "%s/%s", a, e->d_name);
        snprintf(pb, sizeof(pb), "%s/%s", b, e->d_name);
        same &= same_file(pa, pb);
        (*n_files)++;
    }
    if (d)
        closedir(d);
    return same;
}

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[1024];
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        unlink(p);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

static struct safetensors *write_and_open(const struct synth_v3_spec *s, const char *name,
                                          char *dir, size_t dirlen)
{
    char err[512] = "";
    snprintf(dir, dirlen, "%s/%s", root, name);
    if (synth_v3_write(s, dir, err, sizeof(err)) != 0) {
        fprintf(stderr, "synth_v3_write %s: %s\n", name, err);
        return NULL;
    }
    struct safetensors *st = safetensors_open(dir, err, sizeof(err));
    if (!st)
        fprintf(stderr, "safetensors_open %s: %s\n", name, err);
    return st;
}

int main(void)
{
    snprintf(root, sizeof(root), "/tmp/cascade_synth_v3_XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    struct synth_v3_spec bf, f8, f8n;
    CHECK(synth_v3_preset("tiny", &bf) == 0);
    CHECK(synth_v3_preset("nope", &f8) == -1);
    f8 = bf;
    f8.fp8 = 1;
    f8n = f8;
    f8n.q_lora_rank = 0;
    f8n.n_shards = 3;
    const int vocab = synth_v3_vocab_size();
    CHECK(vocab >= 256 + 3 + 100 && vocab % 64 == 0);

    char d_bf[300], d_f8[300], d_f8n[300], d_again[300], d_seed[300];
    struct safetensors *s_bf = write_and_open(&bf, "bf16", d_bf, sizeof(d_bf));
    struct safetensors *s_f8 = write_and_open(&f8, "fp8", d_f8, sizeof(d_f8));
    struct safetensors *s_f8n = write_and_open(&f8n, "fp8-noq", d_f8n, sizeof(d_f8n));
    CHECK(s_bf && s_f8 && s_f8n);
    if (s_bf && s_f8 && s_f8n) {
        check_tensors(s_bf, &bf, vocab);
        check_tensors(s_f8, &f8, vocab);
        check_tensors(s_f8n, &f8n, vocab);
        check_fp8_against_bf16(s_f8, s_bf);
        check_config(d_bf, &bf, vocab);
        check_config(d_f8, &f8, vocab);
        check_config(d_f8n, &f8n, vocab);
        check_index(d_bf, s_bf);
        check_index(d_f8n, s_f8n);
        check_tokenizer(d_bf, vocab);
        /* Norms near 1 but not 1; the correction bias small but not 0. */
        const struct st_tensor *nw = safetensors_find(s_bf, "model.layers.0.input_layernorm.weight");
        const struct st_tensor *bias =
            safetensors_find(s_bf, "model.layers.1.mlp.gate.e_score_correction_bias");
        CHECK(nw && bias);
        if (nw && bias) {
            float n0 = dtype_bf16_to_f32(((const uint16_t *)nw->data)[0]);
            float b0 = ((const float *)bias->data)[0];
            CHECK(n0 > 0.7f && n0 < 1.3f && n0 != 1.0f);
            CHECK(fabsf(b0) <= 0.1f && b0 != 0.0f);
        }
    }
    safetensors_free(s_bf);
    safetensors_free(s_f8);
    safetensors_free(s_f8n);

    /* Determinism: the FP8 spec again gives the same bytes in every file;
     * another seed gives other weights. */
    struct safetensors *s_again = write_and_open(&f8, "fp8-again", d_again, sizeof(d_again));
    int n_files = 0;
    CHECK(s_again && same_dir(d_f8, d_again, &n_files) && n_files == 6);
    safetensors_free(s_again);
    struct synth_v3_spec other = f8;
    other.seed = 2;
    struct safetensors *s_seed = write_and_open(&other, "fp8-seed2", d_seed, sizeof(d_seed));
    char a[512], b[512];
    snprintf(a, sizeof(a), "%s/model-00001-of-00002.safetensors", d_f8);
    snprintf(b, sizeof(b), "%s/model-00001-of-00002.safetensors", d_seed);
    CHECK(s_seed && !same_file(a, b));
    safetensors_free(s_seed);

    /* A bad spec is refused with a message, not written. */
    struct synth_v3_spec bad = bf;
    bad.topk_group = 5;
    char err[256] = "";
    CHECK(synth_v3_write(&bad, d_bf, err, sizeof(err)) == -1 && err[0]);

    remove_dir(d_bf);
    remove_dir(d_f8);
    remove_dir(d_f8n);
    remove_dir(d_again);
    remove_dir(d_seed);
    rmdir(root);
    TEST_MAIN_END();
}
