/* synth.c: random-weight HF checkpoints and a matching tokenizer; see synth.h. */
#include "engines/native/model/synth.h"

#include "engines/native/backend/dtype.h"
#include "engines/native/model/safetensors.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Shapes from the models' own config.json files. */
int synth_preset(const char *name, struct synth_spec *o)
{
    memset(o, 0, sizeof(*o));
    o->n_shards = 1;
    o->seed = 1;
    o->bos_id = 1;
    o->eos_id = 2;
    if (!strcmp(name, "tiny")) {
        o->dim = 64;
        o->hidden_dim = 172;
        o->n_layers = 5;
        o->n_heads = 8;
        o->n_kv_heads = 4;
        o->vocab_size = 512;
        o->max_pos = 512;
        o->rope_theta = 10000.0;
        o->rope_scale = 1.0;
        o->norm_eps = 1e-5;
        o->tied = 1;
        o->dtype = "F32";
        return 0;
    }
    if (!strcmp(name, "deepseek-coder-1.3b")) {
        o->dim = 2048;
        o->hidden_dim = 5504;
        o->n_layers = 24;
        o->n_heads = 16;
        o->n_kv_heads = 16;
        o->vocab_size = 32256;
        o->max_pos = 16384;
        o->rope_theta = 100000.0;
        o->rope_scale = 4.0;
        o->norm_eps = 1e-6;
        o->tied = 0;
        o->dtype = "BF16";
        return 0;
    }
    if (!strcmp(name, "deepseek-llm-7b")) {
        o->dim = 4096;
        o->hidden_dim = 11008;
        o->n_layers = 30;
        o->n_heads = 32;
        o->n_kv_heads = 32;
        o->vocab_size = 102400;
        o->max_pos = 4096;
        o->rope_theta = 10000.0;
        o->rope_scale = 1.0;
        o->norm_eps = 1e-6;
        o->tied = 0;
        o->dtype = "BF16";
        return 0;
    }
    return -1;
}

/* splitmix64, seeded per tensor so each tensor's values are fixed by
 * (seed, index) alone. */
static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

struct tensor {
    char name[96];
    int64_t rows, cols;     /* cols == 0: a vector of rows */
    int is_norm;
    int shard;
};

struct gen {
    const struct synth_spec *spec;
    struct tensor *t;
    size_t *index;          /* st_out position -> tensor */
};

/* Tensor i's values, generated in chunks as they are written: a 2.7 GB
 * model never sits in memory. */
static int fill(void *ctx, size_t i, FILE *f, size_t nbytes)
{
    const struct gen *g = ctx;
    const struct tensor *t = &g->t[g->index[i]];
    const int es = strcmp(g->spec->dtype, "F32") ? 2 : 4;
    const int64_t n = t->cols ? t->rows * t->cols : t->rows;
    const double scale = t->cols ? 1.0 / sqrt((double)t->cols) : 0.0;
    uint64_t st = g->spec->seed * 0x100000001b3ull + g->index[i] * 0x9e3779b97f4a7c15ull;
    enum { CHUNK = 1 << 16 };
    unsigned char *buf = malloc((size_t)CHUNK * 4);
    if (!buf || (size_t)n * (size_t)es != nbytes) {
        free(buf);
        return -1;
    }
    for (int64_t done = 0; done < n;) {
        int64_t m = n - done < CHUNK ? n - done : CHUNK;
        for (int64_t k = 0; k < m; k++) {
            float v = t->is_norm ? 1.0f
                                 : (float)(((double)(mix(&st) >> 11) * (2.0 / 9007199254740992.0) - 1.0) * scale);
            if (es == 4) {
                memcpy(buf + 4 * k, &v, 4);
            } else {
                uint16_t h = g->spec->dtype[0] == 'B' ? dtype_f32_to_bf16(v) : dtype_f32_to_f16(v);
                memcpy(buf + 2 * k, &h, 2);
            }
        }
        if (fwrite(buf, (size_t)es, (size_t)m, f) != (size_t)m) {
            free(buf);
            return -1;
        }
        done += m;
    }
    free(buf);
    return 0;
}

