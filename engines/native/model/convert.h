/* convert.h: llama2.c .bin -> Hugging Face LlamaForCausalLM folder
 * (config.json + model.safetensors), so the safetensors path is tested on
 * real weights. The cascade-convert-llama2c tool is a thin shell over it.
 *
 * RoPE layouts differ: llama2.c rotates adjacent pairs (2i, 2i+1) of each
 * head, HF rotates (i, i + head_dim/2). Permuting the rows of Wq and Wk
 * inside every head,
 *     new row  j * (head_dim/2) + i  =  old row  2i + j      (j = 0, 1)
 * turns one into the other: q and k come out permuted the same way, so every
 * dot product q.k, and everything after it, is unchanged. (It is the
 * permutation of HF's convert_llama_weights_to_hf.py.) V, Wo and the MLP keep
 * their layout. eos_token_id lists EOS and BOS, since llama2.c stops at either.
 *
 * Single-threaded; reads the model, writes files.
 */
#ifndef CASCADE_NATIVE_CONVERT_H
#define CASCADE_NATIVE_CONVERT_H

#include "engines/native/model/model.h"

#include <stddef.h>

/* Write m (a llama2.c model) to out_dir (created if missing) with weights in
 * dtype ("F32", "F16" or "BF16"). tokenizer_path, if not NULL, is copied to
 * out_dir/tokenizer.bin. 0, or -1 with a message in err. */
int convert_llama2c_to_hf(const struct native_model *m, const char *out_dir, const char *dtype,
                          const char *tokenizer_path, char *err, size_t errlen);

/* The source row of HF row r in a [n_heads * head_dim] x cols projection. */
int64_t convert_rope_row(int64_t r, int64_t rows, int n_heads);

#endif
