"""The shared pipeline and the core API: every combination against plain NumPy, bad input."""
import itertools

import numpy as np
import pytest

import lossc
from lossc.core import backend

EPS32 = float(np.finfo(np.float32).eps)


def huber_reference(pred, label, rho=1.0):
    d = np.abs(label - pred)
    return np.where(d < rho, 0.5 * d * d / rho, d - 0.5 * rho)


def pipeline_reference(elem, weight, reduction, avg_factor, loss_weight):
    """MMDetection's weight_reduce_loss followed by loss_weight, written out."""
    loss = elem * weight if weight is not None else elem
    if avg_factor is None:
        loss = {"none": loss, "mean": loss.mean() if loss.size else np.nan, "sum": loss.sum()}[reduction]
    elif reduction == "mean":
        loss = loss.sum() / (avg_factor + EPS32)
    return loss * loss_weight


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    return rng.normal(0, 2, (6, 5)), rng.normal(0, 2, (6, 5)), rng


WEIGHTS = [None, "full", "row", "scalar"]
COMBOS = [c for c in itertools.product(WEIGHTS, ["none", "mean", "sum"], [None, 7.5], [1.0, 0.3])
          if not (c[1] == "sum" and c[2] is not None)]


def make_weight(kind, rng):
    return {None: None, "full": rng.uniform(0, 2, (6, 5)), "row": rng.uniform(0, 2, (6, 1)), "scalar": np.float64(1.7)}[kind]


@pytest.mark.parametrize("weight_kind, reduction, avg_factor, loss_weight", COMBOS)
def test_every_pipeline_combination_matches_plain_numpy(data, weight_kind, reduction, avg_factor, loss_weight):
    pred, label, rng = data
    weight = make_weight(weight_kind, rng)
    huber = lossc.get("huber")
    kwargs = dict(weight=weight, reduction=reduction, avg_factor=avg_factor, loss_weight=loss_weight, rho=0.8)
    got = huber(pred, label, **kwargs)
    want = pipeline_reference(huber_reference(pred, label, 0.8), weight, reduction, avg_factor, loss_weight)
    np.testing.assert_allclose(got, want, rtol=1e-13)
    value, (grad,) = huber.value_and_grad(pred, label, **kwargs)
    np.testing.assert_allclose(value, want, rtol=1e-13)
    upstream = rng.normal(0, 1, pred.shape) if reduction == "none" else 1.0
    if reduction == "none":
        value, (grad,) = huber.value_and_grad(pred, label, grad_output=upstream, **kwargs)
    h = 1e-6
    numeric = np.zeros_like(pred)
    for index in np.ndindex(pred.shape):
        bumped = [pred.copy(), pred.copy()]
        bumped[0][index] += h
        bumped[1][index] -= h
        f = [np.sum(pipeline_reference(huber_reference(b, label, 0.8), weight, reduction, avg_factor, loss_weight) * upstream)
             for b in bumped]
        numeric[index] = (f[0] - f[1]) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_results_have_the_input_dtype(data):
    pred, label, _ = data
    for dtype in (np.float16, np.float32, np.float64):
        for reduction in ("none", "mean", "sum"):
            value, (grad,) = lossc.get("sigmoid_focal").value_and_grad(pred.astype(dtype), label > 0, reduction=reduction,
                                                                       weight=np.ones((6, 1)), avg_factor=None)
            assert value.dtype == dtype and grad.dtype == dtype


def test_gradient_of_a_broadcast_extra_input_is_summed_to_its_shape(data):
    pred, label, _ = data
    bce = lossc.get("sigmoid_bce")
    loss, (grad,) = bce.value_and_grad(pred[:, :1], (label[:, :1] > 0).astype(float), reduction="sum")
    assert grad.shape == (6, 1)


def test_list_and_get():
    names = lossc.list_losses()
    assert {"l1", "l2", "huber", "hinge", "squared_hinge", "logistic", "sigmoid_bce", "poisson_nll", "sigmoid_focal", "mse"} <= set(names)
    with pytest.raises(KeyError, match="unknown loss 'nope'; known: .*huber"):
        lossc.get("nope")
    assert lossc.get("sigmoid_bce").differentiable == ("pred",)


