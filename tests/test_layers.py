"""Gluon, MMDetection and Paddle layers against plain-NumPy references of those libraries' code."""
import numpy as np
import pytest

import lossc
from lossc import gluon, paddle


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def softplus(x):
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


@pytest.fixture
def rng():
    return np.random.default_rng(11)


# ---------------------------------------------------------------- gluon
def gluon_reference(elem, sample_weight, weight, batch_axis):
    loss = elem if sample_weight is None else elem * sample_weight
    loss = loss if weight is None else loss * weight
    axes = tuple(a for a in range(loss.ndim) if a != batch_axis)
    return loss.mean(axis=axes)


GLUON_CASES = {
    "L2Loss": (lambda: gluon.L2Loss(), lambda p, y: 0.5 * (y - p) ** 2, "real", 1.0),
    "L1Loss": (lambda: gluon.L1Loss(weight=2.0), lambda p, y: np.abs(y - p), "real", 2.0),
    "HuberLoss": (lambda: gluon.HuberLoss(rho=0.7), lambda p, y: np.where(np.abs(y - p) > 0.7, np.abs(y - p) - 0.35, 0.5 / 0.7 * (y - p) ** 2), "real", None),
    "HingeLoss": (lambda: gluon.HingeLoss(margin=0.5), lambda p, y: np.maximum(0.5 - p * y, 0), "signed", None),
    "SquaredHingeLoss": (lambda: gluon.SquaredHingeLoss(), lambda p, y: np.maximum(1 - p * y, 0) ** 2, "signed", None),
    "LogisticLoss": (lambda: gluon.LogisticLoss(label_format="binary"), lambda p, y: np.maximum(p, 0) - p * y + np.log1p(np.exp(-np.abs(p))), "binary", None),
    "SigmoidBCELoss": (lambda: gluon.SigmoidBCELoss(), lambda p, y: np.maximum(p, 0) - p * y + np.log1p(np.exp(-np.abs(p))), "binary", None),
    "SigmoidBCELoss(from_sigmoid)": (lambda: gluon.SigmoidBCELoss(from_sigmoid=True),
                                     lambda p, y: -(np.log(sigmoid(p) + 1e-12) * y + np.log(1 - sigmoid(p) + 1e-12) * (1 - y)), "binary", None),
}


def gluon_labels(kind, shape, rng):
    return {"real": rng.normal(0, 2, shape), "signed": rng.choice([-1.0, 1.0], shape),
            "binary": rng.choice([0.0, 1.0], shape)}[kind]


