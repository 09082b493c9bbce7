"""The base of every code printer: SymPy's string printer made strict and table-driven.

Function nodes print from their column of :mod:`..primitives`; any node without a form for
the target (an unknown function, an unexpected SymPy class, an infinity or NaN literal) is
an error naming it, never silently printed text a compiler or interpreter might still accept.
"""
from sympy.printing.str import StrPrinter

from .. import primitives


class StrictPrinter(StrPrinter):
    """A printer for one target; ``column`` names its column of the primitives table and
    ``used`` collects the primitives printed (their imports go into the module)."""

    column = None
    target = None

    def __init__(self, settings=None):
        super().__init__(settings)
        self.used = set()

    def emptyPrinter(self, expr):
        raise NotImplementedError(f"the {self.target} target cannot print {type(expr).__name__}: {expr}")

    _print_Basic = _print_Infinity = _print_NegativeInfinity = _print_NaN = _print_ComplexInfinity = emptyPrinter

    def fields(self):
        """Named fields of this target's format strings (see :mod:`..primitives`)."""
        return {}

    def _print_Function(self, expr):
        primitive = primitives.of(expr)
        form = None if primitive is None else getattr(primitive, self.column)
        if form is None:
            return self.emptyPrinter(expr)
        self.used.add(primitive)
        return form.format(*(self._print(a) for a in expr.args), **self.fields())
