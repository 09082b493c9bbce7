"""Pair terms: inputs built in the spec language from every pair of two batches (SDML's
distance matrix), their gradients by the chain rule, malformed pair specs, bad input."""
import numpy as np
import pytest

import lossc
from lossc.compiler.build import build, compile_spec
from lossc.compiler.spec import SpecError
from lossc.core.registry import register_generated

PAIR_SPEC = """\
name: {name}
summary: A loss over the pairs of two batches.
class_axis: last
pair_inputs:
  - name: x1
    side: row
    differentiable: true
  - name: x2
    side: column
    differentiable: true
inputs:
  - name: distance
    role: prediction
    differentiable: true
    from_pairs: {from_pairs}
  - name: position
    role: target
    differentiable: false
    per: row
    class_index: true
    from_pairs: row_index
parameters:
  - name: scale
    type: float
    default: 1.5
    range: [0, 10]
loss: -pick(log_softmax(-scale * distance), position)
"""
CANARY = "CANARY_FILE"


def write_spec(tmp_path, text, name="pairs_demo"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def l1_pairs(tmp_path_factory):
    """A user-built pair loss with an L1 summand: |x1 − x2| summed over the features."""
    folder = tmp_path_factory.mktemp("pairs")
    spec = write_spec(folder, PAIR_SPEC.format(name="l1_pairs_demo", from_pairs="sum(abs(x1 - x2))"), "l1_pairs_demo")
    assert build([spec], folder / "out", full=False, log=lambda *_: None) == []
    register_generated(folder / "out", replace=True)
    return lossc.get("l1_pairs_demo")


def l1_pairs_reference(x1, x2, scale):
    distance = np.abs(x1[:, None, :] - x2[None, :, :]).sum(-1)
    z = -scale * distance
    top = z.max(axis=1, keepdims=True)
    log_softmax = z - top - np.log(np.exp(z - top).sum(axis=1, keepdims=True))
    return -np.diagonal(log_softmax)


def test_user_pair_loss_values_and_finite_differences(l1_pairs):
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(0, 1, (6, 3)), rng.normal(0, 1, (6, 3))
    value, (d1, d2) = l1_pairs.value_and_grad(x1, x2, scale=0.7, reduction="sum")
    np.testing.assert_allclose(l1_pairs(x1, x2, scale=0.7, reduction="none"), l1_pairs_reference(x1, x2, 0.7), rtol=1e-13)
    assert value == pytest.approx(l1_pairs_reference(x1, x2, 0.7).sum(), rel=1e-13)
    h = 1e-6
    for grad, which in ((d1, 0), (d2, 1)):
        for index in [(0, 0), (3, 2), (5, 1)]:
            bumped = [[x1.copy(), x2.copy()] for _ in range(2)]
            bumped[0][which][index] += h
            bumped[1][which][index] -= h
            numeric = (l1_pairs_reference(*bumped[0], 0.7).sum() - l1_pairs_reference(*bumped[1], 0.7).sum()) / (2 * h)
            assert grad[index] == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_pair_blocks_cover_rows_of_any_count(l1_pairs, monkeypatch):
    """Matrices and gradients built a block of rows at a time equal the one-block result."""
    import lossc.core.pairs

    rng = np.random.default_rng(1)
    x1, x2 = rng.normal(0, 1, (9, 4)), rng.normal(0, 1, (9, 4))
    whole = l1_pairs.value_and_grad(x1, x2, reduction="none")
    monkeypatch.setattr(lossc.core.pairs, "BLOCK_ELEMENTS", 50)  # 50 // (9 · 4) = 1 row per block
    blocks = l1_pairs.value_and_grad(x1, x2, reduction="none")
    np.testing.assert_allclose(blocks[0], whole[0], rtol=1e-15)
    for a, b in zip(blocks[1], whole[1]):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def test_sdml_gradients_match_torch_autograd(torch):
    """SDML as declared (pair distances, log_softmax, KL against the smoothed identity, mean
    over the row as MXNet's KLDivLoss) differentiated by PyTorch, against the compiled chain."""
    rng = np.random.default_rng(2)
    x1, x2, s = rng.normal(0, 1, (7, 5)), rng.normal(0, 1, (7, 5)), 0.3
    loss = lossc.get("sdml")
    value, (d1, d2) = loss.value_and_grad(x1, x2, smoothing_parameter=s, reduction="sum")
    t1, t2 = (torch.tensor(a, requires_grad=True) for a in (x1, x2))
    distance = ((t1[:, None, :] - t2[None, :, :]) ** 2).sum(-1)
    eye = torch.eye(7, dtype=torch.float64)
    q = eye * (1 - s) + (1 - eye) * s / 6
    total = (q * (torch.log(q + 1e-12) - torch.log_softmax(-distance, dim=1))).sum()
    total.backward()
    assert value == pytest.approx(total.item(), rel=1e-12)
    np.testing.assert_allclose(d1, t1.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(d2, t2.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_bad_pair_input_is_a_clear_error():
    loss = lossc.get("sdml")
    with pytest.raises(ValueError, match="pair input 'x1' must be a 2-D floating-point"):
        loss(np.ones(4), np.ones((4, 2)))
    with pytest.raises(ValueError, match="different feature sizes"):
        loss(np.ones((4, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="needs at most 3 row-side samples, got 4"):
        loss(np.ones((4, 2)), np.ones((3, 2)))
    with pytest.raises(TypeError, match="missing input 'x2'"):
        loss(np.ones((4, 3)))
    with pytest.raises(TypeError, match="unknown argument"):
        loss(np.ones((4, 3)), np.ones((4, 3)), distance=np.ones((4, 4)))


BAD_PAIR_SPECS = {
    "from_pairs without pair_inputs": (
        lambda t: t.replace(t[t.index("pair_inputs:"):t.index("inputs:\n  - name: distance")], ""),
        "from_pairs needs pair_inputs"),
    "class axis not last": (lambda t: t.replace("class_axis: last", "class_axis: parameter"), "needs class_axis: last"),
    "one side only": (lambda t: t.replace("side: column", "side: row"), "each side"),
    "unknown side": (lambda t: t.replace("side: column", "side: diagonal"), "expected one of row, column"),
    "input without from_pairs": (lambda t: t.replace("    from_pairs: row_index\n", ""), "needs from_pairs"),
    "row input not row_index": (lambda t: t.replace("from_pairs: row_index", "from_pairs: sum(x1)"), "row_index"),
    "not a sum": (lambda t: t.replace("sum((x1 - x2)**2)", "(x1 - x2)**2"), "expected sum("),
    "nested reduction": (lambda t: t.replace("sum((x1 - x2)**2)", "sum(logsumexp(x1) - x2)"), "inside a pair term"),
    "non-pair name": (lambda t: t.replace("sum((x1 - x2)**2)", "sum(x1 - position)"), "'position' in a pair term"),
    "no pair input used": (lambda t: t.replace("sum((x1 - x2)**2)", "sum(scale)"), "must use the pair inputs"),
    "hostile summand": (lambda t: t.replace("sum((x1 - x2)**2)", f"sum(__import__('os').system('touch {CANARY}'))"),
                        "'__import__' in a pair term"),
    "pair input name clash": (lambda t: t.replace("name: x2", "name: scale"), "duplicate name 'scale'"),
}


@pytest.mark.parametrize("case", sorted(BAD_PAIR_SPECS))
def test_malformed_pair_spec_is_rejected_with_a_located_error(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    edit, expected = BAD_PAIR_SPECS[case]
    text = edit(PAIR_SPEC.format(name="pairs_demo", from_pairs="sum((x1 - x2)**2)"))
    path = write_spec(tmp_path, text)
    with pytest.raises(SpecError) as info:
        compile_spec(path)
    assert expected in str(info.value), str(info.value)
    assert info.value.line > 0
    assert not (tmp_path / CANARY).exists()


def test_cli_check_prints_pair_terms_and_rejects_a_bad_one(tmp_path):
    import subprocess
    import sys

    good = write_spec(tmp_path, PAIR_SPEC.format(name="pairs_demo", from_pairs="sum((x1 - x2)**2)"))
    result = subprocess.run([sys.executable, "-m", "lossc.compiler.cli", "check", str(good)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "pair term distance[i, j] = sum over features of (x1 - x2)**2" in result.stdout
    assert "d summand / d x2 = -2*x1 + 2*x2" in result.stdout
    bad = write_spec(tmp_path, PAIR_SPEC.format(name="pairs_demo", from_pairs="sum(x1 - distance)"), "bad")
    result = subprocess.run([sys.executable, "-m", "lossc.compiler.cli", "check", str(bad)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "inputs[0].from_pairs: 'distance' in a pair term" in result.stderr
