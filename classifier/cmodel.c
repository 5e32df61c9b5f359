#include "classifier/cmodel.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "classifier/features.h"
#include "common/hash.h"

/* The largest model file we agree to read: three heads of 2^FEATURES_MAX_BITS
 * weights, plus room for trees, quantiles and metadata. The size comes from
 * the file, so it is bounded before we allocate. */
#define CMODEL_MAX_FILE (((size_t)4 * CMODEL_MAX_HEADS << FEATURES_MAX_BITS) + ((size_t)48 << 20))

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Floats of a head's linear part: bias, dense_w, hidden_w, hidden_b, out_w. */
static size_t head_floats(int d, int h)
{
    return 1 + (size_t)d + (size_t)h * (size_t)d + 2 * (size_t)h;
}

/* Slice a head's one allocation (bias kept apart) in file order. */
static int head_alloc(struct cmodel_head *hd, int d, int h)
{
    float *all = calloc(head_floats(d, h), sizeof *all);
    if (!all)
        return -1;
    hd->n_hidden = h;
    hd->dense_w = all;
    hd->hidden_w = all + d;
    hd->hidden_b = hd->hidden_w + (size_t)h * d;
    hd->out_w = hd->hidden_b + h;
    return 0;
}

struct cmodel *cmodel_new(unsigned hash_bits, int n_heads, const int *kinds, const int *n_hidden)
{
    if (hash_bits < FEATURES_MIN_BITS || hash_bits > FEATURES_MAX_BITS || n_heads < 1 ||
        n_heads > CMODEL_MAX_HEADS)
        return NULL;
    int seen = 0;
    for (int k = 0; k < n_heads; k++) {
        if (kinds[k] < 0 || kinds[k] >= CMODEL_N_KINDS || (seen & (1 << kinds[k])) || n_hidden[k] < 0 ||
            n_hidden[k] > CMODEL_MAX_HIDDEN)
            return NULL;
        seen |= 1 << kinds[k];
    }
    struct cmodel *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    int d = FEATURES_N_DENSE;
    m->hash_bits = hash_bits;
    m->n_dense = d;
    m->n_heads = n_heads;
    m->dense_mean = calloc(2 * (size_t)d, sizeof *m->dense_mean);
    size_t sparse_bytes = ((size_t)CMODEL_SPARSE_STRIDE << hash_bits) * sizeof *m->sparse_w;
    m->sparse_w = aligned_alloc(64, sparse_bytes);
    if (m->sparse_w)
        memset(m->sparse_w, 0, sparse_bytes);
    m->meta = calloc(1, 1);
    if (!m->dense_mean || !m->sparse_w || !m->meta)
        goto fail;
    m->dense_scale = m->dense_mean + d;
    for (int i = 0; i < d; i++)
        m->dense_scale[i] = 1.0f;
    for (int k = 0; k < n_heads; k++) {
        m->head[k].kind = kinds[k];
        if (head_alloc(&m->head[k], d, n_hidden[k]) < 0)
            goto fail;
    }
    return m;

fail:
    cmodel_free(m);
    return NULL;
}

void cmodel_free(struct cmodel *m)
{
    if (!m)
        return;
    for (int k = 0; k < CMODEL_MAX_HEADS; k++) {
        free(m->head[k].dense_w); /* the start of the head's one allocation */
        gbt_release(&m->head[k].trees);
    }
    free(m->dense_mean);
    free(m->sparse_w);
    free(m->quantiles);
    free(m->meta);
    free(m);
}

int cmodel_set_meta(struct cmodel *m, const char *json)
{
    char *copy = strdup(json ? json : "");
    if (!copy)
        return -1;
    free(m->meta);
    m->meta = copy;
    return 0;
}

int cmodel_set_quantiles(struct cmodel *m, const float *q, int n)
{
    float *copy = NULL;
    if (n > 0) {
        if (n < 2 || n > CMODEL_MAX_QUANTILES || !(copy = malloc((size_t)n * sizeof *copy)))
            return -1;
        memcpy(copy, q, (size_t)n * sizeof *copy);
    }
    free(m->quantiles);
    m->quantiles = copy;
    m->n_quantiles = n > 0 ? n : 0;
    return 0;
}

