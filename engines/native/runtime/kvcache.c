/* kvcache.c: block pool and free list; see kvcache.h. */
#include "engines/native/runtime/kvcache.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

/* The pool and a stack of free block ids: alloc and release are O(blocks)
 * with no search, and no block is ever split. */
struct kvcache {
    struct native_kv view;
    size_t map_bytes;
    int n_blocks;
    int32_t *free_list;     /* stack of free block ids */
    int n_free;
};

struct kvcache *kvcache_new(int n_layers, int kv_dim, int block_size, size_t budget_bytes,
                            char *err, size_t errlen)
{
    struct kvcache *kv = calloc(1, sizeof(*kv));
    if (!kv) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    kv->view.block_size = block_size;
    kv->view.kv_dim = kv_dim;
    kv->view.n_layers = n_layers;
    kv->view.layer_stride = 2 * (size_t)block_size * (size_t)kv_dim;
    kv->view.block_stride = (size_t)n_layers * kv->view.layer_stride;

    size_t block_bytes = kv->view.block_stride * sizeof(float);
    size_t n = budget_bytes / block_bytes;
    if (n < 1) {
        snprintf(err, errlen, "KV budget of %zu bytes holds no block (one block of %d positions is %zu bytes)",
                 budget_bytes, block_size, block_bytes);
        goto fail;
    }
    if (n > INT32_MAX / 2)
        n = INT32_MAX / 2;
    kv->n_blocks = (int)n;
    kv->map_bytes = n * block_bytes;
    /* Anonymous memory comes zeroed and is committed page by page as
     * sequences write to it, so a large budget costs nothing until used. */
    void *p = mmap(NULL, kv->map_bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        snprintf(err, errlen, "cannot map a KV cache of %zu bytes", kv->map_bytes);
        goto fail;
    }
    kv->view.data = p;
    kv->free_list = malloc(sizeof(int32_t) * n);
    if (!kv->free_list) {
        snprintf(err, errlen, "out of memory");
        goto fail_map;
    }
    /* Hand out low block ids first, so a light load touches few pages. */
    for (int i = 0; i < kv->n_blocks; i++)
        kv->free_list[i] = kv->n_blocks - 1 - i;
    kv->n_free = kv->n_blocks;
    return kv;

fail_map:
    munmap(kv->view.data, kv->map_bytes);
fail:
    free(kv);
    return NULL;
}

void kvcache_free(struct kvcache *kv)
{
    if (!kv)
        return;
    munmap(kv->view.data, kv->map_bytes);
    free(kv->free_list);
    free(kv);
}

const struct native_kv *kvcache_view(const struct kvcache *kv)
{
    return &kv->view;
}

size_t kvcache_block_bytes(const struct kvcache *kv)
{
    return kv->view.block_stride * sizeof(float);
}

int kvcache_block_size(const struct kvcache *kv)
{
    return kv->view.block_size;
}

int kvcache_total_blocks(const struct kvcache *kv)
{
    return kv->n_blocks;
}

int kvcache_free_blocks(const struct kvcache *kv)
{
    return kv->n_free;
}

int kvcache_blocks_for(const struct kvcache *kv, int64_t n_pos)
{
    int64_t b = (n_pos + kv->view.block_size - 1) / kv->view.block_size;
    return b > INT32_MAX ? INT32_MAX : (int)b;
}

/* All or nothing, so a failed admission leaves the pool as it was. */
int kvcache_alloc(struct kvcache *kv, int n, int32_t *blocks)
{
    if (n < 0 || n > kv->n_free)
        return -1;
    for (int i = 0; i < n; i++)
        blocks[i] = kv->free_list[--kv->n_free];
    return 0;
}

void kvcache_release(struct kvcache *kv, const int32_t *blocks, int n)
{
    for (int i = 0; i < n; i++) {
        assert(kv->n_free < kv->n_blocks);
        kv->free_list[kv->n_free++] = blocks[i];
    }
}
