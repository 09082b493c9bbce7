"""CTC on CuPy: a handwritten RawKernel, one block per sequence, threads over the extended
label (blank, l1, blank, …, blank), in log space like the NumPy version (lossc.algorithms.ctc).

Per sequence n the block runs α forward over its own pred_lengths[n] steps (a barrier per
step, since α_t(s) reads α_{t−1}(s−2..s)), the loss −log(α(S−1) + α(S−2)) in double, then β
backward, then the gradient w.r.t. the unnormalized scores with threads over classes:
softmax − Σ_{s: label(s) = c} exp(α + β − emission + loss). Summation over s runs in a fixed
order, so results are deterministic. α and β live in global memory (T, N, S).
"""
import numpy as np

SOURCE = r"""
#define LOSSC_CTC_NEG (-1e30)

__device__ __forceinline__ float lossc_ctc_exp(float x) { return expf(x); }
__device__ __forceinline__ double lossc_ctc_exp(double x) { return exp(x); }
__device__ __forceinline__ float lossc_ctc_log(float x) { return logf(x); }
__device__ __forceinline__ double lossc_ctc_log(double x) { return log(x); }

// log(e^a + e^b + e^c); "log 0" is the finite LOSSC_CTC_NEG, so no (−∞) − (−∞).
template <typename real>
__device__ __forceinline__ real lossc_ctc_logadd3(real a, real b, real c)
{
    real top = a > b ? a : b;
    top = top > c ? top : c;
    if (top <= (real)(LOSSC_CTC_NEG / 2)) return (real)LOSSC_CTC_NEG;
    return top + lossc_ctc_log(lossc_ctc_exp(a - top) + lossc_ctc_exp(b - top) + lossc_ctc_exp(c - top));
}

template <typename real>
__device__ void lossc_ctc_sequence(const real* logp, const long long* ext, const long long* t_len,
                                   const long long* l_len, int steps, int batch, int alphabet, int width, int blank,
                                   real* alpha, real* beta, double* loss, real* grad, int with_grad)
{
    const int n = blockIdx.x;
    const int tn = (int)t_len[n];
    const int sn = 2 * (int)l_len[n] + 1;
    const long long* label = ext + (long long)n * width;
    const real neg = (real)LOSSC_CTC_NEG;
#define LOSSC_AT(buffer, t, s) buffer[((long long)(t) * batch + n) * width + (s)]
#define LOSSC_LOGP(t, c) logp[((long long)(t) * batch + n) * alphabet + (c)]
#define LOSSC_EMIT(t, s) (LOSSC_LOGP(t, label[s]) > neg ? LOSSC_LOGP(t, label[s]) : neg)
#define LOSSC_SKIP(s) (label[s] != blank && label[s] != label[(s) - 2])
    if (tn > 0) {
        for (int s = threadIdx.x; s < width; s += blockDim.x)
            LOSSC_AT(alpha, 0, s) = (s < sn && s < 2) ? LOSSC_EMIT(0, s) : neg;
    }
    __syncthreads();
    for (int t = 1; t < tn; ++t) {
        for (int s = threadIdx.x; s < width; s += blockDim.x) {
            real value = neg;
            if (s < sn) {
                const real one = s >= 1 ? LOSSC_AT(alpha, t - 1, s - 1) : neg;
                const real two = (s >= 2 && LOSSC_SKIP(s)) ? LOSSC_AT(alpha, t - 1, s - 2) : neg;
                value = lossc_ctc_logadd3(LOSSC_AT(alpha, t - 1, s), one, two) + LOSSC_EMIT(t, s);
            }
            LOSSC_AT(alpha, t, s) = value;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const double infinity = __longlong_as_double(0x7ff0000000000000LL);
        double log_likelihood;
        if (tn == 0) {
            log_likelihood = sn == 1 ? 0.0 : -infinity;
        } else {
            const double last = (double)LOSSC_AT(alpha, tn - 1, sn - 1);
            const double before = sn > 1 ? (double)LOSSC_AT(alpha, tn - 1, sn - 2) : LOSSC_CTC_NEG;
            const double top = last > before ? last : before;
            log_likelihood = top <= LOSSC_CTC_NEG / 2 ? -infinity : top + log(exp(last - top) + exp(before - top));
        }
        loss[n] = -log_likelihood;
    }
    __syncthreads();
    if (!with_grad) return;
    for (int t = tn - 1; t >= 0; --t) {
        for (int s = threadIdx.x; s < width; s += blockDim.x) {
            real value = neg;
            if (s < sn) {
                real recursed;
                if (t == tn - 1) {
                    recursed = (s == sn - 1 || s == sn - 2) ? (real)0 : neg;
                } else {
                    const real one = s + 1 < sn ? LOSSC_AT(beta, t + 1, s + 1) : neg;
                    const real two = (s + 2 < sn && LOSSC_SKIP(s + 2)) ? LOSSC_AT(beta, t + 1, s + 2) : neg;
                    recursed = lossc_ctc_logadd3(LOSSC_AT(beta, t + 1, s), one, two);
                }
                value = recursed + LOSSC_EMIT(t, s);
            }
            LOSSC_AT(beta, t, s) = value;
        }
        __syncthreads();
    }
    const double total = loss[n];
    const real shift = (total == total && total - total == 0) ? (real)total : (real)0;  // infeasible: zeroed later
    for (int t = 0; t < steps; ++t) {
        for (int c = threadIdx.x; c < alphabet; c += blockDim.x) {
            real value = 0;
            if (t < tn) {
                real occupancy = 0;
                for (int s = 0; s < sn; ++s)
                    if (label[s] == c)
                        occupancy += lossc_ctc_exp(LOSSC_AT(alpha, t, s) + LOSSC_AT(beta, t, s) - LOSSC_EMIT(t, s) + shift);
                value = lossc_ctc_exp(LOSSC_LOGP(t, c)) - occupancy;
            }
            grad[((long long)t * batch + n) * alphabet + c] = value;
        }
    }
#undef LOSSC_AT
#undef LOSSC_LOGP
#undef LOSSC_EMIT
#undef LOSSC_SKIP
}

#define LOSSC_CTC_KERNEL(name, real)                                                                                  \
    extern "C" __global__ void name(const real* logp, const long long* ext, const long long* t_len,                   \
                                    const long long* l_len, int steps, int batch, int alphabet, int width, int blank, \
                                    real* alpha, real* beta, double* loss, real* grad, int with_grad)                \
    {                                                                                                                 \
        lossc_ctc_sequence<real>(logp, ext, t_len, l_len, steps, batch, alphabet, width, blank, alpha, beta, loss,   \
                                 grad, with_grad);                                                                    \
    }
LOSSC_CTC_KERNEL(lossc_ctc_f32, float)
LOSSC_CTC_KERNEL(lossc_ctc_f64, double)
"""
KERNELS = {"float32": "lossc_ctc_f32", "float64": "lossc_ctc_f64"}
MAX_THREADS = 1024
_module = None


