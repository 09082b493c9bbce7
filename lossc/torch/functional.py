"""Drop-ins for ``torch.nn.functional`` (and torchvision's focal loss) on lossc kernels.

Each takes PyTorch's own signature and returns what PyTorch returns, values and gradients,
computed by the generated kernels (one fused pass for loss and gradient). Where lossc is
more accurate than PyTorch (logits of ±1e4 in the focal loss, confident predictions in the
cross-entropy), the difference is lossc being right; the tests check those points against
50-digit mpmath instead of PyTorch.
"""
import torch


_REDUCTIONS = ("none", "mean", "sum")


def _loss(name):
    from . import get

    return get(name)


def _reduction(reduction, size_average=None, reduce=None):
    """PyTorch's reduction argument, including its deprecated size_average/reduce pair."""
    if size_average is not None or reduce is not None:
        reduce = True if reduce is None else reduce
        size_average = True if size_average is None else size_average
        reduction = "none" if not reduce else ("mean" if size_average else "sum")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    return reduction


def _weighted(loss, weight, reduction, *args, **kwargs):
    """``loss(*args, weight=weight, reduction=reduction, **kwargs)``; a weight that requires grad
    multiplies the element loss in torch instead, so it gets its gradient (the element loss)."""
    if weight is None or not (isinstance(weight, torch.Tensor) and weight.requires_grad and torch.is_grad_enabled()):
        return loss(*args, weight=weight, reduction=reduction, **kwargs)
    elements = loss(*args, reduction="none", **kwargs) * weight
    return {"none": elements, "sum": elements.sum(), "mean": elements.mean()}[reduction]


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None, reduction="mean",
                                     pos_weight=None):
    """PyTorch's BCE with logits: −w·[pos_weight·y·log σ(x) + (1 − y)·log(1 − σ(x))], computed
    overflow-free (softplus form); ``weight`` broadcasts to the loss, ``pos_weight`` along the
    class (last) axis."""
    if target.shape != input.shape:
        raise ValueError(f"Target size ({tuple(target.shape)}) must be the same as input size ({tuple(input.shape)})")
    return _loss("sigmoid_bce")(input, target, 1.0 if pos_weight is None else pos_weight, weight=weight,
                                reduction=_reduction(reduction, size_average, reduce))


def smooth_l1_loss(input, target, size_average=None, reduce=None, reduction="mean", beta=1.0):
    """PyTorch's smooth L1: ½d²/β where |d| < β, else |d| − β/2 (β = 0 is the L1 loss)."""
    reduction = _reduction(reduction, size_average, reduce)
    if beta < 0:
        raise ValueError("smooth_l1_loss does not support negative values for beta.")
    if beta == 0:
        return _loss("l1")(input, target, reduction=reduction)
    return _loss("huber")(input, target, rho=float(beta), reduction=reduction)


def huber_loss(input, target, reduction="mean", delta=1.0, weight=None):
    """PyTorch's Huber loss: ½d² where |d| < δ, else δ·(|d| − δ/2) — δ times smooth L1 with β = δ."""
    if delta <= 0:
        raise ValueError("huber_loss does not support non-positive values for delta.")
    if weight is not None and weight.size() != input.size():
        raise ValueError("Weights and input must have the same size.")
    return _weighted(_loss("huber"), weight, _reduction(reduction), input, target, rho=float(delta),
                     loss_weight=float(delta))


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                  label_smoothing=0.0):
    """PyTorch's cross-entropy over the class dimension 1 (0 for a 1-D input): class indices
    (with ``ignore_index``) or class probabilities as targets, class ``weight`` and
    ``label_smoothing``; 'mean' divides by Σ weight[target] over the non-ignored entries for
    indices, by the number of entries for probabilities."""
    reduction = _reduction(reduction, size_average, reduce)
    axis = 0 if input.dim() == 1 else 1
    if target.is_floating_point():
        return _cross_entropy_probabilities(input, target, weight, reduction, axis, float(label_smoothing))
    class_weight = 1.0 if weight is None else weight.to(input.dtype).reshape(
        (-1,) + (1,) * (input.dim() - axis - 1))
    # with nothing ignored PyTorch's mean is lossc's (Σ / rows, 1 / rows folded into the fused pass);
    # otherwise the sum is divided here by the kept targets' weight
    lossc_mean = reduction == "mean" and weight is None and _nothing_ignored(target, ignore_index)
    loss = _loss("softmax_ce")(input, target, class_weight, class_weighted=weight is not None,
                               label_smoothing=float(label_smoothing), ignore_index=int(ignore_index), axis=axis,
                               reduction="sum" if reduction == "mean" and not lossc_mean else reduction)
    if reduction != "mean" or lossc_mean:
        return loss
    kept = target != ignore_index
    if weight is None:
        return loss / kept.sum().to(loss.dtype)
    return loss / (weight.to(loss.dtype)[target.clamp(0, input.shape[axis] - 1)] * kept).sum()


