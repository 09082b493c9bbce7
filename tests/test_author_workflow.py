"""The spec author's workflow: commands on one's own specs and built folders, `lossc new`,
every mistake of a spec reported and explained, `exposed_as` names that exist in their layers."""
import json
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

from conftest import GENERATED, SPECS, run_cli

import lossc
from lossc.core import exposure
from lossc.compiler.build import build
from lossc.compiler.spec import SpecError, load_spec, parse_spec_text

GCE = """\
name: {name}
summary: Generalized cross-entropy on a sigmoid.
inputs:
  - {{name: pred, role: prediction, differentiable: true, accuracy_grid: [-30, -1, 0, 1, 30]}}
  - {{name: label, role: target, differentiable: false, accuracy_grid: [0, 1]}}
parameters:
  - {{name: q, type: float, default: 0.7, range: [0.01, 1]}}
loss: "label * (1 - sigmoid(pred)**q) / q + (1 - label) * (1 - sigmoid(-pred)**q) / q"
{extra}"""


def gce_reference(pred, label, q):
    """The generalized cross-entropy written directly in NumPy (float64, moderate logits)."""
    p = 1 / (1 + np.exp(-pred))
    return label * (1 - p**q) / q + (1 - label) * (1 - (1 - p) ** q) / q


def write_gce(folder, name="my_gce", extra=""):
    path = folder / f"{name}.yaml"
    path.write_text(GCE.format(name=name, extra=extra))
    return path


# --- commands on the author's own losses -------------------------------------------------

def test_show_and_accuracy_take_a_spec_file(tmp_path):
    spec = write_gce(tmp_path)
    shown = run_cli("show", str(spec), "--no-measure")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("my_gce: Generalized cross-entropy") and "d/dpred" in shown.stdout
    measured = run_cli("accuracy", str(spec), "--no-measure", "--out", str(tmp_path / "built"))
    assert measured.returncode == 0, measured.stderr
    rows = [line for line in measured.stdout.splitlines() if line.startswith("my_gce ")]
    assert len(rows) == 3 and all(line.endswith("ok") for line in rows)
    assert (tmp_path / "built" / "specs" / "my_gce.yaml").read_text() == spec.read_text()  # --out keeps the build


def test_commands_take_a_built_folder(tmp_path):
    build([write_gce(tmp_path)], tmp_path / "built", full=False, log=lambda *_: None)
    folder = str(tmp_path / "built")
    listed = run_cli("list", "--generated", folder)
    assert listed.returncode == 0 and listed.stdout.split()[0] == "my_gce"
    shown = run_cli("show", "my_gce", "--generated", folder)
    assert shown.returncode == 0 and f"{folder}/numpy/my_gce.py" in shown.stdout, shown.stderr
    measured = run_cli("accuracy", "--generated", folder)
    assert measured.returncode == 0 and "my_gce " in measured.stdout, measured.stderr
    docs = run_cli("docs", "--generated", folder, "--format", "md", "--no-accuracy", "--out", str(tmp_path / "d"))
    assert docs.returncode == 0, docs.stderr
    assert "# my_gce" in (tmp_path / "d" / "my_gce.md").read_text()


def test_a_command_that_selects_nothing_fails_with_a_message(tmp_path):
    unknown = run_cli("accuracy", "no_such_loss")
    assert unknown.returncode == 1 and "no loss named 'no_such_loss'" in unknown.stderr
    assert "softmax_ce" in unknown.stderr  # the known names are listed
    (tmp_path / "empty" / "losses").mkdir(parents=True)
    empty = run_cli("accuracy", "--generated", str(tmp_path / "empty"))
    assert empty.returncode == 1 and "holds no built losses" in empty.stderr
    not_built = run_cli("show", "x", "--generated", str(tmp_path))
    assert not_built.returncode == 1 and "is not a built folder" in not_built.stderr
    missing = run_cli("show", str(tmp_path / "missing.yaml"))
    assert missing.returncode == 1 and "no such spec file" in missing.stderr


