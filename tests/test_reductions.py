"""Losses with reductions along a class axis: PyTorch oracles, finite differences, structure, bad input."""
import tracemalloc

import mpmath
import numpy as np
import sympy
import pytest

import lossc
from conftest import random_call_inputs, spec_paths
from lossc.compiler.derive import derive
from lossc.compiler.ir import build_ir, variants
from lossc.compiler.reductions import onehot_minus_softmax, reductions_in, rlogsumexp_labelled
from lossc.compiler.spec import load_spec

REDUCTION_SPECS = [p for p in spec_paths() if load_spec(p).class_axis]


@pytest.fixture
def rng():
    return np.random.default_rng(5)


def torch_value_and_grads(torch, fn, *arrays, grad_of=(0,)):
    tensors = [torch.tensor(a, requires_grad=i in grad_of) for i, a in enumerate(arrays)]
    out = fn(*tensors)
    out.sum().backward()
    return out.detach().numpy(), [tensors[i].grad.numpy() for i in grad_of]


def close(ours, theirs, rtol=1e-12, atol=1e-14):
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol)


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("smoothing", [0.0, 0.15])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_ce_matches_torch(torch, rng, axis, smoothing, weighted):
    x = rng.normal(0, 3, (4, 6, 5))
    classes = x.shape[axis]
    label_shape = (4, 6) if axis == -1 else (4, 5)
    y = rng.integers(0, classes, label_shape)
    y[0, 0] = -100
    weight = rng.uniform(0.5, 2, classes)
    wshape = (classes,) if axis == -1 else (classes, 1)
    loss, (grad,) = lossc.get("softmax_ce").value_and_grad(
        x, y, weight.reshape(wshape), reduction="none", axis=axis, label_smoothing=smoothing, class_weighted=weighted)
    F = torch.nn.functional
    xt = x if axis == 1 else np.moveaxis(x, -1, 1)
    fn = lambda a, b: F.cross_entropy(a, b, weight=torch.tensor(weight) if weighted else None, reduction="none",
                                      label_smoothing=smoothing, ignore_index=-100)
    want, (want_grad,) = torch_value_and_grads(torch, fn, xt, y)
    close(loss, want)
    close(grad, want_grad if axis == 1 else np.moveaxis(want_grad, 1, -1))


def test_softmax_ce_from_logits_and_dense_and_kl(torch, rng):
    F = torch.nn.functional
    x = rng.normal(0, 3, (7, 5))
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    y = rng.integers(0, 5, 7)
    loss, (grad,) = lossc.get("softmax_ce").value_and_grad(logp, y, reduction="none", from_logits=True)
    want, (want_grad,) = torch_value_and_grads(torch, lambda a, b: F.nll_loss(a, b, reduction="none"), logp, y)
    close(loss, want)
    close(grad, want_grad)
    q = rng.dirichlet(np.ones(5), 7)
    for smoothing in (0.0, 0.2):
        loss, (grad,) = lossc.get("softmax_ce_dense").value_and_grad(x, q, reduction="none", label_smoothing=smoothing)
        want, (want_grad,) = torch_value_and_grads(
            torch, lambda a, b: F.cross_entropy(a, b, reduction="none", label_smoothing=smoothing), x, q)
        close(loss, want)
        close(grad, want_grad)
    q[0, 1] = 0.0  # 0·log 0 = 0
    for from_logits in (True, False):
        loss, (grad,) = lossc.get("kl_div").value_and_grad(logp if from_logits else x, q, reduction="none",
                                                          from_logits=from_logits)
        fn = (lambda a, b: F.kl_div(a, b, reduction="none")) if from_logits else \
             (lambda a, b: F.kl_div(F.log_softmax(a, -1), b, reduction="none"))
        want, (want_grad,) = torch_value_and_grads(torch, fn, logp if from_logits else x, q)
        close(loss, want)
        close(grad, want_grad)


def test_triplet_and_cosine_match_torch(torch, rng):
    F = torch.nn.functional
    a, p, n = rng.normal(0, 1, (3, 6, 4, 2))
    loss, grads = lossc.get("triplet").value_and_grad(a, p, n, reduction="none", margin=0.5)
    fn = lambda x, y, z: F.relu(((y - x) ** 2).sum((1, 2)) - ((z - x) ** 2).sum((1, 2)) + 0.5)
    want, want_grads = torch_value_and_grads(torch, fn, a, p, n, grad_of=(0, 1, 2))
    close(loss, want)
    for g, w in zip(grads, want_grads):
        close(g, w)
    x1, x2 = a.reshape(6, 8), p.reshape(6, 8)
    label = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    loss, grads = lossc.get("cosine_embedding").value_and_grad(x1, x2, label, reduction="none", margin=0.2)
    fn = lambda u, v, y: F.cosine_embedding_loss(u, v, y, margin=0.2, reduction="none")
    want, want_grads = torch_value_and_grads(torch, fn, x1, x2, label, grad_of=(0, 1))
    close(loss, want, rtol=1e-10)  # torch puts its 1e-12 inside the norms' square roots
    for g, w in zip(grads, want_grads):
        close(g, w, rtol=1e-9, atol=1e-12)


