/* model.c: the llama2.c and Hugging Face loaders; see model.h. */
#include "engines/native/model/model.h"

#include "engines/native/backend/dtype.h"
#include "engines/native/model/safetensors.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Bounds that keep every size computation far from overflow and reject
 * headers that are garbage rather than a model. */
#define MAX_DIM (1 << 16)
#define MAX_HIDDEN (1 << 18)
#define MAX_LAYERS 1024
#define MAX_HEADS 1024
#define MAX_VOCAB (1 << 22)
#define MAX_POS (1 << 22)
#define MAX_NEXTN 16                /* multi-token-prediction layers a checkpoint may ship */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* Shape rules both formats share. Checked before any size is computed
 * from them, so a garbage header is an error message, not an overflow. */
static int check_config(const struct native_model_config *c, const char *src, char *err,
                        size_t errlen)
{
    if (c->dim < 1 || c->dim > MAX_DIM || c->hidden_dim < 1 || c->hidden_dim > MAX_HIDDEN ||
        c->n_layers < 1 || c->n_layers > MAX_LAYERS || c->n_heads < 1 || c->n_heads > MAX_HEADS ||
        c->n_kv_heads < 1 || c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads != 0 ||
        c->head_dim < 2 || c->head_dim % 2 != 0 || c->head_dim > MAX_DIM || c->vocab_size < 1 ||
        c->vocab_size > MAX_VOCAB || c->max_pos < 1 || c->max_pos > MAX_POS) {
        set_err(err, errlen,
                "%s: implausible model shape (dim %d, hidden %d, layers %d, heads %d, kv_heads %d, "
                "head_dim %d, vocab %d, positions %d)",
                src, c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim,
                c->vocab_size, c->max_pos);
        return -1;
    }
    if (!(c->norm_eps > 0.0f) || !(c->rope_theta > 0.0f) || !(c->rope_scale > 0.0f)) {
        set_err(err, errlen, "%s: rms_norm_eps, rope_theta and the rope scaling factor must be > 0",
                src);
        return -1;
    }
    return 0;
}

/* Sizes for reports: parameters (elements of every matrix and vector the
 * forward pass reads) and the bytes of the matrices with their FP8 block
 * scales. */
struct tally {
    int64_t params;
    size_t bytes;
};

static void tally_mat(struct tally *t, const struct native_mat *w)
{
    const int64_t n = w->rows * w->cols;
    t->params += n;
    t->bytes += (size_t)n * native_dtype_size(w->dtype);
    if (w->scale)
        t->bytes += sizeof(float) * (size_t)((w->rows + NATIVE_FP8_BLOCK - 1) / NATIVE_FP8_BLOCK) *
                    (size_t)((w->cols + NATIVE_FP8_BLOCK - 1) / NATIVE_FP8_BLOCK);
}

/* n_params, n_active_params and weight_bytes. One token reads every
 * matrix but the routed experts, of which it reads top_k per MoE layer. */
static void sum_weight_bytes(struct native_model *m)
{
    const struct native_model_config *c = &m->cfg;
    struct tally all = {0, 0}, routed = {0, 0};
    int64_t active_routed = 0;
    tally_mat(&all, &m->embed);
    if (!c->tied_embeddings)
        tally_mat(&all, &m->lm_head);
    all.params += c->dim;   /* final norm */
    for (int l = 0; l < c->n_layers; l++) {
        const struct native_layer *L = &m->layers[l];
        const struct native_mla_weights *a = &L->mla;
        const struct native_mat *mats[] = {&L->wq,    &L->wk,     &L->wv,     &L->wo,   &L->w_gate,
                                           &L->w_up,  &L->w_down, &a->q_a,    &a->q_b,  &a->kv_a,
                                           &a->kv_b,  &a->o};
        for (size_t i = 0; i < sizeof(mats) / sizeof(mats[0]); i++)
            tally_mat(&all, mats[i]);
        all.params += 2 * (int64_t)c->dim + (a->q_a_norm ? c->v3.q_lora_rank : 0) +
                      (a->kv_a_norm ? c->v3.kv_lora_rank : 0);
        const struct native_moe_weights *w = L->moe;
        if (!w)
            continue;
        tally_mat(&all, &w->router);
        tally_mat(&all, &w->sh_gate);
        tally_mat(&all, &w->sh_up);
        tally_mat(&all, &w->sh_down);
        all.params += w->bias ? c->v3.n_routed_experts : 0;
        struct tally layer = {0, 0};
        for (int e = 0; e < c->v3.n_routed_experts; e++) {
            tally_mat(&layer, &w->gate[e]);
            tally_mat(&layer, &w->up[e]);
            tally_mat(&layer, &w->down[e]);
        }
        routed.params += layer.params;
        routed.bytes += layer.bytes;
        active_routed += layer.params / c->v3.n_routed_experts * c->v3.n_experts_per_tok;
    }
    m->n_params = all.params + routed.params;
    m->n_active_params = all.params + active_routed;
    m->weight_bytes = all.bytes + routed.bytes;
}

/* ------------------------------------------------------------------------ */
/* llama2.c .bin                                                             */
/* ------------------------------------------------------------------------ */

/* Walks the file tensor by tensor; the first one that runs past the end is
 * the one named in the error. */
struct bin_cursor {
    const char *path;
    const char *base;
    size_t size;
    size_t off;
};

static const float *bin_take(struct bin_cursor *c, const char *name, uint64_t count, char *err,
                             size_t errlen)
{
    uint64_t bytes = count * sizeof(float);
    if (c->off > c->size || bytes > c->size - c->off) {
        set_err(err, errlen,
                "%s: truncated: tensor '%s' needs bytes [%zu, %llu) but the file has %zu bytes",
                c->path, name, c->off, (unsigned long long)(c->off + bytes), c->size);
        return NULL;
    }
    const float *p = (const float *)(c->base + c->off);
    c->off += bytes;
    return p;
}

static int parse_llama2c(struct native_model *m, const char *path, const void *base, size_t size,
                         char *err, size_t errlen);

