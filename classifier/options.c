/* options.c: the multiple-choice option parser (contract in options.h).
 *
 * One pass over the lines. A run of options starts at a line marked "A"
 * (any of the three marker shapes) and grows while each following option
 * line carries the next letter; blank lines inside a run are allowed (some
 * prompts space their options), any other line ends it. The first run of
 * two or more options is the answer; a run of one (a stem line that happens
 * to start "A. ") is forgotten and the scan goes on. */
#include "classifier/options.h"

#include <string.h>

static int is_hspace(unsigned c)
{
    return c == ' ' || c == '\t';
}

/* The letter index (0 for A) of an option marker at p[0..n), with the
 * marker's length in *mlen; -1 when the line does not start like an option.
 * "X. " and "X) " take upper case only (a lower-case "a. " is more often
 * prose than an option); "(x) " takes either case. */
static int marker(const unsigned char *p, size_t n, size_t *mlen)
{
    if (n >= 3 && p[0] >= 'A' && p[0] <= 'A' + OPTIONS_MAX - 1 && (p[1] == '.' || p[1] == ')') &&
        is_hspace(p[2])) {
        *mlen = 3;
        return p[0] - 'A';
    }
    if (n >= 4 && p[0] == '(' && p[2] == ')' && is_hspace(p[3])) {
        unsigned c = p[1] & ~0x20u; /* ASCII upper case; other bytes stay outside A..J */
        if (c >= 'A' && c <= 'A' + OPTIONS_MAX - 1) {
            *mlen = 4;
            return (int)(c - 'A');
        }
    }
    return -1;
}

int options_parse(const char *text, size_t len, struct options *out)
{
    memset(out, 0, sizeof *out);
    if (!text)
        return 0;
    const unsigned char *p = (const unsigned char *)text;
    size_t n = len < OPTIONS_SCAN_MAX ? len : OPTIONS_SCAN_MAX;
    struct options run;
    memset(&run, 0, sizeof run);

    for (size_t start = 0; start <= n;) {
        const unsigned char *nl = start < n ? memchr(p + start, '\n', n - start) : NULL;
        size_t end = nl ? (size_t)(nl - p) : n;
        size_t k = start;
        while (k < end && is_hspace(p[k]))
            k++;
        size_t mlen = 0;
        int letter = k < end ? marker(p + k, end - k, &mlen) : -1;
        int blank = 1;
        for (size_t i = k; i < end && blank; i++)
            blank = p[i] == '\r' || is_hspace(p[i]);

        if (letter >= 0 && letter == run.n && run.n < OPTIONS_MAX) {
            /* The next option of the run (or an "A" starting one). */
            if (run.n == 0)
                run.stem_len = start;
            size_t s = k + mlen, e = end;
            while (s < e && is_hspace(p[s]))
                s++;
            while (e > s && (p[e - 1] == '\r' || is_hspace(p[e - 1])))
                e--;
            run.letters[run.n] = (char)('A' + letter);
            run.text[run.n].off = s;
            run.text[run.n].len = e - s;
            run.n++;
        } else if (!(blank && run.n > 0)) {
            /* A line that breaks the run ends it. */
            if (run.n >= 2)
                break;
            memset(&run, 0, sizeof run);
            /* A line marked "A" after a broken run starts a new one. */
            if (letter == 0)
                continue; /* re-read this line with the run empty */
        }
        if (!nl)
            break;
        start = end + 1;
    }
    if (run.n >= 2)
        *out = run;
    return out->n;
}
