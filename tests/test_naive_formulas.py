"""Naive formulas in, accurate kernels out.

Each spec in ``naive_specs/`` writes a loss from the literature the way its paper writes it
(no stable spelling). Compiled, its NumPy kernel must meet the accuracy bounds on extreme
grids (logits to ±1e3, residuals from 1e-9 up) in float32 and float64, for the loss and
every gradient, against the 50-digit truth of the formula as declared — and its values at
ordinary points must equal an independent mpmath implementation of the paper's formula.
The specs in ``naive_specs/unfixed/`` are formulas no rule fixes yet: building them warns,
and ``--strict`` fails.
"""
import subprocess
import sys
import warnings
from pathlib import Path

import mpmath
import numpy as np
import pytest

from lossc.compiler.build import build, compile_spec
from lossc.compiler.verify import AccuracyError, AccuracyWarning, load_kernel_text
from lossc.compiler.emit.numpy_emitter import emit_numpy

HERE = Path(__file__).parent / "naive_specs"
NAIVE = sorted(HERE.glob("*.yaml"))
UNFIXED = sorted((HERE / "unfixed").glob("*.yaml"))

mp = mpmath


def _sig(x):
    return 1 / (1 + mp.exp(-x))


def _bce(x, y):
    return -(y * mp.log(_sig(x)) + (1 - y) * mp.log(1 - _sig(x)))


def _log_softmax(row, k):
    return row[k] - mp.log(mp.fsum(mp.exp(v) for v in row))


# Independent references: the paper's formula in mpmath, (inputs, parameters) → loss.
ELEMENT_REFERENCES = {
    "pseudo_huber": lambda d, delta: delta**2 * (mp.sqrt(1 + (d / delta) ** 2) - 1),
    "poly1_bce": lambda pred, label, eps: _bce(pred, label) + eps * (1 - (_sig(pred) * label + (1 - _sig(pred)) * (1 - label))),
    "poly1_bce_negative": lambda pred, label, eps: (
        _bce(pred, label) + eps * (1 - (_sig(pred) * label + (1 - _sig(pred)) * (1 - label)))),
    "asymmetric": lambda pred, label, gamma_pos, gamma_neg, m: (
        -label * (1 - _sig(pred)) ** gamma_pos * mp.log(_sig(pred))
        - (1 - label) * max(_sig(pred) - m, 0) ** gamma_neg * mp.log(1 - max(_sig(pred) - m, 0))),
    "focal_explicit_sigmoid": lambda pred, label, alpha, gamma: (
        -label * alpha * (1 - _sig(pred)) ** gamma * mp.log(_sig(pred))
        - (1 - label) * (1 - alpha) * _sig(pred) ** gamma * mp.log(1 - _sig(pred))),
    "log_cosh": lambda d: mp.log(mp.cosh(d)),
    "cauchy": lambda d, c: c**2 / 2 * mp.log(1 + (d / c) ** 2),
    "welsch": lambda d, c: c**2 / 2 * (1 - mp.exp(-(d / c) ** 2)),
    "barron": lambda d, alpha, c: abs(alpha - 2) / alpha * (((d / c) ** 2 / abs(alpha - 2) + 1) ** (alpha / 2) - 1),
    "charbonnier": lambda d, eps: mp.sqrt(d**2 + eps**2) - eps,
    "bce_exp_ratio": _bce,
    "bce_softplus_form": _bce,
    "logistic_pm1": lambda pred, label: mp.log(1 + mp.exp(-label * pred)),
    "quality_focal": lambda pred, label, beta: -abs(label - _sig(pred)) ** beta * (
        (1 - label) * mp.log(1 - _sig(pred)) + label * mp.log(_sig(pred))),
    "squared_log_error": lambda pred, label: (mp.log(1 + pred) - mp.log(1 + label)) ** 2,
    "tukey": lambda d, c: c**2 / 6 * (1 - (1 - (d / c) ** 2) ** 3) if abs(d) < c else c**2 / 6,
    "geman_mcclure": lambda d, c: 2 * (d / c) ** 2 / ((d / c) ** 2 + 4),
}
ROW_REFERENCES = {
    "softmax_ce_naive": lambda row, y: -_log_softmax(row, y),
    "generalized_ce": lambda row, y, q: (1 - mp.exp(_log_softmax(row, y)) ** q) / q,
    "softmax_focal_naive": lambda row, y, gamma: -(1 - mp.exp(_log_softmax(row, y))) ** gamma * _log_softmax(row, y),
    "label_smoothing_ce": lambda row, y, eps: -mp.fsum(((1 - eps) * (j == y) + eps / len(row)) * _log_softmax(row, j)
                                                       for j in range(len(row))),
    "poly1_softmax": lambda row, y, eps: -_log_softmax(row, y) + eps * (1 - mp.exp(_log_softmax(row, y))),
}


def test_the_literature_set_is_large():
    assert len(NAIVE) >= 20 and set(ELEMENT_REFERENCES) | set(ROW_REFERENCES) == {p.stem for p in NAIVE}


@pytest.fixture(scope="module")
def compiled():
    with warnings.catch_warnings():
        warnings.simplefilter("error", AccuracyWarning)
        return {path.stem: compile_spec(path, measure=True) for path in NAIVE}