static int load_llama2c(struct native_model *m, const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        set_err(err, errlen, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    m->map_size_ = (size_t)sb.st_size;
    if (m->map_size_ < 7 * sizeof(int32_t)) {
        set_err(err, errlen, "%s: truncated: %zu bytes, the header alone is 28", path, m->map_size_);
        close(fd);
        return -1;
    }
    /* Populated now, not on first touch: every decode step streams all the
     * weights, and faulting them in page by page would slow the first ones. */
    m->map_ = mmap(NULL, m->map_size_, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    close(fd);
    if (m->map_ == MAP_FAILED) {
        m->map_ = NULL;
        set_err(err, errlen, "%s: mmap: %s", path, strerror(errno));
        return -1;
    }
    return parse_llama2c(m, path, m->map_, m->map_size_, err, errlen);
}

/* Check the header of a llama2.c file at base[0..size) and point the
 * model's tensors into it. The header's shape is checked before any size is
 * computed from it, and the tensors must fill the file exactly. */
static int parse_llama2c(struct native_model *m, const char *path, const void *base, size_t size,
                         char *err, size_t errlen)
{
    struct native_model_config *c = &m->cfg;
    if (size < 7 * sizeof(int32_t)) {
        set_err(err, errlen, "%s: truncated: %zu bytes, the header alone is 28", path, size);
        return -1;
    }
    /* llama2.c's header is 7 int32; vocab_size's sign says whether the
     * classifier shares the embedding. */
    int32_t h[7];
    memcpy(h, base, sizeof(h));
    if ((uint32_t)h[0] == 0x616b3432u) {
        set_err(err, errlen, "%s: llama2.c export version %d (magic \"ak42\"); only the legacy "
                "version-0 format is read", path, h[1]);
        return -1;
    }
    int shared = h[5] > 0;
    c->dim = h[0];
    c->hidden_dim = h[1];
    c->n_layers = h[2];
    c->n_heads = h[3];
    c->n_kv_heads = h[4];
    c->vocab_size = h[5] == INT32_MIN ? 0 : abs(h[5]);
    c->max_pos = h[6];
    c->head_dim = c->n_heads > 0 ? c->dim / c->n_heads : 0;
    c->norm_eps = 1e-5f;
    c->rope_theta = 10000.0f;
    c->rope_scale = 1.0f;
    c->rope_layout = NATIVE_ROPE_ADJACENT;
    c->bos_id = 1;
    c->eos_ids[0] = 1;      /* llama2.c stops when the model starts a new story (BOS)... */
    c->eos_ids[1] = 2;      /* ...or ends one (EOS) */
    c->n_eos = 2;
    c->tied_embeddings = shared;
    c->arch = NATIVE_ARCH_DENSE;
    if (check_config(c, path, err, errlen) != 0)
        return -1;
    if (c->dim % c->n_heads != 0) {
        set_err(err, errlen, "%s: dim %d is not a multiple of n_heads %d", path, c->dim, c->n_heads);
        return -1;
    }

    const uint64_t L = (uint64_t)c->n_layers, D = (uint64_t)c->dim, F = (uint64_t)c->hidden_dim;
    const uint64_t KV = (uint64_t)c->n_kv_heads * (uint64_t)c->head_dim;
    struct bin_cursor cur = {path, base, size, 7 * sizeof(int32_t)};
    const float *emb = bin_take(&cur, "token_embedding_table", (uint64_t)c->vocab_size * D, err, errlen);
    const float *rms_att = emb ? bin_take(&cur, "rms_att_weight", L * D, err, errlen) : NULL;
    const float *wq = rms_att ? bin_take(&cur, "wq", L * D * D, err, errlen) : NULL;
    const float *wk = wq ? bin_take(&cur, "wk", L * KV * D, err, errlen) : NULL;
    const float *wv = wk ? bin_take(&cur, "wv", L * KV * D, err, errlen) : NULL;
    const float *wo = wv ? bin_take(&cur, "wo", L * D * D, err, errlen) : NULL;
    const float *rms_ffn = wo ? bin_take(&cur, "rms_ffn_weight", L * D, err, errlen) : NULL;
    const float *w1 = rms_ffn ? bin_take(&cur, "w1", L * F * D, err, errlen) : NULL;
    const float *w2 = w1 ? bin_take(&cur, "w2", L * D * F, err, errlen) : NULL;
    const float *w3 = w2 ? bin_take(&cur, "w3", L * F * D, err, errlen) : NULL;
    const float *rms_final = w3 ? bin_take(&cur, "rms_final_weight", D, err, errlen) : NULL;
    /* The precomputed RoPE tables (freq_cis_real, freq_cis_imag) are skipped:
     * the forward pass builds its own. */
    const uint64_t half = (uint64_t)c->max_pos * (uint64_t)(c->head_dim / 2);
    const float *fr = rms_final ? bin_take(&cur, "freq_cis_real", half, err, errlen) : NULL;
    const float *fi = fr ? bin_take(&cur, "freq_cis_imag", half, err, errlen) : NULL;
    const float *wcls = fi ? (shared ? emb : bin_take(&cur, "wcls", (uint64_t)c->vocab_size * D, err, errlen))
                           : NULL;
    if (!wcls)
        return -1;
    /* Bytes left over mean the header describes another model than the one
     * in the file (or a newer export format): refuse rather than guess. */
    if (cur.off != cur.size) {
        set_err(err, errlen, "%s: %zu bytes after the last tensor: the header does not describe "
                "this file", path, cur.size - cur.off);
        return -1;
    }

    /* The tensors are stacked over layers; each layer's matrices are views
     * into the mapping, nothing is copied. */
    m->layers = calloc((size_t)c->n_layers, sizeof(*m->layers));
    if (!m->layers) {
        set_err(err, errlen, "out of memory");
        return -1;
    }
    m->embed = (struct native_mat){emb, NATIVE_F32, c->vocab_size, c->dim, NULL};
    m->lm_head = (struct native_mat){wcls, NATIVE_F32, c->vocab_size, c->dim, NULL};
    m->final_norm = rms_final;
    for (int l = 0; l < c->n_layers; l++) {
        struct native_layer *ly = &m->layers[l];
        ly->attn_norm = rms_att + l * D;
        ly->ffn_norm = rms_ffn + l * D;
        ly->wq = (struct native_mat){wq + l * D * D, NATIVE_F32, c->dim, c->dim, NULL};
        ly->wk = (struct native_mat){wk + l * KV * D, NATIVE_F32, (int64_t)KV, c->dim, NULL};
        ly->wv = (struct native_mat){wv + l * KV * D, NATIVE_F32, (int64_t)KV, c->dim, NULL};
        ly->wo = (struct native_mat){wo + l * D * D, NATIVE_F32, c->dim, c->dim, NULL};
        ly->w_gate = (struct native_mat){w1 + l * F * D, NATIVE_F32, c->hidden_dim, c->dim, NULL};
        ly->w_down = (struct native_mat){w2 + l * D * F, NATIVE_F32, c->dim, c->hidden_dim, NULL};
        ly->w_up = (struct native_mat){w3 + l * F * D, NATIVE_F32, c->hidden_dim, c->dim, NULL};
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Hugging Face LlamaForCausalLM                                             */
/* ------------------------------------------------------------------------ */

/* An integer field of config.json; def when absent (required: def < -1 means required). */
static int cfg_int(json_t *cfg, const char *key, int def, int *out, const char *src, char *err,
                   size_t errlen)
{
    json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) {
        if (def < -1) {
            set_err(err, errlen, "%s: missing \"%s\"", src, key);
            return -1;
        }
        *out = def;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < INT32_MIN || json_integer_value(v) > INT32_MAX) {
        set_err(err, errlen, "%s: \"%s\" must be an integer", src, key);
        return -1;
    }
    *out = (int)json_integer_value(v);
    return 0;
}

static int cfg_num(json_t *cfg, const char *key, double def, float *out, const char *src,
                   char *err, size_t errlen)
{
    json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) {
        *out = (float)def;
        return 0;
    }
    /* The engine computes in float: a value past FLT_MAX would become
     * infinity (and the conversion is undefined behaviour), then NaN in
     * every forward pass, so it is refused here with the key's name. */
    double d = json_number_value(v);
    if (!json_is_number(v) || !(fabs(d) <= FLT_MAX)) {
        set_err(err, errlen, "%s: \"%s\" must be a number within float range", src, key);
        return -1;
    }
    *out = (float)d;
    return 0;
}

/* The architecture config.json names: "architectures" when present (any of
 * its entries), else "model_type"; a config that names neither is read as
 * LLaMA, as older exports write no architecture at all. */
static int hf_arch(json_t *cfg, enum native_arch *out, const char *src, char *err, size_t errlen)
{
    json_t *arch = json_object_get(cfg, "architectures");
    if (json_is_array(arch) && json_array_size(arch) > 0) {
        for (size_t i = 0; i < json_array_size(arch); i++) {
            const char *a = json_string_value(json_array_get(arch, i));
            if (a && strcmp(a, "LlamaForCausalLM") == 0) {
                *out = NATIVE_ARCH_DENSE;
                return 0;
            }
            if (a && strcmp(a, "DeepseekV3ForCausalLM") == 0) {
                *out = NATIVE_ARCH_DEEPSEEK_V3;
                return 0;
            }
        }
        const char *first = json_string_value(json_array_get(arch, 0));
        set_err(err, errlen,
                "%s: architecture \"%s\" is not supported (LlamaForCausalLM or DeepseekV3ForCausalLM)",
                src, first ? first : "?");
        return -1;
    }
    const char *type = json_string_value(json_object_get(cfg, "model_type"));
    if (type && strcmp(type, "deepseek_v3") == 0)
        *out = NATIVE_ARCH_DEEPSEEK_V3;
    else if (!type || strcmp(type, "llama") == 0)
        *out = NATIVE_ARCH_DENSE;
    else {
        set_err(err, errlen, "%s: model_type \"%s\" is not supported (llama or deepseek_v3)", src,
                type);
        return -1;
    }
    return 0;
}

static int cfg_bool(json_t *cfg, const char *key, int def, int *out, const char *src, char *err,
                    size_t errlen)
{
    json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v)) {
        set_err(err, errlen, "%s: \"%s\" must be true or false", src, key);
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

/* A string field that, when present, must have one value: what the V3
 * forward pass implements. Anything else would run and give wrong numbers. */
static int cfg_expect(json_t *cfg, const char *key, const char *want, const char *src, char *err,
                      size_t errlen)
{
    json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v) || strcmp(json_string_value(v), want) != 0) {
        set_err(err, errlen, "%s: %s \"%s\" is not supported (\"%s\" only)", src, key,
                json_is_string(v) ? json_string_value(v) : "(not a string)", want);
        return -1;
    }
    return 0;
}

