/* kvcache.c: block pool and free list; see kvcache.h. */
#include "engines/native/runtime/kvcache.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>

/* The backend's storage and a stack of free block ids: alloc and release
 * are O(blocks) with no search, and no block is ever split. */
struct kvcache {
    struct native_backend *b;
    struct native_kv *kv;
    size_t block_bytes;
    int block_size;
    int n_blocks;
    int32_t *free_list;     /* stack of free block ids */
    int n_free;
};

struct kvcache *kvcache_new(struct native_backend *b, const struct native_kv_desc *d,
                            size_t budget_bytes, char *err, size_t errlen)
{
    struct kvcache *kv = calloc(1, sizeof(*kv));
    if (!kv) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    kv->b = b;
    kv->block_size = b->ops->kv_block_size;
    kv->block_bytes = b->ops->kv_block_bytes(b, d);
    size_t n = kv->block_bytes ? budget_bytes / kv->block_bytes : 0;
    if (n < 1) {
        snprintf(err, errlen, "KV budget of %zu bytes holds no block (one block of %d positions is %zu bytes)",
                 budget_bytes, kv->block_size, kv->block_bytes);
        goto fail;
    }
    if (n > INT32_MAX / 2)
        n = INT32_MAX / 2;
    kv->n_blocks = (int)n;
    kv->kv = b->ops->kv_new(b, d, kv->n_blocks, err, errlen);
    if (!kv->kv)
        goto fail;
    kv->free_list = malloc(sizeof(int32_t) * n);
    if (!kv->free_list) {
        snprintf(err, errlen, "out of memory");
        goto fail_kv;
    }
    /* Hand out low block ids first, so a light load touches few pages. */
    for (int i = 0; i < kv->n_blocks; i++)
        kv->free_list[i] = kv->n_blocks - 1 - i;
    kv->n_free = kv->n_blocks;
    return kv;

fail_kv:
    b->ops->kv_free(b, kv->kv);
fail:
    free(kv);
    return NULL;
}

void kvcache_free(struct kvcache *kv)
{
    if (!kv)
        return;
    kv->b->ops->kv_free(kv->b, kv->kv);
    free(kv->free_list);
    free(kv);
}

struct native_kv *kvcache_kv(const struct kvcache *kv)
{
    return kv->kv;
}

size_t kvcache_block_bytes(const struct kvcache *kv)
{
    return kv->block_bytes;
}

int kvcache_block_size(const struct kvcache *kv)
{
    return kv->block_size;
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
    int64_t b = (n_pos + kv->block_size - 1) / kv->block_size;
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
