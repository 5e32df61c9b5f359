/* convert.c: llama2.c -> HF conversion; see convert.h. */
#include "engines/native/model/convert.h"

#include "engines/native/backend/dtype.h"
#include "engines/native/model/safetensors.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Where a written tensor's rows come from. */
struct src {
    const float *data;
    int64_t rows, cols;
    int perm_heads;     /* > 0: permute rows within each of this many heads */
};

struct conv {
    struct src *src;
    const char *dtype;
};

int64_t convert_rope_row(int64_t r, int64_t rows, int n_heads)
{
    int64_t hd = rows / n_heads, half = hd / 2;
    int64_t h = r / hd, k = r % hd;
    int64_t j = k / half, i = k % half;     /* new row k = j*half + i */
    return h * hd + 2 * i + j;              /* came from old row 2i + j */
}

/* Writes tensor `index` row by row, permuted and converted; a row at a
 * time keeps memory flat whatever the model's size. */
static int fill(void *ctx, size_t index, FILE *f, size_t nbytes)
{
    const struct conv *c = ctx;
    const struct src *s = &c->src[index];
    size_t es = strcmp(c->dtype, "F32") == 0 ? 4 : 2;
    unsigned char *buf = malloc((size_t)s->cols * es);
    if (!buf || nbytes != (size_t)(s->rows * s->cols) * es) {
        free(buf);
        return -1;
    }
    for (int64_t r = 0; r < s->rows; r++) {
        const float *row = s->data + (s->perm_heads > 0 ? convert_rope_row(r, s->rows, s->perm_heads) : r) * s->cols;
        for (int64_t i = 0; i < s->cols; i++) {
            if (es == 4) {
                memcpy(buf + 4 * i, &row[i], 4);
            } else {
                uint16_t h = c->dtype[0] == 'B' ? dtype_f32_to_bf16(row[i]) : dtype_f32_to_f16(row[i]);
                memcpy(buf + 2 * i, &h, 2);
            }
        }
        if (fwrite(buf, es, (size_t)s->cols, f) != (size_t)s->cols) {
            free(buf);
            return -1;
        }
    }
    free(buf);
    return 0;
}

static int copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = in ? fopen(to, "wb") : NULL;
    char buf[65536];
    size_t n;
    int rc = in && out ? 0 : -1;
    while (rc == 0 && (n = fread(buf, 1, sizeof(buf), in)) > 0)
        if (fwrite(buf, 1, n, out) != n)
            rc = -1;
    if (in && ferror(in))
        rc = -1;
    if (in)
        fclose(in);
    if (out && fclose(out) != 0)
        rc = -1;
    return rc;
}

int convert_llama2c_to_hf(const struct native_model *m, const char *out, const char *dtype,
                          const char *tok, char *err, size_t errlen)
{
    char path[4096];
    if (m->format != NATIVE_MODEL_LLAMA2C) {
        snprintf(err, errlen, "%s is not a llama2.c model", m->path);
        return -1;
    }
    if (strcmp(dtype, "F32") && strcmp(dtype, "F16") && strcmp(dtype, "BF16")) {
        snprintf(err, errlen, "dtype %s: want F32, F16 or BF16", dtype);
        return -1;
    }
    if (mkdir(out, 0755) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: %s", out, strerror(errno));
        return -1;
    }
    const struct native_model_config *c = &m->cfg;
    const int L = c->n_layers;
    size_t n = 2 + (size_t)L * 9 + (c->tied_embeddings ? 0 : 1);
    struct st_out *t = calloc(n, sizeof(*t));
    struct src *s = calloc(n, sizeof(*s));
    char (*names)[96] = calloc(n, sizeof(*names));
    int rc = -1;
    if (!t || !s || !names) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }

    size_t k = 0;
