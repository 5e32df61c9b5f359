/* device.c: device names to backends; see device.h. */
#include "engines/native/backend/device.h"

#include "engines/native/backend/cpu/ops_cpu.h"
#ifdef CASCADE_HAVE_CUDA
#include "engines/native/backend/cuda/ops_cuda.h"
#endif

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int native_device_parse(const char *s, struct native_device *d, char *err, size_t errlen)
{
    memset(d, 0, sizeof(*d));
    if (!s || !*s || !strcmp(s, "cpu"))
        return 0;
    if (strncmp(s, "cuda", 4) != 0 || (s[4] != '\0' && s[4] != ':'))
        goto bad;
    d->kind = NATIVE_DEVICE_CUDA;
    if (s[4] == '\0') {
        d->n = 1;
        return 0;
    }
    /* A comma-separated list of small decimal indices, each named once. */
    const char *p = s + 5;
    for (;;) {
        if (*p < '0' || *p > '9')
            goto bad;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || v > 1023 || (*end != ',' && *end != '\0'))
            goto bad;
        for (int i = 0; i < d->n; i++)
            if (d->ids[i] == (int)v) {
                snprintf(err, errlen, "device \"%s\": cuda:%ld is named twice", s, v);
                return -1;
            }
        if (d->n == NATIVE_MAX_DEVICES) {
            snprintf(err, errlen, "device \"%s\": at most %d GPUs", s, NATIVE_MAX_DEVICES);
            return -1;
        }
        d->ids[d->n++] = (int)v;
        if (*end == '\0')
            return 0;
        p = end + 1;
    }
bad:
    snprintf(err, errlen, "device \"%s\": expected \"cpu\" or \"cuda:N\" (several GPUs: \"cuda:0,1\")",
             s);
    return -1;
}

int native_device_cuda_built(void)
{
#ifdef CASCADE_HAVE_CUDA
    return 1;
#else
    return 0;
#endif
}

struct native_backend *native_device_backend(const struct native_device *d, int threads,
                                             unsigned cpu_flags, char *err, size_t errlen)
{
    if (d->kind == NATIVE_DEVICE_CPU) {
        struct native_backend *b = ops_cpu_new(threads, cpu_flags);
        if (!b)
            snprintf(err, errlen, "cannot start the CPU backend (out of memory or threads)");
        return b;
    }
#ifdef CASCADE_HAVE_CUDA
    if (d->n > 1) {
        snprintf(err, errlen, "cuda:%d,...: %d GPUs need the multi-GPU runtime; this call drives one",
                 d->ids[0], d->n);
        return NULL;
    }
    char why[256];
    struct native_backend *b = ops_cuda_new(d->ids[0], why, sizeof(why));
    if (!b)
        snprintf(err, errlen, "cuda:%d: %s", d->ids[0], why);
    return b;
#else
    (void)threads;
    (void)cpu_flags;
    snprintf(err, errlen,
             "cuda:%d: this build has no CUDA backend (nvcc was not found at build time, or "
             "-DCASCADE_CUDA=OFF); use \"device\": \"cpu\"",
             d->ids[0]);
    return NULL;
#endif
}

const char *native_device_error(const struct native_backend *b)
{
#ifdef CASCADE_HAVE_CUDA
    if (!strcmp(b->ops->name, "cuda"))
        return ops_cuda_error(b);
#endif
    (void)b;
    return NULL;
}

int native_device_memory(const struct native_backend *b, size_t *free_bytes, size_t *total_bytes)
{
#ifdef CASCADE_HAVE_CUDA
    if (!strcmp(b->ops->name, "cuda"))
        return ops_cuda_mem_info(b, free_bytes, total_bytes);
#endif
    (void)b;
    (void)free_bytes;
    (void)total_bytes;
    return -1;
}

void native_device_describe(const struct native_backend *b, char *buf, size_t n)
{
#ifdef CASCADE_HAVE_CUDA
    if (!strcmp(b->ops->name, "cuda")) {
        /* After the weights and the KV pool are in: what is left is the
         * room for workspaces, and the first thing to read when a start
         * fails for memory. */
        size_t fr = 0, tot = 0;
        if (ops_cuda_mem_info(b, &fr, &tot) == 0)
            snprintf(buf, n, "%s, %.1f of %.1f GiB free", ops_cuda_name(b), (double)fr / (1 << 30),
                     (double)tot / (1 << 30));
        else
            snprintf(buf, n, "%s", ops_cuda_name(b));
        return;
    }
#endif
    if (!strcmp(b->ops->name, "cpu")) {
        snprintf(buf, n, "cpu (%s, %d threads)", ops_cpu_kernels(b), ops_cpu_threads(b));
        return;
    }
    snprintf(buf, n, "%s", b->ops->name);
}
