"""Formula docs: every spec in every format, formulas equal to the kernels', a real browser render."""
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sympy

from conftest import GENERATED, spec_paths
from lossc.compiler.build import compile_spec
from lossc.compiler.docs import export, readable_gradient
from lossc.compiler.functions import expm1, grouped, log1p, sigmoid, softplus

COMPILED = {p.stem: compile_spec(p) for p in spec_paths()}


@pytest.mark.parametrize("name", sorted(COMPILED))
def test_checked_in_markdown_page_shows_loss_gradient_and_parameters(name):
    page = (GENERATED / "docs" / f"{name}.md").read_text()
    spec = COMPILED[name].spec
    shown = spec.summary.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    assert page.startswith(f"# {name}\n\n{shown}\n")  # Markdown escapes HTML and table characters
    assert page.count("Loss, as declared:") == len(COMPILED[name].derived)
    for inp in spec.differentiable_inputs:
        assert f"Gradient with respect to `{inp.name}`" in page
    for param in spec.parameters:
        assert re.search(rf"^\| `{param.name}` \| {param.type}", page, re.M), param.name
    assert "$$ L = " in page and "<details>" in page and "## References" in page
    assert name in (GENERATED / "docs" / "index.md").read_text()


def _as_elementary(expr):
    """``expr`` with lossc's named functions spelled out in SymPy's own exp and log."""
    expr = expr.replace(softplus, lambda u: sympy.log(1 + sympy.exp(u)))
    expr = expr.replace(sigmoid, lambda u: 1 / (1 + sympy.exp(-u)))
    expr = expr.replace(log1p, lambda u: sympy.log(1 + u)).replace(expm1, lambda u: sympy.exp(u) - 1)
    return expr.replace(grouped, lambda u: u)  # grouped only fixes the order of a sum


# Points on both sides of every branch the built-in specs take: labels 0 and 1, predictions
# as logits (negative, large) and as probabilities (either side of 1/2, near 1).
BRANCH_POINTS = [(0.2, 1), (0.7, 0), (0.93, 1), (0.45, 0), (-1.5, 1), (2.5, 0), (0.05, 0), (0.999, 1)]


def _equal_at_branch_points(shown, kernel, ir):
    """The two gradients agree to 30 digits at every BRANCH_POINTS point where they are real."""
    from lossc.compiler.mp_eval import NotReal, truth

    spec = ir.spec
    checked = 0
    for pred, label in BRANCH_POINTS:
        values = {p.name: float(p.default) for p in spec.runtime_params}
        for inp in spec.inputs:
            values[inp.name] = pred if inp in spec.differentiable_inputs else float(label)
        try:
            a, b = truth(shown, values), truth(kernel, values)
        except NotReal:
            continue
        assert abs(a - b) <= 1e-30 * max(1, abs(b)), (ir.variant, values)
        checked += 1
    assert checked >= 4, (ir.variant, checked)


@pytest.mark.parametrize("name", sorted(n for n, c in COMPILED.items() if not c.spec.class_axis))
def test_docs_gradient_equals_the_kernels_gradient(name):
    """Symbolically where SymPy can simplify the difference; a difference with branches (nested
    Piecewise, which simplify cannot bound in time or memory) at 40 digits on both sides of each."""
    from lossc.compiler.derive import GRAD_OUTPUT

    for derived in COMPILED[name].derived:
        for inp in derived.ir.spec.differentiable_inputs:
            shown = _inlined(readable_gradient(derived.ir, inp.name), derived.ir)  # it reads the definitions
            kernel = derived.gradients[inp.name]
            if kernel.has(sympy.Piecewise) or shown.has(sympy.Piecewise):
                _equal_at_branch_points(shown, kernel.subs(GRAD_OUTPUT, 1), derived.ir)
                continue
            difference = _as_elementary(shown - kernel)
            symbols = derived.ir.symbols
            defaults = {symbols[p.name]: sympy.nsimplify(p.default) for p in derived.ir.spec.runtime_params}
            assert sympy.simplify(difference.subs(defaults)) == 0, (name, derived.ir.variant)
            for seed in range(3):  # and for other parameter values, numerically at 40 digits
                point = {s: sympy.Rational(7 * seed + i + 1, 13) for i, s in enumerate(sorted(symbols.values(), key=str))}
                assert abs(difference.subs(point).evalf(40)) < 1e-30, (name, derived.ir.variant, point)


