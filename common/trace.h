/* trace.h: W3C Trace Context (traceparent, tracestate) for requests that
 * cross the gateway.
 *
 * The gateway is one hop of a trace: it keeps the client's trace id, names
 * itself with a fresh span id, and sends that on as the parent of the
 * upstream's work, so a trace viewer shows client -> gateway -> engine. A
 * client that sent no traceparent (or a malformed one, which the spec says
 * to ignore) starts a new trace here. tracestate is vendor data: passed on
 * unchanged, only when the traceparent it belongs to was valid, and only
 * when it fits the spec's 512 bytes.
 *
 *   traceparent = "00-" 32 hex trace-id "-" 16 hex parent-id "-" 2 hex flags
 * (lowercase; all-zero ids are invalid; a future version may append fields
 * after the flags, which we read and drop, as the spec asks).
 *
 * Pure functions over caller buffers; any thread. The parser reads client
 * bytes, so it has a fuzz target (tests/fuzz/fuzz_trace.c).
 */
#ifndef CASCADE_TRACE_H
#define CASCADE_TRACE_H

#include <stddef.h>

#define TRACE_TRACEPARENT_LEN 55    /* version 00's length */
#define TRACE_TRACESTATE_MAX 512

struct trace_context {
    char trace_id[33];              /* 32 lowercase hex + NUL */
    char span_id[17];               /* ours: 16 hex + NUL */
    char flags[3];                  /* 2 hex + NUL */
    char traceparent[TRACE_TRACEPARENT_LEN + 1];  /* what we send upstream */
    char tracestate[TRACE_TRACESTATE_MAX + 1];    /* "" for none */
};

/* Fill t from the client's headers (either may be NULL): continue a valid
 * trace, else start one (sampled). Our span id is fresh either way. */
void trace_begin(struct trace_context *t, const char *traceparent, const char *tracestate);

/* 1 when s is a traceparent we can continue (trace id and flags out, when
 * not NULL), else 0. */
int trace_parse(const char *s, char trace_id[33], char flags[3]);

#endif
