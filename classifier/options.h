/* options.h: the multiple-choice option parser, shared by the classifier's
 * features and the cascade (which judges a multiple-choice answer by the
 * probability of its option letter, so it must know the letters).
 *
 * An option is a line that starts with a letter marker: "A. ", "B) ",
 * "(c) " (letters A-J, either case for the parenthesized form), after
 * optional leading spaces. A prompt is multiple-choice when it has at least
 * two options whose letters run A, B, C... in order; a line that breaks the
 * run ends the option list (so a stray "B) " elsewhere is not an option).
 * The stem is everything before the first option. Letters are reported upper
 * case.
 *
 * Pure function over the bytes, no allocation; any thread. Texts need not be
 * NUL-terminated and may hold any bytes. Very long texts are read only up to
 * OPTIONS_SCAN_MAX bytes, so the cost is bounded. */
#ifndef CASCADE_OPTIONS_H
#define CASCADE_OPTIONS_H

#include <stddef.h>

#define OPTIONS_MAX 10
#define OPTIONS_SCAN_MAX (64 * 1024)

struct option_span {
    size_t off, len; /* the option's text after its marker, up to the end of its line */
};

struct options {
    int n;                       /* options found: 0 (free text) or 2..OPTIONS_MAX */
    char letters[OPTIONS_MAX];   /* 'A', 'B', ... in order */
    struct option_span text[OPTIONS_MAX];
    size_t stem_len;             /* bytes before the first option's line */
};

/* Parse text[0..len). Returns out->n. */
int options_parse(const char *text, size_t len, struct options *out);

#endif
