/* test_options: the multiple-choice option parser (classifier/options.h), as
 * the classifier's features and the cascade judge rely on it: letters in
 * order, the stem, each option's span, the three marker shapes, runs that
 * break, and texts that are not multiple-choice at all. */
#include <string.h>

#include "classifier/options.h"
#include "tests/unit/test.h"

static int parse(const char *s, struct options *o)
{
    return options_parse(s, strlen(s), o);
}

/* 1 when option i of text reads want. */
static int span_is(const char *text, const struct options *o, int i, const char *want)
{
    return o->text[i].len == strlen(want) && memcmp(text + o->text[i].off, want, o->text[i].len) == 0;
}

static void test_mmlu(void)
{
    const char *t = "What is the capital of France?\nA. Paris\nB. Rome\nC. Berlin\nD. Madrid\nAnswer:";
    struct options o;
    CHECK(parse(t, &o) == 4);
    CHECK(o.n == 4 && memcmp(o.letters, "ABCD", 4) == 0);
    CHECK(o.stem_len == strlen("What is the capital of France?\n"));
    CHECK(span_is(t, &o, 0, "Paris") && span_is(t, &o, 1, "Rome") && span_is(t, &o, 2, "Berlin") &&
          span_is(t, &o, 3, "Madrid"));
}

static void test_shapes(void)
{
    struct options o;
    /* "X) ", "(x) " in either case, leading spaces, CRLF, trailing blanks. */
    const char *t = "Pick one:\r\n  (a) one  \r\n  (B) two\r\n  (c)\tthree\r\n";
    CHECK(parse(t, &o) == 3 && memcmp(o.letters, "ABC", 3) == 0);
    CHECK(span_is(t, &o, 0, "one") && span_is(t, &o, 1, "two") && span_is(t, &o, 2, "three"));
    CHECK(o.stem_len == strlen("Pick one:\r\n"));
    const char *u = "Q\nA) x\nB) y";
    CHECK(parse(u, &o) == 2 && span_is(u, &o, 1, "y"));
    /* Blank lines between options keep the run. */
    const char *v = "Q\n\nA. x\n\nB. y\n\nC. z\n";
    CHECK(parse(v, &o) == 3 && span_is(v, &o, 2, "z"));
    /* Ten options, A to J. */
    const char *w = "Q\nA. 0\nB. 1\nC. 2\nD. 3\nE. 4\nF. 5\nG. 6\nH. 7\nI. 8\nJ. 9\n";
    CHECK(parse(w, &o) == OPTIONS_MAX && o.letters[9] == 'J' && span_is(w, &o, 9, "9"));
}

static void test_not_options(void)
{
    struct options o;
    /* Free text, a lone "A. " line, lower-case dotted letters, a marker
     * without the space after it, and a run that starts at B. */
    CHECK(parse("Natalia sold clips to 48 of her friends. How many?", &o) == 0 && o.n == 0);
    CHECK(parse("A. Lincoln was president.\nWhen was he born?", &o) == 0);
    CHECK(parse("Q\na. x\nb. y\n", &o) == 0);
    CHECK(parse("Q\nA.x\nB.y\n", &o) == 0);
    CHECK(parse("Q\nB. x\nC. y\n", &o) == 0);
    CHECK(parse("", &o) == 0 && options_parse(NULL, 5, &o) == 0);
    /* Out of order: "A, C" is no run. */
    CHECK(parse("Q\nA. x\nC. y\n", &o) == 0);
}

static void test_runs(void)
{
    struct options o;
    /* A stray "A. " line in the stem is forgotten; the real run follows. */
    const char *t = "A. Lincoln said:\nfour score\nA. yes\nB. no\n";
    CHECK(parse(t, &o) == 2 && o.stem_len == strlen("A. Lincoln said:\nfour score\n"));
    CHECK(span_is(t, &o, 0, "yes"));
    /* A line that breaks the run ends it: the "C) " after the answer line
     * is not an option. */
    const char *u = "Q\nA. x\nB. y\nAnswer: B\nC. z\n";
    CHECK(parse(u, &o) == 2);
    /* The first run counts; a later question's run is not merged in. */
    const char *v = "Q1\nA. x\nB. y\nQ2\nA. p\nB. q\nC. r\n";
    CHECK(parse(v, &o) == 2 && span_is(v, &o, 0, "x"));
    /* A new "A" right after a run restarts nothing: the run is done. */
    const char *w = "Q\nA. x\nB. y\nA. p\nB. q\nC. r\n";
    CHECK(parse(w, &o) == 2);
    /* Past OPTIONS_SCAN_MAX nothing is read. */
    size_t n = OPTIONS_SCAN_MAX + 64;
    char *big = malloc(n);
    memset(big, 'x', n);
    memcpy(big + OPTIONS_SCAN_MAX, "\nA. x\nB. y\n", 11);
    CHECK(options_parse(big, n, &o) == 0);
    memcpy(big + OPTIONS_SCAN_MAX - 20, "\nA. x\nB. y\n", 11);
    CHECK(options_parse(big, n, &o) == 2);
    free(big);
}

int main(void)
{
    test_mmlu();
    test_shapes();
    test_not_options();
    test_runs();
    TEST_MAIN_END();
}
