"""lossc.paddle on paddle Tensors: the paddle.nn.functional drop-ins against Paddle 3.3 itself
(values and gradients through paddle.grad), 50-digit mpmath where Paddle is not exact, a
training step, errors, dtypes, and the generic PyLayer of every loss against finite differences."""
import subprocess
import sys
import warnings

import mpmath
import numpy as np
import pytest

paddle = pytest.importorskip("paddle")

import lossc  # noqa: E402
import lossc.paddle as lp  # noqa: E402

pytestmark = pytest.mark.paddle

warnings.filterwarnings("ignore", message="No ccache found")
F = paddle.nn.functional
REDUCTIONS = ("none", "mean", "sum")
TOL = {"float64": 1e-12, "float32": 1e-5}  # relative to the largest value: Paddle's float32 loses digits in small ones


def _tensors(arrays, differentiable, dtype):
    """Fresh Tensors of the arrays: floats in ``dtype``, the first ``differentiable`` ones with gradients."""
    return [None if a is None else paddle.to_tensor(a.astype(dtype) if a.dtype.kind == "f" else a,
                                                    stop_gradient=k >= differentiable)
            for k, a in enumerate(arrays)]


def _value_and_grads(function, arrays, dtype, differentiable=1, **kwargs):
    tensors = _tensors(arrays, differentiable, dtype)
    loss = function(*tensors, **kwargs)
    grads = paddle.grad([loss.sum()], tensors[:differentiable])
    return loss, [g.numpy() for g in grads]


def assert_like_paddle(name, arrays, dtype="float64", differentiable=1, **kwargs):
    """lossc.paddle.<name> gives Paddle's F.<name>: value, shape, dtype and gradients."""
    ours, our_grads = _value_and_grads(getattr(lp, name), arrays, dtype, differentiable, **kwargs)
    theirs, their_grads = _value_and_grads(getattr(F, name), arrays, dtype, differentiable, **kwargs)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    for mine, peer in zip([ours.numpy()] + our_grads, [theirs.numpy()] + their_grads):
        np.testing.assert_allclose(mine, peer, rtol=TOL[dtype], atol=TOL[dtype] * np.abs(peer).max(initial=0))


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# ------------------------------------------------------------------ element-wise drop-ins vs Paddle
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_elementwise_losses_match_paddle(rng, dtype, reduction):
    x, y = rng.normal(size=(4, 5)) * 3, (rng.random((4, 5)) > 0.5) * 1.0
    soft = rng.random((4, 5))
    assert_like_paddle("binary_cross_entropy_with_logits", [x, soft], dtype, reduction=reduction)
    assert_like_paddle("binary_cross_entropy_with_logits", [x, y], dtype, reduction=reduction,
                       weight=paddle.to_tensor(rng.random((4, 5)).astype(dtype)),
                       pos_weight=paddle.to_tensor((rng.random(5) + 0.5).astype(dtype)))
    assert_like_paddle("sigmoid_focal_loss", [x, y], dtype, reduction=reduction)
    assert_like_paddle("sigmoid_focal_loss", [x, y, np.array([3.0])], dtype, reduction=reduction, alpha=0.4,
                       gamma=1.5)
    for delta, is_huber in ((1.0, True), (0.7, True), (0.7, False), (2.5, False)):
        assert_like_paddle("smooth_l1_loss", [x, soft], dtype, reduction=reduction, delta=delta, is_huber=is_huber)
    assert_like_paddle("l1_loss", [x, soft], dtype, reduction=reduction)
    assert_like_paddle("mse_loss", [x, soft], dtype, reduction=reduction)
    assert_like_paddle("mse_loss", [x, soft[:, :1]], dtype, reduction=reduction)  # Paddle broadcasts the label
    assert_like_paddle("l1_loss", [x[:, :1], soft], dtype, reduction=reduction)  # ... or the input


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reduction", REDUCTIONS + ("batchmean",))
def test_kl_div_matches_paddle(rng, dtype, reduction):
    log_p = np.log(rng.dirichlet(np.ones(5), size=4))
    target = rng.dirichlet(np.ones(5), size=4)
    target[0, 1] = 0.0  # 0·log 0 = 0
    assert_like_paddle("kl_div", [log_p, target], dtype, reduction=reduction)
    assert_like_paddle("kl_div", [log_p, np.log(target + 1e-3)], dtype, reduction=reduction, log_target=True)


