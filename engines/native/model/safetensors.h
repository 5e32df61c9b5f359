/* safetensors.h: read-only access to Hugging Face safetensors checkpoints.
 *
 * A checkpoint is one `.safetensors` file, or a sharded set described by
 * `model.safetensors.index.json` (its weight_map names the shard of each
 * tensor). Each file is mmapped read-only and its JSON header is checked in
 * full before any tensor is handed out: offsets inside the file, byte counts
 * that match dtype x shape, no overlaps past the end, elements aligned to
 * their size. Every error names the file and, where there is one, the
 * tensor; a bad file is an error, never a crash. A writer makes new files
 * (the llama2.c converter and the model generator use it).
 *
 * Ownership: the struct safetensors owns its mappings; tensor data pointers
 * stay valid until safetensors_free(). Read-only after open, so any thread
 * may look tensors up.
 */
#ifndef CASCADE_NATIVE_SAFETENSORS_H
#define CASCADE_NATIVE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define SAFETENSORS_MAX_DIMS 8

struct st_tensor {
    const char *name;
    char dtype[16];             /* as written: "F32", "BF16", "I64", "F8_E4M3", ... */
    int native_dtype;           /* enum native_dtype for F32/F16/BF16, else -1 */
    int ndim;
    int64_t shape[SAFETENSORS_MAX_DIMS];
    int64_t numel;
    const void *data;
    size_t nbytes;
    const char *file;           /* path of the file that holds it */
};

struct safetensors;

/* path: a .safetensors file, a model.safetensors.index.json, or a folder
 * holding either (index preferred). NULL and a message in err on failure. */
struct safetensors *safetensors_open(const char *path, char *err, size_t errlen);
void safetensors_free(struct safetensors *st);

/* The same checks on bytes already in memory, for the fuzz targets and any
 * caller that holds a file's bytes. safetensors_open_memory() reads one
 * .safetensors file from buf[0..len), which is borrowed: it must outlive the
 * result, and tensor data points into it. name stands for the file in
 * messages and in st_tensor.file. safetensors_open_index_memory() reads an
 * index from text[0..len) as though it were the file index_path: its shards
 * are opened from index_path's folder. */
struct safetensors *safetensors_open_memory(const void *buf, size_t len, const char *name,
                                            char *err, size_t errlen);
struct safetensors *safetensors_open_index_memory(const char *index_path, const char *text,
                                                  size_t len, char *err, size_t errlen);

/* The tensor called name, or NULL. */
const struct st_tensor *safetensors_find(const struct safetensors *st, const char *name);
size_t safetensors_count(const struct safetensors *st);
const struct st_tensor *safetensors_at(const struct safetensors *st, size_t i);
/* What was opened, for messages: the file, or the index. */
const char *safetensors_source(const struct safetensors *st);

/* ---- Writing (the converter, the model generator and tests) ---- */

struct st_out {
    const char *name;
    const char *dtype;          /* "F32", "F16", "BF16", ... */
    int ndim;
    int64_t shape[SAFETENSORS_MAX_DIMS];
    const void *data;           /* NULL: fill() writes the bytes */
};

/* Write nbytes of tensor `index` to f; 0 or -1. */
typedef int (*st_fill_fn)(void *ctx, size_t index, FILE *f, size_t nbytes);

/* Write a safetensors file with tensors t[0..n) in that order (header padded
 * with spaces to a multiple of 8 bytes, so data stays aligned when every
 * tensor's size is). 0, or -1 with err set. */
int safetensors_write(const char *path, const struct st_out *t, size_t n, st_fill_fn fill,
                      void *ctx, char *err, size_t errlen);

#endif
