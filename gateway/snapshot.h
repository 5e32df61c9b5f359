/* snapshot.h: the running config as refcounted snapshots, and their reload.
 *
 * The gateway loads its config file once at start (the boot config, which
 * fixes listen address, workers, tiers and engines) and again into a
 * struct config_snap, which holds the policies requests run under: tenants,
 * keys, limits, routing. A request takes a reference to the current snapshot
 * when it starts (snapshot_acquire) and keeps reading that one until it ends
 * (snapshot_release), so a reload never changes the rules under a request in
 * flight. SIGHUP calls snapshot_reload: it loads the file again, refuses it
 * when a field that needs a restart changed, and otherwise swaps the new
 * snapshot in; the old one is freed by whoever drops its last reference.
 *
 * Ownership: a struct snapshot_store owns the current snapshot (one
 * reference). It borrows the boot config, which must outlive it. Every
 * snapshot_acquire returns one more reference, given back with exactly one
 * snapshot_release.
 *
 * Threads: acquire, release and reload may be called from any thread; the
 * swap is guarded by a mutex and the count is atomic. A snapshot's cfg is
 * read-only once published. snapshot_store_free runs when no other thread
 * uses the store.
 */
#ifndef CASCADE_SNAPSHOT_H
#define CASCADE_SNAPSHOT_H

#include <stdatomic.h>
#include <stddef.h>

#include "gateway/config.h"

/* A config as loaded, shared by the requests that started under it. */
struct config_snap {
    struct config cfg;
    atomic_int refs;
};

struct snapshot_store;
struct classifier;

/* Load path (with listen_override, if not NULL, applied as --listen does)
 * into the first snapshot. boot is the config the gateway started with:
 * reloads are checked against it, and each tenant's metrics slot is its
 * index there. classifier (borrowed, may be NULL) turns tenants' routing
 * shares into score thresholds on every load. NULL with err set when the
 * file does not load. */
struct snapshot_store *snapshot_store_new(const char *path, const char *listen_override, const struct config *boot,
                                          const struct classifier *classifier, char *err, size_t errlen);
/* Drops the store's reference; snapshots still held live on. NULL: no-op. */
void snapshot_store_free(struct snapshot_store *st);

/* The current snapshot, held until snapshot_release. */
struct config_snap *snapshot_acquire(struct snapshot_store *st);
/* Give back one reference; the last one frees the snapshot. NULL: no-op. */
void snapshot_release(struct config_snap *s);

/* Load the file again and swap it in if only policies changed; `why` names
 * the trigger in the log. 0 when swapped, -1 when the old one is kept. */
int snapshot_reload(struct snapshot_store *st, const char *why);

#endif