def test_bce_ignores_labels_of_minus_100_like_paddle(rng):
    x, y = rng.normal(size=(3, 4)), rng.random((3, 4))
    y[1, 2] = y[0, 0] = -100
    for reduction in REDUCTIONS:
        assert_like_paddle("binary_cross_entropy_with_logits", [x, y], reduction=reduction)


# ------------------------------------------------------------------ cross-entropy vs Paddle
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_with_class_indices_matches_paddle(rng, dtype, reduction):
    x = rng.normal(size=(6, 5)) * 2
    labels = rng.integers(0, 5, size=6)
    labels[1] = -100
    weight = paddle.to_tensor((rng.random(5) + 0.2).astype(dtype))
    assert_like_paddle("cross_entropy", [x, labels], dtype, reduction=reduction)  # mean over every label
    assert_like_paddle("cross_entropy", [x, labels], dtype, reduction=reduction, weight=weight)
    assert_like_paddle("cross_entropy", [x, labels[:, None]], dtype, reduction=reduction)  # (N, 1) labels
    kept = np.where(labels < 0, 3, labels)
    assert_like_paddle("cross_entropy", [x, kept], dtype, reduction=reduction, ignore_index=3)
    assert_like_paddle("cross_entropy", [x, kept], dtype, reduction=reduction, ignore_index=3, weight=weight)
    probabilities = rng.dirichlet(np.ones(5), size=6)
    assert_like_paddle("cross_entropy", [probabilities, kept], dtype, reduction=reduction, use_softmax=False)
    scores, pixel_labels = rng.normal(size=(2, 5, 3)), rng.integers(0, 5, size=(2, 3))
    assert_like_paddle("cross_entropy", [scores, pixel_labels], dtype, reduction=reduction, axis=1)
    assert_like_paddle("cross_entropy", [scores, pixel_labels], dtype, reduction=reduction, axis=1, weight=weight)


@pytest.mark.parametrize("dtype", ["int32", "float64"])
def test_cross_entropy_takes_int32_and_float_class_indices(rng, dtype):
    """Paddle's forward takes int32 and float class indices (its backward then fails: no gradient
    kernel for those label types); lossc gives the int64 result, gradient included."""
    x = paddle.to_tensor(rng.normal(size=(4, 3)), stop_gradient=False)
    labels = rng.integers(0, 3, size=4)
    other = lp.cross_entropy(x, paddle.to_tensor(labels.astype(dtype)))
    assert other.item() == pytest.approx(F.cross_entropy(x, paddle.to_tensor(labels.astype(dtype))).item(), rel=1e-15)
    int64 = lp.cross_entropy(x, paddle.to_tensor(labels))
    assert other.item() == int64.item()
    np.testing.assert_array_equal(paddle.grad([other], [x])[0].numpy(), paddle.grad([int64], [x])[0].numpy())


def test_cross_entropy_mean_of_only_ignored_labels_is_zero_like_paddle(rng):
    x = rng.normal(size=(3, 4))
    assert_like_paddle("cross_entropy", [x, np.full(3, 2)], reduction="mean", ignore_index=2)
    assert lp.cross_entropy(paddle.to_tensor(x), paddle.to_tensor(np.full(3, 2)), ignore_index=2).item() == 0.0


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_with_probability_targets_matches_paddle(rng, dtype, reduction):
    x = rng.normal(size=(4, 5)) * 2
    p = rng.dirichlet(np.ones(5), size=4)  # rows summing to 1: Paddle's gradient softmax − y is then right
    weight = paddle.to_tensor((rng.random(5) + 0.2).astype(dtype))
    assert_like_paddle("cross_entropy", [x, p], dtype, reduction=reduction, soft_label=True)
    assert_like_paddle("cross_entropy", [x, p], dtype, reduction=reduction, soft_label=True, weight=weight)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_label_smoothing_values_match_paddle_and_gradients_are_exact(rng, reduction):
    """Paddle's label_smooth works in float32 (a float32 one-hot, 1 − ε and ε/C in float32), so its
    smoothed rows do not sum to exactly 1 and its gradient softmax − y is off by ~1e-8; lossc
    gives the same values and the exact gradient softmax·Σy − y of those labels."""
    x = rng.normal(size=(4, 5)) * 2
    labels = rng.integers(0, 5, size=4)
    weight = rng.random(5) + 0.2
    for kwargs in ({}, {"weight": paddle.to_tensor(weight)}):
        ours, (grad,) = _value_and_grads(lp.cross_entropy, [x, labels], "float64", label_smoothing=0.2,
                                         reduction=reduction, **kwargs)
        theirs = F.cross_entropy(paddle.to_tensor(x), paddle.to_tensor(labels), label_smoothing=0.2,
                                 reduction=reduction, **kwargs)
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-13)
        smoothed = (np.eye(5, dtype=np.float32)[labels] * (np.float32(1) - np.float32(0.2))
                    + np.float32(0.2) / np.float32(5)).astype(np.float64)
        softmax = np.exp(x - x.max(1, keepdims=True))
        softmax /= softmax.sum(1, keepdims=True)
        row = smoothed @ weight if kwargs else np.ones(4)
        scale = {"none": 1.0, "sum": 1.0, "mean": 1 / row.sum()}[reduction]
        exact = row[:, None] * (softmax * smoothed.sum(1, keepdims=True) - smoothed) * scale
        np.testing.assert_allclose(grad, exact, rtol=1e-12, atol=1e-15)


