"""Stage 5: emitters, one per target, each a SymPy printer plus Jinja2 templates beside it."""
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).parent / "templates"


def python_tuple(items):
    """Render a sequence as a Python tuple literal: ('a', 'b') or ('a',) or ()."""
    return repr(tuple(items))


def template(name):
    """Load the Jinja2 template ``name`` from this package's templates folder."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["pytuple"] = python_tuple
    return env.get_template(name)
