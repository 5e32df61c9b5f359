#include "gateway/access.h"

#include <jansson.h>
#include <stdio.h>
#include <sys/random.h>

#include "common/clock.h"
#include "common/log.h"

void access_log(const struct access_entry *e)
{
    json_t *o = json_pack("{s:s, s:s, s:s?, s:s?, s:s, s:s, s:i, s:f, s:I, s:I, s:b, s:s?, s:I, s:I}", "msg", "access",
                          "request_id", e->request_id, "tenant", e->tenant, "tier", e->tier, "method",
                          e->method, "path", e->path, "status", e->status, "latency_ms",
                          (double)e->latency_us / 1000.0, "prompt_tokens", (json_int_t)e->prompt_tokens,
                          "completion_tokens", (json_int_t)e->completion_tokens, "stream", e->stream,
                          "cache", e->cache, "cost_nano", (json_int_t)e->cost_nano, "saved_nano",
                          (json_int_t)e->saved_nano);
    if (o)
        log_line_json(o);
    json_decref(o);
}

void access_new_id(char out[17])
{
    /* xorshift64*: ids need to be unique, not secret. */
    static _Thread_local uint64_t s;
    if (!s) {
        if (getrandom(&s, sizeof s, 0) != sizeof s)
            s = clock_mono_us();
        s |= 1;
    }
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    snprintf(out, 17, "%016llx", (unsigned long long)(s * 0x2545F4914F6CDD1Dull));
}
