"""`lossc build`: byte-identical rebuilds, --check, stale files, user specs via --out."""
import json
import os
import shutil

import numpy as np

from conftest import GENERATED, SPECS, run_cli

import lossc


def test_check_passes_on_the_checked_in_tree():
    result = run_cli("build", "--check", "--measure")
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


def test_two_builds_with_different_hash_seeds_are_byte_identical(tmp_path):
    outs = []
    for seed in ("1", "4242"):
        out = tmp_path / f"out{seed}"
        env = dict(os.environ, PYTHONHASHSEED=seed)
        result = run_cli("build", *map(str, sorted(SPECS.glob("*.yaml"))), "--out", str(out), "--no-measure", env=env)
        assert result.returncode == 0, result.stderr
        outs.append({p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()})
    assert outs[0] == outs[1]
    assert {k.as_posix() for k in outs[0]} >= {"numpy/sigmoid_bce__from_sigmoid_false.py", "losses/sigmoid_bce.json"}


def test_build_prints_progress_and_total(tmp_path):
    result = run_cli("build", str(SPECS / "l2.yaml"), "--out", str(tmp_path))
    assert result.returncode == 0
    assert result.stdout.splitlines()[0].startswith("l2: 1 variant(s), ")
    assert result.stdout.splitlines()[-1].startswith("built 1 spec(s)")


def test_check_lists_changed_missing_and_stale_files(tmp_path):
    copy = tmp_path / "generated"
    shutil.copytree(GENERATED, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "numpy" / "l1.py").write_text("tampered\n")
    (copy / "losses" / "huber.json").unlink()
    (copy / "numpy" / "old_loss.py").write_text("# left over\n")  # written by an earlier build: listed as owned
    owned = copy / "lossc-files.json"
    owned.write_text(json.dumps(json.loads(owned.read_text()) + ["numpy/old_loss.py"]))
    (copy / "numpy" / "mine.py").write_text("# the user's own\n")
    result = run_cli("build", "--check", "--no-measure", "--out", str(copy))
    assert result.returncode == 1
    for line in ("differs: numpy/l1.py", "missing: losses/huber.json", "stale (no spec produces it): numpy/old_loss.py",
                 "differs: lossc-files.json"):
        assert line in result.stderr
    assert "left alone (not written by lossc): numpy/mine.py" in result.stdout
    assert run_cli("build", "--no-measure", "--out", str(copy)).returncode == 0
    assert run_cli("build", "--check", "--no-measure", "--out", str(copy)).returncode == 0
    assert not (copy / "numpy" / "old_loss.py").exists()
    assert (copy / "numpy" / "mine.py").read_text() == "# the user's own\n"


USER_SPEC = """\
name: my_log_cosh
summary: log(cosh(pred − label)), written naively.
inputs:
  - {name: pred, role: prediction, differentiable: true}
  - {name: label, role: target, differentiable: false}
parameters:
  - {name: scale, type: float, default: 1.0, range: [0, null]}
loss: scale * (log(1 + exp(2 * (pred - label))) - (pred - label) - log(2))
"""


def test_user_spec_built_with_out_can_be_registered_and_used(tmp_path):
    spec = tmp_path / "my_log_cosh.yaml"
    spec.write_text(USER_SPEC)
    out = tmp_path / "built"
    assert run_cli("build", str(spec), "--out", str(out)).returncode == 0
    assert lossc.register_generated(out) == ["my_log_cosh"]
    loss = lossc.get("my_log_cosh")
    d = np.array([-800.0, -1.0, 0.0, 0.5, 800.0])
    value, (grad,) = loss.value_and_grad(d, np.zeros(5), reduction="none", scale=2.0)
    np.testing.assert_allclose(value, 2 * (np.abs(d) + np.log1p(np.exp(-2 * np.abs(d))) - np.log(2)), rtol=1e-13)
    np.testing.assert_allclose(grad, 2 * np.tanh(d), rtol=1e-13)


SCALAR_CONDITION_SPEC = """\
name: blend_by_parameter
summary: where() with a condition on a parameter only.
inputs:
  - {name: pred, role: prediction, differentiable: true}
  - {name: label, role: target, differentiable: false}
parameters:
  - {name: alpha, type: float, default: 0.3}
loss: where(alpha > 0.5, (pred - label)**2, abs(pred - label))
"""


def test_where_on_a_parameter_only_selects_at_run_time(tmp_path):
    spec = tmp_path / "blend_by_parameter.yaml"
    spec.write_text(SCALAR_CONDITION_SPEC)
    out = tmp_path / "built"
    assert run_cli("build", str(spec), "--out", str(out)).returncode == 0
    lossc.register_generated(out)
    loss = lossc.get("blend_by_parameter")
    pred, label = np.array([-2.0, 0.5, 3.0]), np.array([0.0, 1.0, 1.0])
    for alpha, want, want_grad in ((0.7, (pred - label) ** 2, 2 * (pred - label)), (0.3, np.abs(pred - label), np.sign(pred - label))):
        value, (grad,) = loss.value_and_grad(pred, label, reduction="none", alpha=alpha)
        np.testing.assert_array_equal(value, want)
        np.testing.assert_array_equal(grad, want_grad)


def test_list_and_show_name_the_losses_their_files_and_formulas():
    listed = run_cli("list")
    assert listed.returncode == 0 and {"huber", "softmax_ce", "sigmoid_bce"} <= set(listed.stdout.split())
    shown = run_cli("show", "sigmoid_bce")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("sigmoid_bce: ") and lines[0].endswith("generated/specs/sigmoid_bce.yaml)")
    variants = [l for l in lines if l.startswith("variant ")]
    assert len(variants) == 2 and all("generated/numpy/sigmoid_bce__from_sigmoid_" in v for v in variants)
    assert all("native CPU kernels' source" in v for v in variants)
    assert any(l.strip().startswith("d/dpred") for l in lines)
    rows = run_cli("show", "softmax_ce").stdout
    assert "generated/cupy/softmax_ce__" in rows and "native CPU kernels' source" in rows  # row kernels too
    assert "generated/jax/softmax_ce__" in rows
    unknown = run_cli("show", "no_such_loss")
    assert unknown.returncode == 1 and "no loss named 'no_such_loss'" in unknown.stderr
