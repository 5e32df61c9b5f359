#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum log_level min_level = LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_set_level(enum log_level min)
{
    min_level = min;
}

static void set_ts(json_t *obj)
{
    struct timespec ts;
    struct tm tm;
    char buf[40];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, sizeof buf - n, ".%03ldZ", ts.tv_nsec / 1000000);
    json_object_set_new(obj, "ts", json_string(buf));
}

void log_line_json(json_t *obj)
{
    /* "ts" first: people read these lines too. */
    json_t *line = json_object();
    if (!json_object_get(obj, "ts"))
        set_ts(line);
    json_object_update(line, obj);
    char *s = json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
    json_decref(line);
    if (!s)
        return;
    size_t n = strlen(s);
    s[n] = '\n';    /* json_dumps leaves room: we replace the NUL and write n+1 */
    ssize_t w = write(STDERR_FILENO, s, n + 1);
    (void)w;
    free(s);
}

void log_fields(enum log_level level, const char *msg, json_t *fields)
{
    if (level < min_level)
        return;
    json_t *obj = json_object();
    set_ts(obj);
    json_object_set_new(obj, "level", json_string(level_names[level]));
    json_object_set_new(obj, "msg", json_string(msg));
    if (fields)
        json_object_update(obj, fields);
    log_line_json(obj);
    json_decref(obj);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if (level < min_level)
        return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    log_fields(level, buf, NULL);
}
