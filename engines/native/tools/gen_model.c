/* cascade-gen-model: write a deterministic random-weight model (synth.h).
 *
 *   cascade-gen-model --out DIR [--preset tiny|deepseek-coder-1.3b|deepseek-llm-7b]
 *                     [--dtype f32|f16|bf16] [--seed N] [--shards N] [--layers N]
 *
 * The tiny preset is the offline quickstart model (nonsense text, real
 * path); deepseek-coder-1.3b has that model's shapes with BF16 weights, for
 * benchmarks (about 2.7 GB); deepseek-llm-7b that model's (about 13.8 GB).
 */
#include "engines/native/model/synth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(void)
{
    fprintf(stderr, "usage: cascade-gen-model --out DIR [--preset tiny|deepseek-coder-1.3b|deepseek-llm-7b] "
                    "[--dtype f32|f16|bf16] [--seed N] [--shards N] [--layers N]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *out = NULL, *preset = "tiny", *dtype = NULL;
    long seed = -1, shards = 0, layers = 0;
    char err[512];

    if (argc % 2 == 0)
        usage();
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--out"))
            out = v;
        else if (!strcmp(a, "--preset"))
            preset = v;
        else if (!strcmp(a, "--dtype"))
            dtype = !strcmp(v, "bf16") ? "BF16" : !strcmp(v, "f16") ? "F16" : !strcmp(v, "f32") ? "F32" : "";
        else if (!strcmp(a, "--seed"))
            seed = strtol(v, NULL, 10);
        else if (!strcmp(a, "--shards"))
            shards = strtol(v, NULL, 10);
        else if (!strcmp(a, "--layers"))
            layers = strtol(v, NULL, 10);
        else
            usage();
    }
    struct synth_spec spec;
    if (!out || synth_preset(preset, &spec) != 0 || (dtype && !*dtype))
        usage();
    if (dtype)
        spec.dtype = dtype;
    if (seed >= 0)
        spec.seed = (uint64_t)seed;
    if (shards > 0)
        spec.n_shards = (int)shards;
    if (layers > 0)
        spec.n_layers = (int)layers;
    if (synth_write(&spec, out, err, sizeof(err)) != 0) {
        fprintf(stderr, "cascade-gen-model: %s\n", err);
        return 1;
    }
    return 0;
}
