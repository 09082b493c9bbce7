"""Property tests (Hypothesis): stable losses never give NaN/Inf for finite inputs within ±1e4."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import lossc

LOGITS = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=32)
BINARY = st.sampled_from([0.0, 1.0])

# (loss, label strategy, parameters): every one is finite for every finite input in range
STABLE = [
    ("sigmoid_bce", st.floats(0, 1, width=32), {}),
    ("sigmoid_focal", BINARY, {"gamma": 2.0}),
    ("sigmoid_focal", BINARY, {"gamma": 0.5}),
    ("focal_dense", st.floats(0, 1, width=32), {}),
    ("logistic", st.sampled_from([-1.0, 1.0]), {}),
    ("huber", LOGITS, {"rho": 0.5}),
    ("hinge", st.sampled_from([-1.0, 1.0]), {}),
    ("l1", LOGITS, {}),
]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), case=st.sampled_from(STABLE), dtype=st.sampled_from([np.float32, np.float64]))
def test_elementwise_losses_stay_finite(data, case, dtype):
    name, labels, params = case
    n = data.draw(st.integers(1, 40))
    pred = data.draw(arrays(dtype, n, elements=LOGITS))
    label = data.draw(arrays(dtype, n, elements=labels))
    loss, (grad,) = lossc.get(name).value_and_grad(pred, label, reduction="none", **params)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad)), (name, pred, label)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float64]), smoothing=st.sampled_from([0.0, 0.1]))
def test_softmax_ce_stays_finite_and_its_gradient_rows_sum_to_zero(data, dtype, smoothing):
    rows, classes = data.draw(st.integers(1, 6)), data.draw(st.integers(2, 9))
    pred = data.draw(arrays(dtype, (rows, classes), elements=LOGITS))
    label = data.draw(arrays(np.int64, rows, elements=st.integers(0, classes - 1)))
    loss, (grad,) = lossc.get("softmax_ce").value_and_grad(pred, label, reduction="none", label_smoothing=smoothing)
    assert np.all(np.isfinite(loss)) and np.all(loss >= -1e-6) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-5 if dtype == np.float32 else 1e-12)
