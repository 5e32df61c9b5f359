/* log.h: structured logging, one JSON object per line on stderr.
 *
 * Operators feed these lines to their log pipeline, so every line is valid
 * JSON: {"ts":"2026-11-22T12:00:00.123Z","level":"info","msg":"..."} plus any
 * fields the caller adds. Messages are printf-formatted and escaped here.
 * log_line_json() writes a caller-built object; log_write_line() a line the
 * caller formatted itself (the access log, on the hot path).
 *
 * Writing: by default each line is one write(2). After log_async_start(),
 * lines are appended to a buffer under a mutex and a background thread
 * writes them every 10 ms, so a worker never blocks on a slow disk or pipe
 * and never wakes a thread per line; lines keep their order and never
 * interleave. If the buffer fills (4 MiB) the caller waits for the disk
 * rather than lose lines. log_async_stop() flushes.
 * Thread-safe. */
#ifndef CASCADE_LOG_H
#define CASCADE_LOG_H

#include <jansson.h>
#include <stdatomic.h>
#include <stdint.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* A line that may repeat once per request (a Redis that refuses every
 * write, say) must not grow with the traffic: log it through a limiter,
 * which lets one line out per interval and counts the rest. Zero-initialize
 * one per call site (static); any thread may use it. */
struct log_limit {
    _Atomic uint64_t next_us;       /* monotonic time the next line may go out */
    _Atomic uint64_t dropped;       /* lines held back since the last one */
};

void log_set_level(enum log_level min);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Log msg with extra fields from obj (borrowed). */
void log_fields(enum log_level level, const char *msg, json_t *obj);
/* Write obj (borrowed) as one line, adding "ts" if absent. */
void log_line_json(json_t *obj);
/* Write n bytes that end with '\n' as they are. */
void log_write_line(const char *line, size_t n);
/* Append "ts":"...", (ISO 8601 UTC, ms) for a hand-built line; 0-terminated. */
size_t log_ts_field(char *out, size_t cap);
/* log_msg through l: at most one line per interval_ms; a line that goes out
 * after others were held back carries their number ("suppressed": N). */
void log_limited(struct log_limit *l, unsigned interval_ms, enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void log_async_start(void);
void log_async_stop(void);

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
