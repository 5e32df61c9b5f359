/* kvcache.h: the paged KV cache's block allocator.
 *
 * One pool of fixed-size blocks holds the keys and values (or MLA latents)
 * of every running sequence. The backend owns the storage and its layout
 * (ops.h: kv_new); this module decides how many blocks the engine's KV
 * budget buys and which sequence holds which. A sequence takes whole blocks,
 * so memory never fragments, and the scheduler admits a request only when
 * the blocks it needs are free.
 *
 * Threads: not thread-safe; the engine's scheduler thread owns it.
 */
#ifndef CASCADE_NATIVE_KVCACHE_H
#define CASCADE_NATIVE_KVCACHE_H

#include "engines/native/backend/ops.h"

#include <stddef.h>
#include <stdint.h>

struct kvcache;

/* A pool of as many blocks of backend b's KV storage for d as budget_bytes
 * holds (at least one). b must outlive it. NULL and a message in err when
 * the budget holds no block, the backend cannot store d, or memory is short. */
struct kvcache *kvcache_new(struct native_backend *b, const struct native_kv_desc *d,
                            size_t budget_bytes, char *err, size_t errlen);
void kvcache_free(struct kvcache *kv);

/* The backend's storage, for the forward pass. */
struct native_kv *kvcache_kv(const struct kvcache *kv);
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
