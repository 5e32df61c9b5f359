/* dense.cc: ops_cuda.cu's dense kernels (GEMV in every dtype, vector and
 * any-alignment paths and fused weight sets; the SIMT tile GEMM; rmsnorm;
 * rope in both layouts; swiglu, embed, gather; kv_store in both layouts;
 * paged attention with its token tiles, head chunks, 256-position
 * splits and combine) run unchanged on the CPU through the emulation of
 * CUDA's execution model in tests/backend/cuda_emu/emu.h, against references
 * in double; and a token's attention output is checked to be the same bits
 * alone as in its batch, the GEMV's the same bits on both paths. run.sh
 * beside this file extracts the kernels and builds it. A check of the
 * kernels' logic (indexing, tiling, barriers, shuffles), not of nvcc's code
 * or the GPU's memory model. Seen to fail with one of the eight slices of
 * the attention dot product left out. */
#include "shim.h"
#include <vector>
#include <random>
#include "kernels.inc"

static std::mt19937 rng(7);
static float ur() { return std::uniform_real_distribution<float>(-1, 1)(rng); }
static int fails = 0;
static void check(const char *what, const float *got, const double *ref, size_t n, double tol)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) { num += (got[i] - ref[i]) * (got[i] - ref[i]); den += ref[i] * ref[i]; }
    double e = den > 0 ? sqrt(num / den) : sqrt(num);
    bool ok = e <= tol && std::isfinite(e);
    printf("%-60s err %.3g %s\n", what, e, ok ? "ok" : "FAIL");
    if (!ok) fails++;
}
template <typename F> static void launch3(dim3 g, dim3 b, size_t smem, F fn)
{
    for (unsigned z = 0; z < g.z; z++)
        emu_run(dim3(g.x, g.y), b, smem, std::function<void()>([=]() { blockIdx.z = z; fn(); }));
}

/* GEMV: dtypes, vec and any, NT 1..8, fused sets */
static void test_gemv(int dt, int cols, int n, int n_w)
{
    std::vector<std::vector<uint16_t>> w16(n_w);
    std::vector<std::vector<float>> w32(n_w);
    int rows[4] = {37, 8, 13, 5};
    std::vector<float> x((size_t)n * cols);
    for (auto &v : x) v = ur();
    gemv_set a; memset(&a, 0, sizeof(a));
    a.n_w = n_w; a.dt = dt; a.cols = cols; a.x = x.data(); a.accumulate = 0;
    std::vector<std::vector<float>> y(n_w), yany(n_w);
    for (int j = 0; j < n_w; j++) {
        size_t ne = (size_t)rows[j] * cols;
        w32[j].resize(ne); w16[j].resize(ne);
        for (size_t i = 0; i < ne; i++) {
            float f = ur();
            w16[j][i] = dt == NATIVE_BF16 ? dtype_f32_to_bf16(f) : dtype_f32_to_f16(f);
            w32[j][i] = dt == NATIVE_F32 ? f : cuda_load_w(w16[j].data(), (native_dtype)dt, i);
        }
        a.w[j] = dt == NATIVE_F32 ? (const void *)w32[j].data() : (const void *)w16[j].data();
        a.rows[j] = rows[j];
        a.first_block[j + 1] = a.first_block[j] + (rows[j] + GEMV_WARPS - 1) / GEMV_WARPS;
        y[j].assign((size_t)n * rows[j], 0); yany[j].assign((size_t)n * rows[j], 0);
    }
    for (int pass = 0; pass < 2; pass++) {
        for (int j = 0; j < n_w; j++) a.y[j] = pass ? yany[j].data() : y[j].data();
        dim3 g(a.first_block[n_w]), b(GEMV_WARPS * 32);
        if (pass == 1 || cols % 8) {
            switch (n) { case 1: emu_run(g, b, 0, [=]() { gemv_any_kernel<1>(a); }); break;
                         case 3: emu_run(g, b, 0, [=]() { gemv_any_kernel<3>(a); }); break;
                         default: emu_run(g, b, 0, [=]() { gemv_any_kernel<8>(a); }); break; }
        } else if (dt == NATIVE_BF16) {
            switch (n) { case 1: emu_run(g, b, 0, [=]() { gemv_vec_kernel<1, NATIVE_BF16>(a); }); break;
                         case 3: emu_run(g, b, 0, [=]() { gemv_vec_kernel<3, NATIVE_BF16>(a); }); break;
                         default: emu_run(g, b, 0, [=]() { gemv_vec_kernel<8, NATIVE_BF16>(a); }); break; }
        } else if (dt == NATIVE_F16) {
            switch (n) { case 1: emu_run(g, b, 0, [=]() { gemv_vec_kernel<1, NATIVE_F16>(a); }); break;
                         case 3: emu_run(g, b, 0, [=]() { gemv_vec_kernel<3, NATIVE_F16>(a); }); break;
                         default: emu_run(g, b, 0, [=]() { gemv_vec_kernel<8, NATIVE_F16>(a); }); break; }
        } else {
            switch (n) { case 1: emu_run(g, b, 0, [=]() { gemv_vec_kernel<1, NATIVE_F32>(a); }); break;
                         case 3: emu_run(g, b, 0, [=]() { gemv_vec_kernel<3, NATIVE_F32>(a); }); break;
                         default: emu_run(g, b, 0, [=]() { gemv_vec_kernel<8, NATIVE_F32>(a); }); break; }
        }
    }
    for (int j = 0; j < n_w; j++) {
        std::vector<double> ref((size_t)n * rows[j]);
        for (int t = 0; t < n; t++) for (int r = 0; r < rows[j]; r++) {
            double s = 0; for (int c = 0; c < cols; c++) s += (double)w32[j][(size_t)r * cols + c] * x[(size_t)t * cols + c];
            ref[(size_t)t * rows[j] + r] = s; }
        char what[128]; snprintf(what, sizeof what, "gemv dt=%d cols=%d n=%d n_w=%d w%d", dt, cols, n, n_w, j);
        check(what, y[j].data(), ref.data(), ref.size(), 1e-6);
        bool same = memcmp(y[j].data(), yany[j].data(), y[j].size() * 4) == 0;
        printf("  vec == any bits: %s\n", same ? "yes" : "NO");
        if (!same) fails++;
    }
}

