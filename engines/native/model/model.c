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

/* For weight_bytes: what one decode step has to read. */
static size_t mat_bytes(const struct native_mat *w)
{
    return (size_t)w->rows * (size_t)w->cols * native_dtype_size(w->dtype);
}

static void sum_weight_bytes(struct native_model *m)
{
    size_t n = mat_bytes(&m->embed);
    if (!m->cfg.tied_embeddings)
        n += mat_bytes(&m->lm_head);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const struct native_layer *L = &m->layers[l];
        n += mat_bytes(&L->wq) + mat_bytes(&L->wk) + mat_bytes(&L->wv) + mat_bytes(&L->wo) +
             mat_bytes(&L->w_gate) + mat_bytes(&L->w_up) + mat_bytes(&L->w_down);
    }
    m->weight_bytes = n;
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
    m->embed = (struct native_mat){emb, NATIVE_F32, c->vocab_size, c->dim};
    m->lm_head = (struct native_mat){wcls, NATIVE_F32, c->vocab_size, c->dim};
    m->final_norm = rms_final;
    for (int l = 0; l < c->n_layers; l++) {
        struct native_layer *ly = &m->layers[l];
        ly->attn_norm = rms_att + l * D;
        ly->ffn_norm = rms_ffn + l * D;
        ly->wq = (struct native_mat){wq + l * D * D, NATIVE_F32, c->dim, c->dim};
        ly->wk = (struct native_mat){wk + l * KV * D, NATIVE_F32, (int64_t)KV, c->dim};
        ly->wv = (struct native_mat){wv + l * KV * D, NATIVE_F32, (int64_t)KV, c->dim};
        ly->wo = (struct native_mat){wo + l * D * D, NATIVE_F32, c->dim, c->dim};
        ly->w_gate = (struct native_mat){w1 + l * F * D, NATIVE_F32, c->hidden_dim, c->dim};
        ly->w_down = (struct native_mat){w2 + l * D * F, NATIVE_F32, c->dim, c->hidden_dim};
        ly->w_up = (struct native_mat){w3 + l * F * D, NATIVE_F32, c->hidden_dim, c->dim};
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
    json_t *arch = json_object_get(cfg, "architectures");
    if (json_is_array(arch) && json_array_size(arch) > 0) {
        int ok = 0;
        for (size_t i = 0; i < json_array_size(arch); i++) {
            const char *a = json_string_value(json_array_get(arch, i));
            ok |= a && strcmp(a, "LlamaForCausalLM") == 0;
        }
        if (!ok) {
            set_err(err, errlen, "%s: architecture \"%s\" is not LlamaForCausalLM", cfg_path,
                    json_string_value(json_array_get(arch, 0)) ? json_string_value(json_array_get(arch, 0)) : "?");
            goto out;
        }
    }
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

/* A weight matrix the config says must exist with this shape, in a dtype
 * the kernels read directly. */
static int hf_mat(const struct safetensors *st, const char *name, int64_t rows, int64_t cols,
                  struct native_mat *out, char *err, size_t errlen)
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
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols) {
        char shape[96] = "";
        size_t n = 0;
        for (int i = 0; i < t->ndim && n < sizeof(shape) - 24; i++)
            n += (size_t)snprintf(shape + n, sizeof(shape) - n, "%s%lld", i ? ", " : "",
                                  (long long)t->shape[i]);
        set_err(err, errlen, "%s: tensor '%s': shape [%s] but config.json implies [%lld, %lld]",
                t->file, name, shape, (long long)rows, (long long)cols);
        return -1;
    }
    *out = (struct native_mat){t->data, (enum native_dtype)t->native_dtype, rows, cols};
    return 0;
}

/* A norm vector, copied out as float32: the norms are tiny, and keeping
 * them float lets rmsnorm take one type whatever the checkpoint's dtype. */
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

static int load_hf(struct native_model *m, const char *path, int is_dir, char *err, size_t errlen)
{
    struct native_model_config *c = &m->cfg;
    char name[160];
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

    /* config.json itself names no weights: open the folder's checkpoint. */
    const char *st_path = is_dir || ends_with(path, "config.json") ? m->dir : path;
    m->st_ = safetensors_open(st_path, err, errlen);
    if (!m->st_)
        return -1;

    const int64_t D = c->dim, F = c->hidden_dim, Q = (int64_t)c->n_heads * c->head_dim,
                  KV = (int64_t)c->n_kv_heads * c->head_dim;
    m->layers = calloc((size_t)c->n_layers, sizeof(*m->layers));
    m->owned_ = malloc(sizeof(float) * (size_t)D * (2 * (size_t)c->n_layers + 1));
    if (!m->layers || !m->owned_) {
        set_err(err, errlen, "out of memory");
        return -1;
    }
    if (hf_mat(m->st_, "model.embed_tokens.weight", c->vocab_size, D, &m->embed, err, errlen))
        return -1;
    if (c->tied_embeddings)
        m->lm_head = m->embed;
    else if (hf_mat(m->st_, "lm_head.weight", c->vocab_size, D, &m->lm_head, err, errlen))
        return -1;
    float *final_norm = m->owned_ + (size_t)D * 2 * (size_t)c->n_layers;
    if (hf_vec(m->st_, "model.norm.weight", D, final_norm, err, errlen))
        return -1;
    m->final_norm = final_norm;

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
