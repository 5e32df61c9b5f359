/* test.h: the smallest unit-test harness that reads well.
 *
 * CHECK(cond) records a failure with file and line and keeps going, so one
 * run shows every broken case. TEST_MAIN_END prints "N passed, N failed" and
 * returns the exit status CTest reads. Use from one thread only.
 *
 * A test whose dependency is missing (a model in ../shared, a program such as
 * promtool) calls TEST_SKIP(why) for the checks it cannot run, then goes on
 * with the rest. TEST_MAIN_END then exits 77, which CTest reports as skipped
 * (every unit test has SKIP_RETURN_CODE 77), never 0: a test that checked
 * less than it should must not read as passed. Two exceptions make it a
 * failure instead: a check that already failed (a failure never hides behind
 * a SKIP), and CI=true, where .ci/run installs every dependency, so a missing
 * one means the suite is not testing what it claims. */
#ifndef CASCADE_TEST_H
#define CASCADE_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_passed_, test_failed_, test_skipped_;

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

/* TEST_SKIP("fmt", ...): the checks that need a missing dependency are not
 * run. Says why; the caller then returns or goes on with what it can check. */
#define TEST_SKIP(...)                                                           \
    do {                                                                         \
        test_skipped_++;                                                         \
        printf("SKIP: ");                                                        \
        printf(__VA_ARGS__);                                                     \
        printf("\n");                                                            \
    } while (0)

/* test_in_ci: CI=true, as CI sets it (any other value, or none, is not CI). */
static inline int test_in_ci(void)
{
    const char *ci = getenv("CI");
    return ci && strcmp(ci, "true") == 0;
}

/* The exit status: 1 on any failure, 77 (SKIP) when something was skipped
 * outside CI, 1 when something was skipped under CI, else 0. */
static inline int test_exit_status_(void)
{
    if (test_failed_)
        return 1;
    if (test_skipped_ && test_in_ci()) {
        fprintf(stderr, "FAIL: %d part(s) skipped under CI=true, where every dependency is installed\n",
                test_skipped_);
        return 1;
    }
    return test_skipped_ ? 77 : 0;
}

#define TEST_MAIN_END()                                                          \
    do {                                                                         \
        if (test_skipped_)                                                       \
            printf("%d passed, %d failed, %d skipped\n", test_passed_, test_failed_, test_skipped_); \
        else                                                                     \
            printf("%d passed, %d failed\n", test_passed_, test_failed_);        \
        return test_exit_status_();                                              \
    } while (0)

/* test_shared_dir: ../shared beside the repo, as CTest tells us. */
static inline const char *test_shared_dir(void)
{
    const char *d = getenv("CASCADE_SHARED_DIR");
    return d ? d : "../shared";
}

#endif
