"""Stage 7: formula documentation from the same symbolic source as the kernels.

Markdown pages (``generated/docs/``) are part of every build, so ``lossc build --check``
covers them; they hold nothing machine-dependent. ``lossc docs`` exports Markdown,
HTML (static, no JavaScript, native presentation MathML) or one LaTeX document, adding
the measured accuracy figures and, with matplotlib installed, plots.
"""
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import sympy
from markupsafe import Markup

from sympy.printing.latex import LatexPrinter

from .. import primitives
from ..derive import GRAD_OUTPUT, declared_gradients
from ..functions import sigmoid
from ..reductions import CLASS_INDEX, NotDifferentiable, element_level
from ..emit import template as _template
from . import plots
from .mathml import mathml

FORMATS = ("md", "html", "latex")
DOCS_RECORD = "lossc-docs.json"  # in a docs folder: the losses documented there, for its index
TEMPLATES = Path(__file__).parent / "templates"


def template(name):
    """A docs template from this stage's templates folder."""
    return _template(name, TEMPLATES)
PIPELINE_TEXT = (
    "element loss → × element weight → reduction 'none' | 'mean' | 'sum' (with avg_factor, "
    "'mean' is sum / (avg_factor + ε), ε = float32 machine epsilon) → × loss_weight"
)


@dataclass
class Formula:
    """One formula in every notation the pages need (MathML printed only when a page asks:
    the Markdown pages of every build never do)."""

    expr: sympy.Expr
    latex: str
    text: str

    @classmethod
    def of(cls, expr):
        """Render ``expr`` as LaTeX and plain text; :attr:`mathml` on first use."""
        names = {s: tex_name(s.name) for s in expr.free_symbols}
        names[CLASS_INDEX] = "j"
        printer = DocLatexPrinter({"symbol_names": names, "mul_symbol": "dot"})
        return cls(expr, printer.broken(expr), str(expr))

    @functools.cached_property
    def mathml(self):
        """Presentation MathML of the formula."""
        return Markup(mathml(self.expr))


class DocLatexPrinter(LatexPrinter):
    """SymPy's LaTeX printer with one-hots [j = y] written as Iverson brackets."""

    def _print_Function(self, expr, exp=None):
        """A primitive in its ``latex`` form of :mod:`..primitives` (SymPy's own where it has
        none; SymPy would print expm1 as expm with subscript 1)."""
        primitive = primitives.of(expr)
        if primitive is None or primitive.latex is None:
            return super()._print_Function(expr, exp)
        tex = primitive.latex % tuple(self._print(a) for a in expr.args)
        return tex if exp is None else r"\left(%s\right)^{%s}" % (tex, exp)

    def broken(self, expr):
        """``expr``'s LaTeX; a sum longer than LATEX_BREAK_AT characters as an ``aligned`` column,
        one top-level term per line after its sign, so a page need not scroll sideways."""
        tex = self.doprint(expr)
        if not isinstance(expr, sympy.Add) or len(tex) <= LATEX_BREAK_AT:
            return tex
        rows = []
        for k, term in enumerate(self._as_ordered_terms(expr)):
            negative = term.could_extract_minus_sign()
            sign = "- " if negative else ("+ " if k else "")
            rows.append("& " + sign + self._print(-term if negative else term))
        return r"\begin{aligned} " + r" \\ ".join(rows) + r" \end{aligned}"

    def _print_Piecewise(self, expr):
        pieces = expr.args
        if len(pieces) == 2 and pieces[0].expr == 1 and pieces[1].expr == 0 and pieces[1].cond == True:  # noqa: E712
            return r"\left[%s\right]" % self._print(pieces[0].cond)
        return super()._print_Piecewise(expr)


def tex_name(name):
    """A spec identifier in LaTeX: one letter stays italic, longer names are upright text."""
    return name if len(name) == 1 else r"\mathrm{%s}" % name.replace("_", r"\_")