/* llama2.c tokenizer.bin: <unk>, BOS, EOS, <0x00>..<0xFF>, printable ASCII,
 * then " x" and "xy" letter pairs, then letter triples, then fillers. Longer
 * pieces score higher, so letters merge into pairs and triples. */
static int write_tokenizer(const char *path, int vocab)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    int32_t max_len = 16;
    int rc = fwrite(&max_len, 4, 1, f) == 1 ? 0 : -1;
    char piece[32];
    static const char letters[] = "abcdefghijklmnopqrstuvwxyz";
    for (int id = 0; id < vocab && rc == 0; id++) {
        float score = 0.0f;
        int k = id;
        if (k < 3) {
            snprintf(piece, sizeof(piece), "%s", k == 0 ? "<unk>" : k == 1 ? "\n<s>\n" : "\n</s>\n");
        } else if ((k -= 3) < 256) {
            snprintf(piece, sizeof(piece), "<0x%02X>", k);
        } else if ((k -= 256) < 95) {
            snprintf(piece, sizeof(piece), "%c", ' ' + k);
            score = -1.0f;
        } else if ((k -= 95) < 27 * 26) {
            /* " a".." z", then "aa".."zz" */
            int a = k / 26, b = k % 26;
            snprintf(piece, sizeof(piece), "%c%c", a == 0 ? ' ' : letters[a - 1], letters[b]);
            score = 1.0f + (float)(27 * 26 - k) / 10000.0f;
        } else if ((k -= 27 * 26) < 26 * 26 * 26) {
            snprintf(piece, sizeof(piece), "%c%c%c", letters[k / 676], letters[k / 26 % 26], letters[k % 26]);
            score = 2.0f + (float)(17576 - k) / 100000.0f;
        } else {
            snprintf(piece, sizeof(piece), "<x%d>", id);
            score = -1e9f;
        }
        int32_t len = (int32_t)strlen(piece);
        if (fwrite(&score, 4, 1, f) != 1 || fwrite(&len, 4, 1, f) != 1 ||
            fwrite(piece, 1, (size_t)len, f) != (size_t)len)
            rc = -1;
    }
    if (fclose(f) != 0)
        rc = -1;
    return rc;
}

