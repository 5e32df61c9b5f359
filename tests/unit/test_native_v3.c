/* test_native_v3.c: the DeepSeek-V3 loader and prompt path on tiny
 * checkpoints from synth_v3 (cascade-gen-v3's writer).
 *
 * The numbers of the forward pass are checked against the numpy reference
 * in tests/reference/compare_v3.py; this test covers what needs no
 * reference: config.json parsed into every V3 field, the tensors found by
 * their published names (dense first layer, MoE layers, shared experts,
 * router bias, FP8 block scales), the multi-token-prediction layer
 * ignored, the sizes the engine reports (parameters, active parameters, KV
 * bytes per token), errors that name the tensor, the DeepSeek chat template
 * chosen for the tokenizer beside the model, and add_bos_token honoured.
 * The published DeepSeek-V3 config.json (the fuzz seed) parses to its real
 * shape, and each thing the forward pass does not implement is refused by
 * name. */
#include "engines/native/backend/cpu/ops_cpu.h"
#include "engines/native/model/forward.h"
#include "engines/native/model/model.h"
#include "engines/native/model/synth_v3.h"
#include "engines/native/runtime/kvcache.h"
#include "engines/native/runtime/prompt.h"
#include "tests/unit/test.h"
#include "tokenizer/tokenizer.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char root[64];

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f)
        return;
    fputs(text, f);
    fclose(f);
}

/* Write a tiny checkpoint into root/name; 0 or -1. */
static int make(const char *name, int fp8, int q_lora, char *dir, size_t len)
{
    struct synth_v3_spec spec;
    char err[256];
    snprintf(dir, len, "%s/%s", root, name);
    if (synth_v3_preset("tiny", &spec) != 0)
        return -1;
    spec.fp8 = fp8;
    if (!q_lora)
        spec.q_lora_rank = 0;
    if (synth_v3_write(&spec, dir, err, sizeof(err)) != 0) {
        fprintf(stderr, "synth_v3_write: %s\n", err);
        return -1;
    }
    return 0;
}