@dataclass
class VariantDoc:
    """Formulas of one build-time variant."""

    label: str
    module: str
    definitions: list
    loss: Formula
    gradients: list
    stable_loss: Formula
    stable_gradients: list


@dataclass
class LossDoc:
    """Everything a loss page shows."""

    spec: object
    variants: list
    row_level: bool = False  # one loss per row (a class axis reduced), not per element
    accuracy: list = field(default_factory=list)
    plot_svg: str | None = None
    plot_file: str | None = None


@dataclass
class IndexEntry:
    """One line of a docs index."""

    name: str
    summary: str
    variants: int


LATEX_BREAK_AT = 240  # characters: a longer top-level sum is written one term per line
SIMPLIFY_BUDGET = 80  # operations: a gradient up to this size is also tried through sympy.simplify


def readable_gradient(ir, name):
    """d loss/d input of the loss as declared, written in the spec's own definitions (each
    definition's expression replaced by its name, largest first, and σ(−u) by 1 − p where the
    spec defines p = σ(u)), then the shortest of it factored and, within SIMPLIFY_BUDGET,
    simplified: the gradient reads as the paper's, not as an expansion of every definition."""
    gradient = declared_gradients(ir)[name]
    for symbol, inlined in reversed(_inlined_definitions(ir)):
        if inlined.is_Number or inlined.is_Symbol:
            continue  # a constant or a renamed input: its name would only replace a 1 or an input
        gradient = gradient.subs(inlined, symbol)
        if isinstance(inlined, sigmoid):
            gradient = gradient.subs(sigmoid(-inlined.args[0]), 1 - symbol)
    candidates = [gradient, sympy.factor_terms(gradient)]
    if sympy.count_ops(gradient) <= SIMPLIFY_BUDGET:
        try:
            simplified = sympy.factor_terms(sympy.simplify(gradient))
        except NotDifferentiable:  # some of simplify's tactics differentiate; a reduction refuses
            simplified = gradient
        if _functions(simplified) <= _functions(gradient):  # no tanh the spec never wrote
            candidates.append(simplified)
    return min(candidates, key=sympy.count_ops)


def _functions(expr):
    """The function classes ``expr`` applies."""
    return {type(f) for f in expr.atoms(sympy.Function)}


def _inlined_definitions(ir):
    """(symbol, expression with every earlier definition inlined) of the spec's definitions."""
    inlined = []
    for name, expr in ir.definitions:
        for symbol, value in inlined:
            expr = expr.xreplace({symbol: value})
        inlined.append((sympy.Symbol(name, real=True), expr))  # as build_ir names a definition
    return inlined


def loss_doc(compiled):
    """Gather the formulas of every variant of a compiled spec."""
    variants = []
    for derived in compiled.derived:
        ir = derived.ir
        names = [i.name for i in ir.spec.differentiable_inputs]
        variants.append(VariantDoc(
            label=", ".join(f"{k} = {v}" for k, v in ir.variant.items()) or "the only variant",
            module=ir.module_name,
            definitions=[(name, tex_name(name), Formula.of(expr)) for name, expr in ir.definitions],
            loss=Formula.of(ir.readable_loss),
            gradients=[(n, tex_name(n), Formula.of(readable_gradient(ir, n))) for n in names],
            stable_loss=Formula.of(derived.loss),
            stable_gradients=[(n, tex_name(n), Formula.of(derived.gradients[n].subs(GRAD_OUTPUT, 1))) for n in names],
        ))
    first = compiled.derived[0].ir
    row_level = bool(first.spec.class_axis) and not element_level(first.loss, first.element_symbols)
    return LossDoc(compiled.spec, variants, row_level=row_level)


def markdown_page(compiled):
    """``(relative path, text)`` of one loss's checked-in Markdown page."""
    doc = loss_doc(compiled)
    return f"docs/{doc.spec.name}.md", render("loss.md.j2", doc, plots_note=True)


def markdown_index(compiled_losses):
    """The text of the checked-in Markdown index of ``compiled_losses`` (no page is rendered)."""
    return template("index.md.j2").render(
        docs=[IndexEntry(c.spec.name, c.spec.summary, len(c.derived)) for c in compiled_losses])


