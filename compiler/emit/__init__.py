"""Stage 5: emitters, one per target, each a SymPy printer plus Jinja2 templates beside it."""
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).parent / "templates"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#",
                  "{": r"\{", "}": r"\}", "$": r"\$", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_text(text):
    """Escape plain text for LaTeX."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def python_tuple(items):
    """Render a sequence as a Python tuple literal: ('a', 'b') or ('a',) or ()."""
    return repr(tuple(items))


def template(name, folder=TEMPLATES):
    """Load the Jinja2 template ``name`` from ``folder`` (this package's templates by default)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["pytuple"] = python_tuple
    env.filters["latex_text"] = latex_text
    return env.get_template(name)


def python_signature(spec):
    """``pred, label, pos_weight=1.0, *, eps=1e-12``: inputs, then keyword-only parameters."""
    parts = [i.name if i.default is None else f"{i.name}={i.default!r}" for i in spec.inputs]
    if spec.runtime_params:
        parts.append("*")
        parts += [f"{p.name}={p.default!r}" for p in spec.runtime_params]
    return ", ".join(parts)


def variant_text(variant):
    """``from_sigmoid=False, ...`` or 'the only one'."""
    return ", ".join(f"{k}={v!r}" for k, v in variant.items()) or "the only one"