def test_focal_losses_match_their_formulas(torch, rng):
    F = torch.nn.functional
    x, y = rng.normal(0, 3, (8, 5)), rng.integers(0, 6, 8)  # label 5 = outside: all-zero one-hot
    for mode in ("exact", "gluoncv"):
        loss, (grad,) = lossc.get("focal").value_and_grad(x, y, reduction="none", mode=mode, alpha=0.3, gamma=1.5)

        def gluoncv(a, b):
            one_hot = F.one_hot(b, 6)[:, :5].double()
            p = torch.sigmoid(a)
            pt = torch.where(one_hot > 0, p, 1 - p)
            alpha = torch.where(one_hot > 0, torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64))
            log_pt = torch.log(torch.clamp(pt + 1e-12, max=1)) if mode == "gluoncv" else torch.log(pt)
            return -alpha * (1 - pt) ** 1.5 * log_pt

        want, (want_grad,) = torch_value_and_grads(torch, gluoncv, x, y)
        close(loss, want, rtol=1e-10)
        close(grad, want_grad, rtol=1e-10)
    y = rng.integers(0, 5, 8)
    loss, (grad,) = lossc.get("softmax_focal").value_and_grad(x, y, reduction="none", gamma=3.0)

    def softmax_focal(a, b):
        log_py = F.log_softmax(a, -1).gather(1, b[:, None])[:, 0]
        return -0.25 * (1 - log_py.exp()) ** 3 * log_py

    want, (want_grad,) = torch_value_and_grads(torch, softmax_focal, x, y)
    close(loss, want)
    close(grad, want_grad)


@pytest.mark.parametrize("path", REDUCTION_SPECS, ids=lambda p: p.stem)
def test_every_gradient_matches_finite_differences(path, rng):
    loss = lossc.get(path.stem)
    spec = load_spec(path)
    for variant in variants(spec):
        arrays = random_call_inputs(loss, rng)
        kwargs = dict(variant, reduction="sum")
        if "class_weighted" in variant:
            kwargs["label_smoothing"] = 0.1
        if variant.get("from_logits") and path.stem in ("focal",):
            arrays[0] = 1 / (1 + np.exp(-arrays[0]))
        _, grads = loss.value_and_grad(*arrays, **kwargs)
        positions = [i for i, s in enumerate(loss.pair_inputs or loss.inputs) if s["differentiable"]]
        for grad, position in zip(grads, positions):
            h = 1e-6
            for index in [(0, 0), (2, 1), (4, 3)]:
                bumped = [a.copy() for a in arrays], [a.copy() for a in arrays]
                bumped[0][position][index] += h
                bumped[1][position][index] -= h
                numeric = (loss(*bumped[0], **kwargs) - loss(*bumped[1], **kwargs)) / (2 * h)
                assert grad[index] == pytest.approx(numeric, rel=1e-5, abs=1e-7), (path.stem, variant, position, index)


def test_softmax_ce_gradient_is_softmax_minus_one_hot_with_no_backward_reduction():
    spec = load_spec(next(p for p in spec_paths() if p.stem == "softmax_ce"))
    derived = derive(build_ir(spec, {"from_logits": False, "class_weighted": False}))
    pred = derived.ir.symbols["pred"]
    gradient = derived.gradients["pred"]
    # only the forward logsumexp (the label's: the loss picks log p_label next to it)
    assert reductions_in(gradient) == [rlogsumexp_labelled(pred, derived.ir.symbols["label"])]
    # without smoothing: (softmax − one_hot) where not ignored, [j = y] − softmax as one stable node
    symbols = derived.ir.symbols
    plain = gradient.subs({symbols["label_smoothing"]: 0, symbols["ignore_index"]: -100})
    label, grad_output = symbols["label"], sympy.Symbol("grad_output", real=True)
    not_ignored = sympy.Piecewise((0, sympy.Eq(-100, label)), (-1, True))
    assert sympy.simplify(plain - grad_output * not_ignored * onehot_minus_softmax(pred, label)) == 0


