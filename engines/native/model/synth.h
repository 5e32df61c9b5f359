/* synth.h: deterministic random-weight models, written as HF checkpoints.
 *
 * Two uses: the offline quickstart (when ../shared/models is absent the tiny
 * preset gives a model that runs through the whole path, though its text is
 * nonsense), and benchmarks at real shapes (DeepSeek-Coder-1.3B's, with BF16
 * weights) without downloading anything.
 *
 * Output: DIR/config.json, DIR/model.safetensors (or n_shards files and
 * model.safetensors.index.json), and a llama2.c-format DIR/tokenizer.bin
 * whose vocabulary is <unk>, BOS, EOS, the 256 byte pieces, printable ASCII,
 * then letter pairs and triples, so any UTF-8 text encodes. The same spec
 * and seed always give the same bytes. Weights are uniform in
 * +-1/sqrt(fan_in); norm weights are 1.
 *
 * Single-threaded; writes files.
 */
#ifndef CASCADE_NATIVE_SYNTH_H
#define CASCADE_NATIVE_SYNTH_H

#include <stddef.h>
#include <stdint.h>

struct synth_spec {
    int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, max_pos;
    double rope_theta, rope_scale, norm_eps;
    int tied;
    const char *dtype;      /* "F32", "F16" or "BF16" */
    int n_shards;           /* 1: model.safetensors; more: an index and shards */
    uint64_t seed;
    int bos_id, eos_id;
};

/* A preset by name: "tiny" (stories260K's shapes, F32) or
 * "deepseek-coder-1.3b" (hidden 2048, intermediate 5504, 24 layers, 16
 * heads, vocab 32256, rope theta 100000 with linear scaling 4, BF16) or
 * "deepseek-llm-7b" (hidden 4096, intermediate 11008, 30 layers, 32 heads,
 * vocab 102400, rope theta 10000, BF16: 13.8 GB, for the GPU benchmarks).
 * 0, or -1 for an unknown name. */
int synth_preset(const char *name, struct synth_spec *out);

/* Write the model into dir (created if missing). 0, or -1 with err set. */
int synth_write(const struct synth_spec *spec, const char *dir, char *err, size_t errlen);

#endif
