/* kvcache.h: the paged KV cache's memory and its block allocator.
 *
 * One pool of fixed-size blocks holds the keys and values of every running
 * sequence (layout in ops.h, struct native_kv). Its size is the engine's KV
 * budget: a sequence takes whole blocks, so memory never fragments, and the
 * scheduler admits a request only when the blocks it needs are free.
 *
 * The pool is an anonymous mapping: pages count against RSS only once a
 * sequence has written to them.
 *
 * Threads: not thread-safe; the engine's scheduler thread owns it.
 */
#ifndef CASCADE_NATIVE_KVCACHE_H
#define CASCADE_NATIVE_KVCACHE_H

#include "engines/native/backend/ops.h"

#include <stddef.h>
#include <stdint.h>

struct kvcache;

/* A pool of as many blocks as budget_bytes holds (at least one). NULL and a
 * message in err when the budget holds no block or memory is short. */
struct kvcache *kvcache_new(int n_layers, int kv_dim, int block_size, size_t budget_bytes,
                            char *err, size_t errlen);
void kvcache_free(struct kvcache *kv);

const struct native_kv *kvcache_view(const struct kvcache *kv);
size_t kvcache_block_bytes(const struct kvcache *kv);
int kvcache_block_size(const struct kvcache *kv);
int kvcache_total_blocks(const struct kvcache *kv);
int kvcache_free_blocks(const struct kvcache *kv);

/* Blocks needed for n_pos positions. */
int kvcache_blocks_for(const struct kvcache *kv, int64_t n_pos);

/* Take n blocks into blocks[]; 0, or -1 (nothing taken) when fewer are free. */
int kvcache_alloc(struct kvcache *kv, int n, int32_t *blocks);
/* Give blocks back. */
void kvcache_release(struct kvcache *kv, const int32_t *blocks, int n);

#endif
