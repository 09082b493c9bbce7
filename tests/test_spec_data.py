"""A spec is data: hostile strings, names, file names, numbers, sizes and build folders.

Each case is either rejected with file:line, or built, every generated module imported and
its loss called in a child process whose working directory would receive the canary file
if any spec text ran; generated Python carries spec strings only inside string literals.
"""
import ast
import io
import json
import re
import subprocess
import sys
import textwrap
import time
import tokenize
from pathlib import Path

import mpmath
import numpy as np
import pytest

import lossc
from lossc.compiler.build import OWNED_LIST, build
from lossc.compiler.spec import SpecError, load_spec

CANARY = "CANARY_FILE"
BASE = """\
name: {name}
summary: {summary}
doc: {doc}
references:
  - {reference}
inputs:
  - name: pred
    role: prediction
    differentiable: true
    doc: {input_doc}
  - name: label
    role: target
    differentiable: false
parameters:
  - name: alpha
    type: float
    default: 0.5
    range: [0, 1]
    doc: {param_doc}
definitions:
  - name: d
    expr: label - pred
    doc: {definition_doc}
loss: alpha * d**2
"""
FIELDS = ("summary", "doc", "reference", "input_doc", "param_doc", "definition_doc")


def spec_text(name="demo", **strings):
    """BASE with every string field set (YAML double-quoted, so any character can be given)."""
    values = {field: json.dumps(strings.get(field, f"plain {field}")) for field in FIELDS}
    return BASE.format(name=name, **values)


PAYLOADS = {
    "close docstring": f'x"""; __import__("os").system("touch {CANARY}"); """',
    "close single quotes": f"x'''; __import__('os').system('touch {CANARY}'); '''",
    "trailing backslash": f"{CANARY} ends in a backslash \\",
    "trailing quote": f'{CANARY} ends in a quote "',
    "close raw device string": f'r"""; import os; os.system("touch {CANARY}") #',
    "html": f"</script><script>{CANARY}()</script> & <b>bold</b> | pipe",
    "template syntax": f"{{{{ {CANARY} }}}} {{% raw %}} ${{{CANARY}}} %({CANARY})s",
    "c comment": f"*/ {CANARY}(); /* // \\n",
    "latex": f"\\input{{/etc/passwd}} \\write18{{touch {CANARY}}} $ & # _ ^ ~ %",
    "line separators": f"sep\u2028{CANARY}\u2029x and unicode σ ∂ —",
}
MULTILINE = {"doc lines": f'one\n"""\n__import__("os").system("touch {CANARY}")\n"""'}


def _string_cases():
    cases = []
    for label, payload in PAYLOADS.items():
        for field in FIELDS:
            cases.append(pytest.param(field, payload, id=f"{field}-{label}"))
    for label, payload in MULTILINE.items():
        for field in ("doc", "input_doc", "param_doc", "definition_doc"):
            cases.append(pytest.param(field, payload, id=f"{field}-{label}"))
    return cases


CHILD = textwrap.dedent("""\
    import importlib.util, json, pathlib, sys
    import numpy as np
    import lossc
    folder = pathlib.Path(sys.argv[1])
    for path in sorted(folder.glob("*/*.py")):
        spec = importlib.util.spec_from_file_location("probe_" + path.parent.name + "_" + path.stem, path)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    results = {}
    for name in lossc.register_generated(folder):
        loss = lossc.get(name)
        arrays = [np.full(5, 0.25 * (k + 1)) for k in range(len(loss.manifest["inputs"]))]
        value, grads = loss.value_and_grad(*arrays, reduction="sum")
        results[name] = [float(value)] + [float(np.sum(g)) for g in grads]
        try:  # the JAX target too, where JAX is installed and the loss is in it
            import jax
            import lossc.jax
        except ImportError:
            continue
        jax.config.update("jax_enable_x64", True)
        if not loss.pair_inputs:
            function = lossc.jax.get(name)
            value, grad = jax.value_and_grad(lambda x: function(x, *arrays[1:], reduction="sum"))(arrays[0])
            results[name + "@jax"] = [float(value), float(np.sum(grad))]
    print(json.dumps(results))
    """)