/* quantization_config of an FP8 checkpoint, as DeepSeek publishes it:
 * {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128],
 * "activation_scheme": "dynamic"}. The engine computes activations in
 * float32, so the activation scheme does not matter; any other weight format
 * or block size is refused, because the matmul reads 128x128 block scales. */
static int parse_quant_config(json_t *q, const char *src, char *err, size_t errlen)
{
    if (!json_is_object(q)) {
        set_err(err, errlen, "%s: quantization_config must be an object", src);
        return -1;
    }
    if (cfg_expect(q, "quant_method", "fp8", src, err, errlen) ||
        cfg_expect(q, "fmt", "e4m3", src, err, errlen))
        return -1;
    if (!json_object_get(q, "quant_method")) {
        set_err(err, errlen, "%s: quantization_config has no quant_method (\"fp8\" only)", src);
        return -1;
    }
    json_t *bs = json_object_get(q, "weight_block_size");
    if (!json_is_array(bs) || json_array_size(bs) != 2 ||
        !json_is_integer(json_array_get(bs, 0)) || !json_is_integer(json_array_get(bs, 1)) ||
        json_integer_value(json_array_get(bs, 0)) != NATIVE_FP8_BLOCK ||
        json_integer_value(json_array_get(bs, 1)) != NATIVE_FP8_BLOCK) {
        set_err(err, errlen, "%s: quantization_config.weight_block_size must be [%d, %d]", src,
                NATIVE_FP8_BLOCK, NATIVE_FP8_BLOCK);
        return -1;
    }
    return 0;
}

/* YaRN's attention factor (forward.c's native_yarn_mscale, which the
 * forward pass uses; repeated here so the loader does not depend on it). */
static double yarn_mscale(double factor, double mscale)
{
    return factor <= 1.0 ? 1.0 : 0.1 * mscale * log(factor) + 1.0;
}

/* rope_scaling of a V3 config: null, or YaRN with DeepSeek's fields.
 * Defaults are Hugging Face's DeepseekV3 ones (mscale 1, mscale_all_dim 0,
 * beta_fast 32, beta_slow 1). */
