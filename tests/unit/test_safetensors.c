/* test_safetensors.c: the safetensors reader on good, sharded and broken
 * files, and the HF model loader's checks (missing tensor, wrong shape,
 * unsupported dtype, bad config). Every error must name the file and, where
 * there is one, the tensor; none may crash. Files are written to a temp dir. */
#include "engines/native/backend/dtype.h"
#include "engines/native/model/forward_impl.h"
#include "engines/native/backend/cpu/ops_cpu.h"
#include "engines/native/model/model.h"
#include "engines/native/model/safetensors.h"
#include "tests/unit/test.h"

#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[] = "/tmp/cascade-st-XXXXXX";

static void path(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", dir, name);
}

static void write_text(const char *p, const char *s)
{
    FILE *f = fopen(p, "wb");
    fputs(s, f);
    fclose(f);
}

static char *slurp(const char *p, size_t *n)
{
    FILE *f = fopen(p, "rb");
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc(*n + 1);
    if (fread(s, 1, *n, f) != *n)
        *n = 0;
    fclose(f);
    return s;
}

static void spit(const char *p, const char *s, size_t n)
{
    FILE *f = fopen(p, "wb");
    fwrite(s, 1, n, f);
    fclose(f);
}

/* Replace the first occurrence of `from` by `to` (same length) in file p. */
static void patch(const char *src, const char *dst, const char *from, const char *to)
{
    size_t n;
    char *s = slurp(src, &n);
    char *at = memmem(s, n, from, strlen(from));
    if (at)
        memcpy(at, to, strlen(to));
    spit(dst, s, n);
    free(s);
}

static int open_fails(const char *p, const char *n1, const char *n2)
{
    char err[512] = "";
    struct safetensors *st = safetensors_open(p, err, sizeof(err));
    safetensors_free(st);
    int ok = !st && strstr(err, n1) && (!n2 || strstr(err, n2));
    if (!ok)
        fprintf(stderr, "expected error with \"%s\" / \"%s\": %s\n", n1, n2 ? n2 : "", err);
    return ok;
}

static int load_fails(const char *p, const char *n1, const char *n2)
{
    char err[512] = "";
    struct native_model *m = NULL;
    int rc = native_model_load(p, &m, err, sizeof(err));
    native_model_free(m);
    int ok = rc != 0 && strstr(err, n1) && (!n2 || strstr(err, n2));
    if (!ok)
        fprintf(stderr, "expected error with \"%s\" / \"%s\": %s\n", n1, n2 ? n2 : "", err);
    return ok;
}

static void test_basic(void)
{
    char p[1024], err[256];
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint16_t b[3] = {dtype_f32_to_bf16(1.5f), dtype_f32_to_bf16(-2.0f), dtype_f32_to_bf16(0.25f)};
    struct st_out t[2] = {
        {"a", "F32", 2, {2, 3}, a},
        {"b.weight", "BF16", 1, {3}, b},
    };
    path(p, sizeof(p), "basic.safetensors");
    CHECK(safetensors_write(p, t, 2, NULL, NULL, err, sizeof(err)) == 0);
    struct safetensors *st = safetensors_open(p, err, sizeof(err));
    CHECK(st != NULL);
    if (!st)
        return;
    CHECK(safetensors_count(st) == 2);
    const struct st_tensor *ta = safetensors_find(st, "a"), *tb = safetensors_find(st, "b.weight");
    CHECK(ta && ta->ndim == 2 && ta->shape[0] == 2 && ta->shape[1] == 3 && ta->nbytes == 24);
    CHECK(ta && ta->native_dtype == 0 && memcmp(ta->data, a, 24) == 0);
    CHECK(tb && strcmp(tb->dtype, "BF16") == 0 && tb->numel == 3);
    CHECK(tb && dtype_bf16_to_f32(((const uint16_t *)tb->data)[1]) == -2.0f);
    CHECK(safetensors_find(st, "c") == NULL);
    safetensors_free(st);

    /* Broken variants of the same file. */
    size_t n;
    char *s = slurp(p, &n);
    char q[1024];
    path(q, sizeof(q), "broken.safetensors");
    spit(q, s, n - 2);                          /* truncated inside b.weight */
    CHECK(open_fails(q, q, "'b.weight'"));
    spit(q, s, 5);                              /* not even a length */
    CHECK(open_fails(q, q, "truncated"));
    char big[8] = {(char)0xff, (char)0xff, 0, 0, 0, 0, 0, 0};
    memcpy(s, big, 8);                          /* header longer than the file */
    spit(q, s, n);
    CHECK(open_fails(q, q, "header"));
    free(s);
    patch(p, q, "{\"a\"", "[\"a\"");            /* not JSON */
    CHECK(open_fails(q, q, "header"));
    patch(p, q, "\"F32\"", "\"F16\"");          /* dtype that does not match the bytes */
    CHECK(open_fails(q, q, "tensor 'a'"));
    patch(p, q, "\"F32\"", "\"Q32\"");          /* unknown dtype */
    CHECK(open_fails(q, q, "unknown dtype"));
    patch(p, q, "[2,3]", "[9,3]");              /* shape past the data */
    CHECK(open_fails(q, q, "tensor 'a'"));
    patch(p, q, "\"data_offsets\":[0,24]", "\"data_offsets\":[2,26]");     /* misaligned F32 */
    CHECK(open_fails(q, q, "aligned"));
    CHECK(open_fails("/nonexistent/x.safetensors", "/nonexistent/x.safetensors", NULL));
}

