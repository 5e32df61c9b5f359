/* access.h: one JSON access-log line per request, on stderr with the other
 * logs: time, request id, tenant, tier, method, path, status, latency and
 * tokens. Never a key or any message content. Thread-safe. */
#ifndef CASCADE_ACCESS_H
#define CASCADE_ACCESS_H

#include <stdint.h>

struct access_entry {
    const char *request_id;
    const char *tenant;     /* NULL before authentication */
    const char *tier;       /* NULL when no tier was chosen */
    const char *method;
    const char *path;
    int status;             /* 499: the client went away first */
    uint64_t latency_us;
    int64_t prompt_tokens;
    int64_t completion_tokens;
    int stream;
    const char *cache;      /* hit | miss | bypass, or NULL */
    int64_t cost_nano;      /* what was charged, USD x 1e9 */
    int64_t saved_nano;     /* saved by the cache and by routing */
};

void access_log(const struct access_entry *e);
/* A fresh id: 16 hex digits from a per-thread generator seeded by the OS. */
void access_new_id(char out[17]);

#endif