BAD = [
    (dict(args=(np.zeros((3, 2)), np.zeros((2, 3)))), ValueError, r"'label' has shape \(2, 3\) but the prediction has shape \(3, 2\)"),
    (dict(args=(np.zeros(3, dtype=int), np.zeros(3))), TypeError, "must be a floating-point array, got dtype int64"),
    (dict(args=(np.zeros(3, dtype=complex), np.zeros(3))), TypeError, "floating-point array, got dtype complex128"),
    (dict(args=(np.zeros(3), np.zeros(3)), reduction="avg"), ValueError, "reduction must be one of 'none', 'mean', 'sum', got 'avg'"),
    (dict(args=(np.zeros(3), np.zeros(3)), reduction="sum", avg_factor=2.0), ValueError, "avg_factor can not be used with reduction='sum'"),
    (dict(args=(np.zeros(3), np.zeros(3)), avg_factor=0.0), ValueError, "avg_factor must be positive, got 0.0"),
    (dict(args=(np.zeros(3), np.zeros(3)), avg_factor=-2), ValueError, "avg_factor must be positive"),
    (dict(args=(np.zeros(3), np.zeros(3)), weight=np.ones(4)), ValueError, r"weight of shape \(4,\) does not broadcast to the element loss shape \(3,\)"),
    (dict(args=(np.zeros(3), np.zeros(3)), weight=np.ones((2, 3))), ValueError, "does not broadcast"),
    (dict(args=(np.zeros(3), np.zeros(3)), rhoo=2.0), TypeError, r"unknown argument\(s\) 'rhoo'; inputs: pred, label; parameters: rho"),
    (dict(args=(np.zeros(3), np.zeros(3)), rho=-1.0), ValueError, r"parameter 'rho' must be at least 1e-30 \(no upper limit\), got -1.0"),
    (dict(args=(np.zeros(3), np.zeros(3)), rho="1"), TypeError, "parameter 'rho' must be a real number, got str"),
    (dict(args=(np.zeros(3),)), TypeError, "missing input 'label'"),
]


@pytest.mark.parametrize("case, error, message", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_is_a_clear_error(case, error, message):
    case = dict(case)
    args = case.pop("args")
    with pytest.raises(error, match=message):
        lossc.get("huber")(*args, **case)


def test_bad_choice_and_flag():
    with pytest.raises(ValueError, match="'label_format' must be one of 'signed', 'binary', got 'sign'"):
        lossc.get("logistic")(np.zeros(2), np.zeros(2), label_format="sign")
    with pytest.raises(TypeError, match="'from_sigmoid' must be True or False"):
        lossc.get("sigmoid_bce")(np.zeros(2), np.zeros(2), from_sigmoid="yes")


def test_empty_batch():
    huber = lossc.get("huber")
    empty = np.zeros((0, 4))
    assert huber(empty, empty, reduction="none").shape == (0, 4)
    assert huber(empty, empty, reduction="sum") == 0.0
    with pytest.warns(RuntimeWarning):
        assert np.isnan(huber(empty, empty, reduction="mean"))  # as np.mean of an empty array
    value, (grad,) = huber.value_and_grad(empty, empty, reduction="sum")
    assert value == 0.0 and grad.shape == (0, 4)


def test_nothing_is_modified_in_place(data):
    pred, label, rng = data
    weight = rng.uniform(0, 1, (6, 1))
    grad_output = rng.normal(0, 1, pred.shape)
    copies = [a.copy() for a in (pred, label, weight, grad_output)]
    focal = lossc.get("sigmoid_focal")
    focal(pred, label > 0, weight=weight, reduction="mean")
    focal.value_and_grad(pred, label > 0, weight=weight, reduction="none", grad_output=grad_output, loss_weight=2.0)
    lossc.get("sigmoid_bce").value_and_grad(pred, label > 0, np.ones((1, 5)), reduction="sum")
    for original, copy in zip((pred, label, weight, grad_output), copies):
        np.testing.assert_array_equal(original, copy)


def test_mixing_array_libraries_is_a_type_error(monkeypatch):
    class FakeCupyArray:
        __module__ = "cupy"

    monkeypatch.setattr(backend, "_cupy_ndarray", lambda: FakeCupyArray)
    with pytest.raises(TypeError, match="numpy.ndarray and cupy.FakeCupyArray"):
        backend.array_module(np.zeros(2), FakeCupyArray())


def test_grad_output_of_the_wrong_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"grad_output of shape \(4,\) does not broadcast to the loss shape \(3,\)"):
        lossc.get("huber").value_and_grad(np.zeros(3), np.zeros(3), reduction="none", grad_output=np.ones(4))