def block_size(width):
    """Threads per block: the extended label length rounded up to a warp, at most 1024."""
    return int(min(MAX_THREADS, max(32, -(-width // 32) * 32)))


def ctc_forward_backward_cupy(scores, ext, t_len, l_len, blank, with_grad=True):
    """Losses (batch,) float64 and, with_grad, d Σloss / d scores (T, N, C) for CuPy ``scores``
    (T, N, C, float32 or float64); ``ext`` (N, S) is the extended label, lengths are (N,)."""
    import cupy

    return run_kernel(cupy, _launch_on_device, scores, ext, t_len, l_len, blank, with_grad)


def run_kernel(xp, launch, scores, ext, t_len, l_len, blank, with_grad):
    """Prepare the kernel's arrays with ``xp`` and ``launch(name, grid, block, arguments)`` it.

    The same preparation runs on the device (CuPy) and in the host harness (NumPy)."""
    steps, batch, alphabet = scores.shape
    width = ext.shape[1]
    top = scores.max(axis=2, keepdims=True)
    logp = xp.ascontiguousarray(scores - (top + xp.log(xp.exp(scores - top).sum(axis=2, keepdims=True))))
    alpha = xp.empty((steps, batch, width), scores.dtype)
    beta = xp.empty((steps, batch, width), scores.dtype) if with_grad else alpha
    loss = xp.empty(batch, np.float64)
    grad = xp.empty((steps, batch, alphabet), scores.dtype) if with_grad else alpha
    arguments = (logp, xp.asarray(ext, np.int64), xp.asarray(t_len, np.int64), xp.asarray(l_len, np.int64),
                 np.int32(steps), np.int32(batch), np.int32(alphabet), np.int32(width), np.int32(blank),
                 alpha, beta, loss, grad, np.int32(bool(with_grad)))
    if batch:
        launch(KERNELS[scores.dtype.name], (batch,), (block_size(width),), arguments)
    return loss, (grad if with_grad else None)


def _launch_on_device(name, grid, block, arguments):
    import cupy

    global _module
    if _module is None:
        _module = cupy.RawModule(code=SOURCE, options=("--std=c++14",))
    _module.get_function(name)(grid, block, arguments)