def test_docs_index_shows_a_hostile_summary_as_text(tmp_path):
    """A spec's summary reaches the index through the docs folder's record: escaped there too."""
    spec = write_gce(tmp_path).read_text().replace("summary: Generalized cross-entropy on a sigmoid.",
                                                   'summary: "<script>alert(1)</script> | & </td>"')
    (tmp_path / "hostile_gce.yaml").write_text(spec.replace("name: my_gce", "name: hostile_gce"))
    for fmt in ("html", "md"):
        result = run_cli("docs", str(tmp_path / "hostile_gce.yaml"), "--format", fmt, "--no-accuracy",
                         "--out", str(tmp_path / fmt))
        assert result.returncode == 0, result.stderr
        index = (tmp_path / fmt / f"index.{fmt}").read_text()
        assert "<script>" not in index and "&lt;script&gt;" in index and "</td>\"" not in index, index
    assert "\\| &amp;" in (tmp_path / "md" / "index.md").read_text()  # no table break in Markdown


def test_docs_index_lists_every_loss_documented_in_the_folder(tmp_path):
    out = str(tmp_path / "d")
    for name in ("huber", "l1"):
        result = run_cli("docs", name, "--format", "html", "--no-accuracy", "--out", out)
        assert result.returncode == 0, result.stderr
    index = (tmp_path / "d" / "index.html").read_text()
    assert 'href="huber.html"' in index and 'href="l1.html"' in index


def test_register_generated_of_the_same_folder_again_refreshes_it(tmp_path):
    build([write_gce(tmp_path, "gce_refresh")], tmp_path / "built", full=False, log=lambda *_: None)
    assert lossc.register_generated(tmp_path / "built") == ["gce_refresh"]
    assert lossc.register_generated(tmp_path / "built") == ["gce_refresh"]  # twice: no "already registered"
    pred, label = np.array([0.3, -2.0]), np.array([1.0, 0.0])
    np.testing.assert_allclose(lossc.get("gce_refresh")(pred, label, reduction="none"), gce_reference(pred, label, 0.7),
                               rtol=1e-13)
    (tmp_path / "gce_refresh.yaml").write_text(GCE.format(name="gce_refresh", extra="").replace("default: 0.7",
                                                                                                "default: 0.4"))
    build([tmp_path / "gce_refresh.yaml"], tmp_path / "built", full=False, log=lambda *_: None)
    lossc.register_generated(tmp_path / "built")
    np.testing.assert_allclose(lossc.get("gce_refresh")(pred, label, reduction="none"), gce_reference(pred, label, 0.4),
                               rtol=1e-13)
    (tmp_path / "other").mkdir()
    build([write_gce(tmp_path / "other", "gce_refresh")], tmp_path / "other_built", full=False, log=lambda *_: None)
    with pytest.raises(ValueError, match="already registered from"):
        lossc.register_generated(tmp_path / "other_built")  # one name, two folders: an error


def test_register_generated_of_the_package_folder_returns_its_losses():
    """`lossc build SPEC` (into the package) then register_generated of that folder works."""
    package = GENERATED
    assert lossc.register_generated(package) == sorted(p.stem for p in (package / "losses").glob("*.json"))


# --- lossc new ----------------------------------------------------------------------------