@pytest.mark.parametrize("name", sorted(GLUON_CASES))
@pytest.mark.parametrize("batch_axis", [0, 1])
def test_gluon_losses_match_gluon_formulas(name, batch_axis, rng):
    make, elem, kind, weight = GLUON_CASES[name]
    pred = rng.normal(0, 2, (4, 3, 5))
    label = gluon_labels(kind, pred.shape, rng)
    sample_weight = rng.uniform(0, 2, (4, 1, 1) if batch_axis == 0 else (1, 3, 1))
    loss = make()
    x = sigmoid(pred) if "from_sigmoid" in name else pred
    got = loss(x, label, sample_weight)
    want = gluon_reference(elem(pred, label), sample_weight, weight, batch_axis) if batch_axis == 0 else None
    if batch_axis == 1:
        loss = type(loss).__new__(type(loss))
        loss.__dict__.update(make().__dict__, _batch_axis=1)
        got = loss(x, label, sample_weight)
        want = gluon_reference(elem(pred, label), sample_weight, weight, 1)
    assert got.shape == (pred.shape[batch_axis],)
    np.testing.assert_allclose(got, want, rtol=1e-9)
    value, (grad,) = loss.value_and_grad(x, label, sample_weight)
    h = 1e-6
    bumped = np.zeros_like(x)
    bumped.flat[7] = h
    numeric = (loss(x + bumped, label, sample_weight).sum() - loss(x - bumped, label, sample_weight).sum()) / (2 * h)
    assert grad.flat[7] == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_gluon_bce_pos_weight_and_label_reshape(rng):
    pred = rng.normal(0, 2, (8, 3))
    label = rng.choice([0.0, 1.0], 24)  # same size, other shape: gluon reshapes it like pred
    pos_weight = np.array([[1.0, 2.0, 0.5]])
    got = gluon.SigmoidBinaryCrossEntropyLoss()(pred, label, None, pos_weight)
    y = label.reshape(8, 3)
    log_weight = 1 + (pos_weight - 1) * y
    want = (pred - pred * y + log_weight * (np.log1p(np.exp(-np.abs(pred))) + np.maximum(-pred, 0))).mean(axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    with pytest.raises(ValueError, match=r"label of shape \(5,\) does not match pred of shape \(8, 3\)"):
        gluon.L2Loss()(pred, np.zeros(5))


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("compute_full", [True, False])
def test_gluon_poisson_is_one_mean_for_the_batch(rng, from_logits, compute_full):
    pred = rng.uniform(0.1, 3, (6, 4))
    target = rng.choice([0.0, 1.0, 3.0, 8.0], (6, 4))
    loss = gluon.PoissonNLLLoss(from_logits=from_logits, compute_full=compute_full, weight=0.5)
    elem = np.exp(pred) - target * pred if from_logits else pred - target * np.log(pred + 1e-8)
    if compute_full:
        with np.errstate(all="ignore"):
            stirling = target * np.log(target) - target + 0.5 * np.log(2 * target * np.pi)
        elem = elem + np.where(target > 1, stirling, 0)
    got = loss(pred, target)
    assert got.shape == (1,)
    np.testing.assert_allclose(got, [0.5 * elem.mean()], rtol=1e-12)
    value, (grad,) = loss.value_and_grad(pred, target)
    dl = np.exp(pred) - target if from_logits else 1 - target / (pred + 1e-8)
    np.testing.assert_allclose(grad, 0.5 * dl / pred.size, rtol=1e-12)


def test_gluon_constructor_arguments_and_errors():
    assert gluon.L2Loss()._weight == 1.0 and gluon.L1Loss()._weight is None
    assert gluon.SigmoidBCELoss is gluon.SigmoidBinaryCrossEntropyLoss
    with pytest.raises(ValueError, match="label_format can only be signed or binary"):
        gluon.LogisticLoss(label_format="ternary")
    with pytest.raises(ValueError, match="does not broadcast"):
        gluon.L1Loss()(np.zeros(4), np.zeros(4), np.ones((4, 1)))  # MXNet would silently make (4, 4)


# ---------------------------------------------------------------- mmdet
def mmdet_focal_reference(pred, target, weight=None, gamma=2.0, alpha=0.25, reduction="mean", avg_factor=None):
    """mmdet's py_sigmoid_focal_loss + weight_reduce_loss, in NumPy."""
    num_classes = pred.shape[1]
    onehot = np.eye(num_classes + 1)[target][:, :num_classes]
    p = sigmoid(pred)
    pt = (1 - p) * onehot + p * (1 - onehot)
    focal_weight = (alpha * onehot + (1 - alpha) * (1 - onehot)) * pt**gamma
    loss = (np.maximum(pred, 0) - pred * onehot + np.log1p(np.exp(-np.abs(pred)))) * focal_weight
    if weight is not None:
        loss = loss * (weight.reshape(-1, 1) if weight.ndim == 1 else weight)
    if avg_factor is None:
        return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]
    eps = float(np.finfo(np.float32).eps)  # torch.finfo(torch.float32).eps is a Python float
    return loss.sum() / (avg_factor + eps) if reduction == "mean" else loss


@pytest.mark.parametrize("reduction, avg_factor", [("mean", None), ("sum", None), ("none", None), ("mean", 12.0)])
def test_mmdet_focal_loss(rng, reduction, avg_factor):
    pred = rng.normal(0, 2, (10, 4))
    target = rng.integers(0, 5, 10)  # 4 = background
    weight = rng.uniform(0, 1, 10)
    loss = lossc.build_loss(dict(type="FocalLoss", use_sigmoid=True, gamma=1.5, alpha=0.3, loss_weight=2.0))
    got = loss(pred, target, weight=weight, avg_factor=avg_factor, reduction_override=reduction)
    want = 2.0 * mmdet_focal_reference(pred, target, weight, 1.5, 0.3, reduction, avg_factor)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    value, (grad,) = loss.value_and_grad(pred, target, weight=weight, avg_factor=avg_factor, reduction_override=reduction)
    h = 1e-6
    e = np.zeros_like(pred)
    e[3, 2] = h
    numeric = (np.sum(loss(pred + e, target, weight, avg_factor, reduction)) - np.sum(loss(pred - e, target, weight, avg_factor, reduction))) / (2 * h)
    assert grad[3, 2] == pytest.approx(numeric, rel=1e-6)


