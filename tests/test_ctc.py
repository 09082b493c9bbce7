"""CTC: exhaustive alignment enumeration in mpmath, PyTorch's ctc_loss, finite differences, bad input."""
import itertools

import mpmath as mp
import numpy as np
import pytest

from lossc import gluon
from lossc.algorithms.ctc import ctc_loss


def collapse(path, blank):
    out = [c for i, c in enumerate(path) if i == 0 or c != path[i - 1]]
    return [c for c in out if c != blank]


def enumerated_loss(scores, label, blank):
    """−log Σ over every alignment of Π softmax, at 50 digits (scores: (T, C) of mpf)."""
    steps, alphabet = len(scores), len(scores[0])
    probs = []
    for row in scores:
        z = mp.fsum(mp.exp(v) for v in row)
        probs.append([mp.exp(v) / z for v in row])
    total = mp.mpf(0)
    for path in itertools.product(range(alphabet), repeat=steps):
        if collapse(list(path), blank) == list(label):
            total += mp.fprod(probs[t][c] for t, c in enumerate(path))
    return -mp.log(total) if total > 0 else mp.inf


CASES = [(4, 3, [1]), (5, 3, [1, 1]), (6, 3, [1, 2, 1]), (3, 3, [2, 2]), (6, 2, [1, 1, 1]), (4, 3, [])]


@pytest.mark.parametrize("steps, alphabet, label", CASES)
def test_loss_and_gradient_match_enumeration(steps, alphabet, label):
    rng = np.random.default_rng(steps * 10 + alphabet)
    x = rng.normal(0, 1.5, (1, steps, alphabet))
    padded = np.array([label + [-1] * (3 - len(label))])
    loss, (grad,) = ctc_loss.value_and_grad(x, padded, reduction="none")
    with mp.workdps(50):
        scores = [[mp.mpf(float(v)) for v in row] for row in x[0]]
        want = enumerated_loss(scores, label, 0)
        if mp.isinf(want):
            assert np.isinf(loss[0]) and not grad.any()
            return
        assert loss[0] == pytest.approx(float(want), rel=1e-12)
        for t, c in itertools.product(range(steps), range(alphabet)):
            def f(v, t=t, c=c):
                bumped = [row[:] for row in scores]
                bumped[t][c] = v
                return enumerated_loss(bumped, label, 0)
            assert grad[0, t, c] == pytest.approx(float(mp.diff(f, scores[t][c])), rel=1e-10, abs=1e-13)


def torch_ctc(torch, x_tnc, labels, t_len, l_len, blank, zero_infinity=False):
    xt = torch.tensor(x_tnc, requires_grad=True)
    out = torch.nn.functional.ctc_loss(xt.log_softmax(2), torch.tensor(np.where(labels < 0, 0, labels)),
                                       torch.tensor(t_len), torch.tensor(l_len), blank=blank, reduction="none",
                                       zero_infinity=zero_infinity)
    out.sum().backward()
    return out.detach().numpy(), xt.grad.numpy()


@pytest.fixture(params=["native", "numpy"])
def ctc_path(request, monkeypatch):
    """Each test of ctc_loss runs twice: on the native forward–backward and on the NumPy one."""
    from lossc.algorithms import ctc_native

    if request.param == "native" and not ctc_native.available(np.float64):
        pytest.skip("native kernels cannot be built here")
    if request.param == "numpy":
        monkeypatch.setenv("LOSSC_NATIVE", "0")
    return request.param


@pytest.mark.parametrize("layout", ["NTC", "TNC"])
def test_matches_torch_on_random_cases(torch, layout, ctc_path):
    rng = np.random.default_rng(3)
    batch, steps, alphabet, width = 6, 15, 6, 5
    x = rng.normal(0, 2, (steps, batch, alphabet))
    l_len = np.array([5, 0, 3, 5, 2, 4])
    labels = rng.integers(1, alphabet, (batch, width))
    labels[4, :2] = 3  # repeated label
    labels[np.arange(width)[None, :] >= l_len[:, None]] = -1
    t_len = np.array([15, 9, 3, 10, 4, 5])  # row 2: exactly minimal for 3 labels? 3 steps, row 5: infeasible? (4 labels in 5)
    t_len[5] = 5
    want, want_grad = torch_ctc(torch, x, labels, t_len, l_len, blank=0)
    pred = x if layout == "TNC" else x.transpose(1, 0, 2)
    loss, (grad,) = ctc_loss.value_and_grad(pred, labels, t_len, None, layout=layout, reduction="none")
    np.testing.assert_allclose(loss, want, rtol=1e-12)
    got_grad = grad if layout == "TNC" else grad.transpose(1, 0, 2)
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-9, atol=1e-12)