/* A sharded checkpoint: two files and an index. */
static void test_sharded(void)
{
    char p1[1024], p2[1024], idx[1024], err[256];
    float a[4] = {1, 2, 3, 4}, b[2] = {5, 6};
    struct st_out t1[1] = {{"a", "F32", 1, {4}, a}}, t2[1] = {{"b", "F32", 1, {2}, b}};
    mkdir(dir, 0755);
    path(p1, sizeof(p1), "model-00001-of-00002.safetensors");
    path(p2, sizeof(p2), "model-00002-of-00002.safetensors");
    path(idx, sizeof(idx), "model.safetensors.index.json");
    CHECK(safetensors_write(p1, t1, 1, NULL, NULL, err, sizeof(err)) == 0);
    CHECK(safetensors_write(p2, t2, 1, NULL, NULL, err, sizeof(err)) == 0);
    write_text(idx, "{\"metadata\":{},\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\","
                    "\"b\":\"model-00002-of-00002.safetensors\"}}");
    struct safetensors *st = safetensors_open(idx, err, sizeof(err));
    CHECK(st && safetensors_count(st) == 2);
    if (st) {
        const struct st_tensor *tb = safetensors_find(st, "b");
        CHECK(tb && strstr(tb->file, "00002") && ((const float *)tb->data)[1] == 6.0f);
    }
    safetensors_free(st);
    /* The folder finds the index by itself. */
    st = safetensors_open(dir, err, sizeof(err));
    CHECK(st && safetensors_count(st) == 2);
    safetensors_free(st);

    /* The index names a tensor its shard lacks / a shard that is not there. */
    write_text(idx, "{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\","
                    "\"b\":\"model-00001-of-00002.safetensors\"}}");
    CHECK(open_fails(idx, "model-00001-of-00002.safetensors", "tensor 'b'"));
    write_text(idx, "{\"weight_map\":{\"a\":\"model-00003-of-00003.safetensors\"}}");
    CHECK(open_fails(idx, "model-00003-of-00003.safetensors", NULL));
    write_text(idx, "{\"weight_map\":{\"a\":\"../etc/passwd\"}}");
    CHECK(open_fails(idx, idx, "plain file name"));
    unlink(idx);
    unlink(p1);
    unlink(p2);
}

/* A tiny HF LlamaForCausalLM folder, then ways to break it. */
#define D 16
#define F 24
#define V 40
static float zeros[V * F];

static int write_model(const char *sub, const char *drop, const char *bad_shape, const char *i8,
                       const char *config)
{
    char d[1024], p[1200], err[256];
    path(d, sizeof(d), sub);
    mkdir(d, 0755);
    const char *names[] = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                           "model.layers.0.input_layernorm.weight",
                           "model.layers.0.post_attention_layernorm.weight",
                           "model.layers.0.self_attn.q_proj.weight",
                           "model.layers.0.self_attn.k_proj.weight",
                           "model.layers.0.self_attn.v_proj.weight",
                           "model.layers.0.self_attn.o_proj.weight",
                           "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight",
                           "model.layers.0.mlp.down_proj.weight"};
    const int64_t shapes[][2] = {{V, D}, {D, 0}, {V, D}, {D, 0}, {D, 0}, {D, D}, {8, D},
                                 {8, D}, {D, D}, {F, D}, {F, D}, {D, F}};
    struct st_out t[12];
    size_t n = 0;
    for (int i = 0; i < 12; i++) {
        if (drop && !strcmp(names[i], drop))
            continue;
        t[n] = (struct st_out){names[i], "F32", shapes[i][1] ? 2 : 1, {shapes[i][0], shapes[i][1]}, zeros};
        if (bad_shape && !strcmp(names[i], bad_shape))
            t[n].shape[0]++;
        if (i8 && !strcmp(names[i], i8))
            t[n].dtype = "I32";
        n++;
    }
    snprintf(p, sizeof(p), "%s/model.safetensors", d);
    if (safetensors_write(p, t, n, NULL, NULL, err, sizeof(err)) != 0)
        return -1;
    snprintf(p, sizeof(p), "%s/config.json", d);
    write_text(p, config ? config
                         : "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":16,"
                           "\"intermediate_size\":24,\"num_hidden_layers\":1,"
                           "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"vocab_size\":40,"
                           "\"max_position_embeddings\":64,\"rope_theta\":100000.0,"
                           "\"rope_scaling\":{\"type\":\"linear\",\"factor\":4.0},"
                           "\"rms_norm_eps\":1e-6,\"bos_token_id\":1,\"eos_token_id\":[2,3]}");
    return 0;
}

