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

/* The largest model file we agree to read: 2^FEATURES_MAX_BITS weights plus
 * change. The size comes from the file, so it is bounded before we allocate. */
#define CMODEL_MAX_FILE (((size_t)4 << FEATURES_MAX_BITS) + ((size_t)8 << 20))

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

/* Floats in the weight block of a file, bias included (the header's shape
 * fields and this count must agree with the file size). */
static size_t n_floats(unsigned hash_bits, int d, int h)
{
    return 2 * (size_t)d + 1 + (size_t)d + ((size_t)1 << hash_bits) + (size_t)h * (size_t)d + 2 * (size_t)h;
}

struct cmodel *cmodel_new(unsigned hash_bits, int n_hidden)
{
    if (hash_bits < FEATURES_MIN_BITS || hash_bits > FEATURES_MAX_BITS || n_hidden < 0 ||
        n_hidden > CMODEL_MAX_HIDDEN)
        return NULL;
    struct cmodel *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    int d = FEATURES_N_DENSE, h = n_hidden;
    m->hash_bits = hash_bits;
    m->n_dense = d;
    m->n_hidden = h;
    /* One allocation for all weights keeps them together in memory; the
     * pointers below slice it in file order. */
    float *all = calloc(n_floats(hash_bits, d, h), sizeof *all);
    m->meta = calloc(1, 1);
    if (!all || !m->meta)
        goto fail;
    m->dense_mean = all;
    m->dense_scale = all + d;
    m->dense_w = all + 2 * d;
    m->sparse_w = m->dense_w + d;
    m->hidden_w = m->sparse_w + ((size_t)1 << hash_bits);
    m->hidden_b = m->hidden_w + (size_t)h * d;
    m->out_w = m->hidden_b + h;
    for (int i = 0; i < d; i++)
        m->dense_scale[i] = 1.0f;
    return m;

fail:
    free(all);
    free(m->meta);
    free(m);
    return NULL;
}