/* kv_store + attention over a paged dense cache */
static void test_attn(int H, int G, int hd, std::vector<int> first, std::vector<int> count)
{
    const int NS = first.size(), D = G * hd, BS = 16;
    std::vector<std::vector<int32_t>> tables(NS);
    int nb_total = 0;
    for (int s = 0; s < NS; s++) nb_total += (first[s] + count[s] + BS - 1) / BS;
    int pool = nb_total + 5, k = 0;
    std::vector<int32_t> block_off(NS + 1, 0), blocks;
    for (int s = 0; s < NS; s++) {
        int nb = (first[s] + count[s] + BS - 1) / BS;
        for (int i = 0; i < nb; i++, k++) blocks.push_back((k * 37 + 3) % pool);
        block_off[s + 1] = block_off[s] + nb;
    }
    const size_t layer_stride = 2 * (size_t)BS * D, block_stride = layer_stride;  /* 1 layer */
    std::vector<float> kvd((size_t)pool * block_stride, 12345.0f);
    std::vector<std::vector<float>> K(NS), V(NS);
    for (int s = 0; s < NS; s++) {
        K[s].resize((size_t)(first[s] + count[s]) * D); V[s].resize(K[s].size());
        for (auto &v : K[s])
            v = ur();
        for (auto &v : V[s])
            v = ur();
    }
    /* store every position with one kv_store launch (all tokens, history and now) */
    std::vector<int32_t> pos, seq; std::vector<float> ka, va;
    for (int s = 0; s < NS; s++) for (int p = 0; p < first[s] + count[s]; p++) {
        pos.push_back(p); seq.push_back(s);
        ka.insert(ka.end(), K[s].begin() + (size_t)p * D, K[s].begin() + (size_t)(p + 1) * D);
        va.insert(va.end(), V[s].begin() + (size_t)p * D, V[s].begin() + (size_t)(p + 1) * D);
    }
    {
        float *data = kvd.data(); const int32_t *pp = pos.data(), *sp = seq.data(), *bo = block_off.data(), *bl = blocks.data();
        const float *ap = ka.data(), *vp = va.data();
        emu_run(dim3((D + 255) / 256, pos.size()), dim3(256), 0, [=]() {
            kv_store_kernel(data, block_stride, 0, pool, 0, D, 0, 0, pp, sp, bo, bl, ap, D, vp, D); });
    }
    /* this step */
    std::vector<int32_t> npos, nseq;
    for (int s = 0; s < NS; s++) for (int i = 0; i < count[s]; i++) { npos.push_back(first[s] + i); nseq.push_back(s); }
    const int n = npos.size();
    std::vector<float> q((size_t)n * H * hd); for (auto &v : q) v = ur();
    const int rep = H / G, n_chunks = (rep + ATT_MAX_ROWS - 1) / ATT_MAX_ROWS;
    const int per_tile = rep >= ATT_MAX_ROWS ? 1 : ATT_MAX_ROWS / rep;
    int max_pos = 0; for (int p : npos) max_pos = std::max(max_pos, p + 1);
    const int max_splits = (max_pos + ATT_SPLIT - 1) / ATT_SPLIT;
    std::vector<int32_t> tiles;
    for (int t = 0; t < n; t++) {
        if (!tiles.empty() && nseq[tiles[tiles.size() - 2]] == nseq[t] && tiles.back() < per_tile) tiles.back()++;
        else { tiles.push_back(t); tiles.push_back(1); }
    }
    std::vector<float> part((size_t)n * H * max_splits * (hd + 2), NAN), out((size_t)n * H * hd, NAN);
    const size_t smem = sizeof(float) * (2 * (size_t)ATT_MAX_ROWS * hd + (ATT_THREADS / 16) * ATT_MAX_ROWS * 16 +
                                         (size_t)ATT_MAX_ROWS * 16 + 3 * ATT_MAX_ROWS);
    {
        float *pt = part.data(); const float *qp = q.data(), *data = kvd.data();
        const int32_t *tl = tiles.data(), *pp = npos.data(), *sp = nseq.data(), *bo = block_off.data(), *bl = blocks.data();
        float scale = 1.0f / sqrtf((float)hd);
        launch3(dim3(tiles.size() / 2, G, n_chunks * max_splits), dim3(ATT_THREADS), smem, [=]() {
            attn_split_kernel(pt, qp, data, block_stride, 0, pool, D, tl, pp, sp, bo, bl, H, G, hd, n_chunks, max_splits, scale); });
        float *op = out.data();
        emu_run(dim3(n * H), dim3(hd < 128 ? 64 : 128), 0, [=]() { attn_combine_kernel(op, pt, pp, H, hd, max_splits); });
    }
    std::vector<double> ref((size_t)n * H * hd, 0);
    for (int t = 0; t < n; t++) for (int h = 0; h < H; h++) {
        int s = nseq[t], g = h / rep, np = npos[t] + 1;
        std::vector<double> sc(np); double m = -INFINITY, sum = 0;
        for (int p = 0; p < np; p++) { double a = 0;
            for (int i = 0; i < hd; i++) a += (double)q[((size_t)t * H + h) * hd + i] * K[s][(size_t)p * D + g * hd + i];
            sc[p] = a / sqrt((double)hd); m = std::max(m, sc[p]); }
        for (int p = 0; p < np; p++) sum += (sc[p] = exp(sc[p] - m));
        for (int p = 0; p < np; p++) for (int i = 0; i < hd; i++)
            ref[((size_t)t * H + h) * hd + i] += sc[p] / sum * V[s][(size_t)p * D + g * hd + i];
    }
    char what[128]; snprintf(what, sizeof what, "attention H=%d G=%d hd=%d n=%d splits=%d tiles=%zu", H, G, hd, n, max_splits, tiles.size() / 2);
    check(what, out.data(), ref.data(), ref.size(), 1e-6);
    /* the same tokens one at a time: bit-identical rows */
    int same = 1;
    for (int t = 0; t < n && same; t++) {
        std::vector<float> p1((size_t)1 * H * max_splits * (hd + 2)), o1((size_t)H * hd);
        int32_t tl1[2] = {0, 1}; int32_t pp1 = npos[t], sp1 = nseq[t];
        float *pt = p1.data(); const float *qp = q.data() + (size_t)t * H * hd, *data = kvd.data();
        const int32_t *bo = block_off.data(), *bl = blocks.data(); const int32_t *tlp = tl1, *ppp = &pp1, *spp = &sp1;
        float scale = 1.0f / sqrtf((float)hd);
        launch3(dim3(1, G, n_chunks * max_splits), dim3(ATT_THREADS), smem, [=]() {
            attn_split_kernel(pt, qp, data, block_stride, 0, pool, D, tlp, ppp, spp, bo, bl, H, G, hd, n_chunks, max_splits, scale); });
        float *op = o1.data();
        emu_run(dim3(H), dim3(hd < 128 ? 64 : 128), 0, [=]() { attn_combine_kernel(op, pt, ppp, H, hd, max_splits); });
        same = memcmp(o1.data(), out.data() + (size_t)t * H * hd, o1.size() * 4) == 0;
    }
    printf("  alone == in batch bits: %s\n", same ? "yes" : "NO");
    if (!same) fails++;
}

