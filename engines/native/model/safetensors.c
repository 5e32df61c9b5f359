/* safetensors.c: mmap and validate safetensors files; see safetensors.h.
 *
 * File layout: an 8-byte little-endian header length N, N bytes of JSON
 *   {"name": {"dtype": "BF16", "shape": [r, c], "data_offsets": [b, e]}, ...,
 *    "__metadata__": {...}}
 * then the data; offsets are relative to the first byte after the header.
 */
#include "engines/native/model/safetensors.h"

#include "engines/native/backend/ops.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* A header this large is not a real checkpoint (DeepSeek-V3's biggest shard
 * header is a few hundred KB); refuse it before asking jansson to parse it. */
#define MAX_HEADER_BYTES (100u << 20)

/* One mapped file of the checkpoint. */
struct st_file {
    char *path;
    void *map;
    size_t size;
    int borrowed;               /* map is the caller's memory (safetensors_open_memory) */
};

/* All tensors of all files, sorted by name once loading is done, so a
 * lookup is a binary search. */
struct safetensors {
    char *source;
    struct st_file *files;
    int n_files;
    struct st_tensor *tensors;
    size_t n_tensors, cap;
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Element size of a safetensors dtype string, 0 when unknown. Every dtype
 * of the format is known here, so a checkpoint with, say, an I64 buffer
 * still opens; only the model loader decides which dtypes it can compute
 * with. */
static size_t dtype_bytes(const char *dt, int *native)
{
    static const struct {
        const char *name;
        size_t bytes;
        int native;
    } table[] = {
        {"F64", 8, -1}, {"F32", 4, NATIVE_F32}, {"F16", 2, NATIVE_F16}, {"BF16", 2, NATIVE_BF16},
        {"I64", 8, -1}, {"I32", 4, -1}, {"I16", 2, -1}, {"I8", 1, -1}, {"U64", 8, -1},
        {"U32", 4, -1}, {"U16", 2, -1}, {"U8", 1, -1}, {"BOOL", 1, -1}, {"F8_E4M3", 1, -1},
        {"F8_E5M2", 1, -1},
    };
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        if (strcmp(dt, table[i].name) == 0) {
            *native = table[i].native;
            return table[i].bytes;
        }
    }
    *native = -1;
    return 0;
}

static int push_tensor(struct safetensors *st, const struct st_tensor *t)
{
    if (st->n_tensors == st->cap) {
        size_t cap = st->cap ? st->cap * 2 : 64;
        struct st_tensor *nt = realloc(st->tensors, cap * sizeof(*nt));
        if (!nt)
            return -1;
        st->tensors = nt;
        st->cap = cap;
    }
    st->tensors[st->n_tensors++] = *t;
    return 0;
}

/* Check one header entry and describe the tensor in *t (name not yet set).
 * The checks are what keeps a corrupt header from becoming an out-of-bounds
 * read later: offsets inside the data, a byte count equal to dtype x shape
 * (with the shape's product checked for overflow), elements aligned. */