void cmodel_free(struct cmodel *m)
{
    if (!m)
        return;
    free(m->dense_mean); /* the start of the one weight allocation */
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

void cmodel_dense_z(const struct cmodel *m, const struct classifier_input *in, float *z)
{
    float x[FEATURES_N_DENSE];
    features_dense(in, x);
    for (int i = 0; i < m->n_dense; i++) {
        float v = (x[i] - m->dense_mean[i]) * m->dense_scale[i];
        z[i] = v < -8.0f ? -8.0f : v > 8.0f ? 8.0f : v;
    }
}

/* The forward pass of cmodel.h. Allocation-free and read-only on m: the
 * gateway's worker threads share one model. */
float cmodel_logit(const struct cmodel *m, const struct classifier_input *in)
{
    float z[FEATURES_N_DENSE];
    cmodel_dense_z(m, in, z);
    float logit = m->bias + features_sparse_dot(in, m->hash_bits, m->sparse_w);
    for (int i = 0; i < m->n_dense; i++)
        logit += m->dense_w[i] * z[i];
    /* Input-major weights: each z_i updates every unit's sum at once, a
     * loop the compiler vectorizes without reordering any unit's sum. */
    float a[CMODEL_MAX_HIDDEN];
    int h = m->n_hidden;
    for (int j = 0; j < h; j++)
        a[j] = m->hidden_b[j];
    for (int i = 0; i < m->n_dense; i++) {
        const float *col = m->hidden_w + (size_t)i * h;
        for (int j = 0; j < h; j++)
            a[j] += col[j] * z[i];
    }
    for (int j = 0; j < h; j++)
        if (a[j] > 0.0f)
            logit += m->out_w[j] * a[j];
    return logit;
}

void cmodel_scores(const struct cmodel *m, const struct classifier_input *in, struct classifier_scores *out)
{
    float logit = cmodel_logit(m, in);
    /* Weights and signals are finite and bounded, so the logit is too; the
     * clamp only keeps expf() far from overflow. */
    if (!(logit > -40.0f))
        logit = -40.0f;
    if (logit > 40.0f)
        logit = 40.0f;
    out->needs_large = out->route = 1.0f / (1.0f + expf(-logit));
    out->small_right = out->large_right = -1.0f;
    out->gain = 0.0f;
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

/* The whole image is built in memory, hashed, then written to path.tmp and
 * renamed over path: a gateway reloading its config (SIGHUP) while the
 * trainer writes sees the old file or the new one, never half of one. */
int cmodel_write(const struct cmodel *m, const char *path, char *err, size_t errlen)
{
    size_t nf = n_floats(m->hash_bits, m->n_dense, m->n_hidden);
    size_t meta_len = strlen(m->meta);
    if (meta_len > CMODEL_MAX_META) {
        set_err(err, errlen, "metadata too large (%zu bytes)", meta_len);
        return -1;
    }
    size_t size = CMODEL_HEADER_BYTES + nf * 4 + meta_len + SHA256_LEN;
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
    put_u32(buf + 28, (uint32_t)m->n_dense);
    put_u32(buf + 32, (uint32_t)m->n_hidden);
    put_u32(buf + 36, (uint32_t)meta_len);
    /* The weights are one contiguous array in file order (cmodel_new),
     * the bias included at its place. */
    unsigned char *p = buf + CMODEL_HEADER_BYTES;
    const float *w = m->dense_mean;
    for (size_t i = 0; i < 2 * (size_t)m->n_dense; i++, p += 4)
        put_f32(p, w[i]);
    put_f32(p, m->bias);
    p += 4;
    w = m->dense_w;
    for (size_t i = 0; i < nf - 2 * (size_t)m->n_dense - 1; i++, p += 4)
        put_f32(p, w[i]);
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
    if (len < min) {
        set_err(err, errlen, "truncated model file (%zu bytes, the header alone needs %zu)", len, min);
        return NULL;
    }
    uint32_t version = get_u32(buf + 8);
    if (version != CMODEL_FORMAT_VERSION) {
        set_err(err, errlen, "unsupported model format version %u (this build reads %d)", version,
                CMODEL_FORMAT_VERSION);
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
    uint32_t h = get_u32(buf + 32), meta_len = get_u32(buf + 36);
    if (fver != FEATURES_VERSION) {
        set_err(err, errlen, "model uses features version %u, this build computes version %d", fver,
                FEATURES_VERSION);
        return NULL;
    }
    if (bits < FEATURES_MIN_BITS || bits > FEATURES_MAX_BITS || d != FEATURES_N_DENSE ||
        h > CMODEL_MAX_HIDDEN || meta_len > CMODEL_MAX_META) {
        set_err(err, errlen, "bad model shape (hash_bits %u, dense %u, hidden %u, metadata %u)", bits, d,
                h, meta_len);
        return NULL;
    }
    size_t nf = n_floats(bits, (int)d, (int)h);
    if (min + nf * 4 + meta_len != len) {
        set_err(err, errlen, "model file size %zu does not match its shape (%zu)", len,
                min + nf * 4 + meta_len);
        return NULL;
    }

    struct cmodel *m = cmodel_new(bits, (int)h);
    if (!m) {
        set_err(err, errlen, "out of memory for a %zu-byte model", len);
        return NULL;
    }
    const unsigned char *p = buf + CMODEL_HEADER_BYTES;
    for (size_t i = 0; i < 2 * (size_t)d; i++, p += 4)
        m->dense_mean[i] = get_f32(p);
    m->bias = get_f32(p);
    p += 4;
    for (size_t i = 0; i < nf - 2 * (size_t)d - 1; i++, p += 4)
        m->dense_w[i] = get_f32(p);
    /* A NaN or an infinity would turn every score into NaN; refuse it here
     * rather than at the first request. */
    int finite = isfinite(m->bias);
    for (size_t i = 0; i < 2 * (size_t)d; i++)
        finite &= isfinite(m->dense_mean[i]) != 0;
    for (size_t i = 0; i < nf - 2 * (size_t)d - 1; i++)
        finite &= isfinite(m->dense_w[i]) != 0;
    if (!finite) {
        set_err(err, errlen, "model has a non-finite weight");
        cmodel_free(m);
        return NULL;
    }
    char *meta = malloc((size_t)meta_len + 1);
    if (!meta) {
        set_err(err, errlen, "out of memory");
        cmodel_free(m);
        return NULL;
    }
    memcpy(meta, p, meta_len);
    meta[meta_len] = '\0';
    free(m->meta);
    m->meta = meta;
    return m;
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
