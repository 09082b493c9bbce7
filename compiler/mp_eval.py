"""Evaluate SymPy loss expressions with mpmath, as the independent truth for kernels.

The expressions evaluated are the ones the spec *declared* (before any stability rewrite),
so agreement with the kernels tests rewrites, lowering, CSE and printing together. Naive
forms such as log(1 − σ(10⁴)) need thousands of digits; :func:`truth` raises the working
precision until two evaluations agree to 40 significant digits.
"""
import mpmath
import sympy

from . import primitives
from .reductions import CLASS_INDEX, CLASSES, onehot_minus_softmax, rlog_softmax_at, rlogsumexp, rmax, rsum

GUARD_BITS = 160  # bits beyond the worst absorption/cancellation: ≥ 40 correct digits
START_BITS = 256
MAX_BITS = 400_000
IGNORED_BELOW = -1200  # magnitude (bits) under which an absorbed term does not raise the precision


class NotReal(ValueError):
    """The expression has no real value at this point (e.g. the log of a negative number)."""


_COMPARE = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}


class _Evaluator:
    """Evaluates at the current precision and records how many bits additions could lose.

    ``lost_bits`` is the largest, over all sums, of (largest term magnitude − smallest
    non-zero term magnitude) and (largest term magnitude − result magnitude), in bits:
    absorption of a tiny term and cancellation of large ones both show up there.
    ``exact_zero`` is set when a sum of non-zero terms came out exactly zero.
    """

    def __init__(self, env, elements=None, index=None):
        self.env = env
        self.elements = elements or {}
        self.index = index
        self.classes = len(next(iter(self.elements.values()))) if self.elements else 0
        self.reduced = {}
        self.lost_bits = 0
        self.exact_zero = False

    def value(self, expr):
        """Value of ``expr`` (an mpf)."""
        if expr.is_Symbol:
            if expr.name in self.elements:
                return self.elements[expr.name][self.index]
            if expr == CLASS_INDEX:
                return mpmath.mpf(self.index)
            if expr == CLASSES:
                return mpmath.mpf(self.classes)
            return self.env[expr.name]
        if isinstance(expr, (rlog_softmax_at, onehot_minus_softmax)):  # stable nodes: by their definition
            return self.value(expr.definition())
        if isinstance(expr, (rsum, rmax, rlogsumexp)):
            if expr not in self.reduced:
                self.reduced[expr] = self.reduce(expr)
            return self.reduced[expr]
        if expr.is_Float:
            return mpmath.mpf(expr._mpf_)
        if expr.is_Rational:
            return mpmath.mpf(expr.p) / expr.q
        if expr is sympy.pi:
            return +mpmath.pi
        if expr is sympy.E:
            return mpmath.e
        if expr.is_Add:
            return self.add([self.value(a) for a in expr.args])
        if expr.is_Mul:
            return mpmath.fprod(self.value(a) for a in expr.args)
        if expr.is_Pow:
            base, exponent = self.value(expr.base), self.value(expr.exp)
            if base == 0 and exponent < 0:
                return mpmath.inf
            return _real(base**exponent)
        if isinstance(expr, sympy.Piecewise):
            for value, cond in expr.args:
                if self.condition(cond):
                    return self.value(value)
            raise NotReal("no branch of a where() applies")
        primitive = primitives.of(expr)
        if primitive is not None:
            return _real(primitive.mpmath(*(self.value(a) for a in expr.args)))
        raise TypeError(f"mp_eval cannot evaluate {expr.func.__name__}")

    def reduce(self, node):
        """A reduction over the class axis, evaluating its argument at every class."""
        outer = self.index
        values = []
        for j in range(self.classes):
            self.index = j
            values.append(self.value(node.args[0]))
        self.index = outer
        if isinstance(node, rmax):
            return max(values)
        if isinstance(node, rsum):
            return self.add(values)
        top = max(values)
        return top + mpmath.log(self.add([mpmath.exp(v - top) for v in values]))

    def add(self, terms):
        total = mpmath.fsum(terms)
        # a term below 2^IGNORED_BELOW (2^-1200, far under float64's smallest subnormal) could only
        # matter after a cancellation leaves nothing else, and a float result of such size is 0
        mags = [mpmath.mag(t) for t in terms if t != 0 and mpmath.isfinite(t) and mpmath.mag(t) > IGNORED_BELOW]
        if len(mags) > 1 and mpmath.isfinite(total):
            top = max(mags)
            self.lost_bits = max(self.lost_bits, top - min(mags))
            if total == 0:
                self.exact_zero = True
            else:
                self.lost_bits = max(self.lost_bits, top - mpmath.mag(total))
        return total

    def condition(self, cond):
        """Truth value of a SymPy boolean."""
        if cond is sympy.true:
            return True
        if cond is sympy.false:
            return False
        if isinstance(cond, sympy.And):
            return all(self.condition(c) for c in cond.args)
        if isinstance(cond, sympy.Or):
            return any(self.condition(c) for c in cond.args)
        if isinstance(cond, sympy.Not):
            return not self.condition(cond.args[0])
        return _COMPARE[cond.rel_op](self.value(cond.lhs), self.value(cond.rhs))


def _real(value):
    if isinstance(value, mpmath.mpc):
        if value.imag != 0:
            raise NotReal("complex value")
        return value.real
    return value


def truth(expr, values, elements=None, index=None, steps=()):
    """``expr`` at ``values`` (name → exact float) with at least 40 correct digits, as an mpf.
    ``steps`` are (symbol, expression) assignments evaluated first, in order, that ``expr``
    may read (the nodes of a loss's graph).

    For losses with reductions, ``elements`` maps element-level names to one row of values
    (one per class) and ``index`` is the class at which an element-level expr is taken.

    The working precision is raised until it exceeds the bits any sum could lose; a sum
    that came out exactly zero is confirmed at 2048 more bits. Raises NotReal where the
    expression has no real value.
    """
    bits, zero_confirmed = START_BITS, False
    while bits <= MAX_BITS:
        with mpmath.workprec(bits):
            evaluator = _Evaluator(
                {name: mpmath.mpf(v) for name, v in values.items()},
                {name: [mpmath.mpf(v) for v in row] for name, row in (elements or {}).items()},
                index,
            )
            for symbol, step in steps:
                evaluator.env[symbol.name] = evaluator.value(step)
            value = evaluator.value(expr)
        needed = evaluator.lost_bits + GUARD_BITS
        if needed <= bits and (not evaluator.exact_zero or zero_confirmed):
            return value
        zero_confirmed = needed <= bits
        bits = max(needed + 64, bits + 2048 if zero_confirmed else bits)
    raise ValueError(f"more than {MAX_BITS} bits needed for {expr} at {values}")
