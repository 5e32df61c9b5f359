/* cascade-convert-llama2c: a llama2.c .bin model to a Hugging Face
 * LlamaForCausalLM folder (config.json + model.safetensors); see convert.h
 * for the RoPE row permutation it applies.
 *
 *   cascade-convert-llama2c --model IN.bin --out DIR [--dtype f32|f16|bf16]
 *                           [--tokenizer TOK.bin]
 */
#include "engines/native/model/convert.h"
#include "engines/native/model/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(void)
{
    fprintf(stderr, "usage: cascade-convert-llama2c --model IN.bin --out DIR [--dtype f32|f16|bf16] "
                    "[--tokenizer TOK.bin]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *in = NULL, *out = NULL, *tok = NULL, *dtype = "F32";
    char err[512];

    if (argc % 2 == 0)
        usage();
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            in = argv[i + 1];
        else if (!strcmp(argv[i], "--out"))
            out = argv[i + 1];
        else if (!strcmp(argv[i], "--tokenizer"))
            tok = argv[i + 1];
        else if (!strcmp(argv[i], "--dtype"))
            dtype = !strcmp(argv[i + 1], "bf16") ? "BF16" : !strcmp(argv[i + 1], "f16") ? "F16"
                  : !strcmp(argv[i + 1], "f32") ? "F32" : NULL;
        else
            usage();
    }
    if (!in || !out || !dtype)
        usage();

    struct native_model *m;
    if (native_model_load(in, &m, err, sizeof(err)) != 0 ||
        convert_llama2c_to_hf(m, out, dtype, tok, err, sizeof(err)) != 0) {
        fprintf(stderr, "cascade-convert-llama2c: %s\n", err);
        return 1;
    }
    native_model_free(m);
    return 0;
}