def test_infeasible_alignments(torch, ctc_path):
    x = np.random.default_rng(4).normal(0, 1, (3, 2, 4))  # T=3, N=2
    labels = np.array([[1, 1, 2], [1, 2, -1]])  # 1 1 2 needs 4 steps (a blank between the 1s)
    loss, (grad,) = ctc_loss.value_and_grad(x, labels, layout="TNC", reduction="none")
    assert np.isinf(loss[0]) and not grad[:, 0].any() and np.isfinite(loss[1])
    loss, (grad,) = ctc_loss.value_and_grad(x, labels, layout="TNC", reduction="none", zero_infinity=True)
    want, want_grad = torch_ctc(torch, x, labels, np.array([3, 3]), np.array([3, 2]), 0, zero_infinity=True)
    np.testing.assert_allclose(loss, want, rtol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-9, atol=1e-12)


def test_finite_differences_and_long_sequences():
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, (2, 8, 4))
    labels = np.array([[1, 2, 3], [2, 2, -1]])
    _, (grad,) = ctc_loss.value_and_grad(x, labels, reduction="sum")
    h = 1e-6
    for index in [(0, 0, 0), (1, 5, 2), (0, 7, 3)]:
        plus, minus = x.copy(), x.copy()
        plus[index] += h
        minus[index] -= h
        numeric = (ctc_loss(plus, labels, reduction="sum") - ctc_loss(minus, labels, reduction="sum")) / (2 * h)
        assert grad[index] == pytest.approx(numeric, rel=1e-6)
    long = rng.normal(0, 3, (2, 2000, 30))
    long_labels = rng.integers(1, 30, (2, 200))
    for dtype in (np.float32, np.float64):
        loss, (grad,) = ctc_loss.value_and_grad(long.astype(dtype), long_labels, reduction="none")
        assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad)) and loss.dtype == dtype


def test_gluon_layer_blank_last_and_sample_weight(torch):
    rng = np.random.default_rng(6)
    x = rng.normal(0, 1, (3, 10, 5))  # NTC, blank = 4
    labels = np.array([[0, 1, -1], [2, 2, 3], [3, -1, -1]])
    want, _ = torch_ctc(torch, x.transpose(1, 0, 2), labels, np.array([10, 10, 10]), np.array([2, 3, 1]), blank=4)
    for sample_weight in (np.array([1.0, 2.0, 0.5]), np.array([[1.0], [2.0], [0.5]])):
        got = gluon.CTCLoss(weight=3.0)(x, labels, sample_weight=sample_weight)
        assert got.shape == (3,)
        np.testing.assert_allclose(got, 3.0 * want * np.array([1.0, 2.0, 0.5]), rtol=1e-12)
    np.testing.assert_allclose(gluon.CTCLoss(layout="TNC", label_layout="TN")(x.transpose(1, 0, 2), labels.T), want, rtol=1e-12)


BAD = [
    (dict(label=np.array([[1, 4]])), "label value 4 is invalid"),  # 4 = blank (last) for the gluon layer below
    (dict(label=np.array([[1, -2]])), "label value -2 is invalid"),
    (dict(label_lengths=np.array([3])), r"label_lengths must lie in \[0, 2\]"),
    (dict(pred_lengths=np.array([7])), r"pred_lengths must lie in \[0, 6\]"),
    (dict(pred_lengths=np.array([-1])), r"pred_lengths must lie in \[0, 6\]"),
    (dict(layout="NCT"), "layout must be one of NTC, TNC"),
    (dict(label_layout="TT"), "label_layout must be one of NT, TN"),
]


@pytest.mark.parametrize("kwargs, message", BAD, ids=[m for _, m in BAD])
def test_bad_input(kwargs, message):
    kwargs = dict(kwargs)
    args = dict(pred=np.zeros((1, 6, 5)), label=kwargs.pop("label", np.array([[1, 2]])))
    with pytest.raises(ValueError, match=message):
        ctc_loss(args["pred"], args["label"], kwargs.pop("pred_lengths", None), kwargs.pop("label_lengths", None),
                 blank="last", **kwargs)


# ------------------------------------------------------------------ the CuPy RawKernel, run on the host
@pytest.fixture(scope="module")
def host_kernel(tmp_path_factory):
    import shutil

    if shutil.which("g++") is None:
        pytest.skip("g++ not installed")
    import cuda_harness

    return cuda_harness.ctc_host_library(tmp_path_factory.mktemp("ctc"))