static int parse_entry(const struct st_file *f, const char *name, json_t *v, const char *data,
                       size_t data_size, struct st_tensor *t, char *err, size_t errlen)
{
    json_t *jdt = json_object_get(v, "dtype");
    json_t *jshape = json_object_get(v, "shape");
    json_t *joff = json_object_get(v, "data_offsets");

    if (!json_is_object(v) || !json_is_string(jdt) || !json_is_array(jshape) ||
        !json_is_array(joff) || json_array_size(joff) != 2) {
        set_err(err, errlen, "%s: tensor '%s': header entry needs dtype, shape and data_offsets",
                f->path, name);
        return -1;
    }
    memset(t, 0, sizeof(*t));
    snprintf(t->dtype, sizeof(t->dtype), "%s", json_string_value(jdt));
    size_t esize = dtype_bytes(t->dtype, &t->native_dtype);
    if (!esize) {
        set_err(err, errlen, "%s: tensor '%s': unknown dtype \"%s\"", f->path, name,
                json_string_value(jdt));
        return -1;
    }
    size_t nd = json_array_size(jshape);
    if (nd > SAFETENSORS_MAX_DIMS) {
        set_err(err, errlen, "%s: tensor '%s': %zu dimensions (at most %d)", f->path, name, nd,
                SAFETENSORS_MAX_DIMS);
        return -1;
    }
    t->ndim = (int)nd;
    t->numel = 1;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(jshape, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0) {
            set_err(err, errlen, "%s: tensor '%s': shape[%zu] is not a non-negative integer",
                    f->path, name, i);
            return -1;
        }
        t->shape[i] = json_integer_value(d);
        if (t->shape[i] && t->numel > INT64_MAX / 16 / t->shape[i]) {
            set_err(err, errlen, "%s: tensor '%s': shape is too large", f->path, name);
            return -1;
        }
        t->numel *= t->shape[i];
    }
    json_t *jb = json_array_get(joff, 0), *je = json_array_get(joff, 1);
    if (!json_is_integer(jb) || !json_is_integer(je)) {
        set_err(err, errlen, "%s: tensor '%s': data_offsets are not integers", f->path, name);
        return -1;
    }
    json_int_t b = json_integer_value(jb), e = json_integer_value(je);
    if (b < 0 || e < b || (uint64_t)e > data_size) {
        set_err(err, errlen,
                "%s: tensor '%s': data_offsets [%lld, %lld) fall outside the %zu data bytes "
                "(truncated file?)",
                f->path, name, (long long)b, (long long)e, data_size);
        return -1;
    }
    t->nbytes = (size_t)(e - b);
    if ((uint64_t)t->numel * esize != t->nbytes) {
        set_err(err, errlen,
                "%s: tensor '%s': dtype %s with %lld elements needs %llu bytes but its data "
                "has %zu",
                f->path, name, t->dtype, (long long)t->numel,
                (unsigned long long)((uint64_t)t->numel * esize), t->nbytes);
        return -1;
    }
    t->data = data + b;
    if (((uintptr_t)t->data % esize) != 0) {
        set_err(err, errlen, "%s: tensor '%s': data is not aligned to its %zu-byte elements",
                f->path, name, esize);
        return -1;
    }
    t->file = f->path;
    return 0;
}

/* Record a file of the checkpoint before it is opened, so the message of
 * any later failure can name it and the unwind in safetensors_free() sees
 * one list. NULL when out of memory. */
static struct st_file *add_file(struct safetensors *st, const char *path, char *err, size_t errlen)
{
    struct st_file *nf = realloc(st->files, (size_t)(st->n_files + 1) * sizeof(*nf));
    if (!nf) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    st->files = nf;
    struct st_file *f = &st->files[st->n_files];
    memset(f, 0, sizeof(*f));
    f->path = strdup(path);
    if (!f->path) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    st->n_files++;
    return f;
}

static int parse_file(struct safetensors *st, const struct st_file *f, char *err, size_t errlen);

/* Map one file and append its tensors. */
static int load_file(struct safetensors *st, const char *path, char *err, size_t errlen)
{
    struct st_file *f = add_file(st, path, err, errlen);
    if (!f)
        return -1;

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        set_err(err, errlen, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    f->size = (size_t)sb.st_size;
    if (f->size < 8) {
        set_err(err, errlen, "%s: truncated: %zu bytes, no header", path, f->size);
        close(fd);
        return -1;
    }
    /* Populated now, not on first touch: every decode step streams all the
     * weights, and faulting them in page by page would slow the first ones. */
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    close(fd);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        set_err(err, errlen, "%s: mmap: %s", path, strerror(errno));
        return -1;
    }
    return parse_file(st, f, err, errlen);
}

/* Check the header of one file held in f->map[0..f->size) and append its
 * tensors. Nothing here trusts the bytes: the header length, every offset
 * and every shape are checked against the size before use. */