def _nothing_ignored(target, ignore_index):
    """Whether no target is the ignore_index (read where that costs nothing: an eager CPU tensor)."""
    return target.device.type == "cpu" and not torch.compiler.is_compiling() and not bool((target == ignore_index).any())


def _cross_entropy_probabilities(input, target, weight, reduction, axis, label_smoothing):
    """PyTorch's cross-entropy with class probabilities: −Σ_c w_c·y'_c·log softmax(x)_c with
    y' = (1 − ε)·y + ε/C; 'mean' divides by the number of entries (weights or not). The loss is
    linear in the target, so the weighted target w·y' is lossc's dense cross-entropy target."""
    rows = input.numel() // input.shape[axis] if input.dim() else 1
    if weight is not None:
        classes = input.shape[axis]
        smoothed = target * (1 - label_smoothing) + label_smoothing / classes if label_smoothing > 0 else target
        target, label_smoothing = smoothed * weight.to(input.dtype).reshape((-1,) + (1,) * (input.dim() - axis - 1)), 0.0
    loss = _loss("softmax_ce_dense")(input, target, label_smoothing=label_smoothing, axis=axis,
                                     reduction="sum" if reduction == "mean" else reduction)
    return loss / rows if reduction == "mean" else loss


def cosine_embedding_loss(input1, input2, target, margin=0.0, size_average=None, reduce=None, reduction="mean"):
    """PyTorch's cosine embedding loss: 1 − cos for target 1, max(0, cos − margin) for −1, 0
    otherwise, with cos = x1·x2 / √((‖x1‖² + ε)(‖x2‖² + ε)), ε = 1e-12 (PyTorch's EPSILON).
    lossc's cosine_embedding runs on the inputs with one extra feature each, √ε in x1's and 0
    in x2's, then 0 and √ε: their norms are exactly PyTorch's, their dot product unchanged."""
    reduction = _reduction(reduction, size_average, reduce)
    unbatched = input1.dim() == 1
    if unbatched:
        input1, input2, target = input1.unsqueeze(0), input2.unsqueeze(0), target.reshape(1)
    if input1.dim() != 2 or input1.shape != input2.shape:
        raise ValueError(f"cosine_embedding_loss: expected 1-D or 2-D inputs of one shape, got "
                         f"{tuple(input1.shape)} and {tuple(input2.shape)}")
    root = torch.full_like(input1[:, :1], COSINE_EPSILON ** 0.5)
    zero = torch.zeros_like(root)
    padded1, padded2 = torch.cat([input1, root, zero], 1), torch.cat([input2, zero, root], 1)
    loss = _loss("cosine_embedding")(padded1, padded2, target.to(input1.dtype), margin=float(margin),
                                     reduction=reduction)
    return loss[0] if unbatched and reduction == "none" else loss


COSINE_EPSILON = 1e-12