static int parse_yarn(json_t *rs, struct native_yarn *y, int max_pos, const char *src, char *err,
                      size_t errlen)
{
    memset(y, 0, sizeof(*y));
    if (!rs || json_is_null(rs))
        return 0;
    if (!json_is_object(rs)) {
        set_err(err, errlen, "%s: rope_scaling must be an object or null", src);
        return -1;
    }
    const char *type = json_string_value(json_object_get(rs, "type"));
    if (!type)
        type = json_string_value(json_object_get(rs, "rope_type"));
    if (type && strcmp(type, "default") == 0)
        return 0;
    if (!type || strcmp(type, "yarn") != 0) {
        set_err(err, errlen, "%s: rope_scaling type \"%s\" is not supported for DeepSeek-V3 (yarn only)",
                src, type ? type : "?");
        return -1;
    }
    if (cfg_num(rs, "factor", 1.0, &y->factor, src, err, errlen) ||
        cfg_int(rs, "original_max_position_embeddings", max_pos, &y->original_max_pos, src, err,
                errlen) ||
        cfg_num(rs, "beta_fast", 32.0, &y->beta_fast, src, err, errlen) ||
        cfg_num(rs, "beta_slow", 1.0, &y->beta_slow, src, err, errlen) ||
        cfg_num(rs, "mscale", 1.0, &y->mscale, src, err, errlen) ||
        cfg_num(rs, "mscale_all_dim", 0.0, &y->mscale_all_dim, src, err, errlen))
        return -1;
    /* The correction range takes logarithms of these: they must be
     * positive, and the scales must keep the attention factor positive. */
    if (!(y->factor >= 1.0f) || y->original_max_pos < 1 || y->original_max_pos > MAX_POS ||
        !(y->beta_fast > 0.0f) || !(y->beta_slow > 0.0f) || !(fabsf(y->mscale) <= 100.0f) ||
        !(fabsf(y->mscale_all_dim) <= 100.0f) ||
        !(yarn_mscale(y->factor, y->mscale) > 0.0) ||
        !(yarn_mscale(y->factor, y->mscale_all_dim) > 0.0)) {
        set_err(err, errlen,
                "%s: implausible rope_scaling (factor %g, original_max_position_embeddings %d, "
                "beta_fast %g, beta_slow %g, mscale %g, mscale_all_dim %g)",
                src, (double)y->factor, y->original_max_pos, (double)y->beta_fast,
                (double)y->beta_slow, (double)y->mscale, (double)y->mscale_all_dim);
        return -1;
    }
    return 0;
}

/* The DeepSeek-V3 part of config.json (DeepseekV3Config's fields), after
 * the fields every architecture shares. Bounds come from what the op table
 * takes (ops.h: NATIVE_MAX_*), so a config that loads is one every backend
 * can run. */
static int parse_v3_config(struct native_model_config *c, json_t *cfg, const char *src, char *err,
                           size_t errlen)
{
    struct native_v3_config *v = &c->v3;
    if (cfg_int(cfg, "q_lora_rank", 0, &v->q_lora_rank, src, err, errlen) ||
        cfg_int(cfg, "kv_lora_rank", -2, &v->kv_lora_rank, src, err, errlen) ||
        cfg_int(cfg, "qk_nope_head_dim", -2, &v->qk_nope_head_dim, src, err, errlen) ||
        cfg_int(cfg, "qk_rope_head_dim", -2, &v->qk_rope_head_dim, src, err, errlen) ||
        cfg_int(cfg, "v_head_dim", -2, &v->v_head_dim, src, err, errlen) ||
        cfg_int(cfg, "n_routed_experts", -2, &v->n_routed_experts, src, err, errlen) ||
        cfg_int(cfg, "n_shared_experts", 0, &v->n_shared_experts, src, err, errlen) ||
        cfg_int(cfg, "num_experts_per_tok", -2, &v->n_experts_per_tok, src, err, errlen) ||
        cfg_int(cfg, "n_group", 1, &v->n_group, src, err, errlen) ||
        cfg_int(cfg, "topk_group", 1, &v->topk_group, src, err, errlen) ||
        cfg_int(cfg, "moe_intermediate_size", -2, &v->moe_intermediate_size, src, err, errlen) ||
        cfg_int(cfg, "first_k_dense_replace", 0, &v->first_k_dense_replace, src, err, errlen) ||
        cfg_int(cfg, "moe_layer_freq", 1, &v->moe_layer_freq, src, err, errlen) ||
        cfg_int(cfg, "num_nextn_predict_layers", 0, &v->n_nextn_layers, src, err, errlen) ||
        cfg_bool(cfg, "norm_topk_prob", 0, &v->norm_topk_prob, src, err, errlen) ||
        cfg_num(cfg, "routed_scaling_factor", 1.0, &v->routed_scaling_factor, src, err, errlen))
        return -1;
    /* V3's router: sigmoid scores, the bias-corrected group-limited top-k.
     * DeepSeek-V2's softmax routers would load and run wrong, so they are
     * refused by name. */
    if (cfg_expect(cfg, "scoring_func", "sigmoid", src, err, errlen) ||
        cfg_expect(cfg, "topk_method", "noaux_tc", src, err, errlen))
        return -1;
    json_t *q = json_object_get(cfg, "quantization_config");
    if (q && !json_is_null(q) && parse_quant_config(q, src, err, errlen) != 0)
        return -1;
    if (parse_yarn(json_object_get(cfg, "rope_scaling"), &c->yarn, c->max_pos, src, err, errlen))
        return -1;

    const int qk_dim = v->qk_nope_head_dim + v->qk_rope_head_dim;
    if (v->q_lora_rank < 0 || v->q_lora_rank > MAX_DIM || v->kv_lora_rank < 1 ||
        v->kv_lora_rank > NATIVE_MAX_LATENT || v->qk_nope_head_dim < 1 ||
        v->qk_nope_head_dim > NATIVE_MAX_HEAD_DIM || v->qk_rope_head_dim < 2 ||
        v->qk_rope_head_dim % 2 != 0 || v->qk_rope_head_dim > NATIVE_MAX_HEAD_DIM ||
        qk_dim > NATIVE_MAX_HEAD_DIM || v->v_head_dim < 1 || v->v_head_dim > NATIVE_MAX_HEAD_DIM) {
        set_err(err, errlen,
                "%s: implausible MLA shape (q_lora_rank %d, kv_lora_rank %d (at most %d), "
                "qk_nope_head_dim %d, qk_rope_head_dim %d (even), v_head_dim %d; head dims at "
                "most %d)",
                src, v->q_lora_rank, v->kv_lora_rank, NATIVE_MAX_LATENT, v->qk_nope_head_dim,
                v->qk_rope_head_dim, v->v_head_dim, NATIVE_MAX_HEAD_DIM);
        return -1;
    }
    /* Group-limited routing: groups of equal size, each with at least the
     * two experts its score sums, and enough experts in the kept groups
     * for top_k. */
    if (v->n_routed_experts < 1 || v->n_routed_experts > NATIVE_MAX_EXPERTS ||
        v->n_experts_per_tok < 1 || v->n_experts_per_tok > NATIVE_MAX_TOPK || v->n_group < 1 ||
        v->n_routed_experts % v->n_group != 0 || v->n_routed_experts / v->n_group < 2 ||
        v->topk_group < 1 || v->topk_group > v->n_group ||
        v->n_experts_per_tok > v->topk_group * (v->n_routed_experts / v->n_group) ||
        v->moe_intermediate_size < 1 || v->moe_intermediate_size > MAX_HIDDEN ||
        v->n_shared_experts < 0 ||
        (int64_t)v->n_shared_experts * v->moe_intermediate_size > MAX_HIDDEN ||
        v->first_k_dense_replace < 0 || v->first_k_dense_replace > c->n_layers ||
        v->moe_layer_freq < 1 || v->n_nextn_layers < 0 || v->n_nextn_layers > MAX_NEXTN ||
        !(v->routed_scaling_factor > 0.0f)) {
        set_err(err, errlen,
                "%s: implausible MoE shape (n_routed_experts %d (at most %d), "
                "num_experts_per_tok %d (at most %d), n_group %d, topk_group %d, "
                "moe_intermediate_size %d, n_shared_experts %d, first_k_dense_replace %d, "
                "moe_layer_freq %d, num_nextn_predict_layers %d, routed_scaling_factor %g): "
                "experts must split evenly into groups of at least 2, topk_group <= n_group, "
                "and the kept groups must hold num_experts_per_tok experts",
                src, v->n_routed_experts, NATIVE_MAX_EXPERTS, v->n_experts_per_tok,
                NATIVE_MAX_TOPK, v->n_group, v->topk_group, v->moe_intermediate_size,
                v->n_shared_experts, v->first_k_dense_replace, v->moe_layer_freq,
                v->n_nextn_layers, (double)v->routed_scaling_factor);
        return -1;
    }

    /* MLA has no grouped KV heads; the shared fields describe it for the
     * reports: head_dim is the query/key width. DeepSeek's rotary dims are
     * interleaved pairs; YaRN is in c->yarn, not a linear scale. */
    c->n_kv_heads = c->n_heads;
    c->head_dim = qk_dim;
    c->rope_scale = 1.0f;
    c->rope_layout = NATIVE_ROPE_ADJACENT;
    c->tied_embeddings = json_is_true(json_object_get(cfg, "tie_word_embeddings"));
    return check_config(c, src, err, errlen);
}

