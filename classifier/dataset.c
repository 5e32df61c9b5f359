#include "classifier/dataset.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/mem.h"

uint64_t dataset_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* A uniform draw in [0,1) that depends only on the seed and the id. */
static double id_uniform(uint64_t seed, const char *id)
{
    uint64_t st = seed ^ fnv1a(id);
    return (double)(dataset_rand(&st) >> 11) * 0x1p-53;
}

static char *dup_str(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? strdup(s) : NULL;
}

struct dataset *dataset_load(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open", path);
        return NULL;
    }
    struct dataset *d = calloc(1, sizeof *d);
    size_t cap = 0, lineno = 0;
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t got;
    if (!d)
        goto oom;
    while ((got = getline(&line, &line_cap, f)) > 0) {
        lineno++;
        if (got == 1 && line[0] == '\n')
            continue;
        json_error_t jerr;
        json_t *o = json_loadb(line, (size_t)got, 0, &jerr);
        json_t *weak = json_object_get(o, "weak_correct"), *strong = json_object_get(o, "strong_correct");
        if (!json_is_object(o) || !json_is_string(json_object_get(o, "prompt")) || !json_is_boolean(weak) ||
            !json_is_boolean(strong) || !json_is_string(json_object_get(o, "id"))) {
            snprintf(err, errlen, "%s:%zu: not a routing row (needs id, prompt, weak_correct, strong_correct)",
                     path, lineno);
            json_decref(o);
            goto fail;
        }
        if (d->n == cap) {
            cap = cap ? cap * 2 : 1024;
            struct dataset_row *rows = realloc(d->rows, cap * sizeof *rows);
            if (!rows) {
                json_decref(o);
                goto oom;
            }
            d->rows = rows;
        }
        struct dataset_row *r = &d->rows[d->n];
        memset(r, 0, sizeof *r);
        d->n++;
        r->id = dup_str(o, "id");
        r->source = dup_str(o, "source");
        r->subject = dup_str(o, "subject");
        r->prompt_len = json_string_length(json_object_get(o, "prompt"));
        r->prompt = malloc(r->prompt_len + 1);
        if (r->prompt)
            memcpy(r->prompt, json_string_value(json_object_get(o, "prompt")), r->prompt_len + 1);
        if (!r->source)
            r->source = strdup("");
        if (!r->subject)
            r->subject = strdup("");
        r->weak_correct = json_is_true(weak);
        r->strong_correct = json_is_true(strong);
        r->label = r->strong_correct && !r->weak_correct;
        r->split = DATASET_TRAIN;
        json_decref(o);
        if (!r->id || !r->source || !r->subject || !r->prompt)
            goto oom;
    }
    free(line);
    fclose(f);
    if (d->n == 0) {
        snprintf(err, errlen, "%s: no rows", path);
        dataset_free(d);
        return NULL;
    }
    return d;

oom:
    snprintf(err, errlen, "%s: out of memory", path);
fail:
    free(line);
    fclose(f);
    dataset_free(d);
    return NULL;
}

void dataset_free(struct dataset *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->n; i++) {
        free(d->rows[i].id);
        free(d->rows[i].source);
        free(d->rows[i].subject);
        free(d->rows[i].prompt);
    }
    free(d->rows);
    free(d);
}

/* The distinct MMLU subjects of the rows that pass keep(), sorted by name,
 * with their row counts. */
struct subject {
    const char *name;
    size_t rows;
    int fold;
};

static int cmp_subject(const void *a, const void *b)
{
    return strcmp(((const struct subject *)a)->name, ((const struct subject *)b)->name);
}

static int is_mmlu(const struct dataset_row *r)
{
    return strcmp(r->source, "mmlu") == 0;
}

/* member (NULL: every row) picks the rows whose subjects count. */
static size_t mmlu_subjects(const struct dataset *d, const unsigned char *member, struct subject **out)
{
    struct subject *s = xcalloc(d->n ? d->n : 1, sizeof *s);
    size_t n = 0;
    for (size_t i = 0; i < d->n; i++) {
        const struct dataset_row *r = &d->rows[i];
        if (!is_mmlu(r) || (member && !member[i]))
            continue;
        size_t j = 0;
        while (j < n && strcmp(s[j].name, r->subject) != 0)
            j++;
        if (j == n)
            s[n++].name = r->subject;
        s[j].rows++;
    }
    qsort(s, n, sizeof *s, cmp_subject);
    *out = s;
    return n;
}