@pytest.mark.parametrize("name", sorted(n for n, c in COMPILED.items() if c.spec.class_axis))
def test_docs_gradient_of_reduction_losses_equals_the_kernels_gradient(name):
    """With reductions SymPy cannot simplify through Σ_j: compare at 40 digits on a row instead."""
    from lossc.compiler.derive import GRAD_OUTPUT
    from lossc.compiler.mp_eval import NotReal, truth

    for derived in COMPILED[name].derived:
        spec = derived.ir.spec
        elements = {i.name: [0.3, -1.2, 2.5, 0.7][: 4] for i in spec.inputs if i.per == "element"}
        if "label" in elements:
            elements["label"] = [0.1, 0.2, 0.3, 0.4]
        scalars = {i.name: 1.0 for i in spec.inputs if i.per == "row"}
        scalars.update({p.name: float(p.default) for p in spec.runtime_params})
        for inp in spec.differentiable_inputs:
            shown = _inlined(readable_gradient(derived.ir, inp.name), derived.ir)  # it reads the definitions
            kernel = derived.gradients[inp.name].subs(GRAD_OUTPUT, 1)
            for j in range(4):
                try:
                    a, b = truth(shown, scalars, elements, j), truth(kernel, scalars, elements, j)
                except NotReal:
                    continue
                assert abs(a - b) <= 1e-30 * max(1, abs(b)), (name, derived.ir.variant, inp.name, j)


@pytest.mark.parametrize("fmt", ["md", "html", "latex"])
def test_every_spec_exports_in_every_format(fmt, tmp_path):
    written = export(list(COMPILED.values()), fmt, tmp_path, with_accuracy=False, log=lambda *_: None)
    if fmt == "latex":
        text = written[0].read_text()
        assert text.count(r"\section{") == len(COMPILED) and r"\frac{\partial L}" in text
        return
    suffix = "md" if fmt == "md" else "html"
    assert {p.name for p in written} == {f"{n}.{suffix}" for n in COMPILED} | {f"index.{suffix}"}
    if fmt == "html":
        for name in COMPILED:
            page = (tmp_path / f"{name}.html").read_text()
            assert "<script" not in page and page.count("<math ") >= 3
            for param in COMPILED[name].spec.parameters:
                assert f"<code>{param.name}</code>" in page


def test_html_has_no_unescaped_relations_and_is_static(tmp_path):
    export([COMPILED["huber"]], "html", tmp_path, with_accuracy=False, log=lambda *_: None)
    page = (tmp_path / "huber.html").read_text()
    assert "<mo><</mo>" not in page and "<mo>&lt;</mo>" in page
    assert "http" not in page.split("<body>")[1].replace("http://www.w3.org/1998/Math/MathML", "")


def test_html_prints_reductions_as_math_not_as_internal_names(tmp_path):
    export([COMPILED["softmax_ce"], COMPILED["kl_div"]], "html", tmp_path, with_accuracy=False, log=lambda *_: None)
    for name in ("softmax_ce", "kl_div"):
        page = (tmp_path / f"{name}.html").read_text()
        for internal in ("rsum", "rmax", "rlogsumexp", "rlog_softmax_at", "onehot_minus_softmax"):
            assert internal not in page, (name, internal)
        assert "<munder><mo>&#8721;</mo><mi>j</mi></munder>" in page  # Σ_j
    assert "<mi>softmax</mi>" in (tmp_path / "softmax_ce.html").read_text()


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_latex_document_compiles(tmp_path):
    export(list(COMPILED.values()), "latex", tmp_path, with_accuracy=False, log=lambda *_: None)
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "losses.tex"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:]
    assert (tmp_path / "losses.pdf").stat().st_size > 10000


