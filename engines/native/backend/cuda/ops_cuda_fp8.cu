/* ops_cuda_fp8.cu: matmul rows over F8_E4M3 weights with 128x128 block
 * scales (DeepSeek-V3's checkpoint format) on the GPU; cuda_fp8_matmul of
 * cuda_internal.h, which ops_cuda.cu's matmul calls for every FP8 weight.
 *
 * The math, for output row r and token t:
 *   y[t][r] (+)= sum_c e4m3(w[r][c]) * scale[r / 128][c / 128] * x[t][c]
 * with x and y float32 rows (x[t * cols + c], y[t * rows + r]).
 *
 * The kernel is cuda_rows.cuh's row-dot, which fixes the order of every
 * output's operations (16-column chains, 32 lane classes with the block
 * scale folded per chain, a butterfly at the end): a token gets the same
 * bits at batch 1 and inside any batch, and a row gets them at any row
 * tile. At batch 1..8 it is a GEMV: each lane streams 16 weight bytes per
 * row per chunk with one 16-byte load, decodes them with integer ops (no
 * table), and the warp shares each activation load across 4 rows. Larger
 * batches run as grid.y tiles of 8 tokens over the same rows; the FP8 bytes
 * of a row tile then come from L2 after the first tile.
 *
 * Accuracy: weights decode exactly and everything accumulates in float32,
 * so the result is the CPU's to float rounding (test_backend_ops compares at
 * the CPU's own tolerance). There is no tensor-core path yet:
 * cuda_fp8_exact exists for one (an sm_90a kernel that quantizes the
 * activations to FP8 too, compared at an FP8 tolerance); today every value
 * selects this exact path.
 *
 * Threads: called by the thread that drives the backend; kernels go on
 * cb->stream and nothing here waits.
 */
#include "engines/native/backend/cuda/cuda_rows.cuh"

int cuda_fp8_exact = 1;

/* One launch shape: R rows per warp, T tokens per tile. R shares each
 * activation load between rows; R x T sums and chains must stay in
 * registers, so the 8-token tile takes 2 rows. */
template <int DT, int R, int T>
static cudaError_t rows_plain_shape(rows_plain_args a, bool vec, cudaStream_t s)
{
    const int64_t per_cta = (int64_t)ROWS_WARPS * R;
    const int max_y = 65535;
    for (int t = 0; t < a.n; t += max_y * T) {
        const int tiles = (a.n - t + T - 1) / T;
        const dim3 grid((unsigned)((a.rows + per_cta - 1) / per_cta),
                        (unsigned)(tiles < max_y ? tiles : max_y));
        a.t_base = t;
        if (vec)
            rows_plain_kernel<DT, R, T, true><<<grid, ROWS_WARPS * 32, 0, s>>>(a);
        else
            rows_plain_kernel<DT, R, T, false><<<grid, ROWS_WARPS * 32, 0, s>>>(a);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
            return e;
    }
    return cudaSuccess;
}

template <int DT>
static cudaError_t rows_plain_launch(const rows_plain_args &a, cudaStream_t s)
{
    const bool vec = rows_vec_ok(a.w.data, a.K, a.x, a.x_stride);
    if (a.n == 1)
        return rows_plain_shape<DT, 4, 1>(a, vec, s);
    if (a.n == 2)
        return rows_plain_shape<DT, 4, 2>(a, vec, s);
    if (a.n <= 4)
        return rows_plain_shape<DT, 4, 4>(a, vec, s);
    return rows_plain_shape<DT, 2, 8>(a, vec, s);
}

cudaError_t cuda_rows_plain(enum native_dtype dt, const struct rows_plain_args *a, cudaStream_t s)
{
    if (a->n <= 0 || a->rows <= 0)
        return cudaSuccess;
    switch (dt) {
    case NATIVE_F32:
        return rows_plain_launch<NATIVE_F32>(*a, s);
    case NATIVE_F16:
        return rows_plain_launch<NATIVE_F16>(*a, s);
    case NATIVE_BF16:
        return rows_plain_launch<NATIVE_BF16>(*a, s);
    case NATIVE_F8_E4M3:
        return rows_plain_launch<NATIVE_F8_E4M3>(*a, s);
    }
    return cudaErrorInvalidValue;
}

void cuda_fp8_matmul(struct cuda_backend *cb, int n, const float *x, const struct native_mat *w,
                     float *y, int accumulate)
{
    if (n <= 0 || w->rows <= 0)
        return;
    if (w->dtype != NATIVE_F8_E4M3 || !w->scale || w->cols <= 0) {
        cuda_report(cb, cudaErrorInvalidValue, "cuda_fp8_matmul: not an F8_E4M3 weight with scales",
                    __FILE__, __LINE__);
        return;
    }
    cuda_enter(cb);
    rows_plain_args a;
    a.w.data = w->data;
    a.w.scale = w->scale;
    a.rows = w->rows;
    a.K = w->cols;
    a.x = x;
    a.x_stride = w->cols;
    a.xi = NULL;
    a.y = y;
    a.y_stride = w->rows;
    a.n = n;
    a.t_base = 0;
    a.accumulate = accumulate;
    cudaError_t e = rows_plain_launch<NATIVE_F8_E4M3>(a, cb->stream);
    if (e != cudaSuccess)
        cuda_report(cb, e, "cuda_fp8_matmul launch", __FILE__, __LINE__);
}
