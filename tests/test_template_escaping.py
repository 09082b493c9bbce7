"""Every template interpolation of spec text is escaped for its target language.

Scans the Jinja2 syntax tree of every template: in the Python templates each ``{{ … }}`` is
an escaping filter (pystr, pytuple) or a value the compiler builds from validated
identifiers and numbers; free text (summary, doc, references, file names) reaches them only
as ``module_doc``, a literal made by ``python_docstring``. Markdown pages pass spec text
through md_text, LaTeX through latex_text, and HTML pages are autoescaped.
"""
import ast
from pathlib import Path

import jinja2
import pytest
from jinja2 import nodes

from lossc.compiler.emit import TEMPLATES, module_docstring, python_docstring, template
from lossc.compiler.docs import TEMPLATES as DOC_TEMPLATES

SPEC_TEXT = {"summary", "doc", "references", "spec_file", "from_pairs"}
ESCAPING = {"py": {"pystr", "pytuple", "tojson"}, "md": {"md_text"}, "tex": {"latex_text"}}
# Values the emitters build from validated identifiers, numbers and generated code only.
COMPILER_BUILT = {"module_doc", "kernel.name", "kernel.args", "kernel.doc", "kernel.targets", "line", "signature",
                  "input_names", "param_names", "inputs", "params", "differentiable", "kernels.scratch",
                  "stage.outputs", "f.returns", "f.name", "f.arguments", "statement"}


def _templates():
    for folder in (TEMPLATES, DOC_TEMPLATES):
        for path in sorted(Path(folder).glob("*.j2")):
            yield pytest.param(path, id=path.name)


def _dotted(node):
    """'kernel.name' for Getattr(Name(kernel), name); subscripts are skipped."""
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        inner = _dotted(node.node)
        return inner and f"{inner}.{node.attr}"
    if isinstance(node, nodes.Getitem):
        return _dotted(node.node)
    return None


def _spec_text_names(node):
    """Spec text an expression reads: attributes such as .summary, or a loop's ``ref``."""
    found = {n.attr for n in node.find_all(nodes.Getattr) if n.attr in SPEC_TEXT}
    return found | {n.name for n in node.find_all(nodes.Name) if n.name == "ref"}


def _kind(path):
    name = path.name
    return "py" if name.endswith((".py.j2", "device_functions.j2")) else name.split(".")[-2]


@pytest.mark.parametrize("path", _templates())
def test_every_interpolation_is_escaped_for_its_language(path):
    env = jinja2.Environment()
    tree = env.parse(path.read_text(encoding="utf-8"))
    kind = _kind(path)
    outputs = [expr for out in tree.find_all(nodes.Output) for expr in out.nodes if not isinstance(expr, nodes.TemplateData)]
    assert outputs, path
    for expr in outputs:
        filters = {f.name for f in expr.find_all(nodes.Filter)} | ({expr.name} if isinstance(expr, nodes.Filter) else set())
        assert "safe" not in filters, f"{path.name}: |safe bypasses escaping"
        if kind == "py":
            escaped = isinstance(expr, nodes.Filter) and expr.name in ESCAPING["py"]
            built = _dotted(expr) in COMPILER_BUILT or not _spec_text_names(expr) and _only_built(expr)
            assert escaped or built, f"{path.name}:{expr.lineno}: unescaped {_dotted(expr) or type(expr).__name__}"
            assert not _spec_text_names(expr), f"{path.name}:{expr.lineno}: spec text outside module_doc"
        elif kind in ESCAPING:
            for name in _spec_text_names(expr):
                assert filters & ESCAPING[kind], f"{path.name}:{expr.lineno}: {name} needs {ESCAPING[kind]}"


def _only_built(expr):
    """An expression over compiler-built values only (joins, lengths, literals, conditions)."""
    names = {_dotted(n) for n in expr.find_all((nodes.Name, nodes.Getattr)) if isinstance(n, (nodes.Name, nodes.Getattr))}
    names.discard(None)
    return all(n in COMPILER_BUILT or n.split(".")[0] in COMPILER_BUILT for n in names)


def test_html_templates_autoescape_and_others_do_not():
    assert template("loss.html.j2", DOC_TEMPLATES).environment.autoescape("loss.html.j2")
    page = template("loss.html.j2", DOC_TEMPLATES).environment.from_string("{{ x }}").render(x="<b>")
    assert page == "<b>"  # from_string templates keep default (no escaping): only named .html.j2 files escape
    assert not template("numpy_module.py.j2").environment.autoescape("numpy_module.py.j2")


@pytest.mark.parametrize("text", ['"""', '\\', 'a"', '\0', '\u2028', 'x\ny', "'''", '\r\n', '\N{RIGHT-TO-LEFT OVERRIDE}'])
def test_python_docstring_is_a_literal_of_exactly_the_text(text):
    literal = python_docstring(text)
    assert ast.literal_eval(literal) == text
    module = ast.parse(literal + "\nX = 1\n")
    assert ast.get_docstring(module, clean=False) == text and len(module.body) == 2


def test_module_docstring_holds_summary_variant_and_file_name():
    class Spec:
        summary = 'x"""; boom'

    literal = module_docstring(Spec(), {"mode": "a"}, 'f"""x.yaml', "CuPy", ["note one"])
    assert ast.literal_eval(literal) == ('x"""; boom (CuPy)\n\nVariant: mode=\'a\'.\n'
                                         'Generated by lossc from f"""x.yaml; do not edit.\nnote one\n')