int synth_write(const struct synth_spec *sp, const char *dir, char *err, size_t errlen)
{
    char path[4096];
    if (sp->dim < 1 || sp->n_heads < 1 || sp->dim % sp->n_heads || sp->n_kv_heads < 1 ||
        sp->n_heads % sp->n_kv_heads || sp->n_layers < 1 || sp->vocab_size < 300 ||
        sp->n_shards < 1 || !sp->dtype ||
        (strcmp(sp->dtype, "F32") && strcmp(sp->dtype, "F16") && strcmp(sp->dtype, "BF16"))) {
        snprintf(err, errlen, "bad model spec (vocab must be >= 300 for the byte pieces)");
        return -1;
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: %s", dir, strerror(errno));
        return -1;
    }
    const int L = sp->n_layers, D = sp->dim, F = sp->hidden_dim;
    const int hd = D / sp->n_heads, KV = sp->n_kv_heads * hd;
    size_t n = 2 + (size_t)L * 9 + (sp->tied ? 0 : 1);
    struct tensor *t = calloc(n, sizeof(*t));
    size_t *index = calloc(n, sizeof(*index));
    struct st_out *out = calloc(n, sizeof(*out));
    json_t *map = json_object();
    int rc = -1;
    if (!t || !index || !out || !map) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    size_t k = 0;
#define T(r, c, norm, ...)                                              \
    do {                                                                \
        snprintf(t[k].name, sizeof(t[k].name), __VA_ARGS__);            \
        t[k].rows = (r);                                                \
        t[k].cols = (c);                                                \
        t[k].is_norm = (norm);                                          \
        k++;                                                            \
    } while (0)
    T(sp->vocab_size, D, 0, "model.embed_tokens.weight");
    for (int l = 0; l < L; l++) {
        T(D, 0, 1, "model.layers.%d.input_layernorm.weight", l);
        T(D, D, 0, "model.layers.%d.self_attn.q_proj.weight", l);
        T(KV, D, 0, "model.layers.%d.self_attn.k_proj.weight", l);
        T(KV, D, 0, "model.layers.%d.self_attn.v_proj.weight", l);
        T(D, D, 0, "model.layers.%d.self_attn.o_proj.weight", l);
        T(D, 0, 1, "model.layers.%d.post_attention_layernorm.weight", l);
        T(F, D, 0, "model.layers.%d.mlp.gate_proj.weight", l);
        T(F, D, 0, "model.layers.%d.mlp.up_proj.weight", l);
        T(D, F, 0, "model.layers.%d.mlp.down_proj.weight", l);
    }
    T(D, 0, 1, "model.norm.weight");
    if (!sp->tied)
        T(sp->vocab_size, D, 0, "lm_head.weight");
#undef T

    /* Tensors go to shards in order, a new shard every n/n_shards tensors. */
    struct gen g = {sp, t, index};
    for (int s = 0; s < sp->n_shards; s++) {
        size_t m = 0;
        for (size_t i = 0; i < k; i++) {
            t[i].shard = (int)(i * (size_t)sp->n_shards / k);
            if (t[i].shard != s)
                continue;
            index[m] = i;
            out[m] = (struct st_out){t[i].name, sp->dtype, t[i].cols ? 2 : 1,
                                     {t[i].rows, t[i].cols}, NULL};
            m++;
        }
        char file[128];
        if (sp->n_shards == 1)
            snprintf(file, sizeof(file), "model.safetensors");
        else
            snprintf(file, sizeof(file), "model-%05d-of-%05d.safetensors", s + 1, sp->n_shards);
        snprintf(path, sizeof(path), "%s/%s", dir, file);
        if (safetensors_write(path, out, m, fill, &g, err, errlen) != 0)
            goto done;
        for (size_t i = 0; i < k; i++)
            if (t[i].shard == s)
                json_object_set_new(map, t[i].name, json_string(file));
    }
    if (sp->n_shards > 1) {
        json_t *idx = json_pack("{s:{}, s:O}", "metadata", "weight_map", map);
        snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
        int wrc = idx ? json_dump_file(idx, path, JSON_INDENT(1)) : -1;
        json_decref(idx);
        if (wrc != 0) {
            snprintf(err, errlen, "cannot write %s", path);
            goto done;
        }
    }

    /* eos_token_id lists BOS too: with a llama2.c-style vocabulary a new
     * BOS means a new text, where generation should stop. */
    json_t *cfg = json_pack("{s:[s], s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:s, s:b, "
                            "s:i, s:[i, i], s:s}",
                            "architectures", "LlamaForCausalLM", "model_type", "llama",
                            "hidden_size", D, "intermediate_size", F, "num_hidden_layers", L,
                            "num_attention_heads", sp->n_heads, "num_key_value_heads",
                            sp->n_kv_heads, "vocab_size", sp->vocab_size,
                            "max_position_embeddings", sp->max_pos, "rms_norm_eps", sp->norm_eps,
                            "rope_theta", sp->rope_theta, "hidden_act", "silu",
                            "tie_word_embeddings", sp->tied, "bos_token_id", sp->bos_id,
                            "eos_token_id", sp->eos_id, sp->bos_id, "torch_dtype",
                            !strcmp(sp->dtype, "F32") ? "float32"
                            : !strcmp(sp->dtype, "F16") ? "float16" : "bfloat16");
    if (cfg && sp->rope_scale != 1.0)
        json_object_set_new(cfg, "rope_scaling",
                            json_pack("{s:s, s:f}", "type", "linear", "factor", sp->rope_scale));
    snprintf(path, sizeof(path), "%s/config.json", dir);
    if (!cfg || json_dump_file(cfg, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0) {
        json_decref(cfg);
        snprintf(err, errlen, "cannot write %s", path);
        goto done;
    }
    json_decref(cfg);
    snprintf(path, sizeof(path), "%s/tokenizer.bin", dir);
    if (write_tokenizer(path, sp->vocab_size) != 0) {
        snprintf(err, errlen, "cannot write %s", path);
        goto done;
    }
    rc = 0;
done:
    json_decref(map);
    free(t);
    free(index);
    free(out);
    return rc;
}