/* config.json -> the shape and numerics. Defaults are LlamaConfig's. What
 * this forward pass does not implement (biases, other activations, other
 * RoPE scalings) is refused by name rather than silently run wrong. */
static int parse_hf_config_json(struct native_model_config *c, json_t *cfg, json_error_t *jerr,
                                const char *cfg_path, char *err, size_t errlen);

static int parse_hf_config(struct native_model_config *c, const char *cfg_path, char *err,
                           size_t errlen)
{
    json_error_t jerr;
    json_t *cfg = json_load_file(cfg_path, 0, &jerr);
    int rc = parse_hf_config_json(c, cfg, &jerr, cfg_path, err, errlen);
    json_decref(cfg);
    return rc;
}

int native_model_config_parse(const char *text, size_t len, const char *name,
                              struct native_model_config *c, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *cfg = json_loadb(text, len, 0, &jerr);
    memset(c, 0, sizeof(*c));
    int rc = parse_hf_config_json(c, cfg, &jerr, name, err, errlen);
    json_decref(cfg);
    return rc;
}

/* The checks of parse_hf_config() on the parsed file (NULL when it did not
 * parse; jerr says why). The caller keeps cfg. */
static int parse_hf_config_json(struct native_model_config *c, json_t *cfg, json_error_t *jerr,
                                const char *cfg_path, char *err, size_t errlen)
{
    int rc = -1;

    if (!json_is_object(cfg)) {
        set_err(err, errlen, "%s: %s (line %d)", cfg_path, cfg ? "not a JSON object" : jerr->text,
                cfg ? 0 : jerr->line);
        goto out;
    }
    if (hf_arch(cfg, &c->arch, cfg_path, err, errlen) != 0)
        goto out;
    const char *act = json_string_value(json_object_get(cfg, "hidden_act"));
    if (act && strcmp(act, "silu") != 0) {
        set_err(err, errlen, "%s: hidden_act \"%s\" is not supported (silu only)", cfg_path, act);
        goto out;
    }
    if (json_is_true(json_object_get(cfg, "attention_bias")) ||
        json_is_true(json_object_get(cfg, "mlp_bias"))) {
        set_err(err, errlen, "%s: attention_bias / mlp_bias are not supported", cfg_path);
        goto out;
    }
    if (cfg_int(cfg, "hidden_size", -2, &c->dim, cfg_path, err, errlen) ||
        cfg_int(cfg, "intermediate_size", -2, &c->hidden_dim, cfg_path, err, errlen) ||
        cfg_int(cfg, "num_hidden_layers", -2, &c->n_layers, cfg_path, err, errlen) ||
        cfg_int(cfg, "num_attention_heads", -2, &c->n_heads, cfg_path, err, errlen) ||
        cfg_int(cfg, "vocab_size", -2, &c->vocab_size, cfg_path, err, errlen) ||
        cfg_int(cfg, "num_key_value_heads", c->n_heads, &c->n_kv_heads, cfg_path, err, errlen) ||
        cfg_int(cfg, "max_position_embeddings", 2048, &c->max_pos, cfg_path, err, errlen) ||
        cfg_int(cfg, "bos_token_id", -1, &c->bos_id, cfg_path, err, errlen) ||
        cfg_num(cfg, "rms_norm_eps", 1e-6, &c->norm_eps, cfg_path, err, errlen) ||
        cfg_num(cfg, "rope_theta", 10000.0, &c->rope_theta, cfg_path, err, errlen))
        goto out;
    if (c->n_heads < 1) {
        set_err(err, errlen, "%s: num_attention_heads must be positive", cfg_path);
        goto out;
    }
    if (cfg_int(cfg, "head_dim", c->dim / c->n_heads, &c->head_dim, cfg_path, err, errlen))
        goto out;

    json_t *eos = json_object_get(cfg, "eos_token_id");
    c->n_eos = 0;
    if (json_is_integer(eos)) {
        c->eos_ids[c->n_eos++] = (int)json_integer_value(eos);
    } else if (json_is_array(eos)) {
        for (size_t i = 0; i < json_array_size(eos) && c->n_eos < NATIVE_MAX_EOS; i++)
            if (json_is_integer(json_array_get(eos, i)))
                c->eos_ids[c->n_eos++] = (int)json_integer_value(json_array_get(eos, i));
    }

    if (c->arch == NATIVE_ARCH_DEEPSEEK_V3) {
        rc = parse_v3_config(c, cfg, cfg_path, err, errlen);
        goto out;
    }

    c->rope_scale = 1.0f;
    json_t *rs = json_object_get(cfg, "rope_scaling");
    if (rs && !json_is_null(rs)) {
        const char *type = json_string_value(json_object_get(rs, "type"));
        if (!type)
            type = json_string_value(json_object_get(rs, "rope_type"));
        if (!type || strcmp(type, "linear") != 0) {
            if (!(type && strcmp(type, "default") == 0)) {
                set_err(err, errlen, "%s: rope_scaling type \"%s\" is not supported (linear only)",
                        cfg_path, type ? type : "?");
                goto out;
            }
        } else if (cfg_num(rs, "factor", 1.0, &c->rope_scale, cfg_path, err, errlen)) {
            goto out;
        }
    }
    json_t *tie = json_object_get(cfg, "tie_word_embeddings");
    c->tied_embeddings = json_is_true(tie);
    c->rope_layout = NATIVE_ROPE_HALF;
    rc = check_config(c, cfg_path, err, errlen);
out:
    return rc;
}

