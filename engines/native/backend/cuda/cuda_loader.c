/* cuda_loader.c: the CUDA backend's entry points (ops_cuda.h, comm_nccl.h)
 * for every binary, loaded on first use from the module libcascade_cuda.so.
 *
 * Why a module: the backend links cudart, cuBLAS, cuBLASLt and NCCL, about
 * 900 MB of shared libraries. Linked into each binary, they cost every
 * process that never touches a GPU (the gateway, the CPU engine, the tests)
 * half a second and ~220 MB of RSS at start-up, just to be mapped and
 * relocated. Behind dlopen() they cost nothing until a "cuda:N" device is
 * asked for.
 *
 * Where the module is looked for, first found wins:
 *   $CASCADE_CUDA_MODULE; the path it was built at (CASCADE_CUDA_MODULE_PATH);
 *   libcascade_cuda.so beside the running executable (a carried build, see
 *   bench/gpu/run.sh); the dynamic loader's own search (LD_LIBRARY_PATH).
 * When none loads, the calls fail with the loader's reason, as a missing
 * driver does.
 *
 * Threads: any; the module is loaded once (pthread_once).
 */
#include "engines/native/backend/cuda/comm_nccl.h"
#include "engines/native/backend/cuda/ops_cuda.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef CASCADE_CUDA_MODULE_PATH
#define CASCADE_CUDA_MODULE_PATH "libcascade_cuda.so"
#endif

/* The module's functions; names in the module are the public ones, and it
 * is linked -Bsymbolic, so its own calls never come back here. */
static struct {
    int (*device_count)(char *, size_t);
    struct native_backend *(*backend_new)(int, char *, size_t);
    const char *(*name)(const struct native_backend *);
    int (*mem_info)(const struct native_backend *, size_t *, size_t *);
    const char *(*error)(const struct native_backend *);
    int (*nccl_new_all)(int, const int *, struct native_comm **, char *, size_t);
} mod;
static char load_error[512];
static pthread_once_t load_once = PTHREAD_ONCE_INIT;

static void *try_open(const char *path, size_t *used)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        int w = snprintf(load_error + *used, sizeof(load_error) - *used, "%s%s",
                         *used ? "; " : "", e ? e : path);
        if (w > 0)
            *used = *used + (size_t)w < sizeof(load_error) ? *used + (size_t)w : sizeof(load_error) - 1;
    }
    return h;
}

static void load(void)
{
    size_t used = 0;
    void *h = NULL;
    const char *env = getenv("CASCADE_CUDA_MODULE");
    if (env && *env)
        h = try_open(env, &used);
    if (!h)
        h = try_open(CASCADE_CUDA_MODULE_PATH, &used);
    if (!h) {
        char exe[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        if (n > 0) {
            exe[n] = '\0';
            char *slash = strrchr(exe, '/');
            char path[PATH_MAX + 32];
            snprintf(path, sizeof(path), "%.*s/libcascade_cuda.so",
                     slash ? (int)(slash - exe) : 1, slash ? exe : ".");
            h = try_open(path, &used);
        }
    }
    if (!h)
        h = try_open("libcascade_cuda.so", &used);
    if (!h)
        return;
    /* POSIX: a dlsym result converts to a function pointer through memcpy. */
#define SYM(field, sym)                                                                            \
    do {                                                                                           \
        void *p = dlsym(h, sym);                                                                   \
        memcpy(&mod.field, &p, sizeof(p));                                                         \
    } while (0)
    SYM(device_count, "ops_cuda_device_count");
    SYM(backend_new, "ops_cuda_new");
    SYM(name, "ops_cuda_name");
    SYM(mem_info, "ops_cuda_mem_info");
    SYM(error, "ops_cuda_error");
    SYM(nccl_new_all, "native_comm_nccl_new_all");
#undef SYM
    if (!mod.device_count || !mod.backend_new || !mod.name || !mod.mem_info || !mod.error) {
        snprintf(load_error, sizeof(load_error), "libcascade_cuda.so lacks the backend's entry points");
        memset(&mod, 0, sizeof(mod));
    }
}

/* 0 when the module is loaded; otherwise the reason in why. */
static int loaded(char *why, size_t n)
{
    pthread_once(&load_once, load);
    if (mod.backend_new)
        return 0;
    snprintf(why, n, "the CUDA backend module cannot be loaded: %s", load_error);
    return -1;
}

int ops_cuda_device_count(char *why, size_t n)
{
    return loaded(why, n) == 0 ? mod.device_count(why, n) : 0;
}

struct native_backend *ops_cuda_new(int device, char *err, size_t errlen)
{
    return loaded(err, errlen) == 0 ? mod.backend_new(device, err, errlen) : NULL;
}

/* The three below take a backend the module made, so it is loaded. */
const char *ops_cuda_name(const struct native_backend *b)
{
    return mod.name(b);
}

int ops_cuda_mem_info(const struct native_backend *b, size_t *free_bytes, size_t *total_bytes)
{
    return mod.mem_info(b, free_bytes, total_bytes);
}

const char *ops_cuda_error(const struct native_backend *b)
{
    return mod.error(b);
}

#ifdef CASCADE_HAVE_NCCL
int native_comm_nccl_new_all(int world, const int *devices, struct native_comm **out, char *err,
                             size_t errlen)
{
    if (loaded(err, errlen) != 0)
        return -1;
    if (!mod.nccl_new_all) {
        snprintf(err, errlen, "the CUDA backend module was built without NCCL");
        return -1;
    }
    return mod.nccl_new_all(world, devices, out, err, errlen);
}
#endif
