"""SSD multibox loss and the sampling step, against a plain loop-over-anchors reference."""
import math

import numpy as np
import pytest

from lossc.sampling import hard_negative_mask, random_sample_mask
from lossc.ssd import SSDMultiBoxLoss, ssd_multibox


def reference(cls_pred, box_pred, cls_target, box_target, ratio=3, rho=1.0, lambd=1.0, min_hard=0, ignore_label=None):
    """GluonCV's SSDMultiBoxLoss written as slow loops (one device)."""
    batch, anchors, classes = cls_pred.shape
    num_pos = int((cls_target > 0).sum())
    if num_pos < 1 and min_hard < 1:
        return [0.0] * batch, [0.0] * batch, [0.0] * batch
    norm = max(1.0, num_pos)
    sums, clss, boxes = [], [], []
    for b in range(batch):
        ce = []
        for a in range(anchors):
            row = cls_pred[b, a]
            top = max(row)
            lse = top + math.log(sum(math.exp(v - top) for v in row))
            target = max(int(cls_target[b, a]), 0)
            ce.append(lse - row[target])
        positive = [cls_target[b, a] > 0 for a in range(anchors)]
        ignored = [ignore_label is not None and cls_target[b, a] == ignore_label for a in range(anchors)]
        candidates = [a for a in range(anchors) if not positive[a] and not ignored[a]]
        candidates.sort(key=lambda a: (-ce[a], a))  # hardest first; ties by index (stable)
        quota = max(min_hard, sum(positive) * ratio)
        chosen = set(candidates[: math.ceil(quota)])  # rank < quota keeps ceil(quota)
        cls_loss = sum(ce[a] for a in range(anchors) if positive[a] or a in chosen) / norm
        box_loss = 0.0
        for a in range(anchors):
            if positive[a]:
                for k in range(4):
                    d = abs(box_pred[b, a, k] - box_target[b, a, k])
                    box_loss += d - 0.5 * rho if d > rho else 0.5 / rho * d * d
        box_loss /= norm
        clss.append(cls_loss)
        boxes.append(box_loss)
        sums.append(cls_loss + lambd * box_loss)
    return sums, clss, boxes


def batch_of(rng, batch=3, anchors=25, classes=4, targets=(0, 0, 0, 0, 1, 2, 3, -1)):
    return (rng.normal(0, 2, (batch, anchors, classes + 1)), rng.normal(0, 1, (batch, anchors, 4)),
            rng.choice(targets, (batch, anchors)), rng.normal(0, 1, (batch, anchors, 4)))


@pytest.mark.parametrize("ratio, min_hard", [(3, 0), (0.5, 2), (0.5, 0), (100, 0)])
def test_matches_reference_including_empty_and_ignored_images(ratio, min_hard):
    rng = np.random.default_rng(1)
    cp, bp, ct, bt = batch_of(rng)
    ct[1] = 0  # an image with no positives
    ct[2, :10] = -1  # many ignored (GluonCV ranks them as negatives)
    for ignore_label in (None, -1):
        got = ssd_multibox(cp, bp, ct, bt, ratio, 0.7, 1.5, min_hard, ignore_label)
        want = reference(cp, bp, ct, bt, ratio, 0.7, 1.5, min_hard, ignore_label)
        for g, w in zip(got, want):
            np.testing.assert_allclose(np.concatenate([np.ravel(x) for x in g]), w, rtol=1e-12, atol=1e-15)


def test_all_ignored_image_and_ties():
    rng = np.random.default_rng(2)
    cp, bp, ct, bt = batch_of(rng, batch=2)
    ct[0] = -1
    cp[1] = 0.0  # every anchor of image 1 ties
    ct[1, :3] = 1
    got = ssd_multibox(cp, bp, ct, bt, ignore_label=-1)
    want = reference(cp, bp, ct, bt, ignore_label=-1)
    np.testing.assert_allclose(np.ravel(got[0][0]), want[0], rtol=1e-12)