/* Shape as "[a, b, ...]" for messages. */
static void shape_str(const struct st_tensor *t, char *buf, size_t len)
{
    size_t n = 0;
    buf[0] = 0;
    for (int i = 0; i < t->ndim && n + 24 < len; i++)
        n += (size_t)snprintf(buf + n, len - n, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
}

/* The weight dtypes the matmul reads: safetensors.c knows the 16- and
 * 32-bit float types; the FP8 byte is recognised here, by the name the
 * format gives it, because only a model with block scales can use it. */
static int tensor_dtype(const struct st_tensor *t, int fp8_ok)
{
    if (t->native_dtype >= 0)
        return t->native_dtype;
    if (fp8_ok && strcmp(t->dtype, "F8_E4M3") == 0)
        return NATIVE_F8_E4M3;
    return -1;
}

/* A weight matrix the config says must exist with this shape, in a dtype
 * the kernels read directly. F8_E4M3 (DeepSeek-V3 only, fp8_ok) needs its
 * block scales `<name>_scale_inv`: float32 [ceil(rows/128)][ceil(cols/128)],
 * w = e4m3 * scale, which the matmul applies inside its dot products. */
static int hf_mat_any(const struct safetensors *st, const char *name, int64_t rows, int64_t cols,
                      int fp8_ok, struct native_mat *out, char *err, size_t errlen)
{
    char shape[96];
    const struct st_tensor *t = safetensors_find(st, name);
    if (!t) {
        set_err(err, errlen, "%s: missing tensor '%s'", safetensors_source(st), name);
        return -1;
    }
    int dt = tensor_dtype(t, fp8_ok);
    if (dt < 0) {
        set_err(err, errlen, "%s: tensor '%s': dtype %s is not supported (F32, F16 or BF16%s)",
                t->file, name, t->dtype, fp8_ok ? ", or F8_E4M3 with _scale_inv" : "");
        return -1;
    }
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols) {
        shape_str(t, shape, sizeof(shape));
        set_err(err, errlen, "%s: tensor '%s': shape [%s] but config.json implies [%lld, %lld]",
                t->file, name, shape, (long long)rows, (long long)cols);
        return -1;
    }
    *out = (struct native_mat){t->data, (enum native_dtype)dt, rows, cols, NULL};
    if (dt != NATIVE_F8_E4M3)
        return 0;

    char sname[200];
    snprintf(sname, sizeof(sname), "%s_scale_inv", name);
    const int64_t br = (rows + NATIVE_FP8_BLOCK - 1) / NATIVE_FP8_BLOCK;
    const int64_t bc = (cols + NATIVE_FP8_BLOCK - 1) / NATIVE_FP8_BLOCK;
    const struct st_tensor *s = safetensors_find(st, sname);
    if (!s) {
        set_err(err, errlen, "%s: tensor '%s' is F8_E4M3 but its block scales '%s' are missing",
                safetensors_source(st), name, sname);
        return -1;
    }
    if (s->native_dtype != NATIVE_F32 || s->ndim != 2 || s->shape[0] != br || s->shape[1] != bc) {
        shape_str(s, shape, sizeof(shape));
        set_err(err, errlen,
                "%s: tensor '%s': %s [%s], but the scales of a [%lld, %lld] F8_E4M3 matrix in "
                "%dx%d blocks are F32 [%lld, %lld]",
                s->file, sname, s->dtype, shape, (long long)rows, (long long)cols, NATIVE_FP8_BLOCK,
                NATIVE_FP8_BLOCK, (long long)br, (long long)bc);
        return -1;
    }
    out->scale = s->data;
    return 0;
}

static int hf_mat(const struct safetensors *st, const char *name, int64_t rows, int64_t cols,
                  struct native_mat *out, char *err, size_t errlen)
{
    return hf_mat_any(st, name, rows, cols, 0, out, err, errlen);
}

/* A norm vector (or the router's bias), copied out as float32: they are
 * tiny, and keeping them float lets the ops take one type whatever the
 * checkpoint's dtype. */
static int hf_vec(const struct safetensors *st, const char *name, int64_t n, float *dst, char *err,
                  size_t errlen)
{
    const struct st_tensor *t = safetensors_find(st, name);
    if (!t) {
        set_err(err, errlen, "%s: missing tensor '%s'", safetensors_source(st), name);
        return -1;
    }
    if (t->native_dtype < 0) {
        set_err(err, errlen, "%s: tensor '%s': dtype %s is not supported (F32, F16 or BF16)",
                t->file, name, t->dtype);
        return -1;
    }
    if (t->ndim != 1 || t->shape[0] != n) {
        set_err(err, errlen, "%s: tensor '%s': expected shape [%lld]", t->file, name, (long long)n);
        return -1;
    }
    for (int64_t i = 0; i < n; i++) {
        if (t->native_dtype == NATIVE_F32)
            memcpy(&dst[i], (const char *)t->data + 4 * i, 4);
        else if (t->native_dtype == NATIVE_BF16)
            dst[i] = dtype_bf16_to_f32(((const uint16_t *)t->data)[i]);
        else
            dst[i] = dtype_f16_to_f32(((const uint16_t *)t->data)[i]);
    }
    return 0;
}

/* The embedding, the LM head and the final norm, the same in both
 * architectures. final_norm is owned float storage of dim floats. */
static int hf_outer(struct native_model *m, float *final_norm, char *err, size_t errlen)
{
    const struct native_model_config *c = &m->cfg;
    if (hf_mat(m->st_, "model.embed_tokens.weight", c->vocab_size, c->dim, &m->embed, err, errlen))
        return -1;
    if (c->tied_embeddings)
        m->lm_head = m->embed;
    else if (hf_mat(m->st_, "lm_head.weight", c->vocab_size, c->dim, &m->lm_head, err, errlen))
        return -1;
    if (hf_vec(m->st_, "model.norm.weight", c->dim, final_norm, err, errlen))
        return -1;
    m->final_norm = final_norm;
    return 0;
}