def test_mmdet_cross_entropy_sigmoid_smooth_l1_l1_mse(rng):
    pred = rng.normal(0, 2, (6, 3))
    target = np.array([0, 2, 3, 1, -100, 2])  # 3 = background, -100 ignored
    ce = lossc.build_loss(dict(type="CrossEntropyLoss", use_sigmoid=True, class_weight=[1.0, 2.0, 0.5], loss_weight=1.5))
    onehot = np.eye(4)[np.where(target == -100, 3, target)][:, :3]
    valid = (target != -100)[:, None]
    pw = np.array([1.0, 2.0, 0.5])
    elem = pw * onehot * softplus(-pred) + (1 - onehot) * softplus(pred)
    np.testing.assert_allclose(ce(pred, target), 1.5 * (elem * valid).mean(), rtol=1e-12)
    box_pred, box_target = rng.normal(0, 2, (5, 4)), rng.normal(0, 2, (5, 4))
    d = np.abs(box_pred - box_target)
    smooth = np.where(d < 0.5, 0.5 * d * d / 0.5, d - 0.25)
    np.testing.assert_allclose(lossc.build_loss(dict(type="SmoothL1Loss", beta=0.5, reduction="sum"))(box_pred, box_target), smooth.sum())
    np.testing.assert_allclose(lossc.build_loss(dict(type="L1Loss"))(box_pred, box_target, avg_factor=3.0),
                               d.sum() / (3.0 + float(np.finfo(np.float32).eps)))
    np.testing.assert_allclose(lossc.build_loss(dict(type="MSELoss", loss_weight=0.5))(box_pred, box_target),
                               0.5 * ((box_pred - box_target) ** 2).mean())


def test_mmdet_registry_errors_and_spec_names(rng, tmp_path):
    with pytest.raises(KeyError, match="unknown loss type 'FocalLos'; known types: .*FocalLoss.*sigmoid_focal"):
        lossc.build_loss(dict(type="FocalLos"))
    with pytest.raises(TypeError, match=r"FocalLoss got unknown argument\(s\) 'gama'"):
        lossc.build_loss(dict(type="FocalLoss", gama=2.0))
    with pytest.raises(TypeError, match=r"huber got unknown argument\(s\) 'beta'"):
        lossc.build_loss(dict(type="huber", beta=1.0))
    with pytest.raises(ValueError, match="target labels must be in"):
        lossc.build_loss(dict(type="FocalLoss"))(np.zeros((2, 3)), np.array([0, 7]))
    by_name = lossc.build_loss(dict(type="huber", rho=0.5, reduction="sum", loss_weight=3.0))
    a, b = rng.normal(0, 1, 8), rng.normal(0, 1, 8)
    assert by_name(a, b) == pytest.approx(3.0 * lossc.get("huber")(a, b, rho=0.5, reduction="sum"))


# ---------------------------------------------------------------- paddle
def test_paddle_documentation_example():
    logit = np.array([[0.97, 0.91, 0.03], [0.55, 0.43, 0.71]], dtype=np.float32)
    label = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    normalizer = np.array([label.sum()], dtype=np.float32)
    out = paddle.sigmoid_focal_loss(logit, label, normalizer=normalizer)
    assert out.dtype == np.float32
    assert out == pytest.approx(0.65782464, rel=2e-7)