def test_no_positives_early_return():
    rng = np.random.default_rng(3)
    cp, bp, ct, bt = batch_of(rng)
    ct[:] = 0
    sums, clss, boxes = SSDMultiBoxLoss()(cp, bp, ct, bt)
    assert [float(x) for x in sums + clss + boxes] == [0.0] * 3


def test_two_devices_equal_the_concatenated_batch():
    rng = np.random.default_rng(4)
    cp, bp, ct, bt = batch_of(rng, batch=4)
    loss = SSDMultiBoxLoss(negative_mining_ratio=2)
    whole = loss(cp, bp, ct, bt)
    split = loss([cp[:1], cp[1:]], [bp[:1], bp[1:]], [ct[:1], ct[1:]], [bt[:1], bt[1:]])
    for w, s in zip(whole, split):
        np.testing.assert_allclose(np.concatenate(s), w[0], rtol=1e-13)


def test_gradients_match_finite_differences_with_the_mask_frozen():
    rng = np.random.default_rng(5)
    cp, bp, ct, bt = batch_of(rng, batch=2, anchors=12)
    loss = SSDMultiBoxLoss(rho=0.5, lambd=2.0)
    _, [(d_cls, d_box)] = loss.value_and_grad(cp, bp, ct, bt)
    total = lambda c, b: sum(float(np.sum(x)) for x in loss(c, b, ct, bt)[0])  # noqa: E731
    h = 1e-6
    for index in [(0, 0, 0), (1, 3, 2), (0, 7, 4)]:
        plus, minus = cp.copy(), cp.copy()
        plus[index] += h
        minus[index] -= h
        assert d_cls[index] == pytest.approx((total(plus, bp) - total(minus, bp)) / (2 * h), rel=1e-5, abs=1e-9)
    for index in [(0, 1, 0), (1, 5, 3)]:
        plus, minus = bp.copy(), bp.copy()
        plus[index] += h
        minus[index] -= h
        assert d_box[index] == pytest.approx((total(cp, plus) - total(cp, minus)) / (2 * h), rel=1e-5, abs=1e-9)


BAD = [
    (lambda c, b, t, x: (c[:, :-1], b, t, x), "cls_pred must be"),
    (lambda c, b, t, x: (c, b[..., :3], t, x), "box_pred and box_target must be"),
    (lambda c, b, t, x: (c, b, np.where(t > 0, 9, t), x), "cls_target has class 9"),
    (lambda c, b, t, x: ([c, c], [b], [t, t], [x, x]), "lists differ in length"),
]


@pytest.mark.parametrize("mangle, message", BAD, ids=[m for _, m in BAD])
def test_bad_input(mangle, message):
    with pytest.raises(ValueError, match=message):
        SSDMultiBoxLoss()(*mangle(*batch_of(np.random.default_rng(6))))


def test_hard_negative_mask_and_random_sampler():
    loss = np.array([[0.1, 0.9, 0.5, 0.9, 0.2, 0.0]])
    positive = np.array([[True, False, False, False, False, False]])
    np.testing.assert_array_equal(hard_negative_mask(loss, positive, 2), [[False, True, False, True, False, False]])
    np.testing.assert_array_equal(hard_negative_mask(loss, positive, 10).sum(), 5)  # more than available
    ignore = np.array([[False, True, False, False, False, False]])
    np.testing.assert_array_equal(hard_negative_mask(loss, positive, 2, ignore), [[False, False, True, True, False, False]])
    labels = np.array([1] * 30 + [0] * 100 + [-1] * 20)
    mask = random_sample_mask(labels, num=64, pos_fraction=0.25, seed=7)
    assert (mask & (labels > 0)).sum() == 16 and (mask & (labels == 0)).sum() == 48 and not (mask & (labels < 0)).any()
    np.testing.assert_array_equal(mask, random_sample_mask(labels, num=64, pos_fraction=0.25, seed=7))
    capped = random_sample_mask(labels, num=64, pos_fraction=0.25, neg_pos_ub=1, seed=7)
    assert (capped & (labels == 0)).sum() == 16