static void test_load(const char *dir, int fp8, int q_lora)
{
    struct synth_v3_spec spec;
    synth_v3_preset("tiny", &spec);
    char err[512];
    struct native_model *m = NULL;
    int rc = native_model_load(dir, &m, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "%s: %s\n", dir, err);
    CHECK(rc == 0);
    if (rc != 0)
        return;
    const struct native_model_config *c = &m->cfg;
    const struct native_v3_config *v = &c->v3;
    CHECK(c->arch == NATIVE_ARCH_DEEPSEEK_V3);
    CHECK(c->dim == spec.hidden && c->hidden_dim == spec.intermediate &&
          c->n_layers == spec.n_layers && c->n_heads == spec.n_heads);
    CHECK(v->q_lora_rank == (q_lora ? spec.q_lora_rank : 0));
    CHECK(v->kv_lora_rank == spec.kv_lora_rank && v->qk_nope_head_dim == spec.qk_nope_dim &&
          v->qk_rope_head_dim == spec.qk_rope_dim && v->v_head_dim == spec.v_head_dim);
    CHECK(c->head_dim == spec.qk_nope_dim + spec.qk_rope_dim);
    CHECK(v->n_routed_experts == spec.n_routed_experts &&
          v->n_shared_experts == spec.n_shared_experts &&
          v->n_experts_per_tok == spec.experts_per_tok && v->n_group == spec.n_group &&
          v->topk_group == spec.topk_group && v->moe_intermediate_size == spec.moe_intermediate);
    CHECK(v->first_k_dense_replace == spec.first_k_dense && v->n_nextn_layers == spec.n_mtp_layers);
    CHECK(v->norm_topk_prob == 1);
    CHECK(fabs(v->routed_scaling_factor - spec.routed_scaling_factor) < 1e-6);
    CHECK(fabs(c->yarn.factor - spec.yarn_factor) < 1e-6 &&
          c->yarn.original_max_pos == spec.yarn_original_max_pos &&
          fabs(c->yarn.mscale_all_dim - spec.yarn_mscale_all_dim) < 1e-6);
    CHECK(c->rope_layout == NATIVE_ROPE_ADJACENT);

    /* Dense layers first, then MoE layers with every expert, the shared
     * expert and the router's bias. */
    for (int l = 0; l < c->n_layers; l++) {
        const struct native_layer *L = &m->layers[l];
        CHECK((L->moe == NULL) == (l < spec.first_k_dense));
        CHECK((L->mla.q_a.rows > 0) == (q_lora != 0) && (L->mla.q_a_norm != NULL) == (q_lora != 0));
        CHECK(L->mla.kv_a.rows == v->kv_lora_rank + v->qk_rope_head_dim);
        CHECK(L->mla.kv_b.dtype == (fp8 ? NATIVE_F8_E4M3 : NATIVE_BF16));
        CHECK((L->mla.kv_b.scale != NULL) == (fp8 != 0));
        if (L->moe) {
            CHECK(L->moe->bias != NULL);
            CHECK(L->moe->router.dtype == NATIVE_BF16 && L->moe->router.rows == v->n_routed_experts);
            CHECK(L->moe->down[v->n_routed_experts - 1].rows == c->dim &&
                  L->moe->down[v->n_routed_experts - 1].cols == v->moe_intermediate_size);
            CHECK((L->moe->gate[0].scale != NULL) == (fp8 != 0));
            CHECK(L->moe->sh_gate.rows == (int64_t)v->n_shared_experts * v->moe_intermediate_size);
        } else {
            CHECK(L->w_gate.rows == c->hidden_dim && L->w_down.cols == c->hidden_dim);
        }
    }
    CHECK(m->embed.dtype == NATIVE_BF16 && m->embed.scale == NULL);

    /* Sizes for the engine's start-up line: the latent cache, and top-k of
     * the routed experts active per token. */
    CHECK(native_model_kv_bytes_per_token(c) ==
          4 * (size_t)(v->kv_lora_rank + v->qk_rope_head_dim) * (size_t)c->n_layers);
    const int64_t expert = 3 * (int64_t)c->dim * v->moe_intermediate_size;
    const int64_t moe_layers = c->n_layers - v->first_k_dense_replace;
    CHECK(m->n_params - m->n_active_params ==
          moe_layers * (v->n_routed_experts - v->n_experts_per_tok) * expert);
    CHECK(m->weight_bytes > 0 && m->weight_bytes < (size_t)m->n_params * 2 + 65536);
    native_model_free(m);
}

/* A forward pass runs on the CPU backend and gives finite logits (the
 * values themselves are the reference test's business). */
static void test_forward_runs(const char *dir)
{
    char err[512];
    struct native_model *m = NULL;
    CHECK(native_model_load(dir, &m, err, sizeof(err)) == 0);
    if (!m)
        return;
    struct native_backend *be = ops_cpu_new(1, 0);
    struct native_kv_desc kvd;
    native_forward_kv_desc(m, &kvd);
    CHECK(kvd.kind == NATIVE_KV_LATENT && kvd.latent_dim == m->cfg.v3.kv_lora_rank &&
          kvd.rope_dim == m->cfg.v3.qk_rope_head_dim);
    struct kvcache *kv = kvcache_new(be, &kvd, 1 << 20, err, sizeof(err));
    struct native_forward_opts fo = {.max_tokens = 4, .max_out = 4, .n_ctx = 16};
    struct native_forward *fw = kv ? native_forward_new(m, be, &fo, err, sizeof(err)) : NULL;
    CHECK(fw != NULL);
    int32_t blocks[1];
    if (fw && kvcache_alloc(kv, 1, blocks) == 0) {
        int32_t tok[4] = {0, 17, 42, 99}, pos[4] = {0, 1, 2, 3}, seq[4] = {0}, out[4] = {0, 1, 2, 3};
        struct native_seq_view sv = {blocks, 1};
        struct native_batch b = {4, tok, pos, seq, &sv, 1, out, 4};
        const float *lg = native_forward_run(fw, kvcache_kv(kv), &b);
        int finite = 1;
        for (int i = 0; i < 4 * m->cfg.vocab_size; i++)
            finite &= isfinite(lg[i]) != 0;
        CHECK(finite);
    }
    native_forward_free(fw);
    kvcache_free(kv);
    native_backend_free(be);
    native_model_free(m);
}