def _device_case(rng, steps, batch, alphabet, width, blank, dtype):
    from lossc.algorithms.ctc import extended_labels

    scores = (rng.normal(0, 3, (steps, batch, alphabet))).astype(dtype)
    labels = rng.integers(0, alphabet - 1, (batch, width))
    labels[labels >= blank] += 1  # never the blank
    l_len = rng.integers(0, width + 1, batch)
    labels[np.arange(width)[None, :] >= l_len[:, None]] = -1
    labels[0, :2] = labels[0, 0]  # a repeated label
    t_len = rng.integers(0, steps + 1, batch)
    t_len[0] = steps
    t_len[-1], l_len[-1], labels[-1, :2] = 1, 2, [blank + 1 if blank + 1 < alphabet else 0] * 2  # infeasible
    return scores, labels, extended_labels(labels, blank), t_len, l_len


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_cuda_kernel_on_the_host_matches_numpy(host_kernel, dtype, rtol):
    """The RawKernel's exact source (one thread per extended-label position, a barrier per time
    step) against the NumPy forward-backward: variable pred and label lengths, empty labels,
    repeated labels, infeasible sequences (+inf, gradient 0 after the caller's masking)."""
    from lossc.algorithms.ctc import ctc_forward_backward
    from lossc.algorithms.ctc_cuda import run_kernel

    rng = np.random.default_rng(7)
    for steps, batch, alphabet, width, blank in [(12, 6, 5, 4, 0), (9, 5, 4, 5, 3), (30, 3, 6, 40, 2)]:
        scores, labels, ext, t_len, l_len = _device_case(rng, steps, batch, alphabet, width, blank, dtype)
        want_loss, want_grad = ctc_forward_backward(scores, labels, t_len, l_len, blank)
        loss, grad = run_kernel(np, host_kernel, scores, ext, t_len, l_len, blank, True)
        forward_only, _ = run_kernel(np, host_kernel, scores, ext, t_len, l_len, blank, False)
        assert np.isinf(want_loss).any()
        np.testing.assert_array_equal(np.isinf(loss), np.isinf(want_loss))
        finite = np.isfinite(want_loss)
        np.testing.assert_allclose(loss[finite], want_loss[finite], rtol=rtol)
        np.testing.assert_array_equal(forward_only, loss)
        np.testing.assert_allclose(grad[:, finite], want_grad[:, finite], rtol=rtol, atol=rtol)


