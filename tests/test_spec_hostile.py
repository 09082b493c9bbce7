"""Malformed and hostile specs: each is rejected with a located error, and nothing runs."""
import subprocess
import sys
import textwrap

import pytest

from lossc.compiler.derive import derive
from lossc.compiler.ir import build_ir, variants
from lossc.compiler.spec import SpecError, load_spec, parse_spec_text

GOOD = """\
name: demo
summary: A demo loss.
inputs:
  - name: pred
    role: prediction
    differentiable: true
  - name: label
    role: target
    differentiable: false
parameters:
  - name: alpha
    type: float
    default: 0.5
    range: [0, 1]
definitions:
  - name: d
    expr: label - pred
loss: {loss}
"""


def compile_text(text):
    """Validate and compile every variant of a spec given as text."""
    spec = parse_spec_text(text, "hostile.yaml")
    return [derive(build_ir(spec, v)) for v in variants(spec)]


def with_loss(expr):
    return GOOD.replace("{loss}", expr)


CANARY = "CANARY_FILE"

HOSTILE_LOSSES = {
    "import call": (f"__import__('os').system('touch {CANARY}')", "attribute access"),
    "bare import": ("__import__('os')", "unknown function '__import__'"),
    "open": (f"open('{CANARY}', 'w')", "unknown function 'open'"),
    "eval": (f"eval(\"open('{CANARY}','w')\")", "unknown function 'eval'"),
    "attribute": ("pred.__class__", "attribute access"),
    "method call": (f"label.__class__.__init__('{CANARY}')", "attribute access"),
    "lambda": ("(lambda: 1)()", "a lambda"),
    "lambda value": ("lambda x: x", "a lambda"),
    "comprehension": (f"[open('{CANARY}','w') for i in range(1)]", "a comprehension"),
    "generator": ("sum(x for x in pred)", "a generator expression"),
    "f-string": (f"f\"{{__import__('os').system('touch {CANARY}')}}\"", "an f-string"),
    "statement injection": (f"pred; import os; os.system('touch {CANARY}')", "not a valid expression"),
    "exponent tower": ("2**2**2**2**2**2", "numeric exponent"),
    "huge literal": ("pred * 1e400", "outside"),
    "subscript": ("pred[0]", "subscripting"),
    "walrus": ("(x := pred)", "an assignment expression"),
    "keyword argument": ("exp(pred, out=label)", "keyword"),
    "string arithmetic": ("'a' * pred", "string"),
    "conditional expression": ("pred if label else 0", "use where"),
    "comparison outside where": ("pred > label", "only allowed as the condition"),
    "unknown function": ("softmaxx(pred)", "unknown function 'softmaxx'"),
    "misspelled symbol": ("lable - pred", "undefined symbol 'lable' (did you mean 'label'?)"),
    "wrong arity": ("log(pred, label)", "takes 1 argument"),
    "deep nesting": ("(" * 300 + "pred" + ")" * 300, "nested"),
    "too long": ("pred" + " + pred" * 2000, "characters long"),
    "bitwise operator": ("pred ^ label", "operator BitXor"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_LOSSES))
