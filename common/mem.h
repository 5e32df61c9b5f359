/* mem.h: allocation with the project's one out-of-memory policy.
 *
 * Policy: running out of memory for a small, bounded allocation (a request's
 * state, a header, a JSON string) is not a condition the gateway can serve
 * through, so x*alloc() logs and aborts. Allocations whose size comes from
 * input (bodies, model files) are bounded by explicit limits before they are
 * made, and large ones (weights, KV caches) use plain malloc/mmap and report
 * failure to their caller instead. Thread-safe. */
#ifndef CASCADE_MEM_H
#define CASCADE_MEM_H

#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

#endif