/* LlamaForCausalLM's layers. */
static int load_hf_dense(struct native_model *m, char *err, size_t errlen)
{
    struct native_model_config *c = &m->cfg;
    char name[160];
    const int64_t D = c->dim, F = c->hidden_dim, Q = (int64_t)c->n_heads * c->head_dim,
                  KV = (int64_t)c->n_kv_heads * c->head_dim;
    m->layers = calloc((size_t)c->n_layers, sizeof(*m->layers));
    m->owned_ = malloc(sizeof(float) * (size_t)D * (2 * (size_t)c->n_layers + 1));
    if (!m->layers || !m->owned_) {
        set_err(err, errlen, "out of memory");
        return -1;
    }
    if (hf_outer(m, m->owned_ + (size_t)D * 2 * (size_t)c->n_layers, err, errlen))
        return -1;

    for (int l = 0; l < c->n_layers; l++) {
        struct native_layer *ly = &m->layers[l];
        float *an = m->owned_ + (size_t)D * 2 * (size_t)l, *fn = an + D;
        static const char *const pre = "model.layers";
#define MAT(field, suffix, rows, cols)                                                   \
    do {                                                                                 \
        snprintf(name, sizeof(name), "%s.%d.%s", pre, l, suffix);                        \
        if (hf_mat(m->st_, name, rows, cols, &ly->field, err, errlen))                   \
            return -1;                                                                   \
    } while (0)
        MAT(wq, "self_attn.q_proj.weight", Q, D);
        MAT(wk, "self_attn.k_proj.weight", KV, D);
        MAT(wv, "self_attn.v_proj.weight", KV, D);
        MAT(wo, "self_attn.o_proj.weight", D, Q);
        MAT(w_gate, "mlp.gate_proj.weight", F, D);
        MAT(w_up, "mlp.up_proj.weight", F, D);
        MAT(w_down, "mlp.down_proj.weight", D, F);
#undef MAT
        snprintf(name, sizeof(name), "%s.%d.input_layernorm.weight", pre, l);
        if (hf_vec(m->st_, name, D, an, err, errlen))
            return -1;
        snprintf(name, sizeof(name), "%s.%d.post_attention_layernorm.weight", pre, l);
        if (hf_vec(m->st_, name, D, fn, err, errlen))
            return -1;
        ly->attn_norm = an;
        ly->ffn_norm = fn;
    }
    return 0;
}

/* Whether layer l of a V3 model has the MoE MLP (DeepseekV3's rule). */
static int v3_is_moe(const struct native_model_config *c, int l)
{
    return l >= c->v3.first_k_dense_replace && l % c->v3.moe_layer_freq == 0;
}

/* DeepseekV3ForCausalLM's layers 0..num_hidden_layers-1, by their published
 * names. The multi-token-prediction layers that follow them in the
 * checkpoint (model.layers.<num_hidden_layers>... ) are never looked up:
 * generation does not run them, and their tensors cost nothing unread.
 *
 * Memory: one allocation (m->owned_) holds the float vectors -- per layer
 * the two norms, q_a_layernorm, kv_a_layernorm and, for MoE layers, the
 * router bias, then the final norm -- followed by the MoE layers' structs
 * and their expert matrix arrays. */
static int load_hf_v3(struct native_model *m, char *err, size_t errlen)
{
    struct native_model_config *c = &m->cfg;
    const struct native_v3_config *v = &c->v3;
    char name[200];
    const int64_t D = c->dim, H = c->n_heads, E = v->n_routed_experts;
    const int64_t QK = v->qk_nope_head_dim + v->qk_rope_head_dim;
    const int64_t KVL = v->kv_lora_rank, R = v->qk_rope_head_dim, V = v->v_head_dim;
    const int64_t QL = v->q_lora_rank, MI = v->moe_intermediate_size;
    const int64_t SH = (int64_t)v->n_shared_experts * MI;

    size_t n_moe = 0;
    for (int l = 0; l < c->n_layers; l++)
        n_moe += (size_t)v3_is_moe(c, l);
    /* Floats first, rounded up to an even count so the structs after
     * them start 8-byte aligned. */
    size_t n_floats = (size_t)c->n_layers * (size_t)(2 * D + QL + KVL) + n_moe * (size_t)E + (size_t)D;
    n_floats += n_floats & 1;
    const size_t bytes = n_floats * sizeof(float) + n_moe * sizeof(struct native_moe_weights) +
                         n_moe * 3 * (size_t)E * sizeof(struct native_mat);
    m->layers = calloc((size_t)c->n_layers, sizeof(*m->layers));
    m->owned_ = calloc(1, bytes);
    if (!m->layers || !m->owned_) {
        set_err(err, errlen, "out of memory");
        return -1;
    }
    float *fp = m->owned_;
    struct native_moe_weights *moe = (struct native_moe_weights *)(void *)(m->owned_ + n_floats);
    struct native_mat *experts = (struct native_mat *)(void *)(moe + n_moe);

    if (hf_outer(m, fp, err, errlen))
        return -1;
    fp += D;

    for (int l = 0; l < c->n_layers; l++) {
        struct native_layer *ly = &m->layers[l];
        struct native_mla_weights *a = &ly->mla;
#define NAME(...) snprintf(name, sizeof(name), __VA_ARGS__)
#define MAT(dst, rows, cols, ...)                                                        \
    do {                                                                                 \
        NAME(__VA_ARGS__);                                                               \
        if (hf_mat_any(m->st_, name, rows, cols, 1, dst, err, errlen))                   \
            return -1;                                                                   \
    } while (0)
#define VEC(dst, n, ...)                                                                 \
    do {                                                                                 \
        NAME(__VA_ARGS__);                                                               \
        if (hf_vec(m->st_, name, n, fp, err, errlen))                                    \
            return -1;                                                                   \
        dst = fp;                                                                        \
        fp += n;                                                                         \
    } while (0)
        VEC(ly->attn_norm, D, "model.layers.%d.input_layernorm.weight", l);
        VEC(ly->ffn_norm, D, "model.layers.%d.post_attention_layernorm.weight", l);

        /* Attention: the query through its low-rank pair (or q_proj when
         * q_lora_rank is null), the joint latent + rope key projection,
         * the latent's up-projection to per-head keys and values, the
         * output. */
        if (QL > 0) {
            MAT(&a->q_a, QL, D, "model.layers.%d.self_attn.q_a_proj.weight", l);
            VEC(a->q_a_norm, QL, "model.layers.%d.self_attn.q_a_layernorm.weight", l);
            MAT(&a->q_b, H * QK, QL, "model.layers.%d.self_attn.q_b_proj.weight", l);
        } else {
            MAT(&a->q_b, H * QK, D, "model.layers.%d.self_attn.q_proj.weight", l);
        }
        MAT(&a->kv_a, KVL + R, D, "model.layers.%d.self_attn.kv_a_proj_with_mqa.weight", l);
        VEC(a->kv_a_norm, KVL, "model.layers.%d.self_attn.kv_a_layernorm.weight", l);
        MAT(&a->kv_b, H * (v->qk_nope_head_dim + V), KVL,
            "model.layers.%d.self_attn.kv_b_proj.weight", l);
        MAT(&a->o, D, H * V, "model.layers.%d.self_attn.o_proj.weight", l);

        if (!v3_is_moe(c, l)) {
            MAT(&ly->w_gate, c->hidden_dim, D, "model.layers.%d.mlp.gate_proj.weight", l);
            MAT(&ly->w_up, c->hidden_dim, D, "model.layers.%d.mlp.up_proj.weight", l);
            MAT(&ly->w_down, D, c->hidden_dim, "model.layers.%d.mlp.down_proj.weight", l);
            continue;
        }
        struct native_moe_weights *w = moe++;
        ly->moe = w;
        w->gate = experts;
        w->up = experts + E;
        w->down = experts + 2 * E;
        experts += 3 * E;
        MAT(&w->router, E, D, "model.layers.%d.mlp.gate.weight", l);
        /* The router's selection bias ("noaux_tc"); a checkpoint without one
         * selects by the plain scores (the op takes a NULL bias). */
        NAME("model.layers.%d.mlp.gate.e_score_correction_bias", l);
        if (safetensors_find(m->st_, name))
            VEC(w->bias, E, "model.layers.%d.mlp.gate.e_score_correction_bias", l);
        for (int e = 0; e < E; e++) {
            MAT(&w->gate[e], MI, D, "model.layers.%d.mlp.experts.%d.gate_proj.weight", l, e);
            MAT(&w->up[e], MI, D, "model.layers.%d.mlp.experts.%d.up_proj.weight", l, e);
            MAT(&w->down[e], D, MI, "model.layers.%d.mlp.experts.%d.down_proj.weight", l, e);
        }
        if (SH > 0) {
            MAT(&w->sh_gate, SH, D, "model.layers.%d.mlp.shared_experts.gate_proj.weight", l);
            MAT(&w->sh_up, SH, D, "model.layers.%d.mlp.shared_experts.up_proj.weight", l);
            MAT(&w->sh_down, D, SH, "model.layers.%d.mlp.shared_experts.down_proj.weight", l);
        }
#undef VEC
#undef MAT
#undef NAME
    }
    return 0;
}

