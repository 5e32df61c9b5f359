#include "common/log.h"

#include "common/clock.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum log_level min_level = LOG_INFO;

/* The asynchronous writer: workers append to `active`; the thread swaps it
 * with its own buffer and writes outside the lock (double buffering). */
#define ASYNC_CAP (4u << 20)
static struct {
    pthread_mutex_t mu;
    pthread_cond_t more, room;
    char *active, *spare;
    size_t len;
    int on, stopping;
    pthread_t thread;
} lg = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, 0, 0, 0, 0};

static void write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w <= 0)
            return; /* nowhere to log to: drop rather than spin */
        p += w;
        n -= (size_t)w;
    }
}

/* The writer sleeps while there is nothing to write. The first line into an
 * empty buffer wakes it and goes out at once; after each write the writer
 * waits FLUSH_MS, so that while lines keep coming they go out at most 100
 * times a second, each write carrying all that came meanwhile (less once a
 * quarter of the buffer is full): a wake-up per line would cost a context
 * switch per request. An idle gateway does not wake at all (it woke 100
 * times a second, 0.8% of a core on a VM, before; bench/README.md, issue 18),
 * and a lone line is not held back. */
#define FLUSH_MS 10
#define EARLY_BYTES (ASYNC_CAP / 4)

static void *writer_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&lg.mu);
    for (;;) {
        while (lg.len == 0 && !lg.stopping)
            pthread_cond_wait(&lg.more, &lg.mu);
        if (lg.len == 0)
            break; /* stopping, and all is written */
        char *full = lg.active;
        size_t n = lg.len;
        lg.active = lg.spare;
        lg.spare = full;
        lg.len = 0;
        pthread_cond_broadcast(&lg.room);
        pthread_mutex_unlock(&lg.mu);
        write_all(full, n);
        pthread_mutex_lock(&lg.mu);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += FLUSH_MS * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        /* The pause between writes ends early only at the quarter mark, or
         * when stopping: a first line's signal does not cut it short. */
        while (lg.len < EARLY_BYTES && !lg.stopping && pthread_cond_timedwait(&lg.more, &lg.mu, &until) == 0)
            ;
    }
    pthread_mutex_unlock(&lg.mu);
    return NULL;
}

void log_async_start(void)
{
    pthread_mutex_lock(&lg.mu);
    if (!lg.on) {
        lg.active = malloc(ASYNC_CAP);
        lg.spare = malloc(ASYNC_CAP);
        if (lg.active && lg.spare && pthread_create(&lg.thread, NULL, writer_main, NULL) == 0) {
            lg.on = 1;
        } else {
            free(lg.active);
            free(lg.spare);
        }
    }
    pthread_mutex_unlock(&lg.mu);
}

void log_async_stop(void)
{
    pthread_mutex_lock(&lg.mu);
    int on = lg.on;
    lg.stopping = 1;
    pthread_cond_signal(&lg.more);
    pthread_mutex_unlock(&lg.mu);
    if (!on)
        return;
    pthread_join(lg.thread, NULL);
    pthread_mutex_lock(&lg.mu);
    lg.on = 0;
    lg.stopping = 0;
    free(lg.active);
    free(lg.spare);
    lg.active = lg.spare = NULL;
    pthread_mutex_unlock(&lg.mu);
}

void log_write_line(const char *line, size_t n)
{
    pthread_mutex_lock(&lg.mu);
    if (!lg.on || n > ASYNC_CAP) {
        pthread_mutex_unlock(&lg.mu);
        write_all(line, n);
        return;
    }
    while (lg.len + n > ASYNC_CAP) /* full: wait for the writer, keep every line */
        pthread_cond_wait(&lg.room, &lg.mu);
    /* The writer waits for the first line (it sleeps on an empty buffer)
     * and for the quarter mark (it writes early): a signal at each. */
    int wake = lg.len == 0 || (lg.len < EARLY_BYTES && lg.len + n >= EARLY_BYTES);
    memcpy(lg.active + lg.len, line, n);
    lg.len += n;
    if (wake)
        pthread_cond_signal(&lg.more);
    pthread_mutex_unlock(&lg.mu);
}

size_t log_ts_field(char *out, size_t cap)
{
    /* Called for every access-log line. The date and time to the second
     * change once a second, so each thread formats them then, not per line:
     * gmtime_r (which takes glibc's time-zone lock), strftime and snprintf
     * were ~4k instructions a request (callgrind, issue 18). */
    static _Thread_local time_t last_sec = (time_t)-1;
    static _Thread_local char day[32];
    static _Thread_local size_t day_len;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != last_sec) {
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        day_len = strftime(day, sizeof day, "%Y-%m-%dT%H:%M:%S", &tm);
        last_sec = ts.tv_sec;
    }
    char line[64];
    size_t n = 0;
    memcpy(line, "\"ts\":\"", 6);
    n = 6;
    memcpy(line + n, day, day_len);
    n += day_len;
    long ms = ts.tv_nsec / 1000000;
    line[n++] = '.';
    line[n++] = (char)('0' + ms / 100 % 10);
    line[n++] = (char)('0' + ms / 10 % 10);
    line[n++] = (char)('0' + ms % 10);
    memcpy(line + n, "Z\",", 3);
    n += 3;
    if (cap == 0)
        return 0;
    if (n >= cap)
        n = cap - 1; /* cut, as snprintf would */
    memcpy(out, line, n);
    out[n] = '\0';
    return n;
}
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
    log_write_line(s, n + 1);
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

/* Format the message (cut at 1 KiB) and log it with extra's fields. */
static void log_vfields(enum log_level level, json_t *extra, const char *fmt, va_list ap)
{
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    log_fields(level, buf, extra);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if (level < min_level)
        return;
    va_list ap;
    va_start(ap, fmt);
    log_vfields(level, NULL, fmt, ap);
    va_end(ap);
}

void log_limited(struct log_limit *l, unsigned interval_ms, enum log_level level, const char *fmt, ...)
{
    if (level < min_level)
        return;
    /* One thread wins the slot for this interval (compare-and-swap); the
     * others count themselves as dropped. */
    uint64_t now = clock_mono_us(), next = atomic_load(&l->next_us);
    if (now < next || !atomic_compare_exchange_strong(&l->next_us, &next, now + (uint64_t)interval_ms * 1000u)) {
        atomic_fetch_add(&l->dropped, 1);
        return;
    }
    uint64_t dropped = atomic_exchange(&l->dropped, 0);
    json_t *extra = dropped ? json_pack("{s:I}", "suppressed", (json_int_t)dropped) : NULL;
    va_list ap;
    va_start(ap, fmt);
    log_vfields(level, extra, fmt, ap);
    va_end(ap);
    json_decref(extra);
}