#define ADD(nm, ptr, r, cdim, perm)                                                            \
    do {                                                                                       \
        snprintf(names[k], sizeof(names[k]), "%s", nm);                                        \
        s[k] = (struct src){(ptr), (r), (cdim), (perm)};                                       \
        t[k] = (struct st_out){names[k], dtype, (cdim) > 0 ? 2 : 1, {(r), (cdim)}, NULL};      \
        if ((cdim) == 0) {                                                                     \
            s[k].cols = (r);                                                                   \
            s[k].rows = 1;                                                                     \
        }                                                                                      \
        k++;                                                                                   \
    } while (0)
    ADD("model.embed_tokens.weight", m->embed.data, m->embed.rows, m->embed.cols, 0);
    for (int l = 0; l < L; l++) {
        const struct native_layer *ly = &m->layers[l];
        char nm[96];
#define LNAME(suffix) (snprintf(nm, sizeof(nm), "model.layers.%d.%s", l, suffix), nm)
        ADD(LNAME("input_layernorm.weight"), ly->attn_norm, c->dim, 0, 0);
        ADD(LNAME("self_attn.q_proj.weight"), ly->wq.data, ly->wq.rows, ly->wq.cols, c->n_heads);
        ADD(LNAME("self_attn.k_proj.weight"), ly->wk.data, ly->wk.rows, ly->wk.cols, c->n_kv_heads);
        ADD(LNAME("self_attn.v_proj.weight"), ly->wv.data, ly->wv.rows, ly->wv.cols, 0);
        ADD(LNAME("self_attn.o_proj.weight"), ly->wo.data, ly->wo.rows, ly->wo.cols, 0);
        ADD(LNAME("post_attention_layernorm.weight"), ly->ffn_norm, c->dim, 0, 0);
        ADD(LNAME("mlp.gate_proj.weight"), ly->w_gate.data, ly->w_gate.rows, ly->w_gate.cols, 0);
        ADD(LNAME("mlp.up_proj.weight"), ly->w_up.data, ly->w_up.rows, ly->w_up.cols, 0);
        ADD(LNAME("mlp.down_proj.weight"), ly->w_down.data, ly->w_down.rows, ly->w_down.cols, 0);
#undef LNAME
    }
    ADD("model.norm.weight", m->final_norm, c->dim, 0, 0);
    if (!c->tied_embeddings)
        ADD("lm_head.weight", m->lm_head.data, m->lm_head.rows, m->lm_head.cols, 0);
#undef ADD

    struct conv cv = {s, dtype};
    snprintf(path, sizeof(path), "%s/model.safetensors", out);
    if (safetensors_write(path, t, k, fill, &cv, err, errlen) != 0) {
        goto done;
    }

    /* Floats written with 7 significant digits: 1e-05, not 9.9999997e-06. */
    char num[32];
    snprintf(num, sizeof(num), "%.7g", (double)c->norm_eps);
    double eps = strtod(num, NULL);
    snprintf(num, sizeof(num), "%.7g", (double)c->rope_theta);
    double theta = strtod(num, NULL);
    json_t *cfg = json_pack(
        "{s:[s], s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:s, s:b, s:i, s:[i, i], s:s}",
        "architectures", "LlamaForCausalLM", "model_type", "llama", "hidden_size", c->dim,
        "intermediate_size", c->hidden_dim, "num_hidden_layers", c->n_layers,
        "num_attention_heads", c->n_heads, "num_key_value_heads", c->n_kv_heads, "vocab_size",
        c->vocab_size, "max_position_embeddings", c->max_pos, "rms_norm_eps", eps,
        "rope_theta", theta, "hidden_act", "silu", "tie_word_embeddings",
        c->tied_embeddings, "bos_token_id", 1, "eos_token_id", 2, 1, "torch_dtype",
        !strcmp(dtype, "F32") ? "float32" : !strcmp(dtype, "F16") ? "float16" : "bfloat16");
    snprintf(path, sizeof(path), "%s/config.json", out);
    if (!cfg || json_dump_file(cfg, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0) {
        snprintf(err, errlen, "cannot write %s", path);
        json_decref(cfg);
        goto done;
    }
    json_decref(cfg);
    if (tok) {
        snprintf(path, sizeof(path), "%s/tokenizer.bin", out);
        if (copy_file(tok, path) != 0) {
            snprintf(err, errlen, "cannot copy %s to %s", tok, path);
            goto done;
        }
    }
    rc = 0;
done:
    free(t);
    free(s);
    free(names);
    return rc;
}