static void test_rms_rope()
{
    const int n = 3, dim = 70, stride = 80;
    std::vector<float> x(n * stride), w(dim), y(n * stride);
    for (auto &v : x)
        v = ur();
    for (auto &v : w)
        v = ur();
    y = x;
    { float *yp = y.data(); const float *xp = x.data(), *wp = w.data();
      emu_run(dim3(n), dim3(128), 0, [=]() { rmsnorm_kernel(yp, xp, wp, dim, stride, 1e-5f); }); }
    std::vector<double> ref(n * stride);
    for (int t = 0; t < n; t++) { double ss = 0; for (int i = 0; i < dim; i++) ss += (double)x[t*stride+i]*x[t*stride+i];
        double inv = 1 / sqrt(ss / dim + 1e-5); for (int i = 0; i < stride; i++) ref[t*stride+i] = i < dim ? x[t*stride+i]*inv*w[i] : x[t*stride+i]; }
    check("rmsnorm strided", y.data(), ref.data(), ref.size(), 1e-6);
    const int H = 4, rd = 16, hs = 24, rs = H * hs + 8, n_pos = 40, half = rd / 2;
    std::vector<float> cs(n_pos * half), sn(n_pos * half);
    for (int p = 0; p < n_pos; p++) for (int i = 0; i < half; i++) { double a = p * pow(10000.0, -2.0 * i / rd); cs[p*half+i] = cos(a); sn[p*half+i] = sin(a); }
    int32_t pos[3] = {0, 7, 39};
    for (int layout = 0; layout < 2; layout++) {
        std::vector<float> v(n * rs); for (auto &e : v) e = ur(); std::vector<float> orig = v;
        { float *vp = v.data(); const float *c = cs.data(), *s = sn.data(); const int32_t *pp = pos;
          emu_run(dim3(1), dim3(256), 0, [=]() { rope_kernel(vp, n, H, hs, rs, pp, c, s, half, n_pos, layout); }); }
        std::vector<double> r2(orig.begin(), orig.end());
        for (int t = 0; t < n; t++) for (int h = 0; h < H; h++) for (int i = 0; i < half; i++) {
            int i0 = layout ? i : 2*i, i1 = layout ? i + half : 2*i+1; const float *o = orig.data() + t*rs + h*hs;
            double c = cs[pos[t]*half+i], s = sn[pos[t]*half+i];
            r2[t*rs+h*hs+i0] = o[i0]*c - o[i1]*s; r2[t*rs+h*hs+i1] = o[i0]*s + o[i1]*c; }
        check(layout ? "rope half" : "rope adjacent", v.data(), r2.data(), r2.size(), 1e-6);
    }
}

