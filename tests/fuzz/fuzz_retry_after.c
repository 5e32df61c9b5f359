/* fuzz_retry_after: an upstream's Retry-After header value
 * (answer_retry_after_s in engines/remote/answer.c), which decides how long
 * a client is told to wait.
 *
 * Besides memory errors, it checks the bound the gateway promises: the
 * result is always in [0, 86400] seconds, and a value of plain digits (with
 * optional surrounding blanks) means exactly that many seconds, capped. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engines/remote/answer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *v = malloc(size + 1);
    if (!v)
        abort();
    memcpy(v, data, size);
    v[size] = '\0';
    const int64_t now = 1764633600; /* 2025-12-02T00:00:00Z: fixed, so runs repeat */
    int64_t s = answer_retry_after_s(v, now);
    if (s < 0 || s > 86400)
        abort();
    /* Plain digits: the number itself, capped at a day. */
    size_t n = strlen(v), i = 0;
    while (i < n && (v[i] == ' ' || v[i] == '\t'))
        i++;
    size_t d0 = i;
    while (i < n && v[i] >= '0' && v[i] <= '9')
        i++;
    size_t d1 = i;
    while (i < n && (v[i] == ' ' || v[i] == '\t'))
        i++;
    if (d1 > d0 && i == n) {
        int64_t want = 0;
        for (size_t k = d0; k < d1 && want <= 86400; k++)
            want = want * 10 + (v[k] - '0');
        if (s != (want > 86400 ? 86400 : want))
            abort();
    }
    free(v);
    return 0;
}
