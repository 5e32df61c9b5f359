/* cascade-gen-v3: write a tiny DeepSeek-V3 checkpoint with seeded random
 * weights, as Hugging Face publishes the real one (synth_v3.h).
 *
 *   cascade-gen-v3 --out DIR [--preset tiny] [--dtype bf16|fp8] [--no-q-lora]
 *                  [--seed N] [--shards N]
 *
 * The same options always give the same bytes. The checkpoints feed the V3
 * tests (against tests/reference/deepseek_v3_ref.py) and the quickstart's
 * large tier when no real weights are present.
 */
#include "engines/native/model/synth_v3.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(void)
{
    fprintf(stderr, "usage: cascade-gen-v3 --out DIR [--preset tiny] [--dtype bf16|fp8] "
                    "[--no-q-lora] [--seed N] [--shards N]\n");
    exit(2);
}

/* A whole non-negative decimal number, or -1. */
static long parse_count(const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    return errno || end == s || *end || v < 0 ? -1 : v;
}

int main(int argc, char **argv)
{
    const char *out = NULL, *preset = "tiny", *dtype = NULL;
    long seed = -1, shards = -1;
    int no_q_lora = 0;
    char err[512];

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--no-q-lora")) {
            no_q_lora = 1;
            continue;
        }
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--out"))
            out = v;
        else if (!strcmp(a, "--preset"))
            preset = v;
        else if (!strcmp(a, "--dtype"))
            dtype = v;
        else if (!strcmp(a, "--seed") && (seed = parse_count(v)) >= 0)
            ;
        else if (!strcmp(a, "--shards") && (shards = parse_count(v)) >= 1)
            ;
        else
            usage();
    }
    struct synth_v3_spec spec;
    if (!out || synth_v3_preset(preset, &spec) != 0)
        usage();
    if (dtype && strcmp(dtype, "bf16") && strcmp(dtype, "fp8"))
        usage();
    spec.fp8 = dtype && !strcmp(dtype, "fp8");
    if (no_q_lora)
        spec.q_lora_rank = 0;
    if (seed >= 0)
        spec.seed = (uint64_t)seed;
    if (shards >= 1)
        spec.n_shards = (int)shards;
    if (synth_v3_write(&spec, out, err, sizeof(err)) != 0) {
        fprintf(stderr, "cascade-gen-v3: %s\n", err);
        return 1;
    }
    return 0;
}
