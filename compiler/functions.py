"""SymPy functions of the spec language that SymPy lacks, each with its own derivative
(how each is evaluated, printed and rendered lives in :mod:`primitives`).

``sigmoid`` and ``softplus`` stay opaque through differentiation so gradients come out in
stable form (d softplus = sigmoid, d sigmoid = sigmoid(x)·sigmoid(−x)); the printers emit
their overflow-free implementations after :mod:`lowering`. ``relu`` and ``step`` carry the
PyTorch convention for kinks: the derivative of max(0, x) at x = 0 is 0.
"""
import sympy
from sympy.codegen.cfunctions import expm1, log1p

__all__ = ["sigmoid", "softplus", "relu", "step", "one_if_nonneg", "grouped", "unit_clip", "lgamma", "digamma",
           "log1p", "expm1"]


class sigmoid(sympy.Function):
    """Logistic function 1 / (1 + exp(−x)); derivative sigmoid(x)·sigmoid(−x)."""

    nargs = 1

    def fdiff(self, argindex=1):
        x = self.args[0]
        return sigmoid(x) * sigmoid(-x)

    def _eval_is_real(self):
        return self.args[0].is_real

    def _eval_is_positive(self):
        return self.args[0].is_real

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return 1 / (1 + sympy.exp(-x))



class softplus(sympy.Function):
    """log(1 + exp(x)); derivative sigmoid(x)."""

    nargs = 1

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return sympy.log(1 + sympy.exp(x))

    def _eval_is_real(self):
        return self.args[0].is_real

    def _eval_is_positive(self):
        return self.args[0].is_real



class relu(sympy.Function):
    """max(x, 0); derivative step(x), which is 0 at the kink x = 0 (PyTorch's convention)."""

    nargs = 1

    def fdiff(self, argindex=1):
        return step(self.args[0])

    def _eval_is_real(self):
        return self.args[0].is_real

    def _eval_is_nonnegative(self):
        return self.args[0].is_real



class step(sympy.Function):
    """1 where x > 0 else 0 (so step(0) = 0); its derivative is taken as 0 everywhere."""

    nargs = 1

    def fdiff(self, argindex=1):
        return sympy.S.Zero

    def _eval_is_real(self):
        return self.args[0].is_real



class one_if_nonneg(sympy.Function):
    """1 where u ≥ 0 else e, for 0 ≤ e ≤ 1: the numerator of the lowered sigmoid.

    Only produced by lowering (after differentiation); because e ≤ 1 it equals
    max(e, [u ≥ 0]), which the NumPy emitter computes branch-free in two ufunc calls.
    """

    nargs = 2



class grouped(sympy.Function):
    """Its argument's value, computed on its own before the expression around it uses it:
    ``a + grouped(b − 1)`` evaluates b − 1 (exact for an integer count b) before adding a,
    where a flat sum could add a + b first and lose a's low bits. Lowering and the ε rules of
    rewrites create it."""

    nargs = 1

    @classmethod
    def eval(cls, arg):
        """A number needs no grouping (and so substituted expressions evaluate)."""
        return arg if arg.is_Number else None

    def _eval_is_real(self):
        return self.args[0].is_real

    def fdiff(self, argindex=1):
        return sympy.S.One



class unit_clip(sympy.Function):
    """x clipped to [−1, 1] (NaN stays NaN). Only lowering creates it, from where(|u| < r, u/r, sign(u))."""

    nargs = 1

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return sympy.Max(sympy.Min(x, sympy.S.One), -sympy.S.One)
        return None

    def _eval_is_real(self):
        return self.args[0].is_real

    def fdiff(self, argindex=1):
        return sympy.Piecewise((sympy.S.One, sympy.Abs(self.args[0]) < 1), (sympy.S.Zero, True))


class lgamma(sympy.Function):
    """log |Γ(x)|; derivative digamma(x). Its own class rather than SymPy's loggamma, whose
    derivative and simplifications are those of the complex log Γ."""

    nargs = 1

    def fdiff(self, argindex=1):
        return digamma(self.args[0])

    def _eval_is_real(self):
        return self.args[0].is_real


class digamma(sympy.Function):
    """ψ(x) = d/dx log Γ(x), the derivative of lgamma; differentiating it again is an error
    (no target has the trigamma function)."""

    nargs = 1

    def fdiff(self, argindex=1):
        raise NotImplementedError("the derivative of digamma (trigamma) is not a lossc primitive")

    def _eval_is_real(self):
        return self.args[0].is_real
