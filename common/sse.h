/* sse.h: an incremental Server-Sent Events parser.
 *
 * The remote engine feeds it upstream body bytes exactly as they arrive, split
 * anywhere (inside a line, between CR and LF, inside a UTF-8 sequence); it
 * calls back once per complete event, as the SSE spec dispatches them: on a
 * blank line, with the event's data lines joined by '\n'. It never holds more
 * than one event, and an event over max_event_bytes is an error, so a broken
 * upstream cannot make us buffer a whole answer. One parser per stream; not
 * thread-safe. */
#ifndef CASCADE_SSE_H
#define CASCADE_SSE_H

#include <stddef.h>

/* Called per event; event is "" when the stream named none. Return 0 to go on,
 * or a negative value to stop parsing (sse_parser_feed then returns it). */
typedef int (*sse_event_cb)(void *ctx, const char *event, const char *data, size_t len);

struct sse_parser;

struct sse_parser *sse_parser_new(size_t max_event_bytes, sse_event_cb cb, void *ctx);
/* 0 when all bytes were consumed; SSE_ETOOBIG, or the callback's negative value. */
int sse_parser_feed(struct sse_parser *p, const char *buf, size_t len);
void sse_parser_free(struct sse_parser *p);

#define SSE_ETOOBIG (-1000)

#endif
