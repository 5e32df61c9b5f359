/* log.h: structured logging, one JSON object per line on stderr.
 *
 * Operators feed these lines to their log pipeline, so every line is valid
 * JSON: {"ts":"2026-11-22T12:00:00.123Z","level":"info","msg":"..."} plus any
 * fields the caller adds. Messages are printf-formatted and escaped here.
 * log_line_json() writes a caller-built object (the access log). Each line is
 * written with one write(2), so lines from different threads never interleave.
 * Thread-safe. */
#ifndef CASCADE_LOG_H
#define CASCADE_LOG_H

#include <jansson.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

void log_set_level(enum log_level min);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Log msg with extra fields from obj (borrowed). */
void log_fields(enum log_level level, const char *msg, json_t *obj);
/* Write obj (borrowed) as one line, adding "ts" if absent. */
void log_line_json(json_t *obj);

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