def test_soft_label_gradient_is_exact_where_rows_do_not_sum_to_one(rng):
    """Paddle's soft-label gradient is softmax − y, right only when each row of y sums to 1;
    lossc differentiates −Σ y·log softmax(x) exactly: softmax·Σy − y."""
    x = rng.normal(size=(3, 4))
    y = rng.random((3, 4))
    _, (grad,) = _value_and_grads(lp.cross_entropy, [x, y], "float64", soft_label=True, reduction="sum")
    softmax = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    np.testing.assert_allclose(grad, softmax * y.sum(1, keepdims=True) - y, rtol=1e-12)


# ------------------------------------------------------------------ CTC vs Paddle (warp-ctc)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("norm_by_times", [False, True])
def test_ctc_loss_matches_paddle(rng, dtype, reduction, norm_by_times):
    steps, batch, classes = 12, 3, 6
    scores = rng.normal(size=(steps, batch, classes))
    labels = rng.integers(1, classes, size=(batch, 4)).astype("int32")
    labels[1, 2:] = 0  # padding past the label length may be anything
    lengths = [np.array([12, 10, 7], dtype="int64"), np.array([4, 2, 3], dtype="int64")]
    ours, (grad,) = _value_and_grads(lp.ctc_loss, [scores, labels, *lengths], dtype, reduction=reduction,
                                     norm_by_times=norm_by_times)
    theirs, (their_grad,) = _value_and_grads(F.ctc_loss, [scores, labels, *lengths], dtype, reduction=reduction,
                                             norm_by_times=norm_by_times)
    tol = {"float64": 1e-12, "float32": 1e-5}[dtype]  # warp-ctc's float32 is not exact
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=tol)
    np.testing.assert_allclose(grad, their_grad, rtol=tol, atol=tol * np.abs(their_grad).max())


def test_ctc_zero_infinity_gives_zero_loss_and_gradient():
    scores = paddle.to_tensor(np.zeros((2, 1, 3)), stop_gradient=False)
    args = (paddle.to_tensor(np.array([[1, 1]], dtype="int32")), paddle.to_tensor(np.array([2])),
            paddle.to_tensor(np.array([2])))  # "1 1" needs three steps: impossible in two
    assert np.isinf(lp.ctc_loss(scores, *args, reduction="sum").item())
    loss = lp.ctc_loss(scores, *args, reduction="sum", zero_infinity=True)
    (grad,) = paddle.grad([loss], [scores])
    assert loss.item() == 0.0 and not grad.numpy().any()


# ------------------------------------------------------------------ where Paddle is not exact: mpmath
def _mp_bce(x, y):
    return y * mpmath.log1p(mpmath.exp(-x)) + (1 - y) * mpmath.log1p(mpmath.exp(x))


def _mp_focal(x, y, alpha=0.25, gamma=2):
    p, q = 1 / (1 + mpmath.exp(-x)), 1 / (1 + mpmath.exp(x))
    return y * alpha * q ** gamma * mpmath.log1p(mpmath.exp(-x)) + \
        (1 - y) * (1 - alpha) * p ** gamma * mpmath.log1p(mpmath.exp(x))


@pytest.mark.parametrize("name, reference", [("binary_cross_entropy_with_logits", _mp_bce),
                                             ("sigmoid_focal_loss", _mp_focal)])
