/* test_log: the rate-limited log line (log_limited): one line per interval
 * whatever the traffic, from any number of threads, and the next line that
 * goes out counts the ones held back. stderr is redirected to a file to
 * read what was written. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"

#include <time.h>
#include "tests/unit/test.h"

static struct log_limit lim;

static void *spam(void *arg)
{
    (void)arg;
    for (int i = 0; i < 5000; i++)
        log_limited(&lim, 60000, LOG_ERROR, "redis refused write %d", i);
    return NULL;
}

static int count_lines(const char *path, char *last, size_t cap)
{
    FILE *f = fopen(path, "r");
    int n = 0;
    char line[2048];
    while (f && fgets(line, sizeof line, f)) {
        n++;
        snprintf(last, cap, "%s", line);
    }
    if (f)
        fclose(f);
    return n;
}

int main(void)
{
    char path[] = "/tmp/cascade-test-log-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    int saved = dup(2);
    dup2(fd, 2);

    /* 4 threads x 5000 lines within one 60 s interval: one line. */
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, spam, NULL);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    char last[2048] = "";
    int n = count_lines(path, last, sizeof last);

    /* The next interval: one more line, carrying the 19,999 held back. */
    static struct log_limit quick;
    log_limited(&quick, 20, LOG_WARN, "first");
    for (int i = 0; i < 7; i++)
        log_limited(&quick, 20, LOG_WARN, "held back %d", i);
    usleep(30 * 1000);
    log_limited(&quick, 20, LOG_WARN, "after the interval");
    char last2[2048] = "";
    int n2 = count_lines(path, last2, sizeof last2);
    atomic_store(&lim.next_us, 0);
    log_limited(&lim, 60000, LOG_ERROR, "the spam's next line");
    char last3[2048] = "";
    int n3 = count_lines(path, last3, sizeof last3);

    dup2(saved, 2);
    close(saved);
    close(fd);
    unlink(path);
    printf("lines: %d, then %d, then %d\nlast: %s%s", n, n2, n3, last2, last3);
    CHECK(n == 1);
    CHECK(strstr(last, "redis refused write") != NULL && strstr(last, "suppressed") == NULL);
    CHECK(n2 == 3);
    CHECK(strstr(last2, "after the interval") && strstr(last2, "\"suppressed\":7"));
    CHECK(n3 == 4);
    CHECK(strstr(last3, "\"suppressed\":19999") != NULL);
    /* log_ts_field: "ts":"YYYY-MM-DDTHH:MM:SS.mmmZ", the same second as the
     * clock (formatted once a second per thread), and cut as snprintf cuts */
    for (int i = 0; i < 3; i++) {
        char f[64], want[32];
        /* The clock log_ts_field reads: time() is the coarse clock, which
         * can still say the last second for a few ms after CLOCK_REALTIME
         * passed it (a fresh-clone CI run hit that window). */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        time_t before = ts.tv_sec;
        size_t n = log_ts_field(f, sizeof f);
        clock_gettime(CLOCK_REALTIME, &ts);
        time_t after = ts.tv_sec;
        struct tm tm;
        CHECK(n == 32 && strlen(f) == 32);
        CHECK(strncmp(f, "\"ts\":\"", 6) == 0 && f[25] == '.' && strcmp(f + 29, "Z\",") == 0);
        int ok = 0;
        for (time_t t = before; t <= after; t++) {
            gmtime_r(&t, &tm);
            strftime(want, sizeof want, "%Y-%m-%dT%H:%M:%S", &tm);
            ok |= strncmp(f + 6, want, 19) == 0;
        }
        CHECK(ok);
        char small[10];
        CHECK(log_ts_field(small, sizeof small) == 9 && strlen(small) == 9 && strncmp(small, "\"ts\":\"20", 8) == 0);
    }
    TEST_MAIN_END();
}
