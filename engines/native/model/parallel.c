/* parallel.c: the group backend and the multi-rank forward pass; see
 * parallel.h.
 *
 * Stepping: native_forward_run() publishes the batch and the KV caches,
 * bumps the step number and wakes the rank threads; rank 0 runs on the
 * caller's thread; the caller then waits until every other rank has
 * reported the step done. The ranks meet inside the forward pass only in
 * their collectives, so a step costs two wake-ups beyond those.
 */
#include "engines/native/model/parallel.h"

#include "engines/native/model/forward_impl.h"
#include "engines/native/model/shard.h"
#if defined(CASCADE_HAVE_CUDA) && defined(CASCADE_HAVE_NCCL)
#include "engines/native/backend/cuda/comm_nccl.h"
#endif

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct par_backend {
    struct native_backend base;     /* first: ops.h's handle */
    struct native_ops ops;          /* rank 0's kv_block_size and host_visible */
    const struct native_model *m;
    int world, tp, ep;
    struct native_backend *be[NATIVE_MAX_WORLD];
    struct native_comm *comm[NATIVE_MAX_WORLD];
    struct native_shard *shard[NATIVE_MAX_WORLD];
    struct native_kv_desc kvd[NATIVE_MAX_WORLD];
};

/* The group's KV cache: one per rank, same block count. */
struct par_kv {
    struct native_kv *kv[NATIVE_MAX_WORLD];
};

static const char par_name[] = "parallel";

int native_parallel_is(const struct native_backend *b)
{
    return b && b->ops->name == par_name;
}

int native_parallel_world(const struct native_backend *b)
{
    return native_parallel_is(b) ? ((const struct par_backend *)b)->world : 1;
}

/* ---- the group as a backend: memory and KV go to the ranks ---- */

static struct native_backend *rank0(struct native_backend *b)
{
    return ((struct par_backend *)b)->be[0];
}

static struct native_buf *par_buf_alloc(struct native_backend *b, size_t bytes)
{
    return rank0(b)->ops->buf_alloc(rank0(b), bytes);
}

static void par_buf_free(struct native_backend *b, struct native_buf *buf)
{
    rank0(b)->ops->buf_free(rank0(b), buf);
}

static void *par_buf_addr(struct native_backend *b, struct native_buf *buf)
{
    return rank0(b)->ops->buf_addr(rank0(b), buf);
}

static void par_upload(struct native_backend *b, struct native_buf *buf, size_t off, const void *src,
                       size_t n)
{
    rank0(b)->ops->upload(rank0(b), buf, off, src, n);
}

static void par_download(struct native_backend *b, void *dst, struct native_buf *buf, size_t off,
                         size_t n)
{
    rank0(b)->ops->download(rank0(b), dst, buf, off, n);
}

static void par_synchronize(struct native_backend *b)
{
    struct par_backend *p = (struct par_backend *)b;
    for (int r = 0; r < p->world; r++)
        p->be[r]->ops->synchronize(p->be[r]);
}

static const void *par_map_weights(struct native_backend *b, const void *host, size_t n)
{
    return rank0(b)->ops->map_weights(rank0(b), host, n);
}

static void par_unmap_weights(struct native_backend *b, const void *addr)
{
    rank0(b)->ops->unmap_weights(rank0(b), addr);
}

/* d is the whole model's cache; each rank stores its shard's. */
static size_t par_kv_block_bytes(struct native_backend *b, const struct native_kv_desc *d)
{
    struct par_backend *p = (struct par_backend *)b;
    (void)d;
    size_t sum = 0;
    for (int r = 0; r < p->world; r++)
        sum += p->be[r]->ops->kv_block_bytes(p->be[r], &p->kvd[r]);
    return sum;
}

static void par_kv_free(struct native_backend *b, struct native_kv *kv)
{
    struct par_backend *p = (struct par_backend *)b;
    struct par_kv *k = (struct par_kv *)kv;
    if (!k)
        return;
    for (int r = 0; r < p->world; r++)
        if (k->kv[r])
            p->be[r]->ops->kv_free(p->be[r], k->kv[r]);
    free(k);
}

