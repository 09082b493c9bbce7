"""CTC's forward–backward as host code: the same log-space recursions as
:func:`lossc.algorithms.ctc.ctc_forward_backward`, one sequence per thread.

Each sequence runs alone on one thread (sequences split over up to ``WORKERS`` threads), so
its loss and gradient depend only on its own inputs, never on the batch or the thread count.
Within a time step the extended-label states are one SIMD loop (α_t needs only α_{t−1}): the
states are padded to whole vectors of ``LANES`` with log 0 (a finite −1e30, as the NumPy
code's NEG) and two pad states sit on each side, so every state goes through the same vector
code and no bounds are tested. log(e^a + e^b + e^c) clips each gap to the maximum at −80
(float32) / −700 (float64), as the NumPy code does.
"""
import ctypes
import functools

import numpy as np

from ..kernels import native
from ..kernels.numpy_runtime import WORKERS

LANES = 16  # states per vector step (padding granularity)

SOURCE = r"""
#include <vector>
namespace {
const long LOSSC_CTC_LANES = LANES_VALUE;

#define LOSSC_CTC_KERNEL(NAME, IN, T, EXP, LOG, LOG1P, FLOOR)                                                     \
struct NAME##_context {                                                                                  \
    const IN* scores; const long* ext; const long* t_len; const long* l_len;                             \
    long batch, classes, width; int with_grad; double* losses; IN* grad;                                 \
};                                                                                                       \
static inline T NAME##_add3(T a, T b, T c)                                                               \
{                                                                                                        \
    const T low_ab = a < b ? a : b, high_ab = a < b ? b : a;                                             \
    const T top = high_ab > c ? high_ab : c;                                                             \
    const T bottom = low_ab < c ? low_ab : c;                                                            \
    const T middle_candidate = high_ab < c ? high_ab : c;                                                \
    const T middle = low_ab > middle_candidate ? low_ab : middle_candidate;                              \
    T g1 = middle - top, g2 = bottom - top;                                                              \
    g1 = g1 > FLOOR ? g1 : FLOOR;                                                                        \
    g2 = g2 > FLOOR ? g2 : FLOOR;                                                                        \
    return top + LOG1P(EXP(g1) + EXP(g2));                                                               \
}                                                                                                        \
static void NAME##_sequence(const NAME##_context& c, long n)                                             \
{                                                                                                        \
    const T NEG = T(-1e30);                                                                              \
    const long steps = c.t_len[n], L = c.l_len[n], S = 2 * L + 1;                                        \
    const long padded = (S + LOSSC_CTC_LANES - 1) / LOSSC_CTC_LANES * LOSSC_CTC_LANES, P = padded + 4;   \
    const long stride = c.batch * c.classes;                                                             \
    const long* ext = c.ext + n * c.width;                                                               \
    std::vector<T> lse(steps), emit(steps * P, NEG), alpha(steps * P, NEG), skip(P, NEG), ahead(P, NEG); \
    for (long t = 0; t < steps; ++t) {                                                                   \
        const IN* x = c.scores + t * stride + n * c.classes;                                              \
        T m = x[0];                                                                                      \
        for (long k = 1; k < c.classes; ++k) m = T(x[k]) > m ? T(x[k]) : m;                              \
        T total = 0;                                                                                     \
        for (long k = 0; k < c.classes; ++k) total += EXP(x[k] - m);                                     \
        lse[t] = m + LOG(total);                                                                         \
        for (long s = 0; s < S; ++s) {                                                                   \
            const T e = x[ext[s]] - lse[t];                                                              \
            emit[t * P + 2 + s] = e > NEG ? e : NEG;                                                     \
        }                                                                                                \
    }                                                                                                    \
    for (long s = 2; s < S; ++s)                                                                         \
        if (ext[s] != ext[0] && ext[s] != ext[s - 2]) skip[2 + s] = 0, ahead[s - 2] = 0;                 \
    double log_likelihood = L == 0 ? 0.0 : -HUGE_VAL;                                                    \
    if (steps > 0) {                                                                                     \
        alpha[2] = emit[2];                                                                              \
        if (S > 1) alpha[3] = emit[3];                                                                   \
        for (long t = 1; t < steps; ++t) {                                                               \
            const T* __restrict prev = &alpha[(t - 1) * P];                                              \
            T* __restrict cur = &alpha[t * P];                                                           \
            const T* __restrict e = &emit[t * P];                                                        \
            const T* __restrict sk = skip.data();                                                        \
            _Pragma("omp simd")                                                                          \
            for (long s = 2; s < 2 + padded; ++s)                                                        \
                cur[s] = NAME##_add3(prev[s], prev[s - 1], prev[s - 2] + sk[s]) + e[s];                  \
        }                                                                                                \
        const T* last = &alpha[(steps - 1) * P + 2];                                                     \
        const double v1 = last[S - 1] < NEG / 2 ? -HUGE_VAL : double(last[S - 1]);                       \
        const double v2 = S < 2 || last[S - 2] < NEG / 2 ? -HUGE_VAL : double(last[S - 2]);              \
        const double top = v1 > v2 ? v1 : v2;                                                            \
        log_likelihood = top == -HUGE_VAL ? -HUGE_VAL : top + std::log(std::exp(v1 - top) + std::exp(v2 - top)); \
    }                                                                                                    \
    c.losses[n] = -log_likelihood;                                                                       \
    if (!c.with_grad) return;                                                                            \
    const double shift = std::isfinite(log_likelihood) ? -log_likelihood : 0.0;                          \
    std::vector<T> beta(2 * P, NEG), gamma(P), occupancy(c.classes);                                     \
    for (long t = steps - 1; t >= 0; --t) {                                                              \
        T* __restrict cur = &beta[(t % 2) * P];                                                          \
        const T* __restrict nxt = &beta[((t + 1) % 2) * P];                                              \
        const T* __restrict e = &emit[t * P];                                                            \
        const T* __restrict ah = ahead.data();                                                           \
        if (t == steps - 1) {                                                                            \
            for (long s = 0; s < P; ++s) cur[s] = NEG;                                                   \
            cur[2 + S - 1] = e[2 + S - 1];                                                               \
            if (S > 1) cur[2 + S - 2] = e[2 + S - 2];                                                    \
        } else {                                                                                         \
            _Pragma("omp simd")                                                                          \
            for (long s = 2; s < 2 + padded; ++s)                                                        \
                cur[s] = NAME##_add3(nxt[s], nxt[s + 1], nxt[s + 2] + ah[s - 2]) + e[s];                 \
        }                                                                                                \
        const T* a = &alpha[t * P];                                                                      \
        T* __restrict g = gamma.data();                                                                  \
        _Pragma("omp simd")                                                                              \
        for (long s = 2; s < 2 + padded; ++s)                                                            \
            g[s] = EXP(a[s] + cur[s] - e[s] + shift);                                                    \
        for (long k = 0; k < c.classes; ++k) occupancy[k] = 0;                                           \
        for (long s = 0; s < S; ++s) occupancy[ext[s]] += gamma[2 + s];                                  \
        const IN* x = c.scores + t * stride + n * c.classes;                                              \
        IN* out = c.grad + t * stride + n * c.classes;                                                    \
        for (long k = 0; k < c.classes; ++k) out[k] = IN(EXP(x[k] - lse[t]) - occupancy[k]);               \
    }                                                                                                    \
}                                                                                                        \
static void NAME##_part(const void* context, long first, long last)                                      \
{                                                                                                        \
    const NAME##_context& c = *static_cast<const NAME##_context*>(context);                              \
    for (long n = first; n < last; ++n) NAME##_sequence(c, n);                                           \
}                                                                                                        \
extern "C" void NAME(const IN* scores, const long* ext, const long* t_len, const long* l_len, long batch,  \
                     long classes, long width, int with_grad, double* losses, IN* grad, int threads)     \
{                                                                                                        \
    const NAME##_context c{scores, ext, t_len, l_len, batch, classes, width, with_grad, losses, grad};    \
    lossc_parallel(NAME##_part, &c, batch, int(batch < threads ? batch : threads));                      \
}

LOSSC_CTC_KERNEL(lossc_ctc_host_f32, float, double, exp, log, log1p, -700.0)
LOSSC_CTC_KERNEL(lossc_ctc_host_f64, double, double, exp, log, log1p, -700.0)
}
""".replace("LANES_VALUE", str(LANES))
KERNELS = {np.dtype(np.float32): "lossc_ctc_host_f32", np.dtype(np.float64): "lossc_ctc_host_f64"}