int cmodel_head_of(const struct cmodel *m, int kind)
{
    for (int k = 0; k < m->n_heads; k++)
        if (m->head[k].kind == kind)
            return k;
    return -1;
}

/* The forward pass of cmodel.h after the text is read. Allocation-free and
 * read-only on m: the gateway's worker threads share one model. */
void cmodel_logits_from(const struct cmodel *m, const float *x, const float *sparse, float *logit)
{
    float z[FEATURES_N_DENSE];
    for (int i = 0; i < m->n_dense; i++) {
        float v = (x[i] - m->dense_mean[i]) * m->dense_scale[i];
        z[i] = v < -8.0f ? -8.0f : v > 8.0f ? 8.0f : v;
    }
    for (int k = 0; k < m->n_heads; k++) {
        const struct cmodel_head *hd = &m->head[k];
        float t = hd->bias + sparse[k];
        for (int i = 0; i < m->n_dense; i++)
            t += hd->dense_w[i] * z[i];
        /* Input-major weights: each z_i updates every unit's sum at once, a
         * loop the compiler vectorizes without reordering any unit's sum. */
        float a[CMODEL_MAX_HIDDEN];
        int h = hd->n_hidden;
        for (int j = 0; j < h; j++)
            a[j] = hd->hidden_b[j];
        for (int i = 0; i < m->n_dense; i++) {
            const float *col = hd->hidden_w + (size_t)i * h;
            for (int j = 0; j < h; j++)
                a[j] += col[j] * z[i];
        }
        for (int j = 0; j < h; j++)
            if (a[j] > 0.0f)
                t += hd->out_w[j] * a[j];
        if (hd->trees.n_trees)
            t += gbt_eval(&hd->trees, x);
        logit[k] = t;
    }
}

void cmodel_logits(const struct cmodel *m, const struct classifier_input *in, float *logit)
{
    float x[FEATURES_N_DENSE], sparse[CMODEL_MAX_HEADS];
    features_dense(in, x);
    float dots[FEATURES_MAX_DOTS];
    features_sparse_dots(in, m->hash_bits, m->sparse_w, dots);
    for (int k = 0; k < m->n_heads; k++)
        sparse[k] = dots[k];
    cmodel_logits_from(m, x, sparse, logit);
}

static float sigmoid(float t)
{
    /* Weights and signals are finite and bounded, so the logit is too; the
     * clamp only keeps expf() far from overflow. */
    if (!(t > -40.0f))
        t = -40.0f;
    if (t > 40.0f)
        t = 40.0f;
    return 1.0f / (1.0f + expf(-t));
}

void cmodel_scores_of(const struct cmodel *m, const float *logit, struct classifier_scores *out)
{
    int nl = cmodel_head_of(m, CMODEL_NEEDS_LARGE), sr = cmodel_head_of(m, CMODEL_SMALL_RIGHT);
    int lr = cmodel_head_of(m, CMODEL_LARGE_RIGHT);
    out->small_right = sr >= 0 ? sigmoid(logit[sr]) : -1.0f;
    out->large_right = lr >= 0 ? sigmoid(logit[lr]) : -1.0f;
    if (sr >= 0 && lr >= 0) {
        out->gain = out->large_right - out->small_right;
        out->route = 0.5f * (1.0f + out->gain);
        /* Without a head of its own, P(needs large) as if the two tiers
         * erred independently. */
        out->needs_large = nl >= 0 ? sigmoid(logit[nl]) : out->large_right * (1.0f - out->small_right);
    } else {
        out->needs_large = nl >= 0 ? sigmoid(logit[nl]) : 0.0f;
        out->route = out->needs_large;
        out->gain = 0.0f;
    }
}

void cmodel_scores(const struct cmodel *m, const struct classifier_input *in, struct classifier_scores *out)
{
    float logit[CMODEL_MAX_HEADS];
    cmodel_logits(m, in, logit);
    cmodel_scores_of(m, logit, out);
}

