"""The fast public call of element-wise losses (lossc.kernels.fastpath): the loss summed inside the
native kernel's one pass, the same gradients as the general path, any thread count, and
every call it is not sure of left to the general path."""
import math

import numpy as np
import pytest

import lossc
from lossc.kernels import native
from conftest import random_inputs
from lossc.core.pipeline import Pipeline
from lossc.kernels.fastpath import FastPath

needs_native = pytest.mark.skipif(not native.available(), reason="no C++ compiler for native kernels")
pytestmark = needs_native
ELEMENTWISE = [name for name in lossc.list_losses()
               if lossc.get(name).class_axis is None and not lossc.get(name).pair_inputs]


def _inputs(loss, n, dtype, rng):
    """Arrays a loss accepts: probabilities for from_sigmoid predictions, ±1 / {0, 1} labels."""
    arrays = []
    for spec in loss.inputs:
        if spec["role"] == "prediction":
            arrays.append(rng.normal(0, 3, n))
        elif spec["role"] == "extra":
            arrays.append(rng.random(n) + 0.5)
        else:
            arrays.append((rng.random(n) > 0.4) * 1.0)
    return [a.astype(dtype) for a in arrays]


def _probabilities(name, variant):
    """Whether this variant's prediction is a probability (or a positive rate)."""
    return bool(variant.get("from_sigmoid")) or (name == "focal_dense" and variant.get("from_logits")) \
        or (name == "poisson_nll" and not variant.get("from_logits"))


def _variants(name):
    return [v["values"] for v in lossc.get(name).manifest["variants"]]


@pytest.mark.parametrize("name", ELEMENTWISE)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_fast_call_sums_the_element_losses_and_gives_the_general_gradients(name, dtype):
    loss = lossc.get(name)
    rng = np.random.default_rng(4)
    for variant in _variants(name):
        arrays = _inputs(loss, 100003, dtype, rng)  # not a multiple of the kernels' group or chunk
        if _probabilities(name, variant):
            arrays[0] = (1 / (1 + np.exp(-arrays[0]))).astype(dtype)
        elements = loss(*arrays, reduction="none", **variant)
        for reduction, loss_weight in (("sum", 1.0), ("mean", 1.0), ("mean", 2.5), ("sum", 3)):
            assert loss.fast_path.run(arrays, variant, reduction, loss_weight, True) is not None
            value, grads = loss.value_and_grad(*arrays, reduction=reduction, loss_weight=loss_weight, **variant)
            total = math.fsum(elements.astype(np.float64).tolist())
            expected = (total / elements.size if reduction == "mean" else total) * loss_weight
            assert value.dtype == dtype and value.shape == ()
            assert float(value) == pytest.approx(expected, rel=1e-13 if dtype == np.float64 else 1e-6)
            forward = loss(*arrays, reduction=reduction, loss_weight=loss_weight, **variant)
            np.testing.assert_array_equal(forward, value)
            general = loss.value_and_grad(*arrays, reduction=reduction, loss_weight=loss_weight,
                                          grad_output=np.ones((), dtype), **variant)  # grad_output: the general path
            for fast, slow in zip(grads, general[1]):
                np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_sum_never_depends_on_the_thread_count(dtype, monkeypatch):
    loss = lossc.get("sigmoid_focal")
    x, y = _inputs(loss, 300001, dtype, np.random.default_rng(5))
    results = []
    for threads in (1, 2, 3, 8):
        monkeypatch.setattr(native, "WORKERS", threads)
        value, (grad,) = loss.value_and_grad(x, y, reduction="mean")
        results.append((value.tobytes(), grad.tobytes()))
    assert len(set(results)) == 1


def test_calls_it_is_not_sure_of_take_the_general_path(monkeypatch):
    loss = lossc.get("huber")
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(2, 40, 30))
    fast = loss.fast_path
    assert fast.run((x, y), {}, "sum", 1.0, True) is not None
    for args, kwargs, reduction, loss_weight in [
        ((x, y), {}, "none", 1.0),
        ((x.astype(np.float16), y.astype(np.float16)), {}, "sum", 1.0),
        ((x, y.astype(np.float32)), {}, "sum", 1.0),
        ((x.T, y.T), {}, "sum", 1.0),  # not C-contiguous
        ((x, y[:1]), {}, "sum", 1.0),  # broadcast
        ((x.tolist(), y), {}, "sum", 1.0),
        ((x,), {"label": y}, "sum", 1.0),
        ((x, y), {"unknown": 1.0}, "sum", 1.0),
        ((x, y), {"rho": [1.0]}, "sum", 1.0),
        ((x, y), {}, "sum", np.float64(2.0)),
        ((x, y), {}, "sum", float("nan")),
        ((x[:0], y[:0]), {}, "mean", 1.0),
    ]:
        assert fast.run(args, kwargs, reduction, loss_weight, True) is None
    assert fast.run((x, 1.0), {}, "sum", 1.0, True) is not None  # the label as a number: one value for all
    two_gradients = FastPath(loss)
    two_gradients.differentiable = {0, 1}  # as a spec differentiable in its label: that gradient is a sum
    assert two_gradients.run((x, 1.0), {}, "sum", 1.0, True) is None
    monkeypatch.setenv("LOSSC_NATIVE", "0")
    assert fast.run((x, y), {}, "sum", 1.0, True) is None