static int parse_file(struct safetensors *st, const struct st_file *f, char *err, size_t errlen)
{
    const char *path = f->path;
    if (f->size < 8) {
        set_err(err, errlen, "%s: truncated: %zu bytes, no header", path, f->size);
        return -1;
    }
    const unsigned char *p = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | p[i];
    if (hlen > f->size - 8 || hlen > MAX_HEADER_BYTES) {
        set_err(err, errlen, "%s: truncated or corrupt: header claims %llu bytes, file has %zu",
                path, (unsigned long long)hlen, f->size);
        return -1;
    }
    json_error_t jerr;
    /* Duplicate names in one header are a corrupt file, not a choice. */
    json_t *root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(root)) {
        set_err(err, errlen, "%s: header is not a JSON object: %s (offset %d)", path,
                root ? "wrong type" : jerr.text, root ? 0 : jerr.position);
        json_decref(root);
        return -1;
    }
    const char *data = (const char *)p + 8 + hlen;
    size_t data_size = f->size - 8 - (size_t)hlen;
    const char *name;
    json_t *v;
    json_object_foreach(root, name, v) {
        if (strcmp(name, "__metadata__") == 0)
            continue;
        struct st_tensor t;
        if (parse_entry(f, name, v, data, data_size, &t, err, errlen) != 0)
            goto fail;
        t.name = strdup(name);
        if (!t.name || push_tensor(st, &t) != 0) {
            free((char *)t.name);
            set_err(err, errlen, "out of memory");
            goto fail;
        }
    }
    json_decref(root);
    return 0;

fail:
    json_decref(root);
    return -1;
}

static int cmp_tensor(const void *a, const void *b)
{
    return strcmp(((const struct st_tensor *)a)->name, ((const struct st_tensor *)b)->name);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* Open every shard the index names, then check each listed tensor is in its
 * shard: an index that disagrees with its shards means a partial download
 * or a mix of two checkpoints, and should fail loudly rather than load the
 * wrong tensor. Shard names are plain file names in the index's folder. */
static int load_index_json(struct safetensors *st, const char *index_path, json_t *root,
                           char *err, size_t errlen)
{
    char *dir = NULL;
    int rc = -1;

    json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(map) || json_object_size(map) == 0) {
        set_err(err, errlen, "%s: no weight_map object", index_path);
        goto out;
    }
    dir = dir_of(index_path);
    if (!dir) {
        set_err(err, errlen, "out of memory");
        goto out;
    }
    const char *name;
    json_t *v;
    json_object_foreach(map, name, v) {
        const char *shard = json_string_value(v);
        if (!shard || !*shard || strchr(shard, '/') || strcmp(shard, "..") == 0) {
            set_err(err, errlen, "%s: tensor '%s': shard name must be a plain file name",
                    index_path, name);
            goto out;
        }
        char *fp = path_join(dir, shard);
        if (!fp) {
            set_err(err, errlen, "out of memory");
            goto out;
        }
        int seen = 0;
        for (int i = 0; i < st->n_files && !seen; i++)
            seen = strcmp(st->files[i].path, fp) == 0;
        int lrc = seen ? 0 : load_file(st, fp, err, errlen);
        free(fp);
        if (lrc != 0)
            goto out;
    }
    if (st->n_tensors)
        qsort(st->tensors, st->n_tensors, sizeof(*st->tensors), cmp_tensor);
    json_object_foreach(map, name, v) {
        const struct st_tensor *t = safetensors_find(st, name);
        char *fp = path_join(dir, json_string_value(v));
        int found = fp && t && strcmp(t->file, fp) == 0;
        if (!found) {
            set_err(err, errlen, "%s: tensor '%s' (listed in %s) is missing",
                    fp ? fp : json_string_value(v), name, index_path);
            free(fp);
            goto out;
        }
        free(fp);
    }
    rc = 0;
out:
    free(dir);
    return rc;
}