/* Errors name the tensor: a config whose shape disagrees with the weights. */
static void test_shape_error(const char *dir)
{
    char path[512], err[512];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    FILE *f = fopen(path, "r");
    CHECK(f != NULL);
    if (!f)
        return;
    static char text[16384];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = 0;
    char *p = strstr(text, "\"kv_lora_rank\": 64");
    CHECK(p != NULL);
    if (!p)
        return;
    memcpy(p, "\"kv_lora_rank\": 32", 18);
    write_text(path, text);
    struct native_model *m = NULL;
    CHECK(native_model_load(dir, &m, err, sizeof(err)) != 0);
    CHECK(strstr(err, "model.layers.0.self_attn.kv_a_proj_with_mqa.weight") != NULL);
    memcpy(p, "\"kv_lora_rank\": 64", 18);
    write_text(path, text);
}

/* The tokenizer beside a V3 checkpoint: DeepSeek's chat template, BOS on raw
 * prompts unless tokenizer_config.json says add_bos_token false. */
static void test_prompt(const char *dir)
{
    char err[512], path[512];
    struct native_model *m = NULL;
    CHECK(native_model_load(dir, &m, err, sizeof(err)) == 0);
    if (!m)
        return;
    for (int no_bos = 0; no_bos < 2; no_bos++) {
        if (no_bos) {
            snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
            write_text(path, "{\"add_bos_token\": false, \"bos_token\": \"<\xef\xbd\x9c"
                             "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>\"}");
        }
        struct tokenizer *tok = NULL;
        enum prompt_style style;
        CHECK(prompt_tokenizer_load(m, NULL, &tok, &style, err, sizeof(err)) == 0);
        if (!tok)
            continue;
        CHECK((style & PROMPT_DEEPSEEK) != 0);
        CHECK(((style & PROMPT_NO_BOS) != 0) == no_bos);
        CHECK(tok->bos_id >= 0);
        struct tok_ids ids = {0};
        CHECK(prompt_encode_text(tok, style, "hello", 5, &ids) == TOK_OK);
        CHECK(ids.n >= 1 && (ids.v[0] == tok->bos_id) == !no_bos);
        tok_ids_free(&ids);
        /* The chat template opens with BOS either way, then the user marker. */
        struct chat_message msg = {.role = ROLE_USER, .content = "hi", .content_len = 2};
        CHECK(prompt_encode_chat(tok, style, &msg, 1, &ids) == TOK_OK);
        int32_t user = tokenizer_lookup(tok, "<\xef\xbd\x9cUser\xef\xbd\x9c>");
        int32_t asst = tokenizer_lookup(tok, "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>");
        CHECK(user >= 0 && asst >= 0);
        CHECK(ids.n >= 3 && ids.v[0] == tok->bos_id && ids.v[1] == user &&
              ids.v[ids.n - 1] == asst);
        tok_ids_free(&ids);
        tokenizer_free(tok);
    }
    native_model_free(m);
}

/* The published config (tests/fuzz/corpus/hf_config/deepseek_v3.json), and
 * edits of it that must be refused with a message naming the field. */