static struct native_kv *par_kv_new(struct native_backend *b, const struct native_kv_desc *d,
                                    int n_blocks, char *err, size_t errlen)
{
    struct par_backend *p = (struct par_backend *)b;
    (void)d;
    struct par_kv *k = calloc(1, sizeof(*k));
    if (!k) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (int r = 0; r < p->world; r++) {
        k->kv[r] = p->be[r]->ops->kv_new(p->be[r], &p->kvd[r], n_blocks, err, errlen);
        if (!k->kv[r]) {
            par_kv_free(b, (struct native_kv *)k);
            return NULL;
        }
    }
    return (struct native_kv *)k;
}

static void par_free(struct native_backend *b)
{
    struct par_backend *p = (struct par_backend *)b;
    for (int r = 0; r < p->world; r++) {
        native_shard_free(p->shard[r]);
        native_comm_free(p->comm[r]);
        native_backend_free(p->be[r]);
    }
    free(p);
}

struct native_backend *native_parallel_new(const struct native_model *m,
                                           const struct native_parallel_config *cfg, char *err,
                                           size_t errlen)
{
    const int world = cfg->tp > cfg->ep ? cfg->tp : cfg->ep;
    struct par_backend *p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(err, errlen, "out of memory");
        goto fail_take;
    }
    if (world < 1 || world > NATIVE_MAX_WORLD) {
        snprintf(err, errlen, "tp %d, ep %d: between 1 and %d ranks", cfg->tp, cfg->ep,
                 NATIVE_MAX_WORLD);
        goto fail_take;
    }
    p->m = m;
    p->world = world;
    p->tp = cfg->tp;
    p->ep = cfg->ep;
    for (int r = 0; r < world; r++) {
        p->be[r] = cfg->backends[r];
        p->comm[r] = cfg->comms[r];
    }
    for (int r = 0; r < world; r++) {
        if (!p->be[r] || !p->comm[r] || p->comm[r]->rank != r || p->comm[r]->world != world) {
            snprintf(err, errlen, "rank %d has no backend or a comm of another rank", r);
            goto fail;
        }
        if (p->be[r]->ops->kv_block_size != p->be[0]->ops->kv_block_size) {
            snprintf(err, errlen, "the ranks' backends store KV blocks of different sizes");
            goto fail;
        }
        if (!(p->shard[r] = native_shard_new(m, r, cfg->tp, cfg->ep, err, errlen)))
            goto fail;
        native_forward_kv_desc(native_shard_model(p->shard[r]), &p->kvd[r]);
    }
    p->ops = (struct native_ops){
        .name = par_name,
        .buf_alloc = par_buf_alloc,
        .buf_free = par_buf_free,
        .buf_addr = par_buf_addr,
        .upload = par_upload,
        .download = par_download,
        .synchronize = par_synchronize,
        .host_visible = p->be[0]->ops->host_visible,
        .map_weights = par_map_weights,
        .unmap_weights = par_unmap_weights,
        .kv_new = par_kv_new,
        .kv_free = par_kv_free,
        .kv_block_bytes = par_kv_block_bytes,
        .kv_block_size = p->be[0]->ops->kv_block_size,
        .free = par_free,
    };
    p->base.ops = &p->ops;
    return &p->base;

fail:
    par_free(&p->base);
    return NULL;

fail_take:
    for (int r = 0; r < world && r < NATIVE_MAX_WORLD; r++) {
        native_comm_free(cfg->comms[r]);
        native_backend_free(cfg->backends[r]);
    }
    free(p);
    return NULL;
}

