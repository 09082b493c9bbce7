"""SymPy → Python code for *scalar* sub-expressions, one ``_print_<Node>`` per node kind.

Array work is emitted as ufunc calls by :mod:`numpy_ufuncs`; this printer covers what
depends on parameters and constants only (e.g. ``1 - alpha``), which the kernels keep as
Python scalars: under NumPy's promotion rules (NEP 50) those are "weak" and never widen a
float32 or float16 array to float64. Numbers print as plain Python literals.
"""
from sympy.core.numbers import equal_valued

from . import code_name
from .strict import StrictPrinter


class NumPyPrinter(StrictPrinter):
    """Prints scalar (parameter-only) loss sub-expressions as Python code (``np`` is numpy)."""

    column, target = "python", "NumPy"

    def _print_Symbol(self, expr):
        return code_name(expr.name)

    def _print_Float(self, expr):
        return repr(float(expr))

    def _print_Rational(self, expr):
        return f"({expr.p}/{expr.q})"

    def _print_Integer(self, expr):
        return str(expr.p)

    def _print_Pi(self, expr):
        return "np.pi"

    def _print_Exp1(self, expr):
        return "np.e"

    def _print_Pow(self, expr, rational=False):
        base = self.parenthesize(expr.base, 1000)
        if equal_valued(expr.exp, 0.5):
            return f"np.sqrt({self._print(expr.base)})"
        if equal_valued(expr.exp, -0.5):
            return f"(1/np.sqrt({self._print(expr.base)}))"
        if expr.exp == -1:
            return f"(1/{base})"
        if expr.exp.is_Integer and expr.exp < 0:
            return f"(1/{base}**{-expr.exp.p})"
        return f"{base}**{self.parenthesize(expr.exp, 1000)}"

    def _print_Piecewise(self, expr):
        *pieces, (last_value, last_cond) = expr.args
        code = self._print(last_value) if last_cond == True else "float('nan')"  # noqa: E712
        for value, cond in reversed(pieces):
            code = f"({self._print(value)} if {self._print(cond)} else {code})"
        return code

    def _print_Relational(self, expr):
        return f"({self._print(expr.lhs)} {expr.rel_op} {self._print(expr.rhs)})"

    def _print_And(self, expr):
        return "(" + " and ".join(self._print(a) for a in expr.args) + ")"

    def _print_Or(self, expr):
        return "(" + " or ".join(self._print(a) for a in expr.args) + ")"

    def _print_Not(self, expr):
        return f"(not {self._print(expr.args[0])})"

    def _print_BooleanTrue(self, expr):
        return "True"

    def _print_BooleanFalse(self, expr):
        return "False"