static void test_real_config(void)
{
    const char *src = getenv("CASCADE_SOURCE_DIR");
    char path[1024], err[512];
    snprintf(path, sizeof(path), "%s/tests/fuzz/corpus/hf_config/deepseek_v3.json", src ? src : ".");
    FILE *f = fopen(path, "r");
    CHECK(f != NULL);
    if (!f)
        return;
    static char text[8192], edit[8192];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = 0;

    struct native_model_config c;
    CHECK(native_model_config_parse(text, n, "config.json", &c, err, sizeof(err)) == 0);
    CHECK(c.arch == NATIVE_ARCH_DEEPSEEK_V3 && c.dim == 7168 && c.n_layers == 61 && c.n_heads == 128);
    CHECK(c.v3.q_lora_rank == 1536 && c.v3.kv_lora_rank == 512 && c.v3.qk_nope_head_dim == 128 &&
          c.v3.qk_rope_head_dim == 64 && c.v3.v_head_dim == 128 && c.head_dim == 192);
    CHECK(c.v3.n_routed_experts == 256 && c.v3.n_experts_per_tok == 8 && c.v3.n_group == 8 &&
          c.v3.topk_group == 4 && c.v3.n_shared_experts == 1 && c.v3.moe_intermediate_size == 2048 &&
          c.v3.first_k_dense_replace == 3 && c.v3.n_nextn_layers == 1 && c.v3.norm_topk_prob);
    CHECK(c.yarn.factor == 40.0f && c.yarn.original_max_pos == 4096 && c.yarn.beta_fast == 32.0f &&
          c.yarn.beta_slow == 1.0f && c.yarn.mscale == 1.0f && c.yarn.mscale_all_dim == 1.0f);
    CHECK(c.vocab_size == 129280 && c.bos_id == 0 && c.n_eos == 1 && c.eos_ids[0] == 1);
    /* (kv_lora_rank 512 + qk_rope_head_dim 64) x 61 layers x 4 bytes. */
    CHECK(native_model_kv_bytes_per_token(&c) == 576 * 61 * 4);

    static const struct {
        const char *from, *to, *needle;
    } bad[] = {
        {"\"weight_block_size\": [128, 128]", "\"weight_block_size\": [64, 64]", "weight_block_size"},
        {"\"fmt\": \"e4m3\"", "\"fmt\": \"e5m2\"", "fmt"},
        {"\"quant_method\": \"fp8\"", "\"quant_method\": \"awq\"", "quant_method"},
        {"\"topk_method\": \"noaux_tc\"", "\"topk_method\": \"greedy\"", "topk_method"},
        {"\"scoring_func\": \"sigmoid\"", "\"scoring_func\": \"softmax\"", "scoring_func"},
        {"\"n_group\": 8", "\"n_group\": 7", "n_group"},
        {"\"topk_group\": 4", "\"topk_group\": 9", "topk_group"},
        {"\"kv_lora_rank\": 512", "\"kv_lora_rank\": 4096", "kv_lora_rank"},
        {"\"qk_rope_head_dim\": 64", "\"qk_rope_head_dim\": 63", "qk_rope_head_dim"},
        {"\"num_experts_per_tok\": 8", "\"num_experts_per_tok\": 17", "num_experts_per_tok"},
        {"\"type\": \"yarn\"", "\"type\": \"linear\"", "rope_scaling"},
        {"\"beta_fast\": 32", "\"beta_fast\": -1", "rope_scaling"},
        {"\"kv_lora_rank\": 512,", "", "kv_lora_rank"},
        {"\"DeepseekV3ForCausalLM\"", "\"DeepseekV2ForCausalLM\"", "DeepseekV2ForCausalLM"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *at = strstr(text, bad[i].from);
        CHECK(at != NULL);
        if (!at)
            continue;
        snprintf(edit, sizeof(edit), "%.*s%s%s", (int)(at - text), text, bad[i].to,
                 at + strlen(bad[i].from));
        err[0] = 0;
        int rc = native_model_config_parse(edit, strlen(edit), "config.json", &c, err, sizeof(err));
        if (rc == 0 || !strstr(err, bad[i].needle))
            fprintf(stderr, "edit %zu (%s): rc %d, \"%s\"\n", i, bad[i].to, rc, err);
        CHECK(rc != 0 && strstr(err, bad[i].needle) != NULL);
    }
}

int main(void)
{
    test_real_config();
    snprintf(root, sizeof(root), "/tmp/cascade-test-v3-XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    char bf16[256], fp8[256], noq[256];
    CHECK(make("bf16", 0, 1, bf16, sizeof(bf16)) == 0);
    CHECK(make("fp8", 1, 1, fp8, sizeof(fp8)) == 0);
    CHECK(make("fp8-no-q-lora", 1, 0, noq, sizeof(noq)) == 0);
    test_load(bf16, 0, 1);
    test_load(fp8, 1, 1);
    test_load(noq, 1, 0);
    test_forward_runs(fp8);
    test_forward_runs(noq);
    test_shape_error(bf16);
    test_prompt(bf16);
    nftw(root, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    TEST_MAIN_END();
}
