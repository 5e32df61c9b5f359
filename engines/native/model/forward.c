/* forward.c: picks the forward pass of a model's architecture, and the
 * position tables every architecture shares; see forward.h. */
#include "engines/native/model/forward.h"

#include "engines/native/model/forward_impl.h"
#include "engines/native/model/parallel.h"

#include <math.h>
#include <stdio.h>

void native_forward_kv_desc(const struct native_model *m, struct native_kv_desc *d)
{
    const struct native_model_config *c = &m->cfg;
    *d = (struct native_kv_desc){.n_layers = c->n_layers};
    if (c->arch == NATIVE_ARCH_DEEPSEEK_V3) {
        d->kind = NATIVE_KV_LATENT;
        d->latent_dim = c->v3.kv_lora_rank;
        d->rope_dim = c->v3.qk_rope_head_dim;
    } else {
        d->kind = NATIVE_KV_DENSE;
        d->kv_dim = c->n_kv_heads * c->head_dim;
    }
}

struct native_forward *native_forward_new(const struct native_model *m, struct native_backend *b,
                                          const struct native_forward_opts *o, char *err,
                                          size_t errlen)
{
    if (o->max_tokens < 1 || o->max_out < 1 || o->max_out > o->max_tokens || o->n_ctx < 1) {
        snprintf(err, errlen, "bad forward sizes (tokens %d, out %d, ctx %d)", o->max_tokens,
                 o->max_out, o->n_ctx);
        return NULL;
    }
    if (native_parallel_is(b))
        return native_forward_parallel_new(m, b, o, err, errlen);
    switch (m->cfg.arch) {
    case NATIVE_ARCH_DENSE:
        return native_forward_dense_new(m, b, o, err, errlen);
    case NATIVE_ARCH_DEEPSEEK_V3:
        return native_forward_v3_new(m, b, o, err, errlen);
    }
    snprintf(err, errlen, "%s: unknown architecture %d", m->path, (int)m->cfg.arch);
    return NULL;
}

void native_forward_free(struct native_forward *f)
{
    if (f)
        f->impl->free(f);
}

const float *native_forward_run(struct native_forward *f, struct native_kv *kv,
                                const struct native_batch *batch)
{
    return f->impl->run(f, kv, batch);
}

size_t native_forward_bytes(const struct native_forward *f)
{
    return f->impl->bytes(f);
}

double native_yarn_mscale(double factor, double mscale)
{
    return factor <= 1.0 ? 1.0 : 0.1 * mscale * log(factor) + 1.0;
}

/* YaRN (Peng et al. 2023), as DeepSeek's reference computes it: dims that
 * turn fewer than beta_slow times over the original context are
 * interpolated (freq / factor), those that turn more than beta_fast times
 * keep their frequency, and a linear ramp blends the ones between. The
 * correction dim for r rotations is d * ln(L / (2 pi r)) / (2 ln theta). */
static double yarn_correction_dim(double rotations, int dim, double theta, double orig)
{
    return dim * log(orig / (rotations * 2.0 * M_PI)) / (2.0 * log(theta));
}

void native_rope_tables(float *cos_out, float *sin_out, int n_pos, int rot_dim, double theta,
                        double linear_scale, const struct native_yarn *yarn, double amplitude)
{
    const int half = rot_dim / 2;
    double low = 0, high = 0;
    const int use_yarn = yarn && yarn->factor > 1.0f;
    if (use_yarn) {
        low = floor(yarn_correction_dim(yarn->beta_fast, rot_dim, theta, yarn->original_max_pos));
        high = ceil(yarn_correction_dim(yarn->beta_slow, rot_dim, theta, yarn->original_max_pos));
        if (low < 0)
            low = 0;
        if (high > rot_dim - 1)
            high = rot_dim - 1;
        if (low == high)
            high += 0.001;
    }
    for (int i = 0; i < half; i++) {
        double inv_freq = pow(theta, -2.0 * i / (double)rot_dim);
        if (use_yarn) {
            double ramp = ((double)i - low) / (high - low);
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            double smooth = 1.0 - ramp;     /* 1: keep the frequency; 0: interpolate */
            inv_freq = inv_freq / yarn->factor * (1.0 - smooth) + inv_freq * smooth;
        }
        for (int p = 0; p < n_pos; p++) {
            double a = (double)p / linear_scale * inv_freq;
            cos_out[(size_t)p * half + i] = (float)(cos(a) * amplitude);
            sin_out[(size_t)p * half + i] = (float)(sin(a) * amplitude);
        }
    }
}
