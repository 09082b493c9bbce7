"""SymPy → CUDA C++ expressions for one precision, one ``_print_<Node>`` method per node kind.

float32 uses the single-precision math functions (``expf``, ``log1pf``, …) and ``f``-suffixed
literals rounded to float32, so nothing is silently promoted to double; float64 uses the
double ones. Conditions become ternaries; the emitter lifts the math calls of their branches
into unconditional temporaries first (``cupy_emitter.speculated``), so that the host's SIMD
loops vectorise them.
"""
import numpy as np
import sympy
from sympy.core.numbers import equal_valued

from . import code_name
from .strict import StrictPrinter


class CudaPrinter(StrictPrinter):
    """Prints lowered, CSE'd loss expressions as CUDA C++ for ``float`` or ``double``."""

    column, target = "c", "CUDA"

    def __init__(self, precision, indicators=frozenset()):
        super().__init__({"order": "lex"})
        self.single = precision == "float32"
        self.type = "float" if self.single else "double"
        self.indicators = indicators  # temporaries that hold an indicator [c] (0 or 1)

    def function(self, name):
        """The C math function ``name`` in this precision (expf vs exp)."""
        return name + "f" if self.single else name

    def fields(self):
        return {"f": "f" if self.single else "", "T": self.type, "zero": self.literal(0), "one": self.literal(1)}

    def literal(self, value):
        """A literal of this precision: float32-rounded with an f suffix, or a full double."""
        if self.single:
            text = format(float(np.float32(value)), ".9g")
            return (text if any(c in text for c in ".e") or "inf" in text else text + ".0") + "f"
        text = repr(float(value))
        return text if any(c in text for c in ".e") else text + ".0"

    def _print_Symbol(self, expr):
        return code_name(expr.name)

    def _print_Float(self, expr):
        return self.literal(float(expr))

    def _print_Integer(self, expr):
        return self.literal(int(expr))

    def _print_Rational(self, expr):
        return self.literal(expr.p / expr.q)

    def _print_Pi(self, expr):
        return self.literal(np.pi)

    def _print_Pow(self, expr, rational=False):
        base = self._print(expr.base) if expr.base.is_Atom else f"({self._print(expr.base)})"
        if equal_valued(expr.exp, 2):
            return f"({base}*{base})"
        if equal_valued(expr.exp, -1):
            return f"({self.literal(1)}/{base})"
        if equal_valued(expr.exp, 0.5):
            return f"{self.function('sqrt')}({base})"
        if equal_valued(expr.exp, -0.5):
            return f"({self.literal(1)}/{self.function('sqrt')}({base}))"
        return f"{self.function('pow')}({base}, {self._print(expr.exp)})"

    def _print_Mul(self, expr):
        """x·[c] as (c ? x : 0): a masked (−inf) logit times a one-hot 0 is 0, not NaN."""
        masked = masked_product(expr, self.indicators)
        if masked is None:
            return super()._print_Mul(expr)
        cond, rest = masked
        return f"({self._print(cond)} ? {self._print(rest)} : {self.literal(0)})"

    def _print_Piecewise(self, expr):
        *pieces, (last_value, last_cond) = expr.args
        code = self._print(last_value) if last_cond == True else f"({self.type})NAN"  # noqa: E712
        for value, cond in reversed(pieces):
            code = f"({self._print(cond)} ? {self._print(value)} : {code})"
        return code

    def _print_Relational(self, expr):
        return f"({self._print(expr.lhs)} {expr.rel_op} {self._print(expr.rhs)})"

    def _print_And(self, expr):
        return "(" + " && ".join(self._print(a) for a in expr.args) + ")"

    def _print_Or(self, expr):
        return "(" + " || ".join(self._print(a) for a in expr.args) + ")"

    def _print_Not(self, expr):
        return f"(!{self._print(expr.args[0])})"

    def _print_BooleanTrue(self, expr):
        return "true"

    def _print_BooleanFalse(self, expr):
        return "false"


def is_indicator(expr):
    """Whether ``expr`` is [c]: Piecewise((1, c), (0, True))."""
    return (isinstance(expr, sympy.Piecewise) and len(expr.args) == 2 and expr.args[0].expr == 1
            and expr.args[1].expr == 0 and expr.args[1].cond == True)  # noqa: E712


def indicator_symbols(assignments):
    """The temporaries of ``assignments`` that hold an indicator [c]."""
    return frozenset(symbol for symbol, expr in assignments if is_indicator(expr))


def masked_product(expr, indicators):
    """(c, x) when ``expr`` is a product x·[c] — [c] an indicator or one of the ``indicators``
    temporaries t (then c is t ≠ 0) — which every target prints as a selection, never a
    multiplication (a masked −inf times 0 is 0, not NaN); None for any other expression."""
    if not isinstance(expr, sympy.Mul):
        return None
    for factor in expr.args:
        if is_indicator(factor) or factor in indicators:
            cond = factor.args[0].cond if is_indicator(factor) else sympy.Ne(factor, 0, evaluate=False)
            return cond, sympy.Mul(*[a for a in expr.args if a is not factor])
    return None