/* The index at index_path, or (text != NULL) its text[0..len) as though read
 * from there. */
static int load_index(struct safetensors *st, const char *index_path, const char *text, size_t len,
                      char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root = text ? json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr)
                        : json_load_file(index_path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        set_err(err, errlen, "%s: %s (line %d)", index_path, jerr.text, jerr.line);
        return -1;
    }
    int rc = load_index_json(st, index_path, root, err, errlen);
    json_decref(root);
    return rc;
}

/* Sort the tensors for lookups, and refuse a name that two files (or two
 * index entries' shards) both hold. */
static int finish(struct safetensors *st, char *err, size_t errlen)
{
    if (st->n_tensors == 0) /* a header of only __metadata__; qsort may not take NULL */
        return 0;
    qsort(st->tensors, st->n_tensors, sizeof(*st->tensors), cmp_tensor);
    for (size_t i = 1; i < st->n_tensors; i++) {
        if (strcmp(st->tensors[i - 1].name, st->tensors[i].name) == 0) {
            set_err(err, errlen, "%s: tensor '%s' appears twice (also in %s)",
                    st->tensors[i].file, st->tensors[i].name, st->tensors[i - 1].file);
            return -1;
        }
    }
    return 0;
}

struct safetensors *safetensors_open(const char *path, char *err, size_t errlen)
{
    struct safetensors *st = calloc(1, sizeof(*st));
    char *index = NULL, *single = NULL;
    struct stat sb;

    if (!st) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    if (stat(path, &sb) != 0) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (S_ISDIR(sb.st_mode)) {
        index = path_join(path, "model.safetensors.index.json");
        single = path_join(path, "model.safetensors");
        if (!index || !single) {
            set_err(err, errlen, "out of memory");
            goto fail;
        }
        if (stat(index, &sb) == 0) {
            free(single);
            single = NULL;
        } else if (stat(single, &sb) == 0) {
            free(index);
            index = NULL;
        } else {
            set_err(err, errlen, "%s: neither model.safetensors nor model.safetensors.index.json",
                    path);
            goto fail;
        }
    } else if (ends_with(path, ".json")) {
        index = strdup(path);
    } else {
        single = strdup(path);
    }
    st->source = strdup(index ? index : single ? single : "");
    if (!st->source || (!index && !single)) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    if (index ? load_index(st, index, NULL, 0, err, errlen) : load_file(st, single, err, errlen))
        goto fail;
    if (finish(st, err, errlen) != 0)
        goto fail;
    free(index);
    free(single);
    return st;

fail:
    free(index);
    free(single);
    safetensors_free(st);
    return NULL;
}

struct safetensors *safetensors_open_memory(const void *buf, size_t len, const char *name,
                                            char *err, size_t errlen)
{
    struct safetensors *st = calloc(1, sizeof(*st));
    struct st_file *f;
    if (!st || !(st->source = strdup(name)) || !(f = add_file(st, name, err, errlen))) {
        set_err(err, errlen, "out of memory");
        safetensors_free(st);
        return NULL;
    }
    f->map = (void *)buf;
    f->size = len;
    f->borrowed = 1;
    if (parse_file(st, f, err, errlen) != 0 || finish(st, err, errlen) != 0) {
        safetensors_free(st);
        return NULL;
    }
    return st;
}

struct safetensors *safetensors_open_index_memory(const char *index_path, const char *text,
                                                  size_t len, char *err, size_t errlen)
{
    struct safetensors *st = calloc(1, sizeof(*st));
    if (!st || !(st->source = strdup(index_path))) {
        set_err(err, errlen, "out of memory");
        safetensors_free(st);
        return NULL;
    }
    if (load_index(st, index_path, text ? text : "", len, err, errlen) != 0 ||
        finish(st, err, errlen) != 0) {
        safetensors_free(st);
        return NULL;
    }
    return st;
}