@pytest.mark.parametrize("class_axis", [False, True], ids=["element", "class_axis"])
def test_new_writes_a_spec_that_checks_and_a_test_that_passes_and_can_fail(class_axis, tmp_path):
    result = run_cli("new", "my_new_loss", *(["--class-axis"] if class_axis else []), "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    spec, test = tmp_path / "my_new_loss.yaml", tmp_path / "test_my_new_loss.py"
    checked = run_cli("check", str(spec), "--strict")
    assert checked.returncode == 0 and "warning" not in checked.stderr, checked.stderr
    assert "class_axis: parameter" in spec.read_text() if class_axis else "class_axis" not in spec.read_text()
    passed = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    spec.write_text(re.sub(r"^loss: (.*)$", r"loss: 2 * (\1)", spec.read_text(), flags=re.M))  # not the reference
    failed = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert failed.returncode == 1, failed.stdout


@pytest.mark.parametrize("name", ["Not-A-Name", 'x")\nimport os\nos.system("touch pwned")\n#', "a\nloss: pred"])
def test_new_refuses_bad_names_and_writes_nothing(name, tmp_path):
    """The name reaches a YAML spec and a Python test: anything but a loss name is refused first."""
    bad = run_cli("new", name, "--dir", str(tmp_path))
    assert bad.returncode == 1 and "is not an identifier" in bad.stderr and not list(tmp_path.iterdir())


def test_new_refuses_existing_files(tmp_path):
    assert run_cli("new", "twice", "--dir", str(tmp_path)).returncode == 0
    again = run_cli("new", "twice", "--dir", str(tmp_path))
    assert again.returncode == 1 and "already exists" in again.stderr


# --- mistakes explained -------------------------------------------------------------------

MANY_MISTAKES = """\
name: many
summary: Several mistakes at once.
inputs:
  - {name: pred, role: prediction, differentiable: true}
  - {name: label, role: sideways, differentiable: false}
parameters:
  - {name: q, type: int, default: 0.7}
  - {name: r, type: float, default: -1, range: [0, null]}
definitions:
  - {name: d, expr: "pred - lable"}
loss: d * alpha + r * q
exposed_as:
  mmdet: MSELoss
"""


def test_every_error_of_a_spec_is_reported_in_line_order(tmp_path):
    with pytest.raises(SpecError) as info:
        parse_spec_text(MANY_MISTAKES, "many.yaml")
    errors = info.value.errors
    expected = [(5, "inputs[1].role", "expected one of prediction, target, extra"),
                (7, "parameters[0].default", "expected an integer for an int parameter"),
                (8, "parameters[1].default", "must be at least 0 (no upper limit)"),
                (10, "definitions[0].expr", "undefined symbol 'lable' (did you mean 'label'?)"),
                (11, "loss", "undefined symbol 'alpha': declare it under parameters:"),
                (13, "exposed_as.mmdet", "lossc.mmdet.MSELoss is a handwritten mmdet API that runs 'mse'")]
    assert len(errors) == len(expected), errors
    for error, (line, field, words) in zip(errors, expected):
        assert error.startswith(f"many.yaml:{line}: {field}: ") and words in error, error
    assert (info.value.line, info.value.field) == (5, "inputs[1].role")
    path = tmp_path / "many.yaml"
    path.write_text(MANY_MISTAKES)
    result = run_cli("check", str(path))
    assert result.returncode == 1 and result.stderr.count("error: ") == len(expected), result.stderr


def test_a_number_yaml_reads_as_text_is_explained():
    text = GCE.format(name="x", extra="").replace("[-30, -1, 0, 1, 30]", "[-1e20, 0, 1e20]")
    with pytest.raises(SpecError, match=r"got str '-1e20' \(YAML reads an exponent without a decimal point as "
                                        r"text: write -1\.0e\+20\)"):
        parse_spec_text(text, "x.yaml")


def test_accuracy_says_why_a_row_fails_and_leaks_no_numpy_warning(tmp_path):
    spec = tmp_path / "hypot.yaml"  # sqrt(pred² + 1) overflows float32 at 1e20: non-finite where the truth is not
    spec.write_text("name: hypot\nsummary: s\ninputs:\n  - {name: pred, role: prediction, differentiable: true, "
                    "accuracy_grid: [-1.0e+20, -1, 0, 1, 1.0e+20, 1.0e+39]}\nloss: sqrt(pred**2 + 1)\n")
    build([spec], tmp_path / "built", full=False, log=lambda *_: None)
    from lossc.compiler.accuracy import accuracy_report
    from lossc.compiler.workspace import selection

    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 1e39 does not fit float32: skipped there, no overflow warning
        with selection(["hypot"], tmp_path / "built") as selected:
            assert not accuracy_report(selected, log=lines.append)
    loss_row = next(line for line in lines if line.startswith("hypot") and " loss " in line)
    assert "FAIL (numpy float32: 2 non-finite value(s) where the truth is finite" in loss_row, loss_row


# --- exposed_as ---------------------------------------------------------------------------

EXPOSED = "exposed_as:\n  gluon: GCELoss\n  mmdet: GCELoss\n  paddle: gce_loss\n"


@pytest.fixture(scope="module")
def exposed_gce(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exposed")
    build([write_gce(folder, "exposed_gce", EXPOSED)], folder / "built", full=False, log=lambda *_: None)
    lossc.register_generated(folder / "built")
    return "exposed_gce"


def test_exposed_names_exist_in_gluon_and_mmdet(exposed_gce):
    import lossc.gluon
    import lossc.mmdet

    pred, label = np.array([[0.3, -2.0, 4.0], [1.5, 0.2, -0.7]]), np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    want = gce_reference(pred, label, 0.5)
    gluon_loss = lossc.gluon.GCELoss(q=0.5)
    np.testing.assert_allclose(gluon_loss(pred, label), want.mean(axis=1), rtol=1e-13)  # gluon: mean over non-batch
    value, (grad,) = gluon_loss.value_and_grad(pred, label)
    step = 1e-6
    numeric = (gce_reference(pred + step, label, 0.5) - gce_reference(pred - step, label, 0.5)) / (2 * step) / 3
    np.testing.assert_allclose(grad, numeric, rtol=1e-7)
    mmdet_loss = lossc.mmdet.build_loss(dict(type="GCELoss", q=0.5, loss_weight=2.0))
    np.testing.assert_allclose(mmdet_loss(pred, label), 2 * want.mean(), rtol=1e-13)
    with pytest.raises(TypeError, match="unknown argument"):
        lossc.gluon.GCELoss(gamma=1.0)
    with pytest.raises(AttributeError):
        lossc.gluon.NoSuchLoss  # noqa: B018


def test_exposed_names_exist_in_torch_mmdet_and_paddle(exposed_gce):
    torch = pytest.importorskip("torch")
    import lossc.torch.mmdet as torch_mmdet

    pred, label = np.array([0.3, -2.0, 4.0]), np.array([1.0, 0.0, 1.0])
    x = torch.tensor(pred, requires_grad=True)
    module = torch_mmdet.build_loss(dict(type="lossc.GCELoss", q=0.5))
    value = module(x, torch.tensor(label))
    value.backward()
    np.testing.assert_allclose(value.item(), gce_reference(pred, label, 0.5).mean(), rtol=1e-13)
    assert x.grad is not None and torch.isfinite(x.grad).all()
    if torch_mmdet.MODELS is not None:
        assert type(torch_mmdet.MODELS.build(dict(type="lossc.GCELoss"))).__name__ == "GCELoss"
    paddle = pytest.importorskip("paddle")
    import lossc.paddle

    got = lossc.paddle.gce_loss(paddle.to_tensor(pred), paddle.to_tensor(label), q=0.5, reduction="none")
    np.testing.assert_allclose(got.numpy(), gce_reference(pred, label, 0.5), rtol=1e-13)


def test_exposing_another_specs_handwritten_api_fails_the_build(tmp_path):
    spec = write_gce(tmp_path, "clash", "exposed_as:\n  gluon: HuberLoss\n")
    with pytest.raises(SpecError, match=r"exposed_as\.gluon: lossc\.gluon\.HuberLoss is a handwritten gluon API "
                                        r"that runs 'huber', not 'clash'"):
        build([spec], tmp_path / "built", full=False, log=lambda *_: None)


def test_two_specs_exposing_one_name_fail_the_build(tmp_path):
    first = write_gce(tmp_path, "first_gce", "exposed_as:\n  gluon: SameLoss\n")
    second = write_gce(tmp_path, "second_gce", "exposed_as:\n  gluon: SameLoss\n")
    with pytest.raises(SpecError, match=r"exposed_as\.gluon: SameLoss is also exposed by .*first_gce\.yaml"):
        build([first, second], tmp_path / "built", full=False, log=lambda *_: None)


def test_every_builtin_exposed_name_is_that_specs_api_in_its_layer():
    import lossc.gluon
    import lossc.mmdet
    import lossc.paddle

    layers = {"gluon": lossc.gluon, "mmdet": lossc.mmdet._LOSSES, "paddle": lossc.paddle}
    claims = 0
    for path in SPECS.glob("*.yaml"):
        spec = load_spec(path)
        for layer, name in spec.exposed_as.items():
            assert spec.name in exposure.HANDWRITTEN[layer].get(name, (spec.name,)), (spec.name, layer, name)
            home = layers[layer]
            assert (name in home) if isinstance(home, dict) else hasattr(home, name), (layer, name)
            claims += 1
    assert claims >= 20


def test_the_handwritten_table_matches_the_layers():
    import lossc.gluon
    import lossc.mmdet
    import lossc.paddle

    for name, specs in exposure.HANDWRITTEN["gluon"].items():
        cls = getattr(lossc.gluon, name)
        if cls._spec is not None:
            assert specs == (cls._spec,), name
    assert set(exposure.HANDWRITTEN["mmdet"]) == set(lossc.mmdet._LOSSES)
    assert set(exposure.HANDWRITTEN["gluon"]) == set(lossc.gluon.__all__)
    assert set(exposure.HANDWRITTEN["paddle"]) == set(lossc.paddle.__all__)
    for name in exposure.HANDWRITTEN["paddle"]:
        assert callable(getattr(lossc.paddle, name)), name


def test_manifests_record_what_specs_expose():
    manifest = json.loads((GENERATED / "losses" / "sigmoid_bce.json").read_text())
    assert manifest["exposed_as"] == {"gluon": "SigmoidBinaryCrossEntropyLoss", "mmdet": "CrossEntropyLoss"}