struct native_backend *native_parallel_on_device(const struct native_model *m,
                                                 const struct native_device *d, int tp, int ep,
                                                 int threads, unsigned cpu_flags, char *err,
                                                 size_t errlen)
{
    const int gpus = d->kind == NATIVE_DEVICE_CUDA ? d->n : 1;
    if (tp <= 0)
        tp = gpus;
    if (ep <= 0)
        ep = m->cfg.arch == NATIVE_ARCH_DEEPSEEK_V3 ? gpus : 1;
    const int world = tp > ep ? tp : ep;
    if (world > NATIVE_MAX_WORLD || (tp != 1 && tp != world) || (ep != 1 && ep != world)) {
        snprintf(err, errlen, "tp %d, ep %d: each must be 1 or the number of ranks (at most %d)",
                 tp, ep, NATIVE_MAX_WORLD);
        return NULL;
    }
    if (d->kind == NATIVE_DEVICE_CUDA && world != d->n) {
        snprintf(err, errlen, "tp %d, ep %d make %d ranks, one per GPU, but %d GPU%s named", tp,
                 ep, world, d->n, d->n == 1 ? " is" : "s are");
        return NULL;
    }
    if (world == 1)
        return native_device_backend(d, threads, cpu_flags, err, errlen);

    struct native_backend *be[NATIVE_MAX_WORLD] = {0};
    struct native_comm *comms[NATIVE_MAX_WORLD] = {0};
    int r = 0;
    for (; r < world; r++) {
        struct native_device one = *d;
        if (d->kind == NATIVE_DEVICE_CUDA) {
            one.n = 1;
            one.ids[0] = d->ids[r];
        }
        if (!(be[r] = native_device_backend(&one, threads, cpu_flags, err, errlen)))
            goto fail;
    }
    if (d->kind == NATIVE_DEVICE_CPU) {
        if (native_comm_cpu_new_all(world, comms) != 0) {
            snprintf(err, errlen, "cannot make the CPU comm of %d ranks", world);
            goto fail;
        }
    } else {
#if defined(CASCADE_HAVE_CUDA) && defined(CASCADE_HAVE_NCCL)
        if (native_comm_nccl_new_all(world, d->ids, comms, err, errlen) != 0)
            goto fail;
#else
        snprintf(err, errlen, "%d GPUs: this build has no NCCL, so one GPU at most", world);
        goto fail;
#endif
    }
    struct native_parallel_config cfg = {tp, ep, be, comms};
    return native_parallel_new(m, &cfg, err, errlen);

fail:
    for (int q = 0; q < r; q++)
        native_backend_free(be[q]);
    return NULL;
}

const char *native_parallel_error(const struct native_backend *b)
{
    if (!native_parallel_is(b))
        return native_device_error(b);
    const struct par_backend *p = (const struct par_backend *)b;
    for (int r = 0; r < p->world; r++) {
        const char *e = native_device_error(p->be[r]);
        if (e)
            return e;
    }
    return NULL;
}

void native_parallel_describe(const struct native_backend *b, char *buf, size_t n)
{
    if (!native_parallel_is(b)) {
        native_device_describe(b, buf, n);
        return;
    }
    const struct par_backend *p = (const struct par_backend *)b;
    char one[160];
    native_device_describe(p->be[0], one, sizeof(one));
    snprintf(buf, n, "tp %d, ep %d: %d x %s", p->tp, p->ep, p->world, one);
}

/* ---- the multi-rank forward pass ---- */

struct par_forward;

struct rank_thread {
    struct par_forward *f;
    int rank;
    pthread_t th;
};

struct par_forward {
    struct native_forward base;     /* first: forward.c's handle */
    struct par_backend *p;
    struct native_forward *fw[NATIVE_MAX_WORLD];
    struct rank_thread th[NATIVE_MAX_WORLD];
    int n_threads;                  /* started, ranks 1..n_threads */

    pthread_mutex_t mu;
    pthread_cond_t go, done;
    unsigned long step;             /* steps published */
    int n_done;                     /* ranks past the current step */
    int stop;
    struct par_kv *kv;              /* the step's cache and batch */
    const struct native_batch *batch;
};

static const struct native_forward_impl par_impl;

