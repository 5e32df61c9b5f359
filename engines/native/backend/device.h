/* device.h: which backend a runtime drives, named the way an operator
 * writes it: "cpu" or "cuda:N" (several GPUs: "cuda:0,1,2,3").
 *
 * native_device_parse() reads the name (the native tier's "device" option,
 * cascade-engine's and cascade-score's --device); native_device_backend()
 * makes the backend for it, or says why it cannot: a build without CUDA,
 * no driver, no such device. The caller owns the backend
 * (native_backend_free()). The scheduler is handed a backend and never makes
 * one (DESIGN.md), so this is the one place that knows every backend's
 * constructor.
 *
 * Pure functions and constructors; any thread.
 */
#ifndef CASCADE_NATIVE_DEVICE_H
#define CASCADE_NATIVE_DEVICE_H

#include "engines/native/backend/ops.h"

#include <stddef.h>

#define NATIVE_MAX_DEVICES 16

enum native_device_kind {
    NATIVE_DEVICE_CPU = 0,
    NATIVE_DEVICE_CUDA = 1,
};

struct native_device {
    enum native_device_kind kind;
    int n;                          /* CUDA: how many GPUs are named */
    int ids[NATIVE_MAX_DEVICES];    /* CUDA: their indices, distinct, in the order given */
};

/* "cpu", "cuda" (= cuda:0), "cuda:N" or "cuda:N,M,..."; NULL or "" is cpu.
 * 0, or -1 with the reason in err. Says nothing about whether the device
 * exists: native_device_backend() finds that out. */
int native_device_parse(const char *s, struct native_device *d, char *err, size_t errlen);

/* 1 when this build has the CUDA backend. */
int native_device_cuda_built(void);

/* The backend for d's first device: the CPU with `threads` (0: one per CPU)
 * and OPS_CPU_* flags, or CUDA device d->ids[0]. NULL with the reason in
 * err: "cuda:0: this build has no CUDA backend ...", "cuda:0: no usable CUDA
 * device: ...". Several GPUs need the multi-GPU runtime, which takes d
 * itself; here they are refused. */
struct native_backend *native_device_backend(const struct native_device *d, int threads,
                                             unsigned cpu_flags, char *err, size_t errlen);

/* The first error a device backend's ops hit (ops return none: a GPU fault
 * or an op this build lacks is remembered), or NULL; the CPU has none. Any
 * thread; an error shows once the op that hit it has run (after
 * synchronize() or a download, for a fault inside a kernel). */
const char *native_device_error(const struct native_backend *b);

/* A GPU backend's free and total device memory now, for planning the KV
 * pool; -1 for the CPU (its pool is virtual memory, sized by the budget). */
int native_device_memory(const struct native_backend *b, size_t *free_bytes, size_t *total_bytes);

/* "cpu (avx512, 8 threads)" or "cuda:0 (NVIDIA H200, sm_90), 120.5 of 139.8
 * GiB free", for start-up lines. */
void native_device_describe(const struct native_backend *b, char *buf, size_t n);

#endif
