"""Values and gradients of every element-wise loss vs independent oracles.

Oracles: handwritten 50-digit mpmath formulas (tests/references.py), mpmath.diff for the
gradients, central finite differences through our own forward, and PyTorch on the CPU.
"""
import importlib

import numpy as np
import pytest

from references import REFERENCES, grad, value

from lossc.compiler.ir import variant_module_name

RNG_SEED = 20261124


def kernel(key):
    name, variant = key
    return importlib.import_module(f"lossc.generated.numpy.{variant_module_name(name, dict(variant))}")


def sample(key, n, rng):
    """Random (pred, label) points that suit the loss, away from its kinks."""
    name, variant = key
    variant = dict(variant)
    pred = rng.normal(0, 4, n)
    if name in ("hinge", "squared_hinge") or (name == "logistic" and variant["label_format"] == "signed"):
        label = rng.choice([-1.0, 1.0], n)
    elif name == "poisson_nll":
        label = rng.choice([0.0, 0.5, 1.0, 2.0, 5.0, 40.0], n)
        if not variant["from_logits"]:
            pred = rng.uniform(0.05, 20, n)
    elif name == "focal_dense" and variant["from_logits"]:
        pred, label = rng.uniform(0.01, 0.99, n), rng.choice([0.0, 1.0, 0.3], n)
    elif name == "sigmoid_bce" and variant["from_sigmoid"]:
        pred, label = rng.uniform(0.01, 0.99, n), rng.uniform(0, 1, n)
    elif name in ("l1", "l2", "mse", "huber"):
        label = rng.normal(0, 4, n)
    else:
        label = rng.choice([0.0, 1.0, 0.3], n)
    return pred, label


KEYS = sorted(REFERENCES, key=str)


def test_every_spec_variant_has_a_reference():
    import json
    from pathlib import Path

    import lossc.generated

    folder = Path(lossc.generated.__file__).parent / "losses"
    built = {(m["name"], tuple(v["values"].items())) for p in folder.glob("*.json")
             for m in [json.loads(p.read_text())] for v in m["variants"] if not m["class_axis"]}
    assert built == set(REFERENCES)


@pytest.mark.parametrize("key", KEYS, ids=str)
def test_values_and_gradients_match_mpmath(key):
    rng = np.random.default_rng(RNG_SEED)
    pred, label = sample(key, 40, rng)
    module = kernel(key)
    loss, (dpred,) = module.forward_backward(pred, label)
    np.testing.assert_allclose(module.forward(pred, label), loss, rtol=1e-15)
    # GluonCV's mode computes log(min(p + eps, 1)) naively: near p = 1 that log cancels by design.
    rel = 1e-9 if dict(key[1]).get("mode") == "gluoncv" else 1e-12
    for i in range(len(pred)):
        want = float(value(key, pred[i], label[i]))
        assert loss[i] == pytest.approx(want, rel=rel, abs=1e-300), (pred[i], label[i])
        want_grad = float(grad(key, pred[i], label[i]))
        assert dpred[i] == pytest.approx(want_grad, rel=max(rel, 1e-10), abs=1e-14), (pred[i], label[i])


@pytest.mark.parametrize("key", KEYS, ids=str)
def test_gradients_match_central_finite_differences(key):
    rng = np.random.default_rng(RNG_SEED + 1)
    pred, label = sample(key, 200, rng)
    module = kernel(key)
    _, (dpred,) = module.forward_backward(pred, label)
    h = 1e-6 * np.maximum(1.0, np.abs(pred))
    numeric = (module.forward(pred + h, label) - module.forward(pred - h, label)) / (2 * h)
    np.testing.assert_allclose(dpred, numeric, rtol=1e-5, atol=1e-7)


EXTREME_LOGITS = np.array([-1e4, -1e3, -100.0, -40.0, -1e-8, 0.0, 1e-8, 40.0, 100.0, 1e3, 1e4])
LOGIT_KEYS = [k for k in KEYS if k[0] in ("sigmoid_bce", "sigmoid_focal", "logistic", "focal_dense")
              and k != ("sigmoid_bce", (("from_sigmoid", True),)) and dict(k[1]).get("from_logits") is not True
              and dict(k[1]).get("mode") != "gluoncv"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("key", LOGIT_KEYS, ids=str)
def test_extreme_logits_stay_finite_and_accurate(key, dtype):
    labels = np.array([0.0, 1.0, 0.3] if key[0] != "logistic" or dict(key[1])["label_format"] == "binary" else [-1.0, 1.0])
    pred, label = [a.ravel().astype(dtype) for a in np.meshgrid(EXTREME_LOGITS, labels)]
    loss, (dpred,) = kernel(key).forward_backward(pred, label)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(dpred))
    rel = 4e-6 if dtype == np.float32 else 1e-12
    tiny = float(np.finfo(dtype).tiny)
    for i in range(len(pred)):
        want, want_grad = float(value(key, pred[i], label[i])), float(grad(key, pred[i], label[i]))
        assert loss[i] == pytest.approx(want, rel=rel, abs=tiny)
        assert dpred[i] == pytest.approx(want_grad, rel=rel, abs=tiny)


