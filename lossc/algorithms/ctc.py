"""Connectionist Temporal Classification (CTC) loss: handwritten forward–backward in log space.

CTC is an algorithm, not a formula, so it is not a spec. ``pred`` holds unnormalized scores
(log_softmax is applied inside); labels are zero-based and padded with −1 (a row ends at its
first −1 unless ``label_lengths`` is given); ``pred_lengths`` limits each sequence's time
steps. The loss of a sequence is −log Σ over its alignments; its gradient w.r.t. ``pred`` is
softmax − occupancy, with the occupancy from the α·β posteriors. An impossible alignment
(too few time steps) gives loss +inf and gradient 0, or with ``zero_infinity`` loss 0 (as
PyTorch). Results go through the shared pipeline (weight, reduction, avg_factor, loss_weight).

NumPy arrays run the host-compiled forward–backward (:mod:`lossc.algorithms.ctc_native`,
recursions in double, one sequence per thread) where native kernels can be built, else the
NumPy code below (vectorized over the batch); CuPy arrays run the CUDA kernel (ctc_cuda).
"""
import numbers

import numpy as np

from ..core.backend import array_module
from ..core.pipeline import Pipeline
from . import ctc_native

LAYOUTS = ("NTC", "TNC")
LABEL_LAYOUTS = ("NT", "TN")
NEG_INF = -np.inf


NEG = -1e30  # a finite "log 0" inside the recursions: (−∞) − (−∞) would be NaN


class _LogAdd3:
    """out = log(e^a + e^b + e^c) with SIMD ufuncs into reused buffers.

    NumPy's logaddexp is a scalar loop (~12 ns/element) and float32 gaps beyond ~87 make its
    exp produce subnormals; here the gaps to the max are clipped at the dtype's safe range
    (their terms are below its precision anyway), so everything stays vectorized and normal.
    """

    def __init__(self, shape, dtype):
        self.top, self.gap, self.total = (np.empty(shape, dtype) for _ in range(3))
        self.floor = dtype.type(-80.0 if dtype == np.float32 else -700.0)

    def __call__(self, a, b, c, out):
        top, gap, total = self.top, self.gap, self.total
        np.maximum(a, b, out=top)
        np.maximum(top, c, out=top)
        for index, term in enumerate((a, b, c)):
            np.subtract(term, top, out=gap)
            np.maximum(gap, self.floor, out=gap)
            if index == 0:
                np.exp(gap, out=total)
            else:
                np.exp(gap, out=gap)
                total += gap
        np.log(total, out=total)
        np.add(top, total, out=out)


def _logsumexp(stack, axis=0):
    top = np.max(stack, axis=axis, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0)
    with np.errstate(divide="ignore"):
        return np.squeeze(safe + np.log(np.sum(np.exp(stack - safe), axis=axis, keepdims=True)), axis=axis)


class CTCLoss:
    """CTC with our functional conventions (blank default 0, like PyTorch)."""

    name = "ctc"

    def __call__(self, pred, label, pred_lengths=None, label_lengths=None, *, blank=0, layout="NTC",
                 label_layout="NT", zero_infinity=False, weight=None, reduction="mean", avg_factor=None, loss_weight=1.0):
        """Per-sequence losses through the pipeline ('mean' by default)."""
        return self._run(pred, label, pred_lengths, label_lengths, blank, layout, label_layout, zero_infinity,
                         Pipeline(weight, reduction, avg_factor, loss_weight), False, None)

    def value_and_grad(self, pred, label, pred_lengths=None, label_lengths=None, *, blank=0, layout="NTC",
                       label_layout="NT", zero_infinity=False, weight=None, reduction="mean", avg_factor=None,
                       loss_weight=1.0, grad_output=None):
        """(loss, (d pred,)): the gradient of Σ(loss·grad_output) w.r.t. the unnormalized pred."""
        return self._run(pred, label, pred_lengths, label_lengths, blank, layout, label_layout, zero_infinity,
                         Pipeline(weight, reduction, avg_factor, loss_weight), True, grad_output)

    def _run(self, pred, label, pred_lengths, label_lengths, blank, layout, label_layout, zero_infinity,
             pipeline, with_grad, grad_output):
        xp = array_module(pred)
        scores, labels, t_len, l_len, blank = _validate(xp, pred, label, pred_lengths, label_lengths, blank, layout,
                                                        label_layout)
        if xp is np and ctc_native.available(scores.dtype):
            losses, grad = ctc_native.ctc_forward_backward_native(scores, extended_labels(labels, blank), t_len, l_len,
                                                                  with_grad)
        elif xp is np:
            losses, grad = ctc_forward_backward(scores, labels, t_len, l_len, blank, with_grad)
        else:
            from .ctc_cuda import ctc_forward_backward_cupy

            losses, grad = ctc_forward_backward_cupy(scores, extended_labels(labels, blank), t_len, l_len, blank,
                                                     with_grad)
        if zero_infinity:
            infinite = xp.isinf(losses)
            losses = xp.where(infinite, 0.0, losses)
            if grad is not None:
                grad[:, infinite, :] = 0.0
        dtype, compute = xp.asarray(pred).dtype, scores.dtype  # float16 computes in float32
        pipeline.check(losses.shape)
        value = pipeline.apply(xp, losses.astype(dtype), compute)
        if not with_grad:
            return value
        upstream = xp.broadcast_to(pipeline.upstream(xp, losses.shape, np.float64, grad_output), losses.shape)
        factor = xp.where(xp.isfinite(losses), upstream, 0.0).astype(compute)  # an impossible sequence: 0
        if layout == "NTC":
            grad, factor = grad.transpose(1, 0, 2), factor[:, None, None]
        else:
            factor = factor[None, :, None]
        scaled = xp.empty(grad.shape, dtype)  # pred's layout, contiguous: one pass scales and casts
        xp.multiply(grad, factor, out=scaled, casting="unsafe")
        return value, (scaled,)


