/* fuzz_trace: the W3C traceparent parser (common/trace.c) on arbitrary
 * client header values.
 *
 * Besides memory errors, it checks what the gateway relies on: a value the
 * parser accepts has a 32-hex non-zero trace id and hex flags, and the
 * traceparent trace_begin() builds from any input (with any tracestate) is
 * itself accepted, continues the client's trace id when the input was
 * valid, and has a tracestate within the spec's 512 bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* First byte: where the input splits into traceparent and tracestate. */
    size_t cut = size ? data[0] % (size + 1) : 0;
    if (cut == 0 && size)
        cut = 1;
    char *tp = malloc(size + 1), *ts = malloc(size + 1);
    if (!tp || !ts)
        abort();
    size_t tpl = cut > 0 ? cut - 1 : 0;
    memcpy(tp, data + (size ? 1 : 0), tpl);
    tp[tpl] = '\0';
    size_t tsl = size - cut;
    memcpy(ts, data + cut, tsl);
    ts[tsl] = '\0';

    char id[33], flags[3];
    int ok = trace_parse(tp, id, flags);
    if (ok && (strlen(id) != 32 || strspn(id, "0123456789abcdef") != 32 || strspn(id, "0") == 32 ||
               strlen(flags) != 2))
        abort();
    struct trace_context t;
    trace_begin(&t, tp, ts);
    char id2[33];
    if (!trace_parse(t.traceparent, id2, NULL))
        abort();
    if (ok && strcmp(id2, id) != 0)
        abort();
    if (strlen(t.tracestate) > TRACE_TRACESTATE_MAX || (!ok && t.tracestate[0]))
        abort();
    free(tp);
    free(ts);
    return 0;
}