def test_bce_gradient_at_logit_zero_is_sigmoid_minus_label():
    # MXNet 1.9's SigmoidBCELoss returns 0 here and Paddle 3.3's BCE-with-logits −0.5 for y = 0.
    module = kernel(("sigmoid_bce", (("from_sigmoid", False),)))
    labels = np.array([0.0, 1.0, 0.3])
    _, (dpred,) = module.forward_backward(np.zeros(3), labels)
    assert dpred[0] == 0.5 and dpred[1] == -0.5
    assert dpred[2] == pytest.approx(0.2, rel=1e-15)


def test_bce_gradient_keeps_digits_for_positive_label_at_large_logit():
    # σ(x) − y would give 0 at x = 40 (and lose all digits well before): the derived form
    # (1 − y)·σ(x) − y·σ(−x) keeps full relative accuracy.
    module = kernel(("sigmoid_bce", (("from_sigmoid", False),)))
    x = np.array([20.0, 40.0, 100.0, 700.0])
    _, (dpred,) = module.forward_backward(x, np.ones(4))
    np.testing.assert_allclose(dpred, -1 / (1 + np.exp(x)), rtol=1e-14)
    assert np.all(dpred < 0)


def test_poisson_full_is_finite_for_zero_target():
    # MXNet's compute_full multiplies log(0)·0 = NaN by the mask and returns NaN.
    for from_logits in (True, False):
        module = kernel(("poisson_nll", (("from_logits", from_logits), ("compute_full", True))))
        pred = np.array([0.5, 1.0, 3.0])
        loss, (dpred,) = module.forward_backward(pred, np.zeros(3))
        assert np.all(np.isfinite(loss)) and np.all(np.isfinite(dpred))
        np.testing.assert_allclose(loss, np.exp(pred) if from_logits else pred, rtol=1e-15)


def test_bce_from_probabilities_is_finite_at_zero_and_one():
    module = kernel(("sigmoid_bce", (("from_sigmoid", True),)))
    p, y = np.array([0.0, 1.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0, 0.0])
    loss, (dpred,) = module.forward_backward(p, y)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(dpred))
    # Perfect predictions: −log(1 + eps) ≈ −eps (absolute accuracy; relative is limited by 1 + eps).
    np.testing.assert_allclose(loss[:2], [-1e-12, -1e-12], atol=1e-16)
    # Confidently wrong: −log(eps). At p = 1 the kernel forms eps − p before log1p, so the
    # rounding of eps − 1 (1e-16 absolute) costs ~1e-6 relative of this clipping value.
    np.testing.assert_allclose(loss[2:], [-np.log(1e-12)] * 2, rtol=2e-6)


@pytest.mark.parametrize("key", KEYS, ids=str)
def test_dtype_is_preserved_and_float16_computes_in_float32(key):
    rng = np.random.default_rng(RNG_SEED + 2)
    pred, label = sample(key, 64, rng)
    module = kernel(key)
    for dtype in (np.float16, np.float32, np.float64):
        loss, (dpred,) = module.forward_backward(pred.astype(dtype), label)
        assert loss.dtype == dtype and dpred.dtype == dtype
        assert module.forward(pred.astype(dtype), label).dtype == dtype
    half = pred.astype(np.float16)
    loss16, (d16,) = module.forward_backward(half, label.astype(np.float16))
    loss32, (d32,) = module.forward_backward(half.astype(np.float32), label.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(loss16, loss32.astype(np.float16))
    np.testing.assert_array_equal(d16, d32.astype(np.float16))


def test_chunked_broadcast_and_strided_inputs_match_small_calls():
    module = kernel(("sigmoid_bce", (("from_sigmoid", False),)))
    rng = np.random.default_rng(RNG_SEED + 3)
    pred = rng.normal(0, 3, (5000, 13)).astype(np.float32)
    label = (rng.random((5000, 13)) > 0.5).astype(np.float32)
    pos_weight = rng.uniform(0.5, 3, (1, 13)).astype(np.float32)
    loss, (dpred,) = module.forward_backward(pred, label, pos_weight, grad_output=np.float32(0.5))
    for row in (0, 1234, 4999):
        l_row, (d_row,) = module.forward_backward(pred[row], label[row], pos_weight[0], grad_output=0.5)
        np.testing.assert_array_equal(loss[row], l_row)
        np.testing.assert_array_equal(dpred[row], d_row)
    strided, (dstrided,) = module.forward_backward(pred.T, label.T, pos_weight.T)
    np.testing.assert_array_equal(strided, module.forward(pred, label, pos_weight).T)
    assert module.forward(np.zeros((0, 3)), np.zeros((0, 3))).shape == (0, 3)
    assert module.forward(np.float64(0.0), np.float64(1.0)).shape == ()


def test_kernels_never_write_their_inputs():
    module = kernel(("sigmoid_focal", ()))
    pred = np.linspace(-5, 5, 100000).astype(np.float32)
    label = (np.arange(100000) % 2).astype(np.float32)
    before = pred.copy(), label.copy()
    module.forward_backward(pred, label)
    np.testing.assert_array_equal(pred, before[0])
    np.testing.assert_array_equal(label, before[1])