/* The SIMT tile GEMM (F16 weights and fallbacks above the GEMV's tokens):
 * ragged rows, columns and tokens over several tiles. */
static void test_simt(int dt, int rows, int cols, int n, int accumulate)
{
    std::vector<uint16_t> w16((size_t)rows * cols);
    std::vector<float> w32((size_t)rows * cols), x((size_t)n * cols), y((size_t)n * rows), y0;
    for (size_t i = 0; i < w32.size(); i++) {
        float f = ur();
        w16[i] = dt == NATIVE_BF16 ? dtype_f32_to_bf16(f) : dtype_f32_to_f16(f);
        w32[i] = dt == NATIVE_F32 ? f : cuda_load_w(w16.data(), (native_dtype)dt, i);
    }
    for (auto &v : x)
        v = ur();
    for (auto &v : y)
        v = ur();
    y0 = y;
    const void *w = dt == NATIVE_F32 ? (const void *)w32.data() : (const void *)w16.data();
    const float *xp = x.data();
    float *yp = y.data();
    emu_run(dim3((rows + TILE_M - 1) / TILE_M, (n + TILE_N - 1) / TILE_N), dim3(256), 0,
            [=]() { gemm_simt_kernel(w, dt, rows, cols, xp, n, yp, accumulate); });
    std::vector<double> ref((size_t)n * rows);
    for (int t = 0; t < n; t++)
        for (int r = 0; r < rows; r++) {
            double acc = accumulate ? y0[(size_t)t * rows + r] : 0;
            for (int c = 0; c < cols; c++)
                acc += (double)w32[(size_t)r * cols + c] * x[(size_t)t * cols + c];
            ref[(size_t)t * rows + r] = acc;
        }
    char what[96];
    snprintf(what, sizeof what, "gemm_simt dt=%d rows=%d cols=%d n=%d acc=%d", dt, rows, cols, n, accumulate);
    check(what, y.data(), ref.data(), ref.size(), 1e-6);
}

/* kv_store into the latent layout: rows [c | k_pe] per position, from
 * strided rows, at the block the table names. */
