/* test.h: the smallest unit-test harness that reads well.
 *
 * CHECK(cond) records a failure with file and line and keeps going, so one
 * run shows every broken case. TEST_MAIN_END prints "N passed, N failed" and
 * returns the exit status CTest reads. Use from one thread only. */
#ifndef CASCADE_TEST_H
#define CASCADE_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_passed_, test_failed_;

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (cond) {                                                              \
            test_passed_++;                                                      \
        } else {                                                                 \
            test_failed_++;                                                      \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                        \
    } while (0)

#define CHECK_STR(a, b)                                                          \
    do {                                                                         \
        const char *a_ = (a), *b_ = (b);                                         \
        if (a_ && b_ && strcmp(a_, b_) == 0) {                                   \
            test_passed_++;                                                      \
        } else {                                                                 \
            test_failed_++;                                                      \
            fprintf(stderr, "%s:%d: CHECK_STR failed: \"%s\" != \"%s\"\n",       \
                    __FILE__, __LINE__, a_ ? a_ : "(null)", b_ ? b_ : "(null)"); \
        }                                                                        \
    } while (0)

#define TEST_MAIN_END()                                                          \
    do {                                                                         \
        printf("%d passed, %d failed\n", test_passed_, test_failed_);            \
        return test_failed_ ? 1 : 0;                                             \
    } while (0)

/* test_shared_dir: ../shared beside the repo, as CTest tells us. */
static inline const char *test_shared_dir(void)
{
    const char *d = getenv("CASCADE_SHARED_DIR");
    return d ? d : "../shared";
}

#endif