def kl_div(input, target, size_average=None, reduce=None, reduction="mean", log_target=False):
    """PyTorch's KL divergence: input holds log-probabilities; target·(log target − input),
    0 where target is 0; reduction 'batchmean' divides the sum by input.size(0)."""
    if reduction == "batchmean":
        loss = _loss("kl_div")(input, target.exp() if log_target else target, from_logits=True, reduction="sum")
        return loss / (input.shape[0] if input.dim() else 1)
    reduction = _reduction(reduction, size_average, reduce)
    return _loss("kl_div")(input, target.exp() if log_target else target, from_logits=True, reduction=reduction)


def poisson_nll_loss(input, target, log_input=True, full=False, size_average=None, eps=1e-8, reduce=None,
                     reduction="mean"):
    """PyTorch's Poisson NLL: exp(input) − target·input (log_input), else input − target·log(input + eps);
    ``full`` adds the Stirling term target·log target − target + ½·log(2π·target) where target > 1."""
    return _loss("poisson_nll")(input, target, from_logits=bool(log_input), compute_full=bool(full),
                                epsilon=float(eps), reduction=_reduction(reduction, size_average, reduce))


def ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean", zero_infinity=False):
    """PyTorch's CTC loss: log_probs (T, N, C) (or (T, C)), targets (N, S) padded or 1-D concatenated;
    'mean' divides each loss by its target length (at least 1), then averages over the batch.
    The gradient w.r.t. log_probs is PyTorch's (exp(log_probs) − posterior)."""
    from .ops import ctc

    reduction = _reduction(reduction)
    unbatched = log_probs.dim() == 2
    if unbatched:
        log_probs, targets = log_probs.unsqueeze(1), targets.reshape(1, -1)
    batch = log_probs.shape[1]
    input_lengths = torch.as_tensor(input_lengths, device=log_probs.device).reshape(batch).long()
    target_lengths = torch.as_tensor(target_lengths, device=log_probs.device).reshape(batch).long()
    padded = _padded_targets(targets, target_lengths, batch)
    with_grad = torch.is_grad_enabled() and log_probs.requires_grad
    losses = ctc(log_probs, padded, input_lengths, target_lengths, int(blank), bool(zero_infinity), with_grad)[0]
    if reduction == "mean":
        return (losses / target_lengths.clamp(min=1).to(losses.dtype)).mean()
    if reduction == "sum":
        return losses.sum()
    return losses[0] if unbatched else losses


def _padded_targets(targets, target_lengths, batch):
    """(N, S) targets with −1 past each target length (PyTorch allows any padding value)."""
    targets = torch.as_tensor(targets, device=target_lengths.device).long()
    if targets.dim() == 1:  # concatenated
        width = int(target_lengths.max()) if batch else 0
        starts = torch.cumsum(target_lengths, 0) - target_lengths
        index = starts[:, None] + torch.arange(width, device=targets.device)[None, :]
        keep = torch.arange(width, device=targets.device)[None, :] < target_lengths[:, None]
        return torch.where(keep, targets[index.clamp(max=max(targets.numel() - 1, 0))], -1)
    keep = torch.arange(targets.shape[1], device=targets.device)[None, :] < target_lengths[:, None]
    return torch.where(keep, targets, -1)


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss for binary targets: α_t·(1 − p_t)^γ·BCE, with α < 0
    meaning no α weighting; exact at any logit (torchvision overflows to inf/NaN near ±1e4).
    Soft targets follow lossc's formula −y·α(1−p)^γ log p − (1−y)(1−α)p^γ log(1−p)."""
    reduction = _reduction(reduction)
    if alpha < 0:  # no α weighting: α = ½ weighs both terms by ½, so twice that
        return _loss("sigmoid_focal")(inputs, targets, alpha=0.5, gamma=float(gamma), reduction=reduction,
                                      loss_weight=2.0)
    return _loss("sigmoid_focal")(inputs, targets, alpha=float(alpha), gamma=float(gamma), reduction=reduction)

