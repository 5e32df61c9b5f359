/* access.h: one JSON access-log line per request, on stderr with the other
 * logs: time, request id, trace id, tenant, the key's id, tier, method,
 * path, status, the error code, latency, tokens, cost and savings, and
 * whether the request escalated or fell back, and the cascade judge's
 * verdict, reason and measured value when it judged. It is the per-request usage
 * record: summing its cost_nano per tenant reconciles with the spend the
 * policy settled. Never a key or any message content. Thread-safe. */
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
    int64_t saved_nano;     /* saved by the cache and by routing (gain) */
    int64_t routing_loss_nano;  /* routing's loss against the baseline (README "Savings") */
    const char *key_id;     /* the API key's id from the config, or NULL */
    const char *error_code; /* the error's code when status is not 200, or NULL */
    int escalated;          /* the cascade escalated it */
    const char *judge_verdict;  /* "keep" | "escalate" when the cascade judged (policies/judge.h), or NULL */
    const char *judge_reason;   /* the reason's name, with judge_verdict */
    double judge_value;         /* what that reason measured (finite) */
    const char *fallback;   /* the tier that failed before a fallback answered, or NULL */
    const char *trace_id;   /* W3C trace id (32 hex), or NULL */
};

void access_log(const struct access_entry *e);
/* A fresh id: 16 hex digits from a per-thread generator seeded by the OS. */
void access_new_id(char out[17]);

#endif
