"""Native row kernels (lossc.kernels.native_rows): the launch plan of every loss over a class axis
compiled for the host, against the NumPy kernels and 50-digit mpmath at extreme logits."""
import mpmath
import numpy as np
import pytest

import lossc
from conftest import random_inputs
from lossc.kernels import native
from lossc.kernels.native_rows import NativeRowModule

pytestmark = pytest.mark.skipif(not native.available(), reason="no C++ compiler for native kernels")
ROW_LOSSES = [n for n in lossc.list_losses() if lossc.get(n).class_axis and not lossc.get(n).pair_inputs]


def _variants(name):
    return [v["values"] for v in lossc.get(name).manifest["variants"]]


CASES = [(name, variant) for name in ROW_LOSSES for variant in _variants(name)]


def _module(loss, variant):
    return loss.kernels_of(np, variant)


@pytest.mark.parametrize("name, variant", CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_kernels_give_the_numpy_kernels_results(name, variant, dtype, monkeypatch):
    loss = lossc.get(name)
    module = _module(loss, variant)
    assert isinstance(module, NativeRowModule) and module._native_functions() is not None
    arrays = random_inputs(loss, np.random.default_rng(3), (37, 70))  # ragged last group of classes
    arrays[0] = arrays[0].astype(dtype)
    calls, original = [], module._run

    def counted(kind, *rest):
        outputs = original(kind, *rest)
        if outputs is not None:
            calls.append(kind)
        return outputs

    def launched(kernel, arrays, runtime, variant, pipeline, with_grad):  # the fast call's row kernel
        calls.append("forward_backward" if with_grad else "forward")
        return launch(kernel, arrays, runtime, variant, pipeline, with_grad)

    launch = loss.fast_path._launch
    monkeypatch.setattr(module, "_run", counted)
    monkeypatch.setattr(loss.fast_path, "_launch", launched)
    for reduction in ("none", "sum"):
        with np.errstate(all="ignore"):
            ours = loss.value_and_grad(*arrays, reduction=reduction, **variant)
            forward = loss(*arrays, reduction=reduction, **variant)
            with monkeypatch.context() as patch:
                patch.setenv("LOSSC_NATIVE", "0")
                theirs = loss.value_and_grad(*arrays, reduction=reduction, **variant)
        tol = 1e-12 if dtype == np.float64 else 2e-5
        for mine, peer in zip([ours[0], forward, *ours[1]], [theirs[0], theirs[0], *theirs[1]]):
            np.testing.assert_allclose(mine, peer, rtol=tol, atol=tol * max(1.0, np.nanmax(np.abs(peer))))
    assert calls.count("forward_backward") == 2 and calls.count("forward") == 2


def test_softmax_cross_entropy_is_exact_at_extreme_logits():
    """Confident and masked logits (±1e4, −inf) through the native row kernel: exact vs mpmath."""
    loss = lossc.get("softmax_ce")
    x = np.array([[1e4, -1e4, 0.0, 3.0], [-np.inf, 2.0, -np.inf, 1.0], [-1e4, 1e4, 1e4 - 30, 5.0]])
    labels = np.array([0, 3, 2])
    value, (grad,) = loss.value_and_grad(x, labels, reduction="none", label_smoothing=0.1)
    with mpmath.workdps(50):
        for r in range(3):
            row = [mpmath.mpf(v) if np.isfinite(v) else None for v in x[r]]
            finite = [v for v in row if v is not None]
            top = max(finite)
            log_z = top + mpmath.log(sum(mpmath.exp(v - top) for v in finite))
            log_p = [None if v is None else v - log_z for v in row]
            target = [0.0 if v is None else 0.1 / 4 + (0.9 if k == labels[r] else 0.0) for k, v in enumerate(row)]
            truth = -sum(t * lp for t, lp in zip(target, log_p) if lp is not None and t)
            if any(v is None for v in row):  # a masked class with smoothing mass: the loss is infinite
                assert np.isinf(value[r])
                continue
            assert value[r] == pytest.approx(float(truth), rel=1e-13)
            for k in range(4):
                exact = mpmath.exp(log_p[k]) * sum(target) - target[k]
                assert grad[r, k] == pytest.approx(float(exact), rel=1e-12, abs=1e-300)


def test_float16_and_odd_layouts_take_the_numpy_kernels_or_fit_the_strides():
    loss = lossc.get("softmax_ce")
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 9))
    labels = rng.integers(0, 9, 6)
    module = _module(loss, {"from_logits": False, "class_weighted": True})
    weights = rng.random(9) + 0.5
    full = loss.value_and_grad(x, labels, np.broadcast_to(weights, (6, 9)).copy(), class_weighted=True,
                               reduction="none")
    for class_weight in (weights, np.asfortranarray(np.tile(weights, (6, 1))), np.repeat(np.tile(weights, (6, 1)), 2, axis=1)[:, ::2]):
        got = loss.value_and_grad(x, labels, class_weight, class_weighted=True, reduction="none")
        np.testing.assert_array_equal(got[0], full[0])
        np.testing.assert_array_equal(got[1][0], full[1][0])
    assert module._run("forward", (x.astype(np.float16), labels.astype(np.float16)), {}) is None
    half = loss(x.astype(np.float16), labels, reduction="none")
    assert half.dtype == np.float16