void safetensors_free(struct safetensors *st)
{
    if (!st)
        return;
    for (size_t i = 0; i < st->n_tensors; i++)
        free((char *)st->tensors[i].name);
    free(st->tensors);
    for (int i = 0; i < st->n_files; i++) {
        if (st->files[i].map && !st->files[i].borrowed)
            munmap(st->files[i].map, st->files[i].size);
        free(st->files[i].path);
    }
    free(st->files);
    free(st->source);
    free(st);
}

const struct st_tensor *safetensors_find(const struct safetensors *st, const char *name)
{
    struct st_tensor key = {.name = name};
    if (st->n_tensors == 0)
        return NULL;
    return bsearch(&key, st->tensors, st->n_tensors, sizeof(key), cmp_tensor);
}

size_t safetensors_count(const struct safetensors *st)
{
    return st->n_tensors;
}

const struct st_tensor *safetensors_at(const struct safetensors *st, size_t i)
{
    return i < st->n_tensors ? &st->tensors[i] : NULL;
}

const char *safetensors_source(const struct safetensors *st)
{
    return st->source;
}

/* ------------------------------------------------------------------------ */
/* Writer                                                                    */
/* ------------------------------------------------------------------------ */

/* The header is built first (offsets follow from the shapes), padded with
 * spaces as HF's writer does, then the data in order, from memory or from
 * fill() for tensors too big to hold (the 1.3B generator streams them). */
int safetensors_write(const char *path, const struct st_out *t, size_t n, st_fill_fn fill,
                      void *ctx, char *err, size_t errlen)
{
    json_t *root = json_object();
    char *header = NULL;
    FILE *f = NULL;
    size_t *sizes = calloc(n ? n : 1, sizeof(size_t));
    int rc = -1;
    uint64_t off = 0;

    if (!root || !sizes) {
        set_err(err, errlen, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        int native;
        size_t es = dtype_bytes(t[i].dtype, &native);
        if (!es || t[i].ndim < 0 || t[i].ndim > SAFETENSORS_MAX_DIMS) {
            set_err(err, errlen, "%s: tensor '%s': bad dtype or rank", path, t[i].name);
            goto out;
        }
        json_t *shape = json_array();
        uint64_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) {
            json_array_append_new(shape, json_integer(t[i].shape[d]));
            numel *= (uint64_t)t[i].shape[d];
        }
        sizes[i] = (size_t)(numel * es);
        json_t *e = json_pack("{s:s, s:o, s:[I, I]}", "dtype", t[i].dtype, "shape", shape,
                              "data_offsets", (json_int_t)off, (json_int_t)(off + sizes[i]));
        if (!e || json_object_set_new(root, t[i].name, e) != 0) {
            set_err(err, errlen, "out of memory");
            goto out;
        }
        off += sizes[i];
    }
    header = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!header) {
        set_err(err, errlen, "out of memory");
        goto out;
    }
    size_t hlen = strlen(header), padded = (hlen + 7) & ~(size_t)7;
    f = fopen(path, "wb");
    if (!f) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        goto out;
    }
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    if (fwrite(le, 1, 8, f) != 8 || fwrite(header, 1, hlen, f) != hlen)
        goto io;
    for (size_t i = hlen; i < padded; i++)
        if (fputc(' ', f) == EOF)
            goto io;
    for (size_t i = 0; i < n; i++) {
        if (t[i].data ? fwrite(t[i].data, 1, sizes[i], f) != sizes[i]
                      : (!fill || fill(ctx, i, f, sizes[i]) != 0))
            goto io;
    }
    if (fclose(f) != 0) {
        f = NULL;
        goto io;
    }
    f = NULL;
    rc = 0;
    goto out;
io:
    set_err(err, errlen, "%s: write failed: %s", path, strerror(errno));
out:
    if (f)
        fclose(f);
    free(header);
    free(sizes);
    json_decref(root);
    return rc;
}