def test_cuda_kernel_on_the_host_long_sequence_stays_finite(host_kernel):
    """T = 2000 in float32: log space keeps α and β from underflowing."""
    from lossc.algorithms.ctc import ctc_forward_backward, extended_labels
    from lossc.algorithms.ctc_cuda import run_kernel

    rng = np.random.default_rng(3)
    scores = rng.normal(0, 2, (2000, 2, 20)).astype(np.float32)
    labels = rng.integers(1, 20, (2, 50))
    lengths = np.array([2000, 1500]), np.array([50, 30])
    loss, grad = run_kernel(np, host_kernel, scores, extended_labels(labels, 0), *lengths, 0, True)
    want_loss, want_grad = ctc_forward_backward(scores, labels, *lengths, 0)
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    np.testing.assert_allclose(loss, want_loss, rtol=2e-5)
    np.testing.assert_allclose(grad, want_grad, atol=2e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_ctc_on_cupy_matches_numpy(cupy, dtype, rtol):
    """The RawKernel on a GPU through the gluon layer, against the NumPy implementation."""
    rng = np.random.default_rng(5)
    pred = rng.normal(0, 2, (8, 50, 12)).astype(dtype)
    label = rng.integers(0, 11, (8, 10))
    label[:, 7:] = -1
    pred_lengths = rng.integers(30, 51, 8)
    want, (want_grad,) = gluon.CTCLoss().value_and_grad(pred, label, pred_lengths)
    got, (grad,) = gluon.CTCLoss().value_and_grad(cupy.asarray(pred), cupy.asarray(label), cupy.asarray(pred_lengths))
    assert isinstance(got, cupy.ndarray) and got.dtype == dtype
    np.testing.assert_allclose(cupy.asnumpy(got), want, rtol=rtol)
    np.testing.assert_allclose(cupy.asnumpy(grad), want_grad, rtol=rtol, atol=rtol)


@pytest.fixture(scope="module")
def native_ctc():
    from lossc.algorithms import ctc_native

    if not ctc_native.available(np.float64):
        pytest.skip("native kernels cannot be built here")
    return ctc_native


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_native_forward_backward_matches_numpy(native_ctc, dtype, rtol):
    """The host code against the NumPy forward–backward in float64 (the truth for float32 too:
    the host code's recursions run in double, so float32 results are float32 roundings of it)
    on the device tests' cases: variable pred and label lengths (0 included), repeated labels,
    infeasible sequences, any blank."""
    from lossc.algorithms.ctc import ctc_forward_backward

    rng = np.random.default_rng(11)
    for steps, batch, alphabet, width, blank in [(12, 6, 5, 4, 0), (9, 5, 4, 5, 3), (30, 3, 6, 40, 2),
                                                 (40, 9, 7, 17, 6)]:
        scores, labels, ext, t_len, l_len = _device_case(rng, steps, batch, alphabet, width, blank, dtype)
        want_loss, want_grad = ctc_forward_backward(scores.astype(np.float64), labels, t_len, l_len, blank)
        loss, grad = native_ctc.ctc_forward_backward_native(scores, ext, t_len, l_len, True)
        assert grad.dtype == dtype
        forward_only, none = native_ctc.ctc_forward_backward_native(scores, ext, t_len, l_len, False)
        assert np.isinf(want_loss).any() and none is None
        np.testing.assert_array_equal(np.isinf(loss), np.isinf(want_loss))
        finite = np.isfinite(want_loss)
        np.testing.assert_allclose(loss[finite], want_loss[finite], rtol=rtol)
        np.testing.assert_array_equal(forward_only, loss)
        np.testing.assert_allclose(grad[:, finite], want_grad[:, finite], rtol=rtol, atol=rtol)
        assert not grad[t_len[0]:, 0].any() and not grad[t_len[1]:, 1].any()  # no gradient past a length


def test_native_long_sequence_in_float32_keeps_float32_accuracy(native_ctc):
    """T = 2000 in float32: log space keeps α and β from underflowing, and the recursions in
    double keep the gradient at float32 rounding (float32 recursions, as the NumPy code and
    PyTorch's CPU kernel run them, are off by about 5e-3 here: α ≈ −5000 has an ulp of 5e-4)."""
    from lossc.algorithms.ctc import ctc_forward_backward, extended_labels

    rng = np.random.default_rng(3)
    scores = rng.normal(0, 2, (2000, 2, 20)).astype(np.float32)
    labels = rng.integers(1, 20, (2, 50))
    lengths = np.array([2000, 1500]), np.array([50, 30])
    loss, grad = native_ctc.ctc_forward_backward_native(scores, extended_labels(labels, 0), *lengths, True)
    want_loss, want_grad = ctc_forward_backward(scores.astype(np.float64), labels, *lengths, 0)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, want_grad, atol=1e-7)
    float32_loss, float32_grad = ctc_forward_backward(scores, labels, *lengths, 0)
    assert np.abs(float32_grad - want_grad).max() > 1e-3  # what the recursions in double buy


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_native_bits_do_not_depend_on_the_batch_or_the_thread_count(native_ctc, monkeypatch, dtype):
    """A sequence runs alone on one thread: its bits are the same alone, in any batch, on 1 to 8 threads."""
    from lossc.algorithms.ctc import extended_labels

    rng = np.random.default_rng(12)
    scores = rng.normal(0, 3, (25, 11, 8)).astype(dtype)
    labels = rng.integers(1, 8, (11, 6))
    t_len, l_len = rng.integers(6, 26, 11), rng.integers(0, 7, 11)
    ext = extended_labels(labels, 0)
    runs = []
    for threads in (1, 2, 3, 8):
        monkeypatch.setattr(native_ctc, "WORKERS", threads)
        runs.append(native_ctc.ctc_forward_backward_native(scores, ext, t_len, l_len, True))
    for loss, grad in runs[1:]:
        np.testing.assert_array_equal(loss, runs[0][0])
        np.testing.assert_array_equal(grad, runs[0][1])
    for n in (0, 5, 10):
        alone = native_ctc.ctc_forward_backward_native(scores[:, n:n + 1], ext[n:n + 1], t_len[n:n + 1],
                                                       l_len[n:n + 1], True)
        np.testing.assert_array_equal(alone[0], runs[0][0][n:n + 1])
        np.testing.assert_array_equal(alone[1][:, 0], runs[0][1][:, n])
