"""`lossc accuracy`: every loss, variant and gradient within the required bounds."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import spec_paths
from lossc.kernels import native
from lossc.compiler.accuracy import measure
from lossc.compiler.spec import load_spec


@pytest.mark.parametrize("kernels", ["numpy", "native", "jax"])
@pytest.mark.parametrize("path", spec_paths(), ids=lambda p: p.stem)
def test_accuracy_bounds(path, kernels):
    if kernels == "native" and not native.available():
        pytest.skip(native.status())
    if kernels == "jax":
        jax = pytest.importorskip("jax")
        jax.config.update("jax_enable_x64", True)
        if load_spec(path).pair_inputs:
            pytest.skip("losses over pair inputs are not in the JAX target")
    rows = measure(path, kernels=kernels)
    assert rows
    for row in rows:
        assert row.points > 0
        assert row.nonfinite == 0, row
        bound = 4e-6 if row.dtype == "float32" else 1e-12
        assert row.max_error <= bound, row


def test_grid_covers_extremes():
    grids = {p.stem: {i.name: i.accuracy_grid for i in load_spec(p).inputs} for p in spec_paths()}
    for name in ("sigmoid_bce", "sigmoid_focal", "logistic"):
        assert min(grids[name]["pred"]) == -1e4 and max(grids[name]["pred"]) == 1e4
    assert {0.0, 1.0} <= set(grids["sigmoid_focal"]["label"])


def test_accuracy_cli_prints_table():
    result = subprocess.run([sys.executable, "-m", "lossc.compiler.cli", "accuracy", "l2", "sigmoid_focal"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("kernels: NumPy;")
    header = lines[1].split()
    assert header[:5] == ["loss", "variant", "output", "numpy32", "numpy64"] and header[-1] == "status"
    assert set(header[5:-1]) <= {"native32", "native64", "jax32", "jax64"}
    focal = next(l.split() for l in lines if l.startswith("sigmoid_focal") and "d/dpred" in l)
    assert focal[-1] == "ok" and len(focal) == len(header)
    assert (focal[5] == "-") == (not native.available())


def test_accuracy_detects_a_wrong_kernel(monkeypatch):
    import lossc.generated.numpy.l2 as l2

    real = l2.forward_backward
    monkeypatch.setattr(l2, "forward_backward", lambda *a, **k: (real(*a, **k)[0] * (1 + 1e-9), real(*a, **k)[1]))
    rows = {(r.output, r.dtype): r for r in measure(next(p for p in spec_paths() if p.stem == "l2"))}
    assert not rows[("loss", "float64")].ok
    assert rows[("loss", "float32")].ok and rows[("d/dpred", "float64")].ok


def test_row_losses_are_measured_on_moderate_windows_too(monkeypatch):
    """Softmax CE's grid row is dominated by its ±1e4 logits (exact results); the windows of
    three neighbouring values measure moderate logits, where a 1e-9 error in the gradient
    of one row of them is caught."""
    from lossc.compiler.accuracy import row_layouts
    import lossc.generated.numpy.softmax_ce__from_logits_false__class_weighted_false as ce

    path = next(p for p in spec_paths() if p.stem == "softmax_ce")
    layouts = row_layouts(load_spec(path))
    assert [len(v["pred"]) for v, _ in layouts] == [7, 3, 3, 3, 3, 3]
    assert layouts[3][0]["pred"] == [-1, 0, 0.5] and [p["label"] for p in layouts[3][1]] == [0, 1, 2]
    real = ce.forward_backward

    def off_in_a_moderate_row(*args, **kwargs):
        loss, (grad,) = real(*args, **kwargs)
        if np.all(np.abs(kwargs["pred"]) <= 1):
            grad = grad * (1 + 1e-9)
        return loss, (grad,)

    monkeypatch.setattr(ce, "forward_backward", off_in_a_moderate_row)
    plain = {"from_logits": False, "class_weighted": False}
    rows = {r.output: r for r in measure(path, dtypes=(np.float64,)) if r.variant == plain}
    assert not rows["d/dpred"].ok and rows["loss"].ok


def test_the_truth_ignores_only_terms_below_any_float():
    """An absorbed term below 2^-1200 (exp(−1e12) in 1 − exp(−d²) at d = 1e6) no longer asks for
    more bits than exist; a small term that a float can hold still raises the precision until
    a cancellation after it is exact."""
    import mpmath
    import sympy

    from lossc.compiler.mp_eval import truth

    d, t = sympy.symbols("d t", real=True)
    assert truth(1 - sympy.exp(-d**2), {"d": 1e6}) == 1
    recovered = truth((1 + sympy.exp(t)) - 1, {"t": -690.0})  # e^-690 ≈ 2^-995: kept, then exact
    with mpmath.workdps(60):
        assert abs(recovered / mpmath.exp(-690) - 1) < mpmath.mpf(10) ** -40
