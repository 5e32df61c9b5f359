#include "classifier/classifier.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "classifier/cmodel.h"

/* The handle is the model itself; the wrapper only keeps its fields out of
 * the gateway's sight. */
struct classifier {
    struct cmodel *m;
};

struct classifier *classifier_load(const char *path, char *err, size_t errlen)
{
    struct cmodel *m = cmodel_read(path, err, errlen);
    if (!m)
        return NULL;
    struct classifier *c = malloc(sizeof *c);
    if (!c) {
        cmodel_free(m);
        if (err && errlen)
            snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->m = m;
    return c;
}

void classifier_free(struct classifier *c)
{
    if (!c)
        return;
    cmodel_free(c->m);
    free(c);
}

void classifier_scores(const struct classifier *c, const struct classifier_input *in, struct classifier_scores *out)
{
    cmodel_scores(c->m, in, out);
}

double classifier_threshold_for_share(const struct classifier *c, double share)
{
    return cmodel_threshold_for_share(c->m, share);
}

float classifier_score(const struct classifier *c, const struct classifier_input *in)
{
    struct classifier_scores s;
    cmodel_scores(c->m, in, &s);
    return s.route;
}

const char *classifier_metadata(const struct classifier *c)
{
    return c->m->meta;
}
