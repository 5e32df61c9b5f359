#include "gateway/access.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>

#include "common/clock.h"
#include "common/fmt.h"
#include "common/jsonw.h"
#include "common/log.h"

/* One line per request: built by hand (jsonw.h) and handed to the log
 * writer, since this runs for every request. */
void access_log(const struct access_entry *e)
{
    char ts[48];
    log_ts_field(ts, sizeof ts);
    struct jsonw w;
    jw_init(&w, 512);
    jw_lit(&w, "{");
    jw_lit(&w, ts);
    jw_lit(&w, "\"msg\":\"access\",\"request_id\":");
    jw_cstr(&w, e->request_id);
    if (e->trace_id) {
        jw_lit(&w, ",\"trace_id\":");
        jw_cstr(&w, e->trace_id);
    }
    if (e->tenant) {
        jw_lit(&w, ",\"tenant\":");
        jw_cstr(&w, e->tenant);
    }
    if (e->key_id) {
        jw_lit(&w, ",\"key_id\":");
        jw_cstr(&w, e->key_id);
    }
    if (e->tier) {
        jw_lit(&w, ",\"tier\":");
        jw_cstr(&w, e->tier);
    }
    jw_lit(&w, ",\"method\":");
    jw_cstr(&w, e->method);
    jw_lit(&w, ",\"path\":");
    jw_cstr(&w, e->path);
    jw_lit(&w, ",\"status\":");
    jw_int(&w, e->status);
    if (e->error_code) {
        jw_lit(&w, ",\"error_code\":");
        jw_cstr(&w, e->error_code);
    }
    /* milliseconds with 3 decimals, from integer microseconds (no printf) */
    jw_lit(&w, ",\"latency_ms\":");
    jw_int(&w, (int64_t)(e->latency_us / 1000));
    char frac[5] = {'.', (char)('0' + e->latency_us / 100 % 10), (char)('0' + e->latency_us / 10 % 10),
                    (char)('0' + e->latency_us % 10), 0};
    jw_raw(&w, frac, 4);
    jw_lit(&w, ",\"prompt_tokens\":");
    jw_int(&w, e->prompt_tokens);
    jw_lit(&w, ",\"completion_tokens\":");
    jw_int(&w, e->completion_tokens);
    jw_lit(&w, e->stream ? ",\"stream\":true" : ",\"stream\":false");
    if (e->cache) {
        jw_lit(&w, ",\"cache\":");
        jw_cstr(&w, e->cache);
    }
    jw_lit(&w, ",\"cost_nano\":");
    jw_int(&w, e->cost_nano);
    jw_lit(&w, ",\"saved_nano\":");
    jw_int(&w, e->saved_nano);
    if (e->routing_loss_nano) {
        jw_lit(&w, ",\"routing_loss_nano\":");
        jw_int(&w, e->routing_loss_nano);
    }
    jw_lit(&w, e->escalated ? ",\"escalated\":true" : ",\"escalated\":false");
    if (e->judge_verdict && e->judge_reason) {
        char v[40];
        int vn = snprintf(v, sizeof v, "%.4f", isfinite(e->judge_value) ? e->judge_value : 0.0);
        jw_lit(&w, ",\"judge\":");
        jw_cstr(&w, e->judge_verdict);
        jw_lit(&w, ",\"judge_reason\":");
        jw_cstr(&w, e->judge_reason);
        jw_lit(&w, ",\"judge_value\":");
        if (vn > 0 && (size_t)vn < sizeof v)
            jw_raw(&w, v, (size_t)vn);
        else
            jw_lit(&w, "0");
    }
    if (e->fallback) {
        jw_lit(&w, ",\"fallback\":");
        jw_cstr(&w, e->fallback);
    }
    jw_lit(&w, "}\n");
    size_t len;
    char *line = jw_take(&w, &len);
    log_write_line(line, len);
    free(line);
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
    fmt_hex64(out, s * 0x2545F4914F6CDD1Dull);
}