def test_hostile_expression_is_rejected_and_nothing_runs(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expr, expected = HOSTILE_LOSSES[case]
    text = GOOD.replace("loss: {loss}", "loss: " + _yaml_scalar(expr))
    with pytest.raises(SpecError) as info:
        compile_text(text)
    assert expected in str(info.value), str(info.value)
    assert info.value.field == "loss"
    assert info.value.line == text.splitlines().index(next(l for l in text.splitlines() if l.startswith("loss:"))) + 1
    assert not (tmp_path / CANARY).exists()


def _yaml_scalar(expr):
    return "'" + expr.replace("'", "''") + "'"


BAD_SPECS = {
    "python tag": (
        f"!!python/object/apply:os.system ['touch {CANARY}']\n",
        "unsupported YAML tag",
    ),
    "python tag in a field": (
        with_loss("pred").replace("summary: A demo loss.", f"summary: !!python/object/apply:os.system ['touch {CANARY}']"),
        "unsupported YAML tag",
    ),
    "timestamp tag": (with_loss("!!timestamp 2001-12-14"), "unsupported YAML tag"),
    "alias bomb": (
        with_loss("pred").replace("summary: A demo loss.", "summary: &a A demo loss.\ndoc: *a"),
        "aliases are not allowed",
    ),
    "identifier with injection": (
        with_loss("pred").replace("name: d\n", "name: 'x; import os'\n").replace("expr: label - pred", "expr: label"),
        "is not an identifier",
    ),
    "python keyword name": (with_loss("pred").replace("name: alpha", "name: lambda"), "Python keyword"),
    "c++ keyword name": (with_loss("pred").replace("name: alpha", "name: float"), "C++ keyword"),
    "reserved name": (with_loss("pred").replace("name: alpha", "name: exp"), "reserved"),
    "upper-case name": (with_loss("pred").replace("name: alpha", "name: Alpha"), "is not an identifier"),
    "dunder name": (with_loss("pred").replace("name: alpha", "name: __class__"), "reserved for generated code"),
    "default wrong type": (with_loss("pred").replace("default: 0.5", "default: yes please"), "expected a number"),
    "default outside range": (with_loss("pred").replace("default: 0.5", "default: 2.5"), "outside the range: it must be in [0, 1]"),
    "bool default not bool": (
        with_loss("pred").replace("type: float\n    default: 0.5\n    range: [0, 1]", "type: bool\n    default: 1"),
        "expected true or false",
    ),
    "duplicate name": (with_loss("pred").replace("name: d\n", "name: alpha\n"), "duplicate name 'alpha'"),
    "duplicate key": (with_loss("pred").replace("summary: A demo loss.", "summary: a\nsummary: b"), "duplicate key"),
    "cyclic definitions": (
        with_loss("a").replace("  - name: d\n    expr: label - pred", "  - name: a\n    expr: b + 1\n  - name: b\n    expr: a * 2"),
        "cyclic definitions: a -> b -> a",
    ),
    "self-referencing definition": (with_loss("d").replace("expr: label - pred", "expr: d + pred"), "cyclic"),
    "unknown field": (with_loss("pred") + "evil: true\n", "unknown field"),
    "unknown role": (with_loss("pred").replace("role: target", "role: oracle"), "expected one of prediction"),
    "no prediction": (with_loss("pred").replace("role: prediction", "role: extra"), "role 'prediction'"),
    "empty file": ("", "spec is empty"),
    "not yaml": ("name: [unclosed\n", "not valid YAML"),
    "choice default not a choice": (
        with_loss("pred").replace("type: float\n    default: 0.5\n    range: [0, 1]", "type: choice\n    choices: [a, b]\n    default: c"),
        "not one of the choices",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_malformed_spec_is_rejected_with_a_located_error(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text, expected = BAD_SPECS[case]
    with pytest.raises(SpecError) as info:
        compile_text(text)
    message = str(info.value)
    assert expected in message, message
    assert message.startswith("hostile.yaml:"), message
    assert not (tmp_path / CANARY).exists()


def test_error_names_file_line_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(with_loss("pred").replace("default: 0.5", "default: 7"))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    err = info.value
    assert err.path == str(path) and err.field == "parameters[0].default"
    assert path.read_text().splitlines()[err.line - 1].strip() == "default: 7"


def test_cli_check_reports_error_without_running_anything(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text(GOOD.replace("{loss}", _yaml_scalar(f"__import__('os').system('touch {tmp_path / CANARY}')")))
    result = subprocess.run(
        [sys.executable, "-m", "lossc.compiler.cli", "check", str(path)], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 1
    assert f"{path}:" in result.stderr and "loss: attribute access is not allowed" in result.stderr
    assert not (tmp_path / CANARY).exists()


def test_cli_check_prints_loss_and_gradients(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text(with_loss("alpha * d**2"))
    result = subprocess.run([sys.executable, "-m", "lossc.compiler.cli", "check", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "loss            = alpha*(label - pred)**2" in result.stdout
    assert "d loss / d pred = alpha*(-2*label + 2*pred)" in result.stdout


def test_variant_conditions_pick_branches_at_build_time():
    text = textwrap.dedent(
        """\
        name: flagged
        summary: Flags and choices.
        inputs:
          - {name: pred, role: prediction, differentiable: true}
        parameters:
          - {name: squared, type: bool, default: false}
          - {name: mode, type: choice, choices: [plain, double], default: plain}
        loss: where(squared, pred**2, pred) * where(mode == "double", 2, 1)
        """
    )
    spec = parse_spec_text(text)
    losses = {tuple(v.values()): str(build_ir(spec, v).loss) for v in variants(spec)}
    assert losses == {(False, "plain"): "pred", (False, "double"): "2*pred", (True, "plain"): "pred**2", (True, "double"): "2*pred**2"}
