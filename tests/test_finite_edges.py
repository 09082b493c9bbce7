"""Numbers that must stay finite, and the last peer semantics.

Probabilities exactly 0 and 1, masked (−inf) logits in every loss over a class axis, and
bad arguments that must be named: each against mpmath, PyTorch or MXNet 1.9.1's formula.
"""
import mpmath
import numpy as np
import pytest

import lossc
from lossc import gluon

DTYPES = [np.float32, np.float64]
NINF = -np.inf


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_on_probabilities_keeps_eps_at_p_equal_one(dtype):
    """MXNet's log(1 − p + eps) at p = 1 is log(eps) ≈ −27.63 in float32 too (eps − p would round to −1)."""
    p = np.array([1.0, 1.0, 0.0, 0.0, 1 - 2.0**-24, 1e-10], dtype)
    y = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 0.0], dtype)
    loss, (grad,) = lossc.get("sigmoid_bce").value_and_grad(p, y, reduction="none", from_sigmoid=True)
    eps = mpmath.mpf(1e-12)
    with mpmath.workdps(50):
        for k in range(len(p)):
            pk, yk = mpmath.mpf(float(p[k])), mpmath.mpf(float(y[k]))
            want = -(yk * mpmath.log(pk + eps) + (1 - yk) * mpmath.log(1 - pk + eps))
            dwant = -(yk / (pk + eps) - (1 - yk) / (1 - pk + eps))
            assert float(loss[k]) == pytest.approx(float(want), rel=5e-6 if dtype == np.float32 else 1e-12, abs=1e-30)
            assert float(grad[k]) == pytest.approx(float(dwant), rel=5e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("mode", ["exact", "gluoncv"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", ["focal", "focal_dense"])
def test_focal_on_exactly_one_hot_probabilities_is_zero(spec, mode, dtype):
    """p = one_hot(label) exactly: the true loss and gradient are 0 (no 0·log 0)."""
    p = np.eye(4, dtype=dtype)[[1, 3, 0]]
    label = np.array([1, 3, 0]) if spec == "focal" else p.copy()
    loss, (grad,) = lossc.get(spec).value_and_grad(p, label, reduction="none", from_logits=True, mode=mode)
    assert np.array_equal(loss, np.zeros_like(loss)) and np.array_equal(grad, np.zeros_like(grad))


def _torch_ce(torch, x, label, **kwargs):
    t = torch.tensor(x, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(t, torch.tensor(label), reduction="none", **kwargs)
    loss.sum().backward()
    return loss.detach().numpy(), t.grad.numpy()


MASKED = np.array([[0.0, 0.0, NINF, 1.5], [3.0, NINF, 1.0, NINF], [NINF, 2.0, -1.0, 0.5], [1e4, NINF, -1e4, 0.0]])
LABELS = np.array([0, 2, 3, 0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_ce_with_masked_logits_matches_torch(dtype, torch):
    weights = np.array([1.0, 2.0, 0.5, 1.5])
    for kwargs, ours in [({}, {}), ({"weight": weights}, {"class_weight": weights, "class_weighted": True}),
                         ({"ignore_index": 2}, {"ignore_index": 2})]:
        torch_kwargs = {k: torch.tensor(v) if k == "weight" else v for k, v in kwargs.items()}
        want, dwant = _torch_ce(torch, MASKED, LABELS, **torch_kwargs)
        loss, (grad,) = lossc.get("softmax_ce").value_and_grad(MASKED.astype(dtype), LABELS, reduction="none", **ours)
        assert np.isfinite(loss).all() and np.isfinite(grad).all()
        tol = 2e-6 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(loss, want, rtol=tol, atol=tol)
        np.testing.assert_allclose(grad, dwant, rtol=tol, atol=tol)
        assert np.all(grad[np.isneginf(MASKED)] == 0)


def _masked_softmax_truth(row):
    with mpmath.workdps(50):
        finite = [mpmath.mpf(v) for v in row if np.isfinite(v)]
        top = max(finite)
        total = mpmath.fsum(mpmath.exp(v - top) for v in finite)
        return [mpmath.mpf(0) if not np.isfinite(v) else mpmath.exp(mpmath.mpf(v) - top) / total for v in row], \
            top + mpmath.log(total)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_class_axis_loss_is_finite_at_masked_logits(dtype):
    """−inf means probability 0: finite losses and gradients, 0 at the masked entries, against mpmath."""
    x = MASKED.astype(dtype)
    dense = np.array([[0.5, 0.5, 0, 0], [0.2, 0, 0.8, 0], [0, 0.3, 0.3, 0.4], [1.0, 0, 0, 0]])
    tol = 5e-6 if dtype == np.float32 else 1e-12
    calls = {
        "softmax_ce": (LABELS, {}),
        "softmax_ce_dense": (dense.astype(dtype), {}),
        "kl_div": (dense.astype(dtype), {"from_logits": False}),
        "softmax_focal": (LABELS, {}),
        "focal": (LABELS, {}),
    }
    for name, (label, kwargs) in calls.items():
        loss, (grad,) = lossc.get(name).value_and_grad(x, label, reduction="none", **kwargs)
        assert np.isfinite(loss).all() and np.isfinite(grad).all(), name
        assert np.all(grad[np.isneginf(MASKED)] == 0), name
    for r, row in enumerate(MASKED):  # the cross-entropies against 50 digits
        probabilities, lse = _masked_softmax_truth(row)
        loss, (grad,) = lossc.get("softmax_ce_dense").value_and_grad(x[r:r + 1], dense[r:r + 1].astype(dtype),
                                                                    reduction="none")
        want = -mpmath.fsum(mpmath.mpf(q) * (mpmath.mpf(v) - lse) for q, v in zip(dense[r], row) if q)
        assert float(loss[0]) == pytest.approx(float(want), rel=tol, abs=tol)
        np.testing.assert_allclose(grad[0], [float(p) - q for p, q in zip(probabilities, dense[r])], rtol=tol, atol=tol)


def test_a_row_masked_everywhere_is_nan_not_a_number_that_looks_right():
    """Documented rule: a row with every logit −inf has no distribution; its loss is NaN."""
    x = np.array([[NINF, NINF, NINF], [0.0, 1.0, 2.0]])
    loss = lossc.get("softmax_ce")(x, np.array([0, 1]), reduction="none")
    assert np.isnan(loss[0]) and np.isfinite(loss[1])


def test_label_smoothing_with_a_masked_class_is_infinite_as_in_torch(torch):
    want, _ = _torch_ce(torch, MASKED[:1], LABELS[:1], label_smoothing=0.1)
    loss = lossc.get("softmax_ce")(MASKED[:1], LABELS[:1], reduction="none", label_smoothing=0.1)
    assert np.isposinf(want[0]) and np.isposinf(loss[0])


@pytest.mark.parametrize("batch_axis", [7, -3, 2])
def test_gluon_batch_axis_out_of_range_is_an_error(batch_axis):
    with pytest.raises(ValueError, match=f"batch_axis {batch_axis} is out of range for an input with 2"):
        gluon.L2Loss(batch_axis=batch_axis)(np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="batch_axis"):
        gluon.SoftmaxCrossEntropyLoss(batch_axis=batch_axis)(np.ones((2, 3)), np.zeros(2))
    with pytest.raises(ValueError, match="batch_axis"):
        gluon.TripletLoss(batch_axis=batch_axis)(np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 3)))


def test_ctc_bad_time_steps_and_blank_are_named():
    pred = np.zeros((2, 0, 5))
    with pytest.raises(ValueError, match="pred has no time steps"):
        lossc.ctc_loss(pred, np.array([[1, 2], [1, -1]]))
    pred = np.zeros((2, 4, 5))
    for blank in (0.7, "x", True, None):
        with pytest.raises(TypeError, match="blank must be an integer class index or 'last'"):
            lossc.ctc_loss(pred, np.array([[1, 2], [1, -1]]), blank=blank)
    assert np.isfinite(lossc.ctc_loss(pred, np.array([[1, 2], [1, -1]]), blank=np.int64(0))).all()


def test_big_endian_inputs_are_converted():
    x = np.linspace(-5, 5, 11)
    y = (x > 0).astype(float)
    want = lossc.get("sigmoid_bce")(x, y, reduction="none")
    got = lossc.get("sigmoid_bce")(x.astype(">f8"), y.astype(">f8"), reduction="none")
    np.testing.assert_array_equal(got, want)
    value, (grad,) = lossc.get("softmax_ce").value_and_grad(np.ones((2, 3), ">f4"), np.array([0, 2], ">i8"))
    assert grad.dtype == np.float32 and np.isfinite(value)


@pytest.mark.parametrize("weight, kind", [("abc", "<U3"), (np.array([1 + 2j, 1]), "complex128"),
                                          (np.array(["a", "b"]), "<U1")])
def test_non_numeric_weights_are_named(weight, kind):
    with pytest.raises(TypeError, match=f"weight must be real numbers.*got dtype {kind}"):
        lossc.get("l2")(np.ones(2), np.zeros(2), weight=weight)


@pytest.mark.parametrize("name, kwargs", [("kl_div", {"from_logits": False}), ("kl_div", {"from_logits": True}),
                                          ("focal", {}), ("softmax_ce_dense", {})])
def test_class_axis_gradients_with_per_element_weights_match_finite_differences(name, kwargs):
    """d Σ w·loss / d pred with a different weight on every element (the incoming gradient of
    an unreduced loss): an element loss over a class axis couples the row, so each weight must
    stay inside the row sums (a regression: kl_div used to take one weight per row)."""
    rng = np.random.default_rng(9)
    x = rng.normal(0, 2, (3, 4))
    label = np.array([0, 3, 1]) if name == "focal" else rng.dirichlet(np.ones(4), 3)
    weight = rng.normal(0, 1, (3, 4)) if name != "softmax_ce_dense" else rng.normal(0, 1, 3)
    loss = lossc.get(name)
    _, (grad,) = loss.value_and_grad(x, label, weight=weight, reduction="sum", **kwargs)
    h = 1e-6
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = h
        numeric = (loss(x + step, label, weight=weight, reduction="sum", **kwargs)
                   - loss(x - step, label, weight=weight, reduction="sum", **kwargs)) / (2 * h)
        assert grad[index] == pytest.approx(numeric, rel=1e-6, abs=1e-8), index