def test_extreme_logits_and_zero_are_exact_against_mpmath(name, reference):
    """Paddle's BCE gradient at a logit of exactly 0 is wrong (−1 for y = ½ where the truth is
    0) and its focal loss overflows near ±1e4; lossc matches 50-digit mpmath everywhere."""
    x = np.array([-1e4, -700.0, -50.0, -1.0, 0.0, 0.0, 1e-8, 30.0, 700.0, 1e4])
    y = np.array([1.0, 0.0, 1.0, 0.3, 0.5, 0.0, 1.0, 0.0, 1.0, 0.0])
    loss, (grad,) = _value_and_grads(getattr(lp, name), [x, y], "float64", reduction="none")
    with mpmath.workdps(50):
        for k in range(x.size):
            def f(v, yk=mpmath.mpf(y[k])):
                return reference(v, yk)
            assert loss.numpy()[k] == pytest.approx(float(f(mpmath.mpf(x[k]))), rel=1e-13, abs=1e-300)
            assert grad[k] == pytest.approx(float(mpmath.diff(f, mpmath.mpf(x[k]))), rel=1e-10, abs=1e-300)


# ------------------------------------------------------------------ training, dtypes, errors
def test_a_training_step_matches_the_same_step_with_paddles_loss(rng):
    x = paddle.to_tensor(rng.normal(size=(16, 8)).astype("float32"))
    target = paddle.to_tensor(rng.integers(0, 3, size=16))
    results = []
    for loss_fn in (F.cross_entropy, lp.cross_entropy):
        paddle.seed(0)
        model = paddle.nn.Sequential(paddle.nn.Linear(8, 16), paddle.nn.ReLU(), paddle.nn.Linear(16, 3))
        optimizer = paddle.optimizer.SGD(learning_rate=0.5, parameters=model.parameters())
        for _ in range(3):
            loss = loss_fn(model(x), target, label_smoothing=0.1)
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
        results.append([p.numpy() for p in model.parameters()])
    for ours, theirs in zip(*results):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_computes_in_float32_and_keeps_the_dtype(rng, dtype):
    x = paddle.to_tensor(rng.normal(size=(4, 5)).astype("float32")).astype(dtype)
    y = paddle.to_tensor((rng.random((4, 5)) > 0.5).astype("float32")).astype(dtype)
    x.stop_gradient = False
    loss = lp.sigmoid_focal_loss(x, y)
    (grad,) = paddle.grad([loss], [x])
    assert loss.dtype == x.dtype and grad.dtype == x.dtype
    x32 = x.astype("float32").detach()
    x32.stop_gradient = False
    reference = lp.sigmoid_focal_loss(x32, y.astype("float32"))
    (grad32,) = paddle.grad([reference], [x32])
    assert loss.astype("float32").item() == reference.astype(dtype).astype("float32").item()
    np.testing.assert_array_equal(grad.astype("float32").numpy(), grad32.astype(dtype).astype("float32").numpy())


def test_inputs_are_not_modified_and_no_grad_returns_a_constant(rng):
    arrays = [rng.normal(size=(3, 4)), rng.random((3, 4))]
    tensors = _tensors(arrays, 1, "float64")
    loss = lp.binary_cross_entropy_with_logits(*tensors)
    loss.backward()
    for tensor, array in zip(tensors, arrays):
        np.testing.assert_array_equal(tensor.numpy(), array)
    with paddle.no_grad():
        assert lp.binary_cross_entropy_with_logits(*tensors).stop_gradient


def test_bad_input_is_a_clear_error(rng):
    x = paddle.to_tensor(rng.normal(size=(4, 3)))
    with pytest.raises(TypeError, match="'label' must be a float32 or float64"):
        lp.binary_cross_entropy_with_logits(x, paddle.to_tensor(np.ones((4, 3), dtype="int64")))
    with pytest.raises(TypeError, match="'label' must be a float32 or float64"):
        lp.sigmoid_focal_loss(x, paddle.to_tensor(np.ones((4, 3), dtype="int64")))
    with pytest.raises(ValueError, match="one dimension of normalizer with one element"):
        lp.sigmoid_focal_loss(x, x * 0, normalizer=paddle.to_tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="'reduction' in mse_loss"):
        lp.mse_loss(x, x, reduction="avg")
    with pytest.raises(ValueError, match="same shape"):
        lp.smooth_l1_loss(x, x[:, :1])
    with pytest.raises(ValueError, match="delta must be positive"):
        lp.smooth_l1_loss(x, x, delta=0.0)
    with pytest.raises(ValueError, match="outside"):
        lp.cross_entropy(x, paddle.to_tensor([0, 1, 5, 1]))
    with pytest.raises(ValueError, match="ignore_index"):
        lp.cross_entropy(x, x, soft_label=True, ignore_index=2)
    with pytest.raises(TypeError, match="'input' must be a paddle.Tensor"):
        lp.l1_loss(np.ones(3), x)
    with pytest.raises(TypeError, match="'labels' must be an int32"):
        lp.ctc_loss(paddle.zeros([5, 1, 3]), paddle.ones([1, 2]), paddle.to_tensor([5]), paddle.to_tensor([2]))
    label = paddle.to_tensor(rng.random((4, 3)), stop_gradient=False)
    with pytest.raises(ValueError, match="'label' has stop_gradient=False"):
        lp.binary_cross_entropy_with_logits(x, label)
    with pytest.raises(ValueError, match="weight has stop_gradient=False"):
        lp.get("l1")(x, x * 0, weight=paddle.to_tensor(np.ones(3), stop_gradient=False))