static int load_hf(struct native_model *m, const char *path, int is_dir, char *err, size_t errlen)
{
    struct native_model_config *c = &m->cfg;
    char *cfg_path = malloc(strlen(m->dir) + 16);
    if (!cfg_path) {
        set_err(err, errlen, "out of memory");
        return -1;
    }
    sprintf(cfg_path, "%s/config.json", m->dir);
    int rc = parse_hf_config(c, cfg_path, err, errlen);
    free(cfg_path);
    if (rc != 0)
        return -1;

    /* config.json itself names no weights: open the folder's checkpoint
     * (safetensors.c checks the index and names what it lacks). */
    const char *st_path = is_dir || ends_with(path, "config.json") ? m->dir : path;
    m->st_ = safetensors_open(st_path, err, errlen);
    if (!m->st_)
        return -1;
    return c->arch == NATIVE_ARCH_DEEPSEEK_V3 ? load_hf_v3(m, err, errlen)
                                              : load_hf_dense(m, err, errlen);
}

/* ------------------------------------------------------------------------ */

int native_model_load_llama2c_buffer(const void *buf, size_t len, const char *name,
                                     struct native_model **out, char *err, size_t errlen)
{
    struct native_model *m = calloc(1, sizeof(*m));
    *out = NULL;
    if (!m || !(m->path = strdup(name)) || !(m->dir = dir_of(name))) {
        set_err(err, errlen, "out of memory");
        native_model_free(m);
        return -1;
    }
    m->format = NATIVE_MODEL_LLAMA2C;
    if (parse_llama2c(m, name, buf, len, err, errlen) != 0) {
        native_model_free(m);
        return -1;
    }
    sum_weight_bytes(m);
    *out = m;
    return 0;
}

/* The format follows from the path: a folder, a .json or a .safetensors is
 * Hugging Face; anything else is read as a llama2.c .bin. */
int native_model_load(const char *path, struct native_model **out, char *err, size_t errlen)
{
    struct native_model *m = calloc(1, sizeof(*m));
    struct stat sb;
    int rc;

    *out = NULL;
    if (!m) {
        set_err(err, errlen, "out of memory");
        return -1;
    }
    if (stat(path, &sb) != 0) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        goto fail;
    }
    int is_dir = S_ISDIR(sb.st_mode);
    m->path = strdup(path);
    m->dir = is_dir ? strdup(path) : dir_of(path);
    if (!m->path || !m->dir) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    if (is_dir || ends_with(path, ".json") || ends_with(path, ".safetensors")) {
        m->format = NATIVE_MODEL_HF;
        rc = load_hf(m, path, is_dir, err, errlen);
    } else {
        m->format = NATIVE_MODEL_LLAMA2C;
        rc = load_llama2c(m, path, err, errlen);
    }
    if (rc != 0)
        goto fail;
    sum_weight_bytes(m);
    *out = m;
    return 0;

fail:
    native_model_free(m);
    return -1;
}

void native_model_free(struct native_model *m)
{
    if (!m)
        return;
    if (m->map_)
        munmap(m->map_, m->map_size_);
    safetensors_free(m->st_);
    free(m->owned_);
    free(m->layers);
    free(m->path);
    free(m->dir);
    free(m);
}

int native_model_is_eos(const struct native_model *m, int id)
{
    for (int i = 0; i < m->cfg.n_eos; i++)
        if (m->cfg.eos_ids[i] == id)
            return 1;
    return 0;
}

/* What the backend's cache stores per position, in float32: MLA keeps the
 * compressed latent and the one shared rope key, not per-head K and V. */
size_t native_model_kv_bytes_per_token(const struct native_model_config *c)
{
    size_t per_layer = c->arch == NATIVE_ARCH_DEEPSEEK_V3
                           ? (size_t)(c->v3.kv_lora_rank + c->v3.qk_rope_head_dim)
                           : 2 * (size_t)c->n_kv_heads * (size_t)c->head_dim;
    return per_layer * (size_t)c->n_layers * sizeof(float);
}
