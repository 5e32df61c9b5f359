/* fuzz_llama2c_model: the llama2.c model file's header and tensor layout
 * (engines/native/model/model.c), from arbitrary bytes through
 * native_model_load_llama2c_buffer().
 *
 * An accepted file must describe itself exactly: every weight matrix the
 * forward pass will read lies inside the file, with the shape the header
 * gives. (Reading them all is what the forward pass does; here it is done
 * by touching each matrix's first and last float, which ASan checks.) */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engines/native/model/model.h"

static volatile float sink;

static void touch(const struct native_mat *w, const uint8_t *data, size_t size)
{
    const float *p = w->data;
    size_t n = (size_t)w->rows * (size_t)w->cols;
    if (w->dtype != NATIVE_F32 || n == 0 || (const uint8_t *)p < data ||
        (const uint8_t *)(p + n) > data + size)
        abort();
    sink += p[0] + p[n - 1];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct native_model *m;
    char err[512];
    if (native_model_load_llama2c_buffer(data, size, "fuzz.bin", &m, err, sizeof err) != 0)
        return 0;
    const struct native_model_config *c = &m->cfg;
    touch(&m->embed, data, size);
    touch(&m->lm_head, data, size);
    for (int l = 0; l < c->n_layers; l++) {
        const struct native_layer *L = &m->layers[l];
        const struct native_mat *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++)
            touch(mats[i], data, size);
        sink += L->attn_norm[0] + L->attn_norm[c->dim - 1] + L->ffn_norm[0] + L->ffn_norm[c->dim - 1];
    }
    sink += m->final_norm[0] + m->final_norm[c->dim - 1];
    if (c->head_dim * c->n_heads != c->dim)
        abort();
    native_model_free(m);
    return 0;
}
