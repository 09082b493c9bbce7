"""SSD multibox loss with hard negative mining (GluonCV semantics).

The per-anchor losses come from the generated kernels (softmax_ce for the classes, huber for
the boxes); only the mining is handwritten (``lossc.sampling.hard_negative_mask``). Inputs
are one array or a list of arrays (GluonCV's one-per-device form): the positives are
counted over the whole batch *and every list element* before normalizing. Gradients treat
the mining mask as a constant.
"""
from ..core.backend import array_module, as_arrays
from ..core.pipeline import Pipeline
from ..core.registry import get
from .sampling import hard_negative_mask


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def ssd_multibox(cls_pred, box_pred, cls_target, box_target, negative_mining_ratio=3, rho=1.0, lambd=1.0,
                 min_hard_negatives=0, ignore_label=None, with_grad=False):
    """(sum_losses, cls_losses, box_losses) lists, plus per-device (d cls_pred, d box_pred) with_grad.

    ignore_label=None reproduces GluonCV: a −1 target is picked as class 0 (MXNet's pick clips)
    and ranked as a negative; ignore_label=-1 truly ignores those anchors.
    """
    parts = [_as_list(x) for x in (cls_pred, box_pred, cls_target, box_target)]
    if len({len(p) for p in parts}) != 1:
        raise ValueError(f"cls_pred, box_pred, cls_target, box_target lists differ in length: {[len(p) for p in parts]}")
    devices = [_check(*as_arrays(*[p[i] for p in parts])) for i in range(len(parts[0]))]
    num_pos = float(sum((ct > 0).sum() for _, _, ct, _ in devices))
    ratio, min_hard = max(0, negative_mining_ratio), max(0, min_hard_negatives)
    if num_pos < 1 and min_hard < 1:  # GluonCV's early return
        zeros = [array_module(cp).zeros((), dtype=cp.dtype) for cp, _, _, _ in devices]
        result = (list(zeros), list(zeros), list(zeros))
        grads = [(array_module(cp).zeros_like(cp), array_module(bp).zeros_like(bp)) for cp, bp, _, _ in devices]
        return result + (grads,) if with_grad else result
    norm = max(1.0, num_pos)
    ce, huber = get("softmax_ce"), get("huber")
    sums, clss, boxes, grads = [], [], [], []
    for cp, bp, ct, bt in devices:
        xp = array_module(cp)
        ignored = (ct == ignore_label) if ignore_label is not None else xp.zeros(ct.shape, bool)
        picked = xp.where(ct < 0, 0, ct)  # MXNet's pick clips; ignored anchors are masked below
        positive = ct > 0
        anchor_ce = ce(cp, picked, reduction="none")
        mask = positive | hard_negative_mask(anchor_ce, positive, ratio, ignored, min_hard)
        weight = (mask / norm).astype(cp.dtype)
        box_weight = (positive[..., None] * (lambd / norm)).astype(bp.dtype)
        cls_loss = ce.evaluate(ce.bind((cp, picked), {}), Pipeline(weight, "sum", None, 1.0, (1,)), with_grad)
        box_loss = huber.evaluate(huber.bind((bp, bt), {"rho": rho}),
                                  Pipeline(xp.broadcast_to(positive[..., None], bp.shape) / norm, "sum", None, 1.0, (1, 2)),
                                  False)
        if with_grad:
            cls_loss, (d_cls,) = cls_loss
            _, (d_box,) = huber.evaluate(huber.bind((bp, bt), {"rho": rho}), Pipeline(box_weight, "sum"), True)
            grads.append((d_cls, d_box))
        clss.append(cls_loss)
        boxes.append(box_loss)
        sums.append(cls_loss + lambd * box_loss)
    return (sums, clss, boxes, grads) if with_grad else (sums, clss, boxes)


def _check(cp, bp, ct, bt):
    if cp.ndim != 3 or ct.shape != cp.shape[:2]:
        raise ValueError(f"cls_pred must be (B, A, C+1) and cls_target (B, A): got {cp.shape} and {ct.shape}")
    if bp.shape != cp.shape[:2] + (4,) or bt.shape != bp.shape:
        raise ValueError(f"box_pred and box_target must be (B, A, 4) matching cls_pred {cp.shape}: got {bp.shape} and {bt.shape}")
    if ct.size and ct.max() >= cp.shape[2]:
        raise ValueError(f"cls_target has class {ct.max()} but cls_pred has {cp.shape[2]} classes (0 = background)")
    if ct.size and ct.min() < -1:
        raise ValueError(f"cls_target values must be ≥ -1 (ignored), got {ct.min()}")
    return cp, bp, ct, bt


class SSDMultiBoxLoss:
    """GluonCV's SSDMultiBoxLoss(negative_mining_ratio=3, rho=1.0, lambd=1.0, min_hard_negatives=0)."""

    def __init__(self, negative_mining_ratio=3, rho=1.0, lambd=1.0, min_hard_negatives=0):
        self._ratio, self._rho, self._lambd, self._min_hard = negative_mining_ratio, rho, lambd, min_hard_negatives

    def __call__(self, cls_pred, box_pred, cls_target, box_target):
        """GluonCV's (sum_losses, cls_losses, box_losses) lists, one entry per device."""
        return ssd_multibox(cls_pred, box_pred, cls_target, box_target, self._ratio, self._rho, self._lambd,
                            self._min_hard)

    def value_and_grad(self, cls_pred, box_pred, cls_target, box_target):
        """((sum, cls, box) lists, [(d cls_pred, d box_pred) per device]) for Σ of every sum_loss."""
        *losses, grads = ssd_multibox(cls_pred, box_pred, cls_target, box_target, self._ratio, self._rho,
                                      self._lambd, self._min_hard, with_grad=True)
        return tuple(losses), grads