def test_cli_docs_exports_html_with_accuracy(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lossc.compiler.cli", "docs", "--format", "html", "--out", str(tmp_path), "l1"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "l1.html").read_text()
    assert "max relative error" in page and "float64" in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
MEASURE = """<script>
window.addEventListener('load', () => {
const maths = [...document.querySelectorAll('math')].map(m => {
  const r = m.getBoundingClientRect(); return [r.width, r.height, m.scrollWidth - m.clientWidth]; });
const imgs = [...document.querySelectorAll('img')].map(i => i.complete && i.naturalWidth > 0);
const out = document.createElement('pre'); out.id = 'measure';
out.textContent = JSON.stringify({maths, imgs, scroll: document.documentElement.scrollWidth,
                                  width: document.documentElement.clientWidth});
document.body.appendChild(out);
});
</script>"""
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                 "--window-size=1000,1400", "--virtual-time-budget=5000", "--allow-file-access-from-files"]


def rendered_measurements(page, tmp_path):
    """Render ``page`` headless at 1000 px with a measuring script appended to a copy; return
    its JSON. A screenshot of the page itself is saved beside it (``<name>.png``)."""
    probe = page.with_name(page.stem + "_probe.html")
    probe.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    profile = f"--user-data-dir={tmp_path / 'profile'}"
    dom = subprocess.run([CHROMIUM, *BROWSER_FLAGS, profile, "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    subprocess.run([CHROMIUM, *BROWSER_FLAGS, profile, f"--screenshot={page.with_suffix('.png')}", page.as_uri()],
                   capture_output=True, timeout=120)
    match = re.search(r'<pre id="measure">(.*?)</pre>', dom, re.S)
    assert match, dom[-2000:]
    return json.loads(match.group(1).replace("&quot;", '"'))


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine")
@pytest.mark.parametrize("name", ["sigmoid_focal", "softmax_ce", "sdml"])  # element-wise, class axis, pairs
def test_browser_lays_out_every_formula_within_1000px(name, tmp_path):
    export([COMPILED[name]], "html", tmp_path, with_accuracy=False, log=lambda *_: None)
    result = rendered_measurements(tmp_path / f"{name}.html", tmp_path)
    assert result["maths"] and all(w > 0 and h > 0 for w, h, _ in result["maths"]), result
    assert result["scroll"] <= result["width"], result  # the page never scrolls sideways
    wide = [k for k, (_, _, overflow) in enumerate(result["maths"]) if overflow > 1]
    assert not wide, (wide, len(result["maths"]))  # nor does a formula
    if importlib.util.find_spec("matplotlib"):
        assert result["imgs"] == [True], result
    assert (tmp_path / f"{name}.png").stat().st_size > 10000  # the screenshot


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine")
def test_browser_index_links_every_page(tmp_path):
    export([COMPILED["huber"], COMPILED["l1"]], "html", tmp_path, with_accuracy=False, log=lambda *_: None)
    dom = subprocess.run([CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          (tmp_path / "index.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'href="huber.html"' in dom and 'href="l1.html"' in dom


def test_the_softmax_gradient_keeps_its_difference_in_parentheses():
    """[j = y] − softmax_j multiplies a coefficient: printed bare it would read as a wrong formula."""
    from lossc.compiler.reductions import onehot_minus_softmax

    pred, label, c = sympy.symbols("pred label c", real=True)
    expr = c * onehot_minus_softmax(pred, label)
    from lossc.compiler.docs import Formula

    shown = Formula.of(expr)
    assert r"c \cdot \left([j = \mathrm{label}] - \frac{e^{\mathrm{pred}}}{\sum_{k} e^{\mathrm{pred}}}\right)" in shown.latex
    assert "<mi>c</mi><mo>&#xB7;</mo><mrow><mo>(</mo><mrow><mrow><mo>[</mo>" in shown.mathml
    page = (GENERATED / "docs" / "softmax_ce.md").read_text()
    assert r"\cdot [j = \mathrm{label}] - \frac" not in page


def test_pages_show_names_whole_and_products_with_a_dot():
    from lossc.compiler.docs import Formula

    eps, x = sympy.symbols("eps x", real=True)
    shown = Formula.of(-eps * expm1(x) * sympy.Symbol("log_py"))
    assert "<mi>log_py</mi>" in shown.mathml and "<msub>" not in shown.mathml  # not log with subscript py
    assert "&InvisibleTimes;" not in shown.mathml and "<mi>expm1</mi>" in shown.mathml
    assert r"\operatorname{expm1}\left(x\right)" in shown.latex  # not expm with subscript 1
    for page in (GENERATED / "docs").glob("*.md"):
        assert "grad\\_output" not in page.read_text(), page.name  # the kernels' upstream factor is not shown
    long_sum = Formula.of(sympy.Add(*[sympy.Symbol(f"term_number_{k}") * x for k in range(12)]))
    assert long_sum.latex.startswith(r"\begin{aligned} & ") and long_sum.latex.count(r"\\ & + ") == 11


@pytest.mark.parametrize("name, words", [
    ("huber", "The element loss has the broadcast shape of the inputs"),
    ("softmax_ce", "one value per row: the prediction's shape without the class axis"),
    ("kl_div", "one value per element of the prediction, classes along the class axis"),
    ("sdml", "one value per row of the row-side pair inputs"),
    ("triplet", "without every axis but the first (the batch axis)"),
])
def test_output_and_reduction_describe_the_loss_level(name, words):
    page = (GENERATED / "docs" / f"{name}.md").read_text()
    section = page.split("## Output and reduction", 1)[1].split("##", 1)[0]
    assert words in section, section


def _inlined(expr, ir):
    """``expr`` with the spec's definitions substituted (latest first), so that it reads only inputs."""
    for name, definition in reversed(ir.definitions):
        expr = expr.xreplace({s: definition for s in expr.free_symbols if s.name == name})
    return expr


def _printed_formulas(derived):
    """(what, expression) of every formula a page prints for one variant."""
    from lossc.compiler.derive import GRAD_OUTPUT

    ir = derived.ir
    names = [i.name for i in ir.spec.differentiable_inputs]
    return ([(f"definition {n}", e) for n, e in ir.definitions] + [("loss as declared", ir.readable_loss)]
            + [(f"gradient {n}", readable_gradient(ir, n)) for n in names] + [("stable loss", derived.loss)]
            + [(f"stable gradient {n}", derived.gradients[n].subs(GRAD_OUTPUT, 1)) for n in names])


NAIVE_SPECS = sorted((Path(__file__).parent / "naive_specs").glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(COMPILED) + [p.stem for p in NAIVE_SPECS])
def test_every_printed_formula_reads_back_as_what_the_kernels_compute(name):
    """The LaTeX of each formula on the page, parsed back by SymPy's LaTeX parser (lark; the
    pages' notation added to its grammar, tests/latex_roundtrip.py), equals the expression
    it was printed from at 30 digits, at points on both sides of every branch: for every
    built-in spec and the tests' user specs (naive_specs/)."""
    pytest.importorskip("lark")
    from latex_roundtrip import parse_docs_latex
    from lossc.compiler.docs import Formula
    from lossc.compiler.mp_eval import NotReal, truth

    compiled = COMPILED.get(name) or compile_spec(next(p for p in NAIVE_SPECS if p.stem == name))
    for derived in compiled.derived:
        ir, spec = derived.ir, derived.ir.spec
        for what, expr in _printed_formulas(derived):
            parsed = parse_docs_latex(Formula.of(expr).latex, expr)
            want, got = _inlined(expr, ir), _inlined(parsed, ir)
            checked = 0
            for k, (value, label) in enumerate(BRANCH_POINTS):
                scalars = {p.name: float(p.default) for p in spec.runtime_params}
                scalars.update({i.name: (float(k % 3) if i.class_index else label) for i in spec.inputs
                                if i.per == "row"})
                elements = {i.name: [value, -0.4 * value + 0.3, 0.25 + 0.1 * k] for i in spec.inputs
                            if i.per == "element"}
                if not spec.class_axis:
                    scalars.update({i: row[0] for i, row in elements.items()})
                    scalars.update({i.name: label for i in spec.inputs if not i.differentiable})
                    elements = None
                for index in ([None] if elements is None else [0, 2]):
                    try:
                        a, b = truth(want, scalars, elements, index), truth(got, scalars, elements, index)
                    except (NotReal, KeyError, TypeError, ValueError):
                        continue
                    assert abs(a - b) <= 1e-30 * max(1, abs(a)), (name, ir.variant, what, Formula.of(expr).latex)
                    checked += 1
            assert checked >= 2, (name, ir.variant, what, checked)