def available(dtype):
    """Whether the native CTC runs arrays of ``dtype`` here (a compiler, native kernels enabled)."""
    return np.dtype(dtype) in KERNELS and native.available() and _library() is not None


@functools.cache
def _library():
    """The compiled library, built or loaded once per process (not re-hashed on every call)."""
    return native.build_library(native.host_source(SOURCE), "lossc.algorithms.ctc_native")


def ctc_forward_backward_native(scores, ext, t_len, l_len, with_grad=True):
    """(losses (N,) float64, d Σloss / d scores (T, N, C) or None): the native forward–backward
    of ``scores`` (T, N, C) over the extended labels ``ext`` (N, 2·width + 1); time steps past a
    sequence's length get gradient 0, an impossible sequence loss +inf (its gradient is zeroed
    by the caller, as for the NumPy code)."""
    scores = np.ascontiguousarray(scores)
    steps, batch, classes = scores.shape
    ext, t_len, l_len = (np.ascontiguousarray(a, dtype=np.int64) for a in (ext, t_len, l_len))
    losses = np.empty(batch, np.float64)
    grad = np.zeros(scores.shape, scores.dtype) if with_grad else None
    if batch:
        function = getattr(_library(), KERNELS[scores.dtype])
        pointer = ctypes.c_void_p
        function(pointer(scores.ctypes.data), pointer(ext.ctypes.data), pointer(t_len.ctypes.data),
                 pointer(l_len.ctypes.data), ctypes.c_long(batch), ctypes.c_long(classes), ctypes.c_long(ext.shape[1]),
                 ctypes.c_int(int(with_grad)), pointer(losses.ctypes.data),
                 pointer(grad.ctypes.data if with_grad else 0), ctypes.c_int(WORKERS))
    return losses, grad