def test_logit_gaps_of_1e4_stay_finite_and_exact():
    ce = lossc.get("softmax_ce")
    x = np.array([[1e4, 0.0, -1e4]] * 3)
    for dtype in (np.float32, np.float64):
        loss, (grad,) = ce.value_and_grad(x.astype(dtype), np.array([0, 1, 2]), reduction="none")
        np.testing.assert_array_equal(loss, np.array([0.0, 1e4, 2e4], dtype=dtype))
        np.testing.assert_array_equal(grad, np.array([[0, 0, 0], [1, -1, 0], [1, 0, -1]], dtype=dtype))


@pytest.mark.parametrize("name", ["softmax_ce", "softmax_focal"])
def test_confident_predictions_keep_relative_accuracy(name):
    """A label logit ahead by 5..60: the loss (≈ Σ exp(−margin)) and the label's gradient
    (≈ −loss) are tiny and still relatively exact vs 50-digit mpmath, where
    logsumexp − x_y and p_y − 1 would cancel to a few epsilons absolute (as PyTorch does)."""
    import mpmath

    mpmath.mp.dps = 50
    loss = lossc.get(name)
    for dtype, rtol in ((np.float64, 1e-13), (np.float32, 2e-6)):
        for margin in (5.0, 17.0, 30.0, 60.0):
            x = np.array([[0.0, -1.5, margin, 0.25]], dtype=dtype)
            value, (grad,) = loss.value_and_grad(x, np.array([2]), reduction="none")
            row = [mpmath.mpf(float(v)) for v in x[0]]
            total = mpmath.fsum(mpmath.exp(v - row[2]) for v in row)
            p = [mpmath.exp(v - row[2]) / total for v in row]
            log_py = -mpmath.log(total)
            if name == "softmax_ce":
                want, want_grad = -log_py, [p[j] - (j == 2) for j in range(4)]
            else:  # −α(1 − p_y)^γ log p_y and its gradient, α = 0.25, γ = 2
                one_minus = -mpmath.expm1(log_py)
                want = -0.25 * one_minus**2 * log_py
                d_logpy = -0.25 * (-2 * one_minus * (1 - one_minus) * log_py + one_minus**2)
                want_grad = [d_logpy * ((j == 2) - p[j]) for j in range(4)]
            if abs(want) < np.finfo(dtype).tiny:
                continue
            assert float(value[0]) == pytest.approx(float(want), rel=rtol), (dtype, margin)
            for j in range(4):
                if abs(want_grad[j]) >= np.finfo(dtype).tiny:
                    assert float(grad[0, j]) == pytest.approx(float(want_grad[j]), rel=rtol), (dtype, margin, j)


def _mp_softmax_ce(row, label, smoothing):
    """(loss, gradient) of softmax CE with label smoothing at 50 digits."""
    top = max(row)
    log_total = top + mpmath.log(mpmath.fsum(mpmath.exp(v - top) for v in row))
    log_p = [v - log_total for v in row]
    loss = -(1 - smoothing) * log_p[label] - smoothing * mpmath.fsum(log_p) / len(row)
    grad = [mpmath.exp(lp) - (1 - smoothing) * (j == label) - smoothing / len(row) for j, lp in enumerate(log_p)]
    return loss, grad


# rows where the label is not the arg-max and the excess cancels (Σ_{j≠y} = 1, expm1(−30) ≈ −1),
# ties at the max with and without the label, gaps of 1e4
WRONG_LABELS_AND_TIES = [([0.0, -30.0, -1000.0, -1000.0], 1), ([5.0, 5.0, 0.0, -1.0], 0),
                         ([5.0, 5.0, 0.0, -1.0], 2), ([0.0, -1e4, 1e4, 3.0], 1), ([-20.0, 0.0, -20.0, -20.0], 0)]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_wrong_labels_and_ties_stay_exact(smoothing):
    """The label's excess Σ_{j≠y} exp(x_j − max) + expm1(x_y − max) cancels when y is not the
    arg-max; the loss and every gradient entry stay relatively exact there vs 50-digit mpmath
    (float32 within a few ulps), and so with ties at the max."""
    ce = lossc.get("softmax_ce")
    rows = np.array([row for row, _ in WRONG_LABELS_AND_TIES])
    labels = np.array([label for _, label in WRONG_LABELS_AND_TIES])
    with mpmath.workdps(50):
        truth = [_mp_softmax_ce([mpmath.mpf(v) for v in row], label, mpmath.mpf(smoothing))
                 for row, label in WRONG_LABELS_AND_TIES]
    for dtype, rtol in ((np.float64, 1e-13), (np.float32, 2e-6)):
        value, (grad,) = ce.value_and_grad(rows.astype(dtype), labels, label_smoothing=smoothing, reduction="none")
        for k, (want, want_grad) in enumerate(truth):
            assert float(value[k]) == pytest.approx(float(want), rel=rtol), (dtype, k)
            for j, g in enumerate(want_grad):
                if abs(g) >= np.finfo(dtype).tiny:
                    assert float(grad[k, j]) == pytest.approx(float(g), rel=rtol), (dtype, k, j)