static void test_hf_model(void)
{
    char d[1024], p[1200], err[256];
    struct native_model *m = NULL;
    CHECK(write_model("ok", NULL, NULL, NULL, NULL) == 0);
    path(d, sizeof(d), "ok");
    CHECK(native_model_load(d, &m, err, sizeof(err)) == 0);
    if (m) {
        CHECK(m->cfg.rope_scale == 4.0f && m->cfg.rope_theta == 100000.0f);
        CHECK(m->cfg.n_kv_heads == 2 && m->cfg.head_dim == 4 && !m->cfg.tied_embeddings);
        CHECK(m->cfg.n_eos == 2 && native_model_is_eos(m, 3) && m->cfg.bos_id == 1);
        CHECK(m->cfg.rope_layout == NATIVE_ROPE_HALF && m->lm_head.data != m->embed.data);
        /* Linear scaling: position p rotates as p / factor would unscaled,
         * cos/sin(p / 4 * 100000^(-2i/4)) for head_dim 4, in the tables the
         * forward pass builds from this config. */
        CHECK(m->cfg.rope_scale == 4.0f && m->cfg.rope_theta == 100000.0f && m->cfg.yarn.factor == 0);
        float cs[64 * 2], sn[64 * 2];
        native_rope_tables(cs, sn, 64, m->cfg.head_dim, m->cfg.rope_theta, m->cfg.rope_scale, NULL, 1.0);
        int bad = 0;
        for (int p = 0; p < 64; p += 7)
            for (int i = 0; i < 2; i++) {
                double a = p / 4.0 * pow(100000.0, -2.0 * i / 4.0);
                bad += fabs(cs[p * 2 + i] - cos(a)) > 1e-6 || fabs(sn[p * 2 + i] - sin(a)) > 1e-6;
            }
        CHECK(bad == 0);
        native_model_free(m);
    }
    /* config.json and the .safetensors path load the same folder. */
    snprintf(p, sizeof(p), "%s/config.json", d);
    CHECK(native_model_load(p, &m, err, sizeof(err)) == 0);
    native_model_free(m);

    CHECK(write_model("missing", "model.layers.0.mlp.up_proj.weight", NULL, NULL, NULL) == 0);
    path(d, sizeof(d), "missing");
    CHECK(load_fails(d, "missing/model.safetensors", "model.layers.0.mlp.up_proj.weight"));

    CHECK(write_model("shape", NULL, "model.layers.0.self_attn.k_proj.weight", NULL, NULL) == 0);
    path(d, sizeof(d), "shape");
    CHECK(load_fails(d, "shape/model.safetensors", "model.layers.0.self_attn.k_proj.weight"));

    CHECK(write_model("dtype", NULL, NULL, "model.layers.0.self_attn.o_proj.weight", NULL) == 0);
    path(d, sizeof(d), "dtype");
    CHECK(load_fails(d, "model.layers.0.self_attn.o_proj.weight", "I32"));

    CHECK(write_model("nolm", "lm_head.weight", NULL, NULL, NULL) == 0);
    path(d, sizeof(d), "nolm");
    CHECK(load_fails(d, "nolm/model.safetensors", "lm_head.weight"));

    CHECK(write_model("arch", NULL, NULL, NULL, "{\"architectures\":[\"MistralForCausalLM\"]}") == 0);
    path(d, sizeof(d), "arch");
    CHECK(load_fails(d, "arch/config.json", "LlamaForCausalLM"));

    CHECK(write_model("rope", NULL, NULL, NULL,
                      "{\"hidden_size\":16,\"intermediate_size\":24,\"num_hidden_layers\":1,"
                      "\"num_attention_heads\":4,\"vocab_size\":40,"
                      "\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4.0}}") == 0);
    path(d, sizeof(d), "rope");
    CHECK(load_fails(d, "rope/config.json", "yarn"));

    CHECK(write_model("cfg", NULL, NULL, NULL, "{\"hidden_size\":16") == 0);
    path(d, sizeof(d), "cfg");
    CHECK(load_fails(d, "cfg/config.json", NULL));

    CHECK(write_model("nolayers", NULL, NULL, NULL, "{\"hidden_size\":16,\"intermediate_size\":24,"
                      "\"num_attention_heads\":4,\"vocab_size\":40}") == 0);
    path(d, sizeof(d), "nolayers");
    CHECK(load_fails(d, "nolayers/config.json", "num_hidden_layers"));
}

static void rm_rf(const char *d)
{
    DIR *dd = opendir(d);
    if (!dd)
        return;
    struct dirent *e;
    char p[2048];
    while ((e = readdir(dd))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(p, sizeof(p), "%s/%s", d, e->d_name);
        if (e->d_type == DT_DIR)
            rm_rf(p);
        else
            unlink(p);
    }
    closedir(dd);
    rmdir(d);
}

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_basic();
    test_sharded();
    test_hf_model();
    rm_rf(dir);
    TEST_MAIN_END();
}