def test_paddle_normalizer_divides_before_reduction(rng):
    logit, label = rng.normal(0, 2, (5, 3)), rng.choice([0.0, 1.0], (5, 3))
    p = sigmoid(logit)
    elem = -label * 0.25 * (1 - p) ** 2 * np.log(p) - (1 - label) * 0.75 * p**2 * np.log(1 - p)
    for normalizer in (np.float64(4.0), np.array([4.0])):
        np.testing.assert_allclose(paddle.sigmoid_focal_loss(logit, label, normalizer, reduction="none"), elem / 4.0, rtol=1e-12)
        np.testing.assert_allclose(paddle.sigmoid_focal_loss(logit, label, normalizer, reduction="mean"), (elem / 4.0).mean(), rtol=1e-12)
    value, (grad,) = paddle.sigmoid_focal_loss.value_and_grad(logit, label, np.array([2.0]))
    assert value == pytest.approx(elem.sum() / 2.0, rel=1e-12) and grad.shape == logit.shape
    with pytest.raises(ValueError, match="zero or one dimension"):
        paddle.sigmoid_focal_loss(logit, label, normalizer=np.ones((1, 1)))
    with pytest.raises(ValueError, match="'reduction' in sigmoid_focal_loss"):
        paddle.sigmoid_focal_loss(logit, label, reduction="avg")


# ---------------------------------------------------------------- gluon, reductions
def log_softmax(x, axis):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


@pytest.mark.parametrize("axis", [-1, 1])
def test_gluon_softmax_ce_sparse_and_dense(rng, axis):
    pred = rng.normal(0, 2, (4, 5, 3))
    classes = pred.shape[axis]
    label = rng.integers(0, classes, (4, 3) if axis == 1 else (4, 5))
    sample_weight = rng.uniform(0, 2, (4, 1, 1))
    loss = gluon.SoftmaxCrossEntropyLoss(axis=axis, weight=0.5)
    logp = log_softmax(pred, axis)
    picked = -np.take_along_axis(logp, np.expand_dims(label, axis), axis=axis)  # gluon's keepdims pick
    want = (picked * sample_weight * 0.5).mean(axis=(1, 2))
    np.testing.assert_allclose(loss(pred, label, sample_weight), want, rtol=1e-12)
    dense = rng.dirichlet(np.ones(classes), (4, 3) if axis == 1 else (4, 5))
    dense = np.moveaxis(dense, -1, axis)
    want = (-(logp * dense).sum(axis=axis, keepdims=True)).mean(axis=(1, 2))
    np.testing.assert_allclose(gluon.SoftmaxCELoss(axis=axis, sparse_label=False)(pred, dense), want, rtol=1e-12)
    value, (grad,) = loss.value_and_grad(pred, label, sample_weight)
    h, e = 1e-6, np.zeros_like(pred)
    e[1, 2, 0] = h
    numeric = (loss(pred + e, label, sample_weight).sum() - loss(pred - e, label, sample_weight).sum()) / (2 * h)
    assert grad[1, 2, 0] == pytest.approx(numeric, rel=1e-6)


def test_gluon_kl_div_sums_like_released_mxnet_1_9_1(rng):
    pred = rng.normal(0, 2, (3, 4, 2))
    label = rng.dirichlet(np.ones(4), (3, 2)).transpose(0, 2, 1)
    label[0, 0, 0] = 0.0
    for from_logits in (True, False):
        logp = pred if from_logits else log_softmax(pred, -1)
        # MXNet 1.9.1, gluon/loss.py: loss = label * (F.log(label + 1e-12) - pred);
        # return F.sum(loss, axis=self._batch_axis, exclude=True)
        elem = label * (np.log(label + 1e-12) - logp)
        got = gluon.KLDivLoss(from_logits=from_logits)(pred, label)
        np.testing.assert_allclose(got, elem.sum(axis=(1, 2)), rtol=1e-10)
        weighted = gluon.KLDivLoss(from_logits=from_logits, weight=0.5, batch_axis=1)(pred, label)
        np.testing.assert_allclose(weighted, 0.5 * elem.sum(axis=(0, 2)), rtol=1e-10)