static void shuffle(struct subject *s, size_t n, uint64_t seed)
{
    uint64_t st = seed;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(dataset_rand(&st) % i);
        struct subject t = s[i - 1];
        s[i - 1] = s[j];
        s[j] = t;
    }
}

static struct subject *find_subject(struct subject *s, size_t n, const char *name)
{
    struct subject key = {.name = name};
    return bsearch(&key, s, n, sizeof *s, cmp_subject);
}

void dataset_split(struct dataset *d, uint64_t seed, double subject_frac, double random_frac)
{
    for (size_t i = 0; i < d->n; i++)
        d->rows[i].split = DATASET_TRAIN;
    struct subject *s;
    size_t ns = mmlu_subjects(d, NULL, &s);
    shuffle(s, ns, seed);
    /* Draw subjects until they hold subject_frac of all rows. */
    double target = subject_frac * (double)d->n, taken = 0;
    for (size_t i = 0; i < ns; i++) {
        s[i].fold = taken < target;
        if (s[i].fold)
            taken += (double)s[i].rows;
    }
    qsort(s, ns, sizeof *s, cmp_subject);
    for (size_t i = 0; i < d->n; i++) {
        struct dataset_row *r = &d->rows[i];
        struct subject *sub = is_mmlu(r) ? find_subject(s, ns, r->subject) : NULL;
        if (sub && sub->fold)
            r->split = DATASET_VAL_SUBJECTS;
        else if (id_uniform(seed, r->id) < random_frac)
            r->split = DATASET_VAL_ROWS;
    }
    free(s);
}

void dataset_folds(const struct dataset *d, int k, uint64_t seed, int *fold)
{
    unsigned char *member = xmalloc(d->n ? d->n : 1);
    for (size_t i = 0; i < d->n; i++)
        member[i] = d->rows[i].split == DATASET_TRAIN;
    dataset_group_folds(d, member, k, seed, fold);
    free(member);
}

void dataset_group_folds(const struct dataset *d, const unsigned char *member, int k, uint64_t seed, int *fold)
{
    struct subject *s;
    size_t ns = mmlu_subjects(d, member, &s);
    shuffle(s, ns, seed ^ 0x5bd1e995u);
    /* Greedy balance: each subject, in the seeded order, joins the fold with
     * the fewest rows so far (GSM8K rows are spread evenly on top). */
    size_t *rows = xcalloc((size_t)k, sizeof *rows);
    for (size_t i = 0; i < ns; i++) {
        int best = 0;
        for (int f = 1; f < k; f++)
            if (rows[f] < rows[best])
                best = f;
        s[i].fold = best;
        rows[best] += s[i].rows;
    }
    qsort(s, ns, sizeof *s, cmp_subject);
    for (size_t i = 0; i < d->n; i++) {
        const struct dataset_row *r = &d->rows[i];
        if (member && !member[i]) {
            fold[i] = -1;
        } else if (is_mmlu(r)) {
            fold[i] = find_subject(s, ns, r->subject)->fold;
        } else {
            uint64_t st = seed ^ fnv1a(r->id);
            fold[i] = (int)(dataset_rand(&st) % (uint64_t)k);
        }
    }
    free(rows);
    free(s);
}

void dataset_heldout_subjects(const struct dataset *d, char *buf, size_t len)
{
    struct subject *s;
    size_t ns = mmlu_subjects(d, NULL, &s), used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < ns; i++) {
        int held = 0;
        for (size_t j = 0; j < d->n && !held; j++)
            held = d->rows[j].split == DATASET_VAL_SUBJECTS && strcmp(d->rows[j].subject, s[i].name) == 0;
        if (!held)
            continue;
        int w = snprintf(buf + used, len - used, "%s%s", used ? ", " : "", s[i].name);
        if (w < 0 || (size_t)w >= len - used)
            break;
        used += (size_t)w;
    }
    free(s);
}

const char *dataset_split_name(enum dataset_split s)
{
    switch (s) {
    case DATASET_TRAIN:
        return "train";
    case DATASET_VAL_ROWS:
        return "held-out rows";
    case DATASET_VAL_SUBJECTS:
        return "held-out subjects";
    }
    return "?";
}