@pytest.mark.parametrize("path", NAIVE, ids=lambda p: p.stem)
def test_naive_formula_compiles_to_an_accurate_kernel(compiled, path):
    verdict = compiled[path.stem].verdicts[0]
    outputs = {(row.output, row.dtype) for row in verdict.rows}
    expected = {"loss", *(f"d/d{i.name}" for i in compiled[path.stem].spec.differentiable_inputs)}
    assert {o for o, _ in outputs} >= expected and {d for _, d in outputs} == {"float32", "float64"}
    for row in verdict.rows:
        assert row.points >= 10 and row.ok, (row.output, row.dtype, row.max_error, row.worst_inputs)
    assert not compiled[path.stem].findings


def _kernel(compiled, name):
    derived = compiled[name].verdicts[0].derived
    return load_kernel_text(emit_numpy(derived, f"{name}.yaml"), derived.ir.module_name), compiled[name].spec


@pytest.mark.parametrize("name", sorted(ELEMENT_REFERENCES))
def test_naive_element_loss_equals_the_papers_formula(compiled, name):
    module, spec = _kernel(compiled, name)
    params = {p.name: p.default for p in spec.runtime_params}
    rng = np.random.default_rng(7)
    columns = {i.name: rng.choice(i.accuracy_grid, 12) * rng.uniform(0.5, 1.0, 12) if i.differentiable
               else rng.choice(i.accuracy_grid, 12) for i in spec.inputs}
    if name == "tukey":
        columns["d"] = np.clip(columns["d"], -9.0, 9.0)
    got = module.forward(**columns, **params)
    for k in range(12):
        with mp.workdps(1200):  # 1 − σ(1000) needs ~440 digits
            want = ELEMENT_REFERENCES[name](*(mp.mpf(float(columns[i.name][k])) for i in spec.inputs),
                                            *(mp.mpf(v) for v in params.values()))
        assert abs(got[k] - float(want)) <= 1e-13 * abs(float(want)) + 1e-300, (name, k, got[k], want)


@pytest.mark.parametrize("name", sorted(ROW_REFERENCES))
def test_naive_row_loss_equals_the_papers_formula(compiled, name):
    module, spec = _kernel(compiled, name)
    params = {p.name: p.default for p in spec.runtime_params}
    rng = np.random.default_rng(3)
    pred = rng.normal(0, 4, (6, 5))
    pred[0, 2] = 900.0  # a confident row
    label = rng.integers(0, 5, 6).astype(np.float64)
    got = module.forward(pred=pred, label=label, **params)
    for r in range(6):
        with mp.workdps(1200):
            want = ROW_REFERENCES[name]([mp.mpf(float(v)) for v in pred[r]], int(label[r]),
                                        *(mp.mpf(v) for v in params.values()))
        assert abs(got[r] - float(want)) <= 1e-12 * abs(float(want)) + 1e-300, (name, r, got[r], want)


@pytest.mark.parametrize("path", UNFIXED, ids=lambda p: p.stem)
def test_a_formula_no_rule_fixes_warns_and_strict_fails(path, tmp_path):
    with pytest.warns(AccuracyWarning, match="digits lost|is not finite"):
        build([path], tmp_path / "out", full=False, log=lambda *_: None, measure=True)
    with pytest.raises(AccuracyError, match="miss their accuracy bounds"):
        build([path], tmp_path / "strict", full=False, log=lambda *_: None, measure=True, strict=True)
    assert not (tmp_path / "strict").exists()  # nothing written


def test_lossc_check_strict_exits_nonzero_and_names_the_worst_input(tmp_path):
    path = HERE / "unfixed" / "gce_binary_mixture.yaml"
    plain = subprocess.run([sys.executable, "-m", "lossc.compiler.cli", "check", str(path)], capture_output=True, text=True)
    assert plain.returncode == 0 and "warning:" in plain.stderr and "e.g. {pred=-" in plain.stderr
    strict = subprocess.run([sys.executable, "-m", "lossc.compiler.cli", "check", "--strict", str(path)],
                            capture_output=True, text=True)
    assert strict.returncode == 1 and "error:" in strict.stderr and "d/dpred in float64 is not finite" in strict.stderr


def _spec(tmp_path, loss, grid="[-3, -1, 0, 1, 3]"):
    path = tmp_path / "degenerate.yaml"
    path.write_text(f"name: degenerate\nsummary: s\ninputs:\n  - name: pred\n    role: prediction\n"
                    f"    differentiable: true\n    accuracy_grid: {grid}\nloss: {loss}\n", encoding="utf-8")
    return path


def test_a_gradient_that_is_identically_zero_is_a_finding(tmp_path):
    findings = compile_spec(_spec(tmp_path, "where(pred > 0, 1, 0)"), measure=True).findings
    assert any("d loss/d pred is identically 0" in f for f in findings)


def test_an_undefined_gradient_is_a_finding(tmp_path):
    findings = compile_spec(_spec(tmp_path, "sqrt(abs(pred))"), measure=True).findings
    assert any("d/dpred is not a finite real number at {pred=0}" in f for f in findings), findings


def test_a_removable_singularity_of_the_declared_derivative_is_not_a_finding(tmp_path):
    """γ·p^γ·log(1 − p)/p at p = 0: the stable form (p^(γ−1)) is finite there."""
    path = _spec(tmp_path, "pred**2 * log(1 + pred)", grid="[0, 0.5, 1, 3]")
    assert compile_spec(path, measure=True).findings == []