_AXIS_WORDS = {"parameter": "the class axis (the call's `axis`, default −1)", "last": "the last axis",
               "non_batch": "every axis but the first (the batch axis)"}


def output_text(doc):
    """What one loss value is, by the loss's level: one per element, per row, or per pair row."""
    spec = doc.spec
    if spec.pair_inputs:
        return ("The loss has one value per row of the row-side pair inputs, shape (batch,): row i is "
                "compared with every row j of the column side, the pair terms reduced over the features.")
    if not spec.class_axis:
        return ("The element loss has the broadcast shape of the inputs and the prediction's dtype (float16 is "
                "computed in float32).")
    axis = _AXIS_WORDS[spec.class_axis]
    if doc.row_level:
        return (f"The loss has one value per row: the prediction's shape without {axis}, which it reduces "
                "(float16 is computed in float32).")
    return (f"The loss has one value per element of the prediction, classes along {axis} included (float16 is "
            "computed in float32).")


def render(name, doc, **extra):
    """Render one loss page template."""
    return template(name).render(doc=doc, spec=doc.spec, pipeline=PIPELINE_TEXT, output=output_text(doc), **extra)


def export(compiled_losses, fmt, out_dir, with_accuracy=True, log=print, built=None):
    """Write ``fmt`` pages for the compiled losses into ``out_dir``; returns written paths.
    Accuracy figures and plots run the kernels of the built folder ``built[name]`` (default:
    the installed ``lossc.generated`` package). The index lists every loss documented in
    ``out_dir`` so far, not only this call's."""
    from lossc.core.targets import folder_loader

    from ..workspace import package_folder

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    docs = [loss_doc(c) for c in compiled_losses]
    for doc, compiled in zip(docs, compiled_losses):
        folder = (built or {}).get(compiled.spec.name, package_folder())
        if with_accuracy:
            from ..accuracy import measure

            doc.accuracy = measure(compiled.spec.path, folder=folder)
        if plots.available() and fmt != "md":
            kind = "svg" if fmt == "html" else "pdf"
            doc.plot_file = f"{doc.spec.name}.{kind}"
            module = folder_loader(folder)(compiled.derived[0].ir.module_name)
            (out_dir / doc.plot_file).write_bytes(plots.plot(compiled.derived[0], module, kind))
    written = []
    if fmt == "latex":
        path = out_dir / "losses.tex"
        path.write_text(template("losses.tex.j2").render(docs=docs, plots=plots.available(), pipeline=PIPELINE_TEXT))
        written.append(path)
    else:
        suffix = "md" if fmt == "md" else "html"
        for doc in docs:
            path = out_dir / f"{doc.spec.name}.{suffix}"
            path.write_text(render(f"loss.{suffix}.j2", doc, plots_note=not plots.available()), encoding="utf-8")
            written.append(path)
        index = out_dir / f"index.{suffix}"
        index.write_text(template(f"index.{suffix}.j2").render(docs=_documented(out_dir, docs, suffix)),
                         encoding="utf-8")
        written.append(index)
    log(f"wrote {len(written)} {fmt} file(s) to {out_dir}" + ("" if plots.available() else " (no plots: matplotlib is not installed)"))
    return written


def _documented(out_dir, docs, suffix):
    """Index entries (name, summary, variant count) of every loss with a page in ``out_dir``:
    this call's ``docs`` merged into the record earlier calls left (``DOCS_RECORD``)."""
    record_path = out_dir / DOCS_RECORD
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    if not isinstance(record, dict):
        record = {}
    record.update({d.spec.name: {"summary": d.spec.summary, "variants": len(d.variants)} for d in docs})
    record_path.write_text(json.dumps(record, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return [IndexEntry(name, str(entry.get("summary", "")), int(entry.get("variants", 1)))
            for name, entry in sorted(record.items())
            if isinstance(entry, dict) and (out_dir / f"{name}.{suffix}").is_file()]