def test_all_ignored_batch_gives_zero_loss_and_gradient(rng):
    ce = lossc.get("softmax_ce")
    x = rng.normal(0, 1, (4, 3))
    loss, (grad,) = ce.value_and_grad(x, np.full(4, -1), reduction="sum", ignore_index=-1)
    assert loss == 0.0 and not grad.any()


def test_dtypes_are_preserved(rng):
    x, y = rng.normal(0, 2, (6, 5)), rng.integers(0, 5, 6)
    for dtype in (np.float16, np.float32, np.float64):
        loss, (grad,) = lossc.get("softmax_ce").value_and_grad(x.astype(dtype), y, reduction="none")
        assert loss.dtype == dtype and grad.dtype == dtype
        reference = lossc.get("softmax_ce")(x, y, reduction="none")
        np.testing.assert_allclose(loss, reference, rtol={np.float16: 3e-3, np.float32: 1e-6, np.float64: 1e-15}[dtype])


BAD = [
    (lambda ce: ce(np.zeros((2, 3)), np.array([0, 3])), ValueError, "class index 3 outside \\[0, 3\\)"),
    (lambda ce: ce(np.zeros((2, 3)), np.array([0, -2])), ValueError, "class index -2 outside .* or the ignore_index -100"),
    (lambda ce: ce(np.zeros((2, 3)), np.array([0.5, 1.0])), ValueError, "non-integer value 0.5"),
    (lambda ce: ce(np.zeros((2, 3)), np.array([0, 1, 2])), ValueError, r"expected \(2,\) \(the prediction's shape \(2, 3\) without the class axis\)"),
    (lambda ce: ce(np.zeros((2, 3)), np.array([0, 1]), axis=2), ValueError, "axis 2 is out of range"),
    (lambda ce: lossc.get("softmax_ce_dense")(np.zeros((2, 3)), np.zeros((2, 4))), ValueError, r"'label' has shape \(2, 4\)"),
]


@pytest.mark.parametrize("call, error, message", BAD, ids=[b[2] for b in BAD])
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call(lossc.get("softmax_ce"))


def test_no_rows_by_classes_temporary_beyond_the_gradient(rng):
    rows, classes = 20000, 500
    x = rng.normal(0, 1, (rows, classes))
    y = rng.integers(0, classes, rows)
    module = lossc.get("softmax_ce").bind((x, y), {}).module
    module.forward_backward(x, y, 1.0)  # warm the per-thread scratch
    tracemalloc.start()
    loss, (grad,) = module.forward_backward(x, y, 1.0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    extra = peak - grad.nbytes - loss.nbytes
    assert extra < 0.1 * rows * classes * 8, extra


def test_row_invariant_factors_are_hoisted_out_of_the_element_loop():
    """e·a/b (e varies along the row, a and b do not) becomes e·_v0 with _v0 = a/b computed
    once per row — same value; a lone invariant factor, a negation and a masked product x·[c]
    keep their form, and a row statistic counts as invariant."""
    from lossc.compiler.emit.row_stages import hoist_row_factors
    from lossc.compiler.reductions import CLASS_INDEX, rsum

    e, a, b, c, label = sympy.symbols("e a b c label", real=True)
    t = sympy.Symbol("_t0", real=True)
    indicator = sympy.Piecewise((1, sympy.Eq(CLASS_INDEX, label)), (0, True))
    assignments = [(t, sympy.exp(e) * a / (b + rsum(e)))]
    outputs = [e * a, -e * a, t * c * indicator, 2 * t * c]
    new_assignments, new_outputs = hoist_row_factors(assignments, outputs, {e, CLASS_INDEX}, frozenset())
    hoisted = dict(new_assignments)
    v0, v1 = sympy.symbols("_v0 _v1", real=True)
    assert hoisted[v0] == a / (b + rsum(e)) and hoisted[t] == sympy.exp(e) * v0
    assert new_outputs[:3] == outputs[:3] and new_outputs[3] == t * v1 and hoisted[v1] == 2 * c
    assert [s for s, _ in new_assignments] == [v0, t, v1]  # each defined before its first use
