"""Sampling masks, step 1 of the MMDetection loss pipeline (use them as the pipeline's weight)."""
import numpy as np

from ..core.backend import array_module


def hard_negative_mask(loss, positive_mask, ratio, ignore_mask=None, min_hard_negatives=0):
    """Negatives with the highest loss: per row (image) at most max(min_hard_negatives,
    ratio × positives in the row). Ranking is a stable sort, so ties go to the lower index.
    Ignored entries are never selected. Returns a boolean mask of the chosen negatives."""
    xp = array_module(loss, positive_mask, ignore_mask)
    loss = xp.asarray(loss)
    positive = xp.asarray(positive_mask, dtype=bool)
    if loss.shape != positive.shape or loss.ndim != 2:
        raise ValueError(f"loss and positive_mask must be (rows, anchors) of one shape, got {loss.shape} and {positive.shape}")
    excluded = positive if ignore_mask is None else positive | xp.asarray(ignore_mask, dtype=bool)
    key = xp.where(excluded, xp.inf, -loss)  # ascending: hardest negatives first, excluded last
    kind = "stable" if xp is np else None  # CuPy's argsort is always stable and takes kind=None only
    rank = xp.argsort(xp.argsort(key, axis=1, kind=kind), axis=1, kind=kind)
    quota = xp.maximum(min_hard_negatives, positive.sum(axis=1) * ratio)[:, None]
    return (rank < quota) & ~excluded


def random_sample_mask(labels, num, pos_fraction, neg_pos_ub=-1, seed=None):
    """MMDetection RandomSampler: labels > 0 positive, == 0 negative, < 0 ignored.

    Up to int(num · pos_fraction) positives, then num − (sampled positives) negatives, capped
    at neg_pos_ub · max(1, sampled positives) when neg_pos_ub ≥ 0; each drawn without
    replacement with ``numpy.random.default_rng(seed)`` (reproducible). Returns a boolean mask.
    """
    xp = array_module(labels)
    host = np.asarray(labels.get() if hasattr(labels, "get") else labels).reshape(-1)
    rng = np.random.default_rng(seed)
    positives = np.flatnonzero(host > 0)
    expected = int(num * pos_fraction)
    if positives.size > expected:
        positives = rng.choice(positives, expected, replace=False)
    wanted_negatives = num - positives.size
    if neg_pos_ub >= 0:
        wanted_negatives = min(wanted_negatives, int(neg_pos_ub * max(1, positives.size)))
    negatives = np.flatnonzero(host == 0)
    if negatives.size > wanted_negatives:
        negatives = rng.choice(negatives, max(wanted_negatives, 0), replace=False)
    mask = np.zeros(host.size, dtype=bool)
    mask[positives] = True
    mask[negatives] = True
    return xp.asarray(mask.reshape(np.shape(labels)))
