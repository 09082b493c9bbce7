"""GluonCV's SSDMultiBoxLoss on tensors, in autograd, with the mining on the tensors' device.

The semantics of :mod:`lossc.ssd` (GluonCV 0.10.5): per-anchor softmax cross-entropy and
Huber losses from the lossc ops, hard negatives chosen per image by a stable sort of the
negatives' losses (at most max(min_hard_negatives, ratio × positives)), everything divided
by the number of positives over the whole batch and every list element. The mining mask is
a constant for autograd, as in GluonCV.
"""
import torch

from ..algorithms.ssd import _as_list
from . import get


def hard_negative_mask(loss, positive, ratio, ignored=None, min_hard_negatives=0):
    """The negatives with the highest loss per row, as :func:`lossc.sampling.hard_negative_mask`."""
    excluded = positive if ignored is None else positive | ignored
    key = torch.where(excluded, torch.full_like(loss, float("inf")), -loss.detach())
    rank = torch.argsort(torch.argsort(key, dim=1, stable=True), dim=1, stable=True)
    quota = torch.clamp(positive.sum(dim=1) * ratio, min=min_hard_negatives)[:, None]
    return (rank < quota) & ~excluded


class SSDMultiBoxLoss(torch.nn.Module):
    """GluonCV's SSDMultiBoxLoss(negative_mining_ratio=3, rho=1.0, lambd=1.0, min_hard_negatives=0):
    forward(cls_pred (B, A, C+1), box_pred (B, A, 4), cls_target (B, A), box_target (B, A, 4)),
    each a tensor or a list of them, returns the (sum_losses, cls_losses, box_losses) lists."""

    def __init__(self, negative_mining_ratio=3, rho=1.0, lambd=1.0, min_hard_negatives=0, ignore_label=None):
        super().__init__()
        self.ratio, self.rho, self.lambd = max(0, negative_mining_ratio), float(rho), float(lambd)
        self.min_hard, self.ignore_label = max(0, min_hard_negatives), ignore_label

    def forward(self, cls_pred, box_pred, cls_target, box_target):
        """GluonCV's three lists of per-image losses, one entry per list element."""
        parts = [_as_list(x) for x in (cls_pred, box_pred, cls_target, box_target)]
        if len({len(p) for p in parts}) != 1:
            raise ValueError(f"cls_pred, box_pred, cls_target, box_target lists differ in length: "
                             f"{[len(p) for p in parts]}")
        num_pos = sum(int((ct > 0).sum()) for ct in parts[2])
        if num_pos < 1 and self.min_hard < 1:  # GluonCV's early return
            zeros = [cp.sum() * 0 for cp in parts[0]]
            return list(zeros), list(zeros), list(zeros)
        norm = float(max(1, num_pos))
        ce, huber = get("softmax_ce"), get("huber")
        sums, clss, boxes = [], [], []
        for cp, bp, ct, bt in zip(*parts):
            ignored = ct == self.ignore_label if self.ignore_label is not None else None
            picked = torch.where(ct < 0, 0, ct)  # MXNet's pick clips; ignored anchors are masked below
            positive = ct > 0
            anchor_ce = ce(cp, picked, reduction="none")
            mask = positive | hard_negative_mask(anchor_ce, positive, self.ratio, ignored, self.min_hard)
            cls_loss = (anchor_ce * mask).sum(dim=1) / norm
            box_loss = (huber(bp, bt, rho=self.rho, reduction="none") * positive[..., None]).sum(dim=(1, 2)) / norm
            clss.append(cls_loss)
            boxes.append(box_loss)
            sums.append(cls_loss + self.lambd * box_loss)
        return sums, clss, boxes