# ------------------------------------------------------------------ every loss through its PyLayer
def _finite_difference(fn, x, h=1e-6):
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += h
        down[index] -= h
        grad[index] = (fn(up) - fn(down)) / (2 * h)
    return grad


@pytest.mark.parametrize("name, inputs, kwargs", [
    ("softmax_ce", lambda r: [r.normal(size=(3, 4)), r.integers(0, 4, size=3), np.ones(4)], {}),
    ("softmax_focal", lambda r: [r.normal(size=(3, 4)), r.integers(0, 4, size=3)], {}),
    ("huber", lambda r: [r.normal(size=(3, 4)), r.normal(size=(3, 4))], {"rho": 0.5}),
    ("sdml", lambda r: [r.normal(size=(3, 4)), r.normal(size=(3, 4))], {}),
])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_generic_layer_gradients_match_finite_differences(rng, name, inputs, kwargs, reduction):
    """``get(name)`` for row, element and pair losses: the saved gradient (or, for 'none' where
    it does not suffice, the second fused pass) equals the finite differences of Σ g·loss."""
    arrays = inputs(rng)
    loss = lossc.get(name)
    differentiable = len(loss.differentiable)
    tensors = _tensors(arrays, differentiable, "float64")
    value = lp.get(name)(*tensors, reduction=reduction, **kwargs)
    upstream = rng.random(value.shape) + 0.5
    grads = paddle.grad([(value * paddle.to_tensor(upstream)).sum()], tensors[:differentiable])
    np.testing.assert_allclose(value.numpy(), loss(*arrays, reduction=reduction, **kwargs), rtol=1e-13)
    for k, grad in enumerate(grads):
        def total(x, k=k):
            moved = list(arrays)
            moved[k] = x
            return float((loss(*moved, reduction=reduction, **kwargs) * upstream).sum())
        np.testing.assert_allclose(grad.numpy(), _finite_difference(total, arrays[k]), rtol=1e-6, atol=1e-8)


def test_loss_layer_is_a_paddle_layer(rng):
    layer = lp.Loss("huber", rho=0.5, reduction="sum")
    assert isinstance(layer, paddle.nn.Layer) and "huber" in repr(layer)
    x, y = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    assert layer(paddle.to_tensor(x), paddle.to_tensor(y)).item() == pytest.approx(
        lossc.get("huber")(x, y, rho=0.5, reduction="sum"), rel=1e-14)


def test_importing_lossc_paddle_does_not_import_paddle():
    code = "import sys; sys.modules['paddle'] = None; import lossc, lossc.paddle; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"


@pytest.mark.gpu
def test_gpu_tensors_match_the_cpu(rng):
    if not paddle.device.is_compiled_with_cuda() or paddle.device.cuda.device_count() == 0:
        pytest.skip("needs Paddle with CUDA and a GPU")
    pytest.importorskip("cupy")
    x, y = rng.normal(size=(64, 10)), rng.integers(0, 10, size=64)
    for place in ("cpu", "gpu"):
        paddle.set_device(place)
        try:
            pred = paddle.to_tensor(x.astype("float32"), stop_gradient=False)
            stream = paddle.device.Stream()
            with paddle.device.stream_guard(stream):
                loss = lp.cross_entropy(pred, paddle.to_tensor(y), label_smoothing=0.1)
                (grad,) = paddle.grad([loss], [pred])
            stream.synchronize()
            if place == "cpu":
                expected = (loss.numpy(), grad.numpy())
            else:
                np.testing.assert_allclose(loss.numpy(), expected[0], rtol=1e-5)
                np.testing.assert_allclose(grad.numpy(), expected[1], rtol=1e-5, atol=1e-7)
        finally:
            paddle.set_device("cpu")