static void *rank_main(void *arg)
{
    struct rank_thread *t = arg;
    struct par_forward *f = t->f;
    unsigned long seen = 0;
    for (;;) {
        pthread_mutex_lock(&f->mu);
        while (!f->stop && f->step == seen)
            pthread_cond_wait(&f->go, &f->mu);
        if (f->stop) {
            pthread_mutex_unlock(&f->mu);
            return NULL;
        }
        seen = f->step;
        struct par_kv *kv = f->kv;
        const struct native_batch *batch = f->batch;
        pthread_mutex_unlock(&f->mu);

        native_forward_run(f->fw[t->rank], kv->kv[t->rank], batch);

        pthread_mutex_lock(&f->mu);
        if (++f->n_done == f->p->world - 1)
            pthread_cond_signal(&f->done);
        pthread_mutex_unlock(&f->mu);
    }
}

static const float *par_run(struct native_forward *base, struct native_kv *kv,
                            const struct native_batch *batch)
{
    struct par_forward *f = (struct par_forward *)base;
    pthread_mutex_lock(&f->mu);
    f->kv = (struct par_kv *)kv;
    f->batch = batch;
    f->n_done = 0;
    f->step++;
    pthread_cond_broadcast(&f->go);
    pthread_mutex_unlock(&f->mu);

    const float *logits = native_forward_run(f->fw[0], f->kv->kv[0], batch);

    pthread_mutex_lock(&f->mu);
    while (f->n_done < f->p->world - 1)
        pthread_cond_wait(&f->done, &f->mu);
    pthread_mutex_unlock(&f->mu);
    return logits;
}

static size_t par_bytes(const struct native_forward *base)
{
    const struct par_forward *f = (const struct par_forward *)base;
    size_t sum = 0;
    for (int r = 0; r < f->p->world; r++)
        sum += f->fw[r] ? native_forward_bytes(f->fw[r]) : 0;
    return sum;
}

static void par_forward_free(struct native_forward *base)
{
    struct par_forward *f = (struct par_forward *)base;
    pthread_mutex_lock(&f->mu);
    f->stop = 1;
    pthread_cond_broadcast(&f->go);
    pthread_mutex_unlock(&f->mu);
    for (int i = 1; i <= f->n_threads; i++)
        pthread_join(f->th[i].th, NULL);
    for (int r = 0; r < f->p->world; r++)
        native_forward_free(f->fw[r]);
    pthread_cond_destroy(&f->done);
    pthread_cond_destroy(&f->go);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

struct native_forward *native_forward_parallel_new(const struct native_model *m,
                                                   struct native_backend *b,
                                                   const struct native_forward_opts *o, char *err,
                                                   size_t errlen)
{
    struct par_backend *p = (struct par_backend *)b;
    if (m != p->m) {
        snprintf(err, errlen, "the parallel group was made for another model");
        return NULL;
    }
    struct par_forward *f = calloc(1, sizeof(*f));
    if (!f) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    f->base.impl = &par_impl;
    f->p = p;
    if (pthread_mutex_init(&f->mu, NULL) != 0)
        goto fail_mu;
    if (pthread_cond_init(&f->go, NULL) != 0)
        goto fail_go;
    if (pthread_cond_init(&f->done, NULL) != 0)
        goto fail_done;
    for (int r = 0; r < p->world; r++) {
        struct native_forward_opts ro = *o;
        ro.comm = p->comm[r];
        ro.tp = p->tp;
        ro.ep = p->ep;
        f->fw[r] = native_forward_new(native_shard_model(p->shard[r]), p->be[r], &ro, err, errlen);
        if (!f->fw[r])
            goto fail;
    }
    for (int r = 1; r < p->world; r++) {
        f->th[r] = (struct rank_thread){f, r, 0};
        if (pthread_create(&f->th[r].th, NULL, rank_main, &f->th[r]) != 0) {
            snprintf(err, errlen, "cannot start the thread of rank %d", r);
            goto fail;
        }
        f->n_threads = r;
    }
    return &f->base;

fail:
    par_forward_free(&f->base);
    return NULL;
fail_done:
    pthread_cond_destroy(&f->go);
fail_go:
    pthread_mutex_destroy(&f->mu);
fail_mu:
    free(f);
    return NULL;
}

static const struct native_forward_impl par_impl = {
    .arch = "parallel",
    .run = par_run,
    .bytes = par_bytes,
    .free = par_forward_free,
};