def build_and_run(tmp_path, texts):
    """Build spec ``texts`` ({file name: text}) into tmp_path/out, import every generated
    module and call each loss in a child process run in tmp_path; returns its results."""
    paths = []
    for file_name, text in texts.items():
        path = tmp_path / file_name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    out = tmp_path / "out"
    build(paths, out, log=lambda *_: None)
    child = subprocess.run([sys.executable, "-c", CHILD, str(out)], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == 0, child.stderr
    assert not (tmp_path / CANARY).exists()
    return out, json.loads(child.stdout)


def code_outside_strings(source):
    """The tokens of a Python module other than string literals and comments, joined."""
    kept = [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type not in (tokenize.STRING, tokenize.COMMENT)]
    return " ".join(kept)


@pytest.mark.parametrize("field, payload", _string_cases())
def test_hostile_string_reaches_generated_code_only_as_a_literal(field, payload, tmp_path):
    out, results = build_and_run(tmp_path, {"demo.yaml": spec_text(**{field: payload})})
    assert results["demo"][0] == pytest.approx(0.5 * sum((0.5 - 0.25) ** 2 for _ in range(5)))
    if "demo@jax" in results:
        assert results["demo@jax"][0] == pytest.approx(results["demo"][0], rel=1e-12)
    for path in sorted(out.glob("*/*.py")):
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        assert CANARY not in code_outside_strings(source), path
        strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        if field == "summary" and path.stem != "__init__":
            assert ast.get_docstring(tree, clean=False).startswith(payload)
            assert any(payload in s for s in strings)
    if field != "definition_doc":  # definitions are not in the manifest
        manifest = json.loads((out / "losses" / "demo.json").read_text(encoding="utf-8"))
        assert payload.strip() in set(_strings_in(manifest))
    page = (out / "docs" / "demo.md").read_text(encoding="utf-8")
    assert "<script>" not in page and "<b>" not in page


def _strings_in(data):
    if isinstance(data, str):
        yield data.strip()
    elif isinstance(data, dict):
        for value in data.values():
            yield from _strings_in(value)
    elif isinstance(data, list):
        for value in data:
            yield from _strings_in(value)


def test_html_and_latex_pages_escape_spec_text(tmp_path, monkeypatch):
    from lossc.compiler.docs import plots

    monkeypatch.setattr(plots, "available", lambda: False)  # plots read the installed package (issue 17)
    path = tmp_path / "demo.yaml"
    path.write_text(spec_text(summary=PAYLOADS["html"], doc=PAYLOADS["latex"]), encoding="utf-8")
    from lossc.compiler.build import compile_spec
    from lossc.compiler.docs import export

    compiled = compile_spec(path)
    export([compiled], "html", tmp_path / "html", with_accuracy=False, log=lambda *_: None)
    page = (tmp_path / "html" / "demo.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;/script&gt;&lt;script&gt;" in page and page.count("<math ") >= 3
    export([compiled], "latex", tmp_path / "tex", with_accuracy=False, log=lambda *_: None)
    tex = next((tmp_path / "tex").glob("*.tex")).read_text(encoding="utf-8")
    assert "\\input{" not in tex and "\\write18{" not in tex and "\\textbackslash{}input" in tex


REJECTED_STRINGS = {
    "nul": "nul\0byte",
    "escape sequence": "colour \x1b[31m red",
    "carriage return": "one\rtwo",
    "bidi override": "abc\u202edcba",
    "zero width": "a\u200bb",
    "bell": "ding\x07",
}


@pytest.mark.parametrize("label", sorted(REJECTED_STRINGS))
@pytest.mark.parametrize("field", ["summary", "doc", "reference", "param_doc"])
def test_control_characters_in_spec_text_are_rejected(label, field, tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text(spec_text(**{field: REJECTED_STRINGS[label]}), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    line = next(i for i, l in enumerate(path.read_text().splitlines(), 1)
                if json.dumps(REJECTED_STRINGS[label]) in l)
    assert info.value.line == line and "not allowed" in str(info.value)


@pytest.mark.parametrize("file_name", [
    f'x"""; __import__("os").system("touch {CANARY}"); """.yaml',
    "name with spaces.yaml", "semi;colon.yaml", "quote'.yaml", "-leading-dash.yaml", "spec.json", "x\u202e.yaml",
])
def test_spec_file_names_are_validated(file_name, tmp_path):
    path = tmp_path / file_name
    path.write_text(spec_text(), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        build([path], tmp_path / "out", log=lambda *_: None)
    assert "file name" in str(info.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / CANARY).exists()


COLLIDING_NAMES = ["tuple", "run_elementwise", "pow", "fabs", "expf", "out0", "grads", "blend_into", "s_pred",
                   "lossc_run", "self", "t0", "a0", "d_pred", "float64", "u0"]


def test_names_that_collide_with_generated_identifiers_build_and_compute(tmp_path):
    inputs = "".join(f"  - {{name: {n}, role: extra, differentiable: false}}\n" for n in COLLIDING_NAMES)
    terms = " + ".join(f"{n} * pred**2" for n in COLLIDING_NAMES)
    text = (f"name: collide\nsummary: Names of generated identifiers.\ninputs:\n"
            f"  - {{name: pred, role: prediction, differentiable: true}}\n{inputs}loss: {terms}\n")
    out, results = build_and_run(tmp_path, {"collide.yaml": text})
    values = [0.25 * (k + 1) for k in range(len(COLLIDING_NAMES) + 1)]
    pred, extras = values[0], values[1:]
    assert results["collide"][0] == pytest.approx(5 * sum(e * pred**2 for e in extras), rel=1e-12)
    assert results["collide"][1] == pytest.approx(5 * sum(2 * e * pred for e in extras), rel=1e-12)
    if "collide@jax" in results:  # the JAX kernels compute with those names too
        assert results["collide@jax"] == pytest.approx(results["collide"], rel=1e-12)
    for path in sorted(out.glob("*/collide.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        kernels = [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name.startswith("_")]
        for kernel in kernels:
            assert all(a.arg.startswith(("_", "s_")) for a in kernel.args.args), kernel.name
        public = [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name in ("forward", "forward_backward")]
        inside_public = {id(n) for f in public for n in ast.walk(f)}
        module_names = {a.asname or a.name for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
                        for a in n.names} | {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets}
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and id(node) not in inside_public:
                assert node.id.startswith(("_", "s_")) or node.id in module_names | {"float"}, node.id
        for function in public:
            own = {a.arg for a in function.args.args + function.args.kwonlyargs}
            for node in ast.walk(function):
                if isinstance(node, ast.Name) and node.id not in own:
                    assert node.id.startswith("_") or node.id.isupper(), (function.name, node.id)
        # the __device__ functions of a CuPy module (DEVICE_CODE) and of a native one (SOURCE)
        code = next((n.value.value for n in tree.body if isinstance(n, ast.Assign)
                     and getattr(n.targets[0], "id", "") in ("DEVICE_CODE", "SOURCE")), "")
        signatures = "\n".join(line for line in code.splitlines() if line.startswith("__device__"))
        parameters = re.findall(r"(?:float|double)(\*?) (\w+)[,)]", signatures)
        assert bool(parameters) == (path.parent.name in ("cupy", "native")) and all(
            name.startswith("s_") or (pointer and name.startswith("out")) for pointer, name in parameters)


def test_native_kernels_compile_with_colliding_names(tmp_path, monkeypatch):
    from lossc.kernels import native

    if not native.available():
        pytest.skip("no C++ compiler")
    monkeypatch.setenv("LOSSC_CACHE_DIR", str(tmp_path / "cache"))
    text = ("name: collide_native\nsummary: C names.\ninputs:\n  - {name: pred, role: prediction, differentiable: true}\n"
            "  - {name: pow, role: target, differentiable: false}\n  - {name: fabs, role: extra, differentiable: false}\n"
            "  - {name: expf, role: extra, differentiable: false}\n  - {name: out0, role: extra, differentiable: false}\n"
            "loss: (pred - pow)**2 * fabs + expf * out0 * pred\n")
    (tmp_path / "collide_native.yaml").write_text(text)
    build([tmp_path / "collide_native.yaml"], tmp_path / "out", log=lambda *_: None)
    import importlib.util

    modules = {}
    for backend in ("numpy", "native"):
        spec = importlib.util.spec_from_file_location(f"collide_native_{backend}", tmp_path / "out" / backend /
                                                      "collide_native.py")
        modules[backend] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[backend])
    library = native.library(modules["native"])
    assert library is not None, native.status()
    fused = native.NativeModule(modules["numpy"], lambda: modules["native"])
    x = np.linspace(-2, 2, 3001)
    args = (x, np.full_like(x, 0.5), np.full_like(x, 2.0), np.full_like(x, 3.0), np.full_like(x, -1.0))
    loss, (grad,) = fused.forward_backward(*args)
    np.testing.assert_allclose(loss, (x - 0.5) ** 2 * 2 - 3 * x, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(grad, 2 * (x - 0.5) * 2 - 3, rtol=1e-14, atol=1e-14)


def _demo_with_variant(name, param):
    return (f"name: {name}\nsummary: s.\ninputs:\n  - {{name: pred, role: prediction, differentiable: true}}\n"
            f"parameters:\n  - {{name: {param}, type: bool, default: false}}\n"
            f"loss: where({param}, pred**2, pred)\n")


def test_variant_module_names_cannot_collide(tmp_path):
    (tmp_path / "a.yaml").write_text(_demo_with_variant("demo", "sq"))
    plain = "name: demo__sq_true\nsummary: s.\ninputs:\n  - {name: pred, role: prediction, differentiable: true}\n" \
            "loss: 1000 * pred\n"
    (tmp_path / "b.yaml").write_text(plain)
    with pytest.raises(SpecError) as info:
        build([tmp_path / "a.yaml", tmp_path / "b.yaml"], tmp_path / "out", log=lambda *_: None)
    assert "b.yaml:1: name" in str(info.value) and "'__' is reserved" in str(info.value)


def test_two_specs_with_one_name_are_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text(_demo_with_variant("demo", "sq"))
    (tmp_path / "b.yaml").write_text(_demo_with_variant("demo", "cube"))
    with pytest.raises(SpecError) as info:
        build([tmp_path / "a.yaml", tmp_path / "b.yaml"], tmp_path / "out", log=lambda *_: None)
    assert str(tmp_path / "b.yaml") in str(info.value) and "also built from" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_choice_value_cannot_make_a_pair_term_module_name(tmp_path):
    text = load_spec_text("sdml").replace("parameters:\n", "parameters:\n  - {name: pair, type: choice, choices: "
                                                            "[distance, other], default: other}\n", 1)
    (tmp_path / "sdml.yaml").write_text(text)
    with pytest.raises(SpecError) as info:
        build([tmp_path / "sdml.yaml"], tmp_path / "out", log=lambda *_: None)
    assert "would both be module 'sdml__pair_distance'" in str(info.value)


def load_spec_text(name):
    return (Path(__file__).resolve().parent.parent / "specs" / f"{name}.yaml").read_text()


ELEMENTWISE = "name: demo\nsummary: s.\ninputs:\n  - {{name: pred, role: prediction, differentiable: true}}\n{rest}"
NOT_NUMBERS = {
    "pred / 0": "division by zero",
    "pred * (0/0)": "division by zero",
    "pred * log(-1)": "complex value",
    "pred + sqrt(-1)": "complex value",
    "pred * 1e30**64": "not finite",
    "pred * log(0)": "infinite",
    "pred * 0**-2": "division by zero",
    "pred * classes": "'classes' (the size of the class axis) needs a class_axis",
    "pred * (1e30 * 1e30 * 1e30 * 1e30 * 1e30 * 1e30 * 1e30 * 1e30 * 1e30 * 1e30 * 1e30)": "not finite in float64",
    "pred * exp(1e30)": "not finite",
}


@pytest.mark.parametrize("expr", sorted(NOT_NUMBERS))
def test_constants_that_are_not_finite_numbers_are_rejected_at_check_time(expr, tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text(ELEMENTWISE.format(rest=f"loss: {expr}\n"))
    with pytest.raises(SpecError) as info:
        build([path], tmp_path / "out", log=lambda *_: None)
    assert NOT_NUMBERS[expr] in str(info.value) and f"{path}:5: loss" in str(info.value)


NUMBER_FIELDS = {
    "range nan": ("parameters:\n  - {name: a, type: float, default: 1.0, range: [-.inf, .nan]}\nloss: a * pred\n",
                  "parameters[0].range[0]"),
    "range inf": ("parameters:\n  - {name: a, type: float, default: 1.0, range: [0, .inf]}\nloss: a * pred\n",
                  "parameters[0].range[1]"),
    "default nan": ("parameters:\n  - {name: a, type: float, default: .nan}\nloss: a * pred\n",
                    "parameters[0].default"),
    "huge int default": ("parameters:\n  - {name: a, type: int, default: " + "9" * 5000 + "}\nloss: a * pred\n",
                         "parameters[0].default"),
    "int beyond float": ("parameters:\n  - {name: a, type: int, default: " + "9" * 320 + "}\nloss: a * pred\n",
                         "parameters[0].default"),
    "input default inf": ("  - {name: w, role: extra, differentiable: false, default: .inf}\nloss: w * pred\n",
                          "inputs[1].default"),
    "constant chain": ("definitions:\n  - {name: d0, expr: 10**30}\n  - {name: d1, expr: d0**64}\n"
                       "  - {name: d2, expr: d1**64}\nloss: pred * d2\n", "definitions[1].expr"),
}


@pytest.mark.parametrize("case", sorted(NUMBER_FIELDS))
def test_numbers_in_spec_fields_must_be_finite(case):
    rest, where = NUMBER_FIELDS[case]
    from lossc.compiler.build import compile_spec  # noqa: F401  (compile path used below)
    from lossc.compiler.derive import derive
    from lossc.compiler.ir import build_ir, variants
    from lossc.compiler.spec import parse_spec_text

    with pytest.raises(SpecError) as info:
        spec = parse_spec_text(ELEMENTWISE.format(rest=rest), "numbers.yaml")
        [derive(build_ir(spec, v)) for v in variants(spec)]
    assert info.value.field == where, str(info.value)
    assert "Traceback" not in str(info.value)


def chain_spec(count):
    """The issue's swelling chain: d_i = sigmoid(d_{i-1}) + d_{i-1}·alpha, each definition using the previous twice."""
    definitions = "".join(f"  - {{name: d{i}, expr: sigmoid(d{i - 1}) + d{i - 1}*alpha}}\n" for i in range(1, count + 1))
    return (f"name: chain\nsummary: A chain.\ninputs:\n  - {{name: pred, role: prediction, differentiable: true}}\n"
            f"parameters:\n  - {{name: alpha, type: float, default: 0.5}}\ndefinitions:\n  - {{name: d0, expr: pred}}\n"
            f"{definitions}loss: d{count}\n")


def _chain_truth(x, count, alpha=0.5):
    with mpmath.workdps(50):
        def f(p):
            d = mpmath.mpf(p)
            for _ in range(count):
                d = 1 / (1 + mpmath.exp(-d)) + d * alpha
            return d
        return float(f(x)), float(mpmath.diff(f, mpmath.mpf(x)))


@pytest.mark.slow
def test_forty_chained_definitions_build_fast_and_exactly(tmp_path):
    started = time.perf_counter()
    out, _ = build_and_run(tmp_path, {"chain.yaml": chain_spec(40)})
    # a guard against blow-up (2^40 for this chain), not a speed target: about 10 s on a slow 2-core
    # machine, a child process included; test_definition_graph_cost_grows_linearly checks the growth
    assert time.perf_counter() - started < 60
    import importlib.util

    spec = importlib.util.spec_from_file_location("chain_numpy", out / "numpy" / "chain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x = np.array([-1000.0, -30.0, -1.0, 0.0, 0.5, 3.0, 20.0, 1e4])
    loss, (grad,) = module.forward_backward(x, alpha=0.5)
    for xi, li, gi in zip(x, loss, grad):
        value, derivative = _chain_truth(xi, 40)
        assert li == pytest.approx(value, rel=1e-13) and gi == pytest.approx(derivative, rel=1e-11, abs=1e-300)


def test_definition_graph_cost_grows_linearly():
    from lossc.compiler.derive import derive
    from lossc.compiler.ir import build_ir
    from lossc.compiler.spec import parse_spec_text

    times = {}
    for count in (10, 20):
        started = time.perf_counter()
        derive(build_ir(parse_spec_text(chain_spec(count)), {}))
        times[count] = time.perf_counter() - started
    assert times[20] < 4 * times[10] + 0.5, times


def test_twenty_four_bool_parameters_are_a_clear_error():
    from lossc.compiler.spec import parse_spec_text

    params = "".join(f"  - {{name: b{i}, type: bool, default: false}}\n" for i in range(24))
    text = ELEMENTWISE.format(rest=f"parameters:\n{params}loss: pred\n")
    started = time.perf_counter()
    with pytest.raises(SpecError) as info:
        parse_spec_text(text, "bools.yaml")
    assert "16777216 build-time variants; at most 64" in str(info.value) and time.perf_counter() - started < 1


def test_long_definition_chains_are_limited_or_built_without_recursion_errors(tmp_path):
    from lossc.compiler.spec import parse_spec_text

    reverse = "".join(f"  - {{name: d{i}, expr: d{i + 1} + 1}}\n" for i in range(3000)) + "  - {name: d3000, expr: pred}\n"
    with pytest.raises(SpecError) as info:
        parse_spec_text(ELEMENTWISE.format(rest=f"definitions:\n{reverse}loss: d0\n"), "long.yaml")
    assert "3001 entries; at most 256" in str(info.value)
    nested = "".join(f"  - {{name: d{i}, expr: log1p(exp(d{i + 1}))}}\n" for i in range(80))
    text = ELEMENTWISE.format(rest=f"definitions:\n{nested}  - {{name: d80, expr: pred}}\nloss: d0\n")
    started = time.perf_counter()
    out, results = build_and_run(tmp_path, {"nested.yaml": text})
    assert time.perf_counter() - started < 60  # a guard against blow-up (see the forty-chain test)
    with mpmath.workdps(50):
        value = mpmath.mpf(0.25)
        for _ in range(80):
            value = mpmath.log1p(mpmath.exp(value))
    assert results["demo"][0] == pytest.approx(5 * float(value), rel=1e-13)
    cycle = "".join(f"  - {{name: d{i}, expr: d{(i + 1) % 200} + pred}}\n" for i in range(200))
    with pytest.raises(SpecError) as info:
        parse_spec_text(ELEMENTWISE.format(rest=f"definitions:\n{cycle}loss: d0\n"), "cycle.yaml")
    assert "cyclic definitions: d0 -> d1 -> d2" in str(info.value)


YAML_CASES = {
    "merge key": ("name: demo\nsummary: s.\n<<: {doc: merged}\ninputs:\n  - {name: pred, role: prediction, "
                  "differentiable: true}\nloss: pred\n", "unsupported YAML tag"),
    "merge alias": ("base: &b {doc: x}\nname: demo\n<<: *b\n", "unsupported YAML tag"),
    "alias": ("name: demo\nsummary: &s text\ndoc: *s\n", "aliases are not allowed"),
    "set tag": ("name: !!set {a, b}\n", "unsupported YAML tag"),
    "binary tag": ("name: demo\nsummary: !!binary aGVsbG8=\n", "unsupported YAML tag"),
    "local tag": ("name: !evil demo\n", "unsupported YAML tag"),
    "python name": ("name: !!python/name:os.system demo\n", "unsupported YAML tag"),
    "multi document": ("name: a\n---\nname: b\n", "not valid YAML"),
    "complex key": ("? [a, b]\n: c\n", "unsupported YAML tag"),
    "nested lists deep": ("name: " + "[" * 200 + "]" * 200 + "\n", "expected a string"),
}


@pytest.mark.parametrize("case", sorted(YAML_CASES))
def test_yaml_features_beyond_plain_data_are_rejected(case, tmp_path, monkeypatch):
    from lossc.compiler.spec import parse_spec_text

    monkeypatch.chdir(tmp_path)
    text, expected = YAML_CASES[case]
    with pytest.raises(SpecError) as info:
        parse_spec_text(text, "yaml.yaml")
    assert expected in str(info.value) and str(info.value).startswith("yaml.yaml:")
    assert not (tmp_path / CANARY).exists()


def test_build_removes_only_files_it_wrote(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "demo.yaml").write_text(spec_text())
    (tmp_path / "other.yaml").write_text(spec_text(name="other"))
    mine = {"numpy/train.py": "print('mine')\n", "docs/README.md": "# mine\n", "losses/config.json": "{}\n",
            "notes.txt": "mine\n"}
    for rel, text in mine.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    logged = []
    build([tmp_path / "demo.yaml", tmp_path / "other.yaml"], out, full=True, log=logged.append)
    assert (out / "numpy" / "other.py").exists()
    assert "left alone (not written by lossc): numpy/train.py" in logged
    build([tmp_path / "demo.yaml"], out, full=True, log=logged.append)
    assert not (out / "numpy" / "other.py").exists() and not (out / "losses" / "other.json").exists()
    for rel, text in mine.items():
        assert (out / rel).read_text() == text, rel
    owned = json.loads((out / OWNED_LIST).read_text())
    assert "numpy/demo.py" in owned and "numpy/train.py" not in owned
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.yaml", "other.yaml", "out"]


def test_a_forged_owned_list_cannot_remove_files_outside_the_managed_folders(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "demo.yaml").write_text(spec_text())
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "x.py").write_text("keep")
    (out / OWNED_LIST).write_text(json.dumps(["../victim.txt", str(victim), "sub/x.py", "numpy/../../victim.txt"]))
    build([tmp_path / "demo.yaml"], out, full=True, log=lambda *_: None)
    assert victim.read_text() == "keep" and (out / "sub" / "x.py").read_text() == "keep"


def test_messages_about_parameter_types_read_as_english(tmp_path):
    """'an int parameter' (not 'a int'), and a range without an upper limit says so."""
    path = tmp_path / "demo.yaml"
    path.write_text(spec_text().replace("type: float\n    default: 0.5", "type: int\n    default: 0.5"))
    with pytest.raises(SpecError, match="for an int parameter"):
        load_spec(path)
    with pytest.raises(ValueError, match=r"'rho' must be at least 1e-30 \(no upper limit\), got 0.0"):
        lossc.get("huber")(np.ones(3), np.ones(3), rho=0.0, reduction="none")


@pytest.mark.parametrize("line, expected", [
    ("  - {name: log_py, expr: pick(log_softmax(pred), label)}", r"'label\)' is not a field name.*Quote values"),
    ("  - {name: d, expr: label - pred, doc: see [1] here}", r"expected ',' or '\}'.*must be quoted"),
])
def test_flow_mappings_that_split_a_value_say_to_quote_it(line, expected, tmp_path):
    """The README's {name: …, expr: …} style splits an unquoted expression at its comma (or
    fails at a bracket): the error says to quote the value instead of naming a bogus field."""
    text = re.sub(r"definitions:\n(    .*\n|  - .*\n)*", f"definitions:\n{line}\n", spec_text())
    path = tmp_path / "demo.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=expected):
        load_spec(path)