def test_inputs_with_defaults_or_given_as_numbers_stay_on_the_fast_path():
    loss = lossc.get("sigmoid_bce")
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=1000), (rng.random(1000) > 0.5) * 1.0
    for args in ((x, y), (x, y, 2.0), (x, y, 2)):
        fast = loss.fast_path.run(args, {}, "mean", 1.0, True)
        assert fast is not None
        full = np.full(1000, args[2] if len(args) > 2 else 1.0)
        general = loss.value_and_grad(x, y, full, reduction="mean", grad_output=np.ones(()))
        assert float(fast[0]) == pytest.approx(float(general[0]), rel=1e-14)
        np.testing.assert_array_equal(fast[1][0], general[1][0])


def test_bad_parameters_raise_the_general_paths_errors():
    loss = lossc.get("huber")
    x = np.ones(10)
    for _ in range(2):  # a value validated once is not cached as valid when it is not
        with pytest.raises(ValueError, match=r"parameter 'rho' must be at least 1e-30 \(no upper limit\)"):
            loss.value_and_grad(x, x, rho=-1.0, reduction="sum")
        with pytest.raises(TypeError, match="parameter 'rho' must be a real number"):
            loss(x, x, rho="1", reduction="sum")
    assert loss(x, x + 1, rho=0.5, reduction="sum") == pytest.approx(10 * (1 - 0.25))


def test_a_non_finite_element_makes_the_sum_non_finite_as_numpy():
    loss = lossc.get("huber")
    x = np.zeros(5000)
    x[1234] = np.nan
    value, (grad,) = loss.value_and_grad(x, np.zeros(5000), reduction="sum")
    assert np.isnan(value) and np.isnan(grad[1234]) and np.isfinite(np.delete(grad, 1234)).all()


ROW_LOSSES = [name for name in lossc.list_losses() if lossc.get(name).manifest["call_shape"] == "row"]


def _row_inputs(loss, variant, rows, classes, dtype, rng):
    """A call's inputs with the classes last: (rows,) row inputs, element inputs of the
    prediction's shape, probabilities where the variant wants them."""
    arrays = random_inputs(loss, rng, (rows, classes))
    for k, spec in enumerate(loss.inputs):
        if spec["per"] == "element" and arrays[k].shape != (rows, classes):
            arrays[k] = np.broadcast_to(arrays[k], (rows, classes)).copy()
        if spec["per"] == "element" or spec["role"] == "prediction":
            arrays[k] = arrays[k].astype(dtype)
    if (loss.name in ("focal", "focal_dense") and variant.get("from_logits")) or \
            (loss.name == "kl_div" and variant.get("from_logits") is False):
        arrays[0] = (1 / (1 + np.exp(-arrays[0]))).astype(dtype)  # probabilities
    return arrays


@pytest.mark.parametrize("name", ROW_LOSSES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_fast_row_call_gives_the_general_paths_bits(name, dtype):
    """Losses over a class axis: the fast call (row kernel with the reduction's factor in its
    pass) returns exactly what binding, laying out and the pipeline return, every reduction."""
    loss = lossc.get(name)
    rng = np.random.default_rng(12)
    for variant in _variants(name):
        arrays = _row_inputs(loss, variant, 37, 203, dtype, rng)  # ragged last group of classes
        for reduction, loss_weight in (("none", 1.0), ("sum", 1.0), ("mean", 2.5), ("sum", 3)):
            for with_grad in (True, False):
                fast = loss.fast_path.run(arrays, dict(variant), reduction, loss_weight, with_grad)
                assert fast is not None
                general = loss.evaluate(loss.bind(tuple(arrays), dict(variant)),
                                        Pipeline(None, reduction, None, loss_weight), with_grad)
                fast, general = (fast, general) if with_grad else ((fast, ()), (general, ()))
                assert fast[0].dtype == general[0].dtype == dtype and fast[0].shape == general[0].shape
                for mine, theirs in zip([fast[0], *fast[1]], [general[0], *general[1]]):
                    np.testing.assert_array_equal(mine, theirs)


def test_row_calls_it_is_not_sure_of_take_the_general_path():
    loss = lossc.get("softmax_ce")
    rng = np.random.default_rng(13)
    x = rng.normal(size=(20, 7))
    labels = rng.integers(0, 7, 20)
    fast = loss.fast_path
    for kwargs in ({}, {"axis": 1}, {"axis": -1}, {"ignore_index": 3}):
        assert fast.run((x, labels), kwargs, "sum", 1.0, True) is not None
    assert fast.run((x, labels.astype(np.float32)), {}, "mean", 1.0, True) is not None
    ignored = labels.copy()
    ignored[4] = -100  # the default ignore_index
    assert fast.run((x, ignored), {}, "mean", 1.0, True) is not None
    for args, kwargs in [
        ((x, labels), {"axis": 0}),
        ((x.T, labels), {"axis": 0}),
        ((np.asfortranarray(x), labels), {}),
        ((x.astype(np.float16), labels), {}),
        ((x[None], labels[None]), {}),  # not (rows, classes)
        ((x, labels[:5]), {}),
        ((x, labels + 7), {}),  # a class index out of range: the general path names it
        ((x, labels - 0.5), {}),  # not a whole index
        ((x, labels, rng.uniform(size=7)), {"class_weighted": True}),  # per-class weights broadcast
        ((x[:0], labels[:0]), {}),
    ]:
        assert fast.run(args, kwargs, "sum", 1.0, True) is None
    with pytest.raises(ValueError, match="class index 9"):
        loss.value_and_grad(x, np.where(labels == labels[0], 9, labels), reduction="sum")
    with pytest.raises(ValueError, match="parameter 'label_smoothing' must be"):  # the same check as the general path's
        fast.run((x, labels), {"label_smoothing": 2.0}, "sum", 1.0, True)