static void test_kv_latent()
{
    const int L = 40, R = 8, S = L + R + 5, n = 3, pool = 4;
    const size_t block_stride = (size_t)16 * (L + R) * 2;  /* 2 layers */
    std::vector<float> data(pool * block_stride, -7.0f), a((size_t)n * S);
    for (auto &v : a)
        v = ur();
    int32_t pos[3] = {0, 17, 33}, seq[3] = {0, 0, 0}, off[2] = {0, 3}, blocks[3] = {2, 0, 3};
    float *dp = data.data();
    const float *ap = a.data();
    const int32_t *pp = pos, *sp = seq, *op = off, *bp = blocks;
    const size_t layer_off = (size_t)16 * (L + R);   /* layer 1 */
    emu_run(dim3(1, n), dim3(256), 0, [=]() {
        kv_store_kernel(dp, block_stride, layer_off, pool, 1, 0, L, R, pp, sp, op, bp, ap, S, ap + L + 2, S);
    });
    int ok = 1;
    for (int t = 0; t < n; t++) {
        const float *row = data.data() + (size_t)blocks[pos[t] / 16] * block_stride + layer_off +
                           (size_t)(pos[t] % 16) * (L + R);
        for (int i = 0; i < L; i++)
            ok &= row[i] == a[(size_t)t * S + i];
        for (int i = 0; i < R; i++)
            ok &= row[L + i] == a[(size_t)t * S + L + 2 + i];
    }
    size_t written = 0;
    for (float v : data)
        written += v != -7.0f;
    ok &= written == (size_t)n * (L + R);
    printf("%-60s %s\n", "kv_store latent (strided rows, scattered blocks)", ok ? "ok" : "FAIL");
    fails += !ok;
}

/* swiglu, embed and gather: exact elementwise results. */
static void test_small()
{
    const int n = 77;
    std::vector<float> g(n), u(n), h(n);
    for (int i = 0; i < n; i++) {
        g[i] = 8 * ur();
        u[i] = 2 * ur();
    }
    std::vector<double> ref(n);
    for (int i = 0; i < n; i++)
        ref[i] = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
    float *hp = h.data();
    const float *gp = g.data(), *up = u.data();
    emu_run(dim3(1), dim3(64), 0, [=]() { swiglu_kernel(hp, gp, up, n); });
    check("swiglu", h.data(), ref.data(), n, 1e-6);
    const int V = 11, D = 19;
    std::vector<uint16_t> tab(V * D);
    for (auto &v : tab)
        v = dtype_f32_to_bf16(ur());
    int32_t ids[4] = {3, 0, 10, 3};
    std::vector<float> x(4 * D), dst(4 * D);
    float *xp = x.data();
    const uint16_t *tp = tab.data();
    const int32_t *ip = ids;
    emu_run(dim3(1), dim3(64), 0, [=]() { embed_kernel(xp, tp, NATIVE_BF16, D, ip, 4); });
    int ok = 1;
    for (int t = 0; t < 4; t++)
        for (int i = 0; i < D; i++)
            ok &= x[t * D + i] == dtype_bf16_to_f32(tab[ids[t] * D + i]);
    int32_t rows[4] = {2, 0, 0, 3};
    float *dp = dst.data();
    const int32_t *rp = rows;
    emu_run(dim3(1), dim3(64), 0, [=]() { gather_kernel(dp, xp, rp, 4, D); });
    for (int t = 0; t < 4; t++)
        for (int i = 0; i < D; i++)
            ok &= dst[t * D + i] == x[rows[t] * D + i];
    printf("%-60s %s\n", "embed (BF16) and gather", ok ? "ok" : "FAIL");
    fails += !ok;
}

int main()
{
    for (int dt : {NATIVE_F32, NATIVE_F16, NATIVE_BF16})
        for (int cols : {64, 37, 264})
            for (int n : {1, 3, 8})
                test_gemv(dt, cols, n, n == 3 ? 3 : 1);
    test_rms_rope();
    test_simt(NATIVE_F16, 130, 129, 17, 1);
    test_simt(NATIVE_BF16, 64, 64, 64, 0);
    test_simt(NATIVE_F32, 257, 37, 70, 0);
    test_kv_latent();
    test_small();
    test_attn(4, 2, 16, {0, 20}, {5, 1});
    test_attn(8, 2, 128, {590, 511, 256}, {10, 1, 1});
    test_attn(20, 2, 32, {590, 511, 256}, {10, 1, 1});
    test_attn(6, 6, 8, {0, 20}, {5, 1});
    printf("%d failures\n", fails);
    return fails != 0;
}