def _host(values):
    """A NumPy copy of labels or lengths (small; CuPy arrays are copied from the device)."""
    return np.asarray(values.get() if hasattr(values, "get") else values)


def _validate(xp, pred, label, pred_lengths, label_lengths, blank, layout, label_layout):
    """(scores (T, N, C) in the computing dtype on pred's device, host labels (N, width), host
    pred and label lengths, blank index), or a ValueError naming the bad argument."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if label_layout not in LABEL_LAYOUTS:
        raise ValueError(f"label_layout must be one of {', '.join(LABEL_LAYOUTS)}, got {label_layout!r}")
    pred = xp.asarray(pred)
    if pred.dtype.kind != "f" or pred.ndim != 3:
        raise TypeError(f"pred must be a 3-D floating-point array ({layout}), got dtype {pred.dtype}, shape {pred.shape}")
    scores = pred.astype(np.float64 if pred.dtype == np.float64 else np.float32)  # float16 computes in float32
    if layout == "NTC":
        scores = scores.transpose(1, 0, 2)
    steps, batch, alphabet = scores.shape
    if steps == 0:
        raise ValueError(f"pred has no time steps (shape {pred.shape}): CTC needs at least one")
    if not (isinstance(blank, str) and blank == "last") and (
            isinstance(blank, (bool, np.bool_)) or not isinstance(blank, (numbers.Integral, np.integer))):
        raise TypeError(f"blank must be an integer class index or 'last', got {blank!r}")
    blank = alphabet - 1 if isinstance(blank, str) else int(blank)
    if not 0 <= blank < alphabet:
        raise ValueError(f"blank must be an index in [0, {alphabet}), got {blank}")
    labels = _host(label)
    if labels.ndim != 2:
        raise ValueError(f"label must be 2-D ({label_layout}), got shape {labels.shape}")
    if label_layout == "TN":
        labels = labels.T
    if labels.shape[0] != batch:
        raise ValueError(f"label has {labels.shape[0]} sequences but pred has {batch}")
    if labels.dtype.kind == "f" and not np.all(np.floor(labels) == labels):
        raise ValueError("label must hold integer class indices")
    labels = labels.astype(np.int64)
    width = labels.shape[1]
    bad = (labels < -1) | (labels >= alphabet) | (labels == blank)
    if bad.any():
        raise ValueError(f"label value {labels[bad][0]} is invalid: expected class indices in [0, {alphabet}) "
                         f"other than the blank {blank}, or -1 as padding")
    if label_lengths is None:
        padded = labels == -1
        l_len = np.where(padded.any(axis=1), padded.argmax(axis=1), width)
    else:
        l_len = _lengths(label_lengths, batch, width, "label_lengths")
    t_len = np.full(batch, steps) if pred_lengths is None else _lengths(pred_lengths, batch, steps, "pred_lengths")
    for n in range(batch):
        if (labels[n, :l_len[n]] < 0).any():
            raise ValueError(f"label row {n} has padding (-1) inside its first {l_len[n]} entries")
    return scores, labels, t_len, l_len, blank


def _lengths(values, batch, limit, name):
    values = _host(values)
    if values.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {values.shape}")
    if values.dtype.kind == "f" and not np.all(np.floor(values) == values):
        raise ValueError(f"{name} must hold integers")
    values = values.astype(np.int64)
    if (values < 0).any() or (values > limit).any():
        raise ValueError(f"{name} must lie in [0, {limit}], got {values.min()}..{values.max()}")
    return values


def extended_labels(labels, blank):
    """(N, 2·width + 1): blank, l1, blank, l2, …, blank (padding −1 becomes blank)."""
    ext = np.full((labels.shape[0], 2 * labels.shape[1] + 1), blank, dtype=np.int64)
    ext[:, 1::2] = np.where(labels >= 0, labels, blank)
    return ext


def ctc_forward_backward(scores, labels, t_len, l_len, blank, with_grad=True):
    """Losses (batch,) and, with_grad, d Σloss / d scores (T, N, C), in scores' dtype.

    α and β are vectorized over the batch and the extended label (blank, l1, blank, …, blank),
    looping over time only.
    """
    steps, batch, alphabet = scores.shape
    logp = scores - _logsumexp(scores, axis=2)[:, :, None]
    extended_len = 2 * l_len + 1
    ext = extended_labels(labels, blank)
    width = ext.shape[1]
    positions = np.arange(width)[None, :]
    valid = positions < extended_len[:, None]
    skip = np.zeros((batch, width), dtype=bool)  # s − 2 → s allowed: a label differing from two back
    skip[:, 2:] = (ext[:, 2:] != blank) & (ext[:, 2:] != ext[:, :-2])
    dtype = scores.dtype
    emit = logp[:, np.arange(batch)[:, None], ext]  # (T, N, S): log p_t of each extended label
    np.maximum(emit, NEG, out=emit)
    emit[:, ~valid] = NEG
    add3 = _LogAdd3((batch, width), dtype)
    alpha = np.full((steps, batch, width), NEG, dtype=dtype)
    if steps:
        alpha[0, :, 0] = emit[0, :, 0]
        alpha[0, :, 1] = np.where(extended_len > 1, emit[0, :, 1], NEG)
    one_back = np.full((batch, width), NEG, dtype=dtype)
    two_back = np.full((batch, width), NEG, dtype=dtype)
    skip_penalty = np.where(skip, 0.0, NEG).astype(dtype)  # adding NEG forbids a move
    for t in range(1, steps):  # α_t(s) = log(e^α(s) + e^α(s−1) + e^α(s−2) where allowed) + emission
        previous, current = alpha[t - 1], alpha[t]
        one_back[:, 1:] = previous[:, :-1]
        np.add(skip_penalty[:, 2:], previous[:, :-2], out=two_back[:, 2:])
        add3(previous, one_back, two_back, current)
        current += emit[t]
    last_t = np.maximum(t_len - 1, 0)
    rows = np.arange(batch)
    final = alpha[last_t, rows].astype(np.float64)  # (N, S)
    final[final < NEG / 2] = NEG_INF
    end = np.stack([np.take_along_axis(final, (extended_len - 1)[:, None], 1)[:, 0],
                    np.where(extended_len > 1, np.take_along_axis(final, np.maximum(extended_len - 2, 0)[:, None], 1)[:, 0], NEG_INF)])
    log_likelihood = np.where(t_len > 0, _logsumexp(end, axis=0), np.where(l_len == 0, 0.0, NEG_INF))
    losses = -log_likelihood
    if not with_grad:
        return losses, None
    beta = np.full((steps, batch, width), NEG, dtype=dtype)
    init = np.full((batch, width), NEG, dtype=dtype)  # a sequence's last step: the two end states
    init[rows, extended_len - 1] = 0.0
    has_two = extended_len > 1
    init[rows[has_two], (extended_len - 2)[has_two]] = 0.0
    skip_ahead = np.zeros((batch, width), dtype=bool)  # s + 2 → s allowed where s + 2 may skip
    skip_ahead[:, :-2] = skip[:, 2:]
    ahead_penalty = np.where(skip_ahead, 0.0, NEG).astype(dtype)
    recursed = np.full((batch, width), NEG, dtype=dtype)
    one_back.fill(NEG)
    two_back.fill(NEG)
    for t in range(steps - 1, -1, -1):
        recursed.fill(NEG)
        if t + 1 < steps:
            nxt = beta[t + 1]
            one_back[:, :-1] = nxt[:, 1:]
            np.add(ahead_penalty[:, :-2], nxt[:, 2:], out=two_back[:, :-2])
            add3(nxt, one_back, two_back, recursed)
        current = beta[t]
        np.copyto(current, recursed)
        ending = t == last_t
        if ending.any():
            current[ending] = init[ending]
        current += emit[t]
        current[t >= t_len] = NEG
    # γ_t(s) = exp(α + β − emission + loss); unreachable states sit near NEG, so exp gives 0.
    # Infeasible sequences (loss +inf) use 0 here; their gradients are zeroed by the caller.
    posterior = alpha
    posterior += beta
    posterior -= emit
    posterior += np.where(np.isfinite(losses), losses, 0.0).astype(dtype)[None, :, None]
    np.exp(posterior, out=posterior)
    one_hot = ((ext[:, :, None] == np.arange(alphabet)[None, None, :]) & valid[:, :, None]).astype(dtype)
    occupancy = np.matmul(posterior.transpose(1, 0, 2), one_hot).transpose(1, 0, 2)  # Σ_s over each class
    in_time = (np.arange(steps)[:, None] < t_len[None, :])[:, :, None]
    grad = np.where(in_time, np.exp(logp) - occupancy, 0.0)
    return losses, grad


ctc_loss = CTCLoss()
