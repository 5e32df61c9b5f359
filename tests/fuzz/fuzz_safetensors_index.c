/* fuzz_safetensors_index: a sharded checkpoint's model.safetensors.index.json
 * (engines/native/model/safetensors.c) from arbitrary bytes, through
 * safetensors_open_index_memory(), against two real shards written once to a
 * temporary folder: model-00001-of-00002.safetensors holds "a" and "b",
 * model-00002-of-00002.safetensors holds "c".
 *
 * Checks beyond memory errors: an accepted index names only tensors that
 * exist, in the shard it says, and no shard name escapes the folder. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engines/native/model/safetensors.h"

static char dir[64], index_path[128];
static char shard_path[2][128];

static void cleanup(void)
{
    unlink(shard_path[0]);
    unlink(shard_path[1]);
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    static const float fa[4] = {1, 2, 3, 4}, fb[2] = {5, 6}, fc[3] = {7, 8, 9};
    const struct st_out s1[] = {
        {.name = "a", .dtype = "F32", .ndim = 2, .shape = {2, 2}, .data = fa},
        {.name = "b", .dtype = "F32", .ndim = 1, .shape = {2}, .data = fb},
    };
    const struct st_out s2[] = {{.name = "c", .dtype = "F32", .ndim = 1, .shape = {3}, .data = fc}};
    char err[256];
    snprintf(dir, sizeof dir, "%s/cascade-fuzz-st.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir))
        abort();
    snprintf(index_path, sizeof index_path, "%s/model.safetensors.index.json", dir);
    snprintf(shard_path[0], sizeof shard_path[0], "%s/model-00001-of-00002.safetensors", dir);
    snprintf(shard_path[1], sizeof shard_path[1], "%s/model-00002-of-00002.safetensors", dir);
    atexit(cleanup);
    if (safetensors_write(shard_path[0], s1, 2, NULL, NULL, err, sizeof err) != 0 ||
        safetensors_write(shard_path[1], s2, 1, NULL, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_safetensors_index: %s\n", err);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    struct safetensors *st =
        safetensors_open_index_memory(index_path, (const char *)data, size, err, sizeof err);
    if (!st)
        return 0;
    /* Accepted: every tensor comes from one of our two shards. */
    size_t n = safetensors_count(st);
    if (n == 0 || n > 3)
        abort();
    for (size_t i = 0; i < n; i++) {
        const struct st_tensor *t = safetensors_at(st, i);
        if (strcmp(t->file, shard_path[0]) != 0 && strcmp(t->file, shard_path[1]) != 0)
            abort();
        if (safetensors_find(st, t->name) != t)
            abort();
    }
    safetensors_free(st);
    return 0;
}
