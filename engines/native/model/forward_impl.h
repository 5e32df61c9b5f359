/* forward_impl.h: what each architecture's forward pass provides to
 * forward.c. Private to engines/native/model/. */
#ifndef CASCADE_NATIVE_FORWARD_IMPL_H
#define CASCADE_NATIVE_FORWARD_IMPL_H

#include "engines/native/model/forward.h"

struct native_forward_impl {
    const char *arch;
    const float *(*run)(struct native_forward *f, struct native_kv *kv,
                        const struct native_batch *batch);
    size_t (*bytes)(const struct native_forward *f);
    void (*free)(struct native_forward *f);
};

/* dense.c */
struct native_forward *native_forward_dense_new(const struct native_model *m,
                                                struct native_backend *b,
                                                const struct native_forward_opts *o, char *err,
                                                size_t errlen);
/* deepseek_v3.c */
struct native_forward *native_forward_v3_new(const struct native_model *m, struct native_backend *b,
                                             const struct native_forward_opts *o, char *err,
                                             size_t errlen);

/* RoPE tables for positions [0, n_pos) over rot_dim rotary dims:
 * angle(p, i) = p / linear_scale * inv_freq_i, with inv_freq_i =
 * theta^(-2i/rot_dim) blended by YaRN when yarn->factor > 0 (DeepSeek's
 * correction range over beta_fast/beta_slow), and cos/sin multiplied by
 * amplitude. cos and sin are [n_pos][rot_dim/2], computed in double. */
void native_rope_tables(float *cos_out, float *sin_out, int n_pos, int rot_dim, double theta,
                        double linear_scale, const struct native_yarn *yarn, double amplitude);

/* YaRN's attention factor: 0.1 * mscale * ln(factor) + 1 (1 when factor <= 1). */
double native_yarn_mscale(double factor, double mscale);

#endif