double cmodel_threshold_for_share(const struct cmodel *m, double share)
{
    int n = m->n_quantiles;
    if (n < 2 || !m->quantiles)
        return -1;
    if (!(share > 0)) /* NaN too: route nothing up */
        return 1.0 + 1e-6;
    if (share >= 1)
        return 0;
    /* P(route >= t) = share: t is the (1 - share) quantile. */
    double pos = (1.0 - share) * (double)(n - 1);
    int i = (int)pos;
    if (i >= n - 1)
        return m->quantiles[n - 1];
    double f = pos - (double)i;
    return (double)m->quantiles[i] + f * ((double)m->quantiles[i + 1] - (double)m->quantiles[i]);
}

/* ---- little-endian encoding ------------------------------------------- */

/* Bytes are assembled by shifts, never by casting the buffer, so the file
 * reads the same on a big-endian host and no unaligned load happens. */

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const unsigned char *p)
{
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

static void put_f32(unsigned char *p, float f)
{
    uint32_t v;
    memcpy(&v, &f, 4);
    put_u32(p, v);
}

static float get_f32(const unsigned char *p)
{
    uint32_t v = get_u32(p);
    float f;
    memcpy(&f, &v, 4);
    return f;
}

/* ---- writer ------------------------------------------------------------ */

/* Bytes of a head's block in the file. */
static size_t head_bytes(const struct cmodel_head *hd, int d)
{
    size_t t = (size_t)hd->trees.n_trees, dep = t ? (size_t)hd->trees.depth : 0;
    return 16 + 4 * head_floats(d, hd->n_hidden) + 8 * t * dep + 4 * (t << dep);
}

static unsigned char *put_floats(unsigned char *p, const float *w, size_t n)
{
    for (size_t i = 0; i < n; i++, p += 4)
        put_f32(p, w[i]);
    return p;
}

/* The whole image is built in memory, hashed, then written to path.tmp and
 * renamed over path: a gateway reloading its config (SIGHUP) while the
 * trainer writes sees the old file or the new one, never half of one. */
int cmodel_write(const struct cmodel *m, const char *path, char *err, size_t errlen)
{
    int d = m->n_dense;
    size_t meta_len = strlen(m->meta);
    if (meta_len > CMODEL_MAX_META) {
        set_err(err, errlen, "metadata too large (%zu bytes)", meta_len);
        return -1;
    }
    size_t size = CMODEL_HEADER_BYTES + 8 * (size_t)d;
    for (int k = 0; k < m->n_heads; k++)
        size += head_bytes(&m->head[k], d);
    size += 4 * ((size_t)m->n_heads << m->hash_bits) + 4 * (size_t)m->n_quantiles + meta_len + SHA256_LEN;
    unsigned char *buf = calloc(1, size);
    char *tmp = malloc(strlen(path) + 8);
    FILE *f = NULL;
    if (!buf || !tmp) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    memcpy(buf, CMODEL_MAGIC, 8);
    put_u32(buf + 8, CMODEL_FORMAT_VERSION);
    put_u32(buf + 12, FEATURES_VERSION);
    put_u64(buf + 16, size);
    put_u32(buf + 24, m->hash_bits);
    put_u32(buf + 28, (uint32_t)d);
    put_u32(buf + 32, (uint32_t)m->n_heads);
    put_u32(buf + 36, (uint32_t)meta_len);
    put_u32(buf + 40, (uint32_t)m->n_quantiles);
    unsigned char *p = buf + CMODEL_HEADER_BYTES;
    p = put_floats(p, m->dense_mean, 2 * (size_t)d);
    for (int k = 0; k < m->n_heads; k++) {
        const struct cmodel_head *hd = &m->head[k];
        size_t t = (size_t)hd->trees.n_trees, dep = t ? (size_t)hd->trees.depth : 0;
        put_u32(p, (uint32_t)hd->kind);
        put_u32(p + 4, (uint32_t)hd->n_hidden);
        put_u32(p + 8, (uint32_t)t);
        put_u32(p + 12, (uint32_t)dep);
        put_f32(p + 16, hd->bias);
        p = put_floats(p + 20, hd->dense_w, head_floats(d, hd->n_hidden) - 1);
        for (size_t i = 0; i < t * dep; i++, p += 4)
            put_u32(p, hd->trees.feat[i]);
        p = put_floats(p, hd->trees.thr, t * dep);
        p = put_floats(p, hd->trees.leaf, t << dep);
    }
    for (size_t b = 0; b < ((size_t)1 << m->hash_bits); b++)
        p = put_floats(p, m->sparse_w + b * CMODEL_SPARSE_STRIDE, (size_t)m->n_heads);
    p = put_floats(p, m->quantiles, (size_t)m->n_quantiles);
    memcpy(p, m->meta, meta_len);
    p += meta_len;
    hash_sha256(buf, (size_t)(p - buf), p);

    sprintf(tmp, "%s.tmp", path);
    f = fopen(tmp, "wb");
    if (!f || fwrite(buf, 1, size, f) != size || fclose(f) != 0) {
        f = NULL;
        set_err(err, errlen, "%s: %s", tmp, strerror(errno));
        goto fail;
    }
    f = NULL;
    if (rename(tmp, path) != 0) {
        set_err(err, errlen, "rename %s: %s", path, strerror(errno));
        goto fail;
    }
    free(tmp);
    free(buf);
    return 0;

fail:
    if (f)
        fclose(f);
    if (tmp)
        remove(tmp);
    free(tmp);
    free(buf);
    return -1;
}

/* ---- reader ------------------------------------------------------------ */

/* Checks run from the cheapest and most telling to the most detailed, so a
 * wrong file gets the most useful message: not a model at all, a model
 * from another format version, a cut-off copy, damaged bytes, and only then
 * fields that disagree (which, past the checksum, means a buggy writer). */

/* A bounded cursor over the weight block: every take checks what is left,
 * so a shape field that lies cannot walk past the buffer. */
struct cursor {
    const unsigned char *p;
    size_t left;
    int finite; /* 0 once a non-finite float was read */
};

static const unsigned char *take(struct cursor *c, size_t n)
{
    if (n > c->left)
        return NULL;
    const unsigned char *at = c->p;
    c->p += n;
    c->left -= n;
    return at;
}

/* n floats into w; -1 when the block is short. */
static int take_floats(struct cursor *c, float *w, size_t n)
{
    if (n > c->left / 4)
        return -1;
    const unsigned char *p = take(c, 4 * n);
    for (size_t i = 0; i < n; i++, p += 4) {
        w[i] = get_f32(p);
        c->finite &= isfinite(w[i]) != 0;
    }
    return 0;
}

/* One head's block into hd (kind and hidden size already read). */
static int parse_head(struct cursor *c, struct cmodel_head *hd, int d, uint32_t t, uint32_t dep, char *err,
                      size_t errlen)
{
    if (take_floats(c, &hd->bias, 1) < 0 || take_floats(c, hd->dense_w, head_floats(d, hd->n_hidden) - 1) < 0) {
        set_err(err, errlen, "model file size does not match its shape (head cut short)");
        return -1;
    }
    if (t == 0)
        return 0;
    size_t n = (size_t)t * dep, leaves = (size_t)t << dep;
    if (n > c->left / 8 || leaves > (c->left - 8 * n) / 4) {
        set_err(err, errlen, "model file size does not match its shape (%u trees of depth %u)", t, dep);
        return -1;
    }
    struct gbt_forest *f = &hd->trees;
    f->feat = malloc(n * sizeof *f->feat);
    f->thr = malloc(n * sizeof *f->thr);
    f->leaf = malloc(leaves * sizeof *f->leaf);
    if (!f->feat || !f->thr || !f->leaf) {
        set_err(err, errlen, "out of memory");
        return -1;
    }
    const unsigned char *p = take(c, 4 * n);
    for (size_t i = 0; i < n; i++, p += 4) {
        f->feat[i] = get_u32(p);
        if (f->feat[i] >= (uint32_t)d) {
            set_err(err, errlen, "tree tests signal %u of %d", f->feat[i], d);
            return -1;
        }
    }
    take_floats(c, f->thr, n);
    take_floats(c, f->leaf, leaves);
    f->n_trees = (int)t;
    f->depth = (int)dep;
    return 0;
}

struct cmodel *cmodel_parse(const unsigned char *buf, size_t len, char *err, size_t errlen)
{
    const size_t min = CMODEL_HEADER_BYTES + SHA256_LEN;
    if (len < 8) {
        set_err(err, errlen, "truncated model file (%zu bytes)", len);
        return NULL;
    }
    if (memcmp(buf, CMODEL_MAGIC, 8) != 0) {
        set_err(err, errlen, "not a Cascade classifier model (bad magic)");
        return NULL;
    }
    if (len < 12) {
        set_err(err, errlen, "truncated model file (%zu bytes, the header alone needs %zu)", len, min);
        return NULL;
    }
    uint32_t version = get_u32(buf + 8);
    if (version == 1) {
        set_err(err, errlen, "model format 1 is no longer supported; regenerate with "
                             "classifier/models/regenerate.sh");
        return NULL;
    }
    if (version != CMODEL_FORMAT_VERSION) {
        set_err(err, errlen, "unsupported model format version %u (this build reads %d)", version,
                CMODEL_FORMAT_VERSION);
        return NULL;
    }
    if (len < min) {
        set_err(err, errlen, "truncated model file (%zu bytes, the header alone needs %zu)", len, min);
        return NULL;
    }
    uint64_t size = get_u64(buf + 16);
    if (size != len) {
        set_err(err, errlen, "%s model file: header says %llu bytes, file has %zu",
                size > len ? "truncated" : "oversized", (unsigned long long)size, len);
        return NULL;
    }
    /* Only a file whose bytes are intact gets its fields trusted. */
    unsigned char sum[SHA256_LEN];
    hash_sha256(buf, len - SHA256_LEN, sum);
    if (memcmp(sum, buf + len - SHA256_LEN, SHA256_LEN) != 0) {
        set_err(err, errlen, "model file checksum mismatch: the file is corrupt");
        return NULL;
    }
    uint32_t fver = get_u32(buf + 12), bits = get_u32(buf + 24), d = get_u32(buf + 28);
    uint32_t heads = get_u32(buf + 32), meta_len = get_u32(buf + 36), nq = get_u32(buf + 40);
    if (fver != FEATURES_VERSION) {
        set_err(err, errlen, "model uses features version %u, this build computes version %d", fver,
                FEATURES_VERSION);
        return NULL;
    }
    if (bits < FEATURES_MIN_BITS || bits > FEATURES_MAX_BITS || d != FEATURES_N_DENSE || heads < 1 ||
        heads > CMODEL_MAX_HEADS || meta_len > CMODEL_MAX_META || nq == 1 || nq > CMODEL_MAX_QUANTILES) {
        set_err(err, errlen, "bad model shape (hash_bits %u, dense %u, heads %u, metadata %u, quantiles %u)",
                bits, d, heads, meta_len, nq);
        return NULL;
    }

    /* The heads' shapes first: they size the model. */
    struct cursor c = {.p = buf + CMODEL_HEADER_BYTES, .left = len - min, .finite = 1};
    int kinds[CMODEL_MAX_HEADS], hidden[CMODEL_MAX_HEADS];
    uint32_t trees[CMODEL_MAX_HEADS], depth[CMODEL_MAX_HEADS];
    struct cursor scan = c;
    if (!take(&scan, 8 * (size_t)d)) {
        set_err(err, errlen, "model file size %zu does not match its shape", len);
        return NULL;
    }
    for (uint32_t k = 0; k < heads; k++) {
        const unsigned char *h = take(&scan, 16);
        if (!h) {
            set_err(err, errlen, "model file size %zu does not match its shape (head %u)", len, k);
            return NULL;
        }
        uint32_t kind = get_u32(h), nh = get_u32(h + 4);
        trees[k] = get_u32(h + 8);
        depth[k] = get_u32(h + 12);
        if (kind >= CMODEL_N_KINDS || nh > CMODEL_MAX_HIDDEN || trees[k] > GBT_MAX_TREES ||
            (trees[k] ? depth[k] < 1 || depth[k] > GBT_MAX_DEPTH : depth[k] != 0)) {
            set_err(err, errlen, "bad head %u (kind %u, hidden %u, %u trees of depth %u)", k, kind, nh, trees[k],
                    depth[k]);
            return NULL;
        }
        kinds[k] = (int)kind;
        hidden[k] = (int)nh;
        size_t body = 4 * head_floats((int)d, (int)nh) + 8 * (size_t)trees[k] * depth[k] +
                      4 * ((size_t)trees[k] << depth[k]);
        if (!take(&scan, body)) {
            set_err(err, errlen, "model file size %zu does not match its shape (head %u)", len, k);
            return NULL;
        }
    }
    size_t rest = 4 * ((size_t)heads << bits) + 4 * (size_t)nq + meta_len;
    if (scan.left != rest) {
        set_err(err, errlen, "model file size %zu does not match its shape (%zu bytes left for %zu)", len,
                scan.left, rest);
        return NULL;
    }

    struct cmodel *m = cmodel_new(bits, (int)heads, kinds, hidden);
    if (!m) {
        set_err(err, errlen, "bad heads (each kind at most once) or out of memory for a %zu-byte model", len);
        return NULL;
    }
    take_floats(&c, m->dense_mean, 2 * (size_t)d);
    for (uint32_t k = 0; k < heads; k++) {
        take(&c, 16);
        if (parse_head(&c, &m->head[k], (int)d, trees[k], depth[k], err, errlen) < 0)
            goto fail;
    }
    for (size_t b = 0; b < ((size_t)1 << bits); b++)
        take_floats(&c, m->sparse_w + b * CMODEL_SPARSE_STRIDE, heads);
    if (nq) {
        m->quantiles = malloc((size_t)nq * sizeof *m->quantiles);
        if (!m->quantiles) {
            set_err(err, errlen, "out of memory");
            goto fail;
        }
        m->n_quantiles = (int)nq;
        take_floats(&c, m->quantiles, nq);
    }
    /* A NaN or an infinity would turn every score into NaN; refuse it here
     * rather than at the first request. */
    if (!c.finite) {
        set_err(err, errlen, "model has a non-finite weight");
        goto fail;
    }
    for (uint32_t i = 0; i < nq; i++)
        if (m->quantiles[i] < 0.0f || m->quantiles[i] > 1.0f || (i && m->quantiles[i] < m->quantiles[i - 1])) {
            set_err(err, errlen, "route-score quantiles are not ascending in [0,1] (at %u)", i);
            goto fail;
        }
    char *meta = malloc((size_t)meta_len + 1);
    if (!meta) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    memcpy(meta, c.p, meta_len);
    meta[meta_len] = '\0';
    free(m->meta);
    m->meta = meta;
    return m;

fail:
    cmodel_free(m);
    return NULL;
}

/* The file is read, not mmapped: at about 1 MB it loads in a millisecond
 * at start-up, and the copy is where the little-endian bytes become host
 * floats (DESIGN.md's mmap rule is for the engines' multi-GB weights). */
struct cmodel *cmodel_read(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        set_err(err, errlen, "%s: not a regular file", path);
        fclose(f);
        return NULL;
    }
    if ((uint64_t)st.st_size > CMODEL_MAX_FILE) {
        set_err(err, errlen, "%s: %lld bytes is larger than any model (limit %zu)", path,
                (long long)st.st_size, (size_t)CMODEL_MAX_FILE);
        fclose(f);
        return NULL;
    }
    size_t len = (size_t)st.st_size;
    unsigned char *buf = malloc(len ? len : 1);
    if (!buf) {
        set_err(err, errlen, "%s: out of memory", path);
        fclose(f);
        return NULL;
    }
    size_t got = fread(buf, 1, len, f);
    fclose(f);
    if (got != len) {
        set_err(err, errlen, "%s: short read", path);
        free(buf);
        return NULL;
    }
    char why[200];
    struct cmodel *m = cmodel_parse(buf, len, why, sizeof why);
    free(buf);
    if (!m)
        set_err(err, errlen, "%s: %s", path, why);
    return m;
}