def test_gluon_triplet_cosine_focal(rng):
    pred, pos, neg = rng.normal(0, 1, (3, 5, 2, 3))
    want = np.maximum(((pos - pred) ** 2).sum((1, 2)) - ((neg - pred) ** 2).sum((1, 2)) + 0.7, 0)
    np.testing.assert_allclose(gluon.TripletLoss(margin=0.7)(pred, pos, neg), want, rtol=1e-12)
    value, grads = gluon.TripletLoss(margin=0.7).value_and_grad(pred, pos, neg)
    assert [g.shape for g in grads] == [pred.shape] * 3
    x1, x2 = rng.normal(0, 1, (2, 6, 4))
    label = np.array([1, -1, 1, -1, 0, 1.0])
    cos = (x1 * x2).sum(-1) / np.maximum(np.linalg.norm(x1, axis=-1) * np.linalg.norm(x2, axis=-1), 1e-12)
    want = np.where(label == 1, 1 - cos, 0) + np.maximum(0, np.where(label == -1, cos - 0.1, 0))
    got = gluon.CosineEmbeddingLoss(margin=0.1)(x1, x2, label)
    assert got.shape == (6, 1)
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-12)
    logits, labels = rng.normal(0, 3, (4, 6)), np.array([0, 5, 2, 7])
    one_hot = np.eye(8)[labels][:, :6]
    p = sigmoid(logits)
    pt = np.where(one_hot > 0, p, 1 - p)
    alpha = np.where(one_hot > 0, 0.25, 0.75)
    elem = -alpha * (1 - pt) ** 2 * np.log(np.minimum(pt + 1e-12, 1))
    np.testing.assert_allclose(gluon.FocalLoss()(logits, labels), elem.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(gluon.FocalLoss(size_average=False)(logits, labels), elem.sum(axis=1), rtol=1e-12)


def test_mmdet_softmax_cross_entropy(rng, torch):
    pred = rng.normal(0, 2, (9, 4))
    target = rng.integers(0, 4, 9)
    target[2] = -100
    weight = rng.uniform(0, 1, 9)
    class_weight = [1.0, 2.0, 0.5, 1.5]
    loss = lossc.build_loss(dict(type="CrossEntropyLoss", class_weight=class_weight, loss_weight=2.0, avg_non_ignore=True))
    elem = torch.nn.functional.cross_entropy(torch.tensor(pred), torch.tensor(target), weight=torch.tensor(class_weight, dtype=torch.float64),
                                             reduction="none", ignore_index=-100).numpy()
    avg = 8.0 + float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(loss(pred, target, weight=weight), 2.0 * (elem * weight).sum() / avg, rtol=1e-12)
    np.testing.assert_allclose(loss(pred, target, reduction_override="none"), 2.0 * elem, rtol=1e-12)


def test_gluon_sdml_matches_mxnet_formula_and_finite_differences(rng):
    x1, x2 = rng.normal(0, 1, (2, 5, 3))
    s = 0.3
    distances = ((x1[:, None, :] - x2[None, :, :]) ** 2).sum(-1)
    labels = np.eye(5) * (1 - s) + (1 - np.eye(5)) * s / 4
    logp = log_softmax(-distances, 1)
    want = (labels * (np.log(labels + 1e-12) - logp)).sum(axis=1)  # MXNet 1.9.1: KLDivLoss sums the row
    loss = gluon.SDMLLoss(smoothing_parameter=s)
    np.testing.assert_allclose(loss(x1, x2), want, rtol=1e-12)
    value, (g1, g2) = loss.value_and_grad(x1, x2)
    h = 1e-6
    for grad, which in ((g1, 0), (g2, 1)):
        for index in [(0, 0), (3, 2)]:
            plus, minus = [x1.copy(), x2.copy()], [x1.copy(), x2.copy()]
            plus[which][index] += h
            minus[which][index] -= h
            numeric = (loss(*plus).sum() - loss(*minus).sum()) / (2 * h)
            assert grad[index] == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_gluon_focal_dense_labels(rng):
    logits, labels = rng.normal(0, 3, (4, 6)), rng.choice([0.0, 0.3, 1.0], (4, 6))
    positive = labels > 0
    p = sigmoid(logits)
    pt = np.where(positive, p, 1 - p)
    alpha = np.where(positive, 0.25, 0.75)
    elem = -alpha * (1 - pt) ** 2 * np.log(np.minimum(pt + 1e-12, 1))
    np.testing.assert_allclose(gluon.FocalLoss(sparse_label=False)(logits, labels), elem.mean(axis=1), rtol=1e-12)
    exact = gluon.FocalLoss(sparse_label=False, mode="exact", size_average=False)(logits, labels)
    np.testing.assert_allclose(exact, (-alpha * (1 - pt) ** 2 * np.log(pt)).sum(axis=1), rtol=1e-12)
