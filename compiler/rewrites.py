"""Stage 3: numerical-stability rewrites, as small named rules.

Each rule looks at one node and returns its replacement, or None; each is registered in the
``stabilize`` phase of :mod:`rules` under its name. :func:`stabilize` applies them, after the
``canonicalize`` rules of :mod:`canonicalize`, bottom-up until nothing changes. They run before differentiation and again on every
derived gradient, so neither the loss nor its gradients is ever emitted in a naive form
such as ``log(1 - sigmoid(x))`` or ``exp(x) - 1``.
"""
import itertools
import warnings

import sympy

from . import canonicalize  # noqa: F401  (registers the canonicalize rules, which run first)
from .functions import expm1, grouped, log1p, sigmoid, softplus
from .reductions import log_softmax_argument, one_hot_label, rlog_softmax_at, rlogsumexp, rlogsumexp_labelled, rsum
from .rules import enabled, note_fired, register_stabilize

ONE = sympy.S.One


@register_stabilize
def one_minus_sigmoid(node):
    """1 − sigmoid(x) → sigmoid(−x)   (no cancellation for large x)."""
    if node.is_Add and ONE in node.args:
        for term in node.args:
            if term.is_Mul and term.args == (-ONE, term.args[1]) and isinstance(term.args[1], sigmoid):
                rest = _other_args(node, term, ONE)
                return sympy.Add(sigmoid(-term.args[1].args[0]), *rest)
    return None


@register_stabilize
def sigmoid_minus_one(node):
    """sigmoid(x) − 1 → −sigmoid(−x)   (log1p(p − 1 + ε) near p = 1 keeps its digits)."""
    if node.is_Add and -ONE in node.args:
        for term in node.args:
            if isinstance(term, sigmoid):
                rest = _other_args(node, term, -ONE)
                return sympy.Add(-sigmoid(-term.args[0]), *rest)
    return None


@register_stabilize
def label_minus_sigmoid(node):
    """y − sigmoid(x), y an input → y·sigmoid(−x) − (1 − y)·sigmoid(x): exact for a hard label
    at a confident prediction (1 − sigmoid(50) is not 0). An input is a symbol without sign
    assumptions (a parameter's symbol carries its range's)."""
    if not (node.is_Add and len(node.args) == 2):
        return None
    for term, other in (node.args, node.args[::-1]):
        if term.is_Mul and term.args[0] == -ONE and len(term.args) == 2 and isinstance(term.args[1], sigmoid) \
                and other.is_Symbol and other.is_nonnegative is None:
            x = term.args[1].args[0]
            return other * sigmoid(-x) - (1 - other) * sigmoid(x)
    return None


@register_stabilize
def log_of_sigmoid(node):
    """log(sigmoid(x)) → −softplus(−x); with the rule above, log(1−sigmoid(x)) → −softplus(x)."""
    if isinstance(node, sympy.log) and isinstance(node.args[0], sigmoid):
        return -softplus(-node.args[0].args[0])
    return None


@register_stabilize
def power_of_sigmoid(node):
    """sigmoid(x)**g → exp(−g·softplus(−x)); so (1−sigmoid(x))**g → exp(−g·softplus(x))."""
    if node.is_Pow and isinstance(node.base, sigmoid) and node.exp != ONE:
        return sympy.exp(-node.exp * softplus(-node.base.args[0]))
    return None


@register_stabilize
def one_minus_plus_eps(node):
    """1 − x + e, e ≥ 0 a parameter (an ε added to a complement) → (1 − x) + e, summed in that
    order, as MXNet and GluonCV write it: 1 − x is exact for x in [½, 2], so at x = 1 the
    sum is e however small (float32 would round e − 1 to −1 and 1 + (e − 1) to 0)."""
    found = _complement_plus_eps(node)
    return None if found is None else grouped(1 - found[0]) + found[1]


@register_stabilize
def log_complement_plus_eps(node):
    """log((1 − x) + e) → log((1 − x) + e) where x > ½, log1p(e − x) elsewhere (where 1 − x
    would round away a small x's digits)."""
    found = _log_of_term_plus_eps(node)
    if found is None or not isinstance(found[0], grouped):
        return None
    found = _complement_plus_eps(found[0].args[0] + found[1])
    if found is None:
        return None
    x, e = found
    exact = sympy.log(grouped(node.args[0]))  # grouped: this rule does not match its own result
    return sympy.Piecewise((exact, sympy.StrictGreaterThan(x, sympy.Rational(1, 2))), (log1p(e - x), True))


@register_stabilize
def log_near_one_plus_eps(node):
    """log(x + e), e ≥ 0 a parameter → log1p((x − 1) + e) where x > ½ (x − 1 is exact there, so
    log(1 + 1e-12) keeps its digits), log(x + e) elsewhere."""
    found = _log_of_term_plus_eps(node)
    if found is None or found[0].is_Number or isinstance(found[0], grouped):
        return None
    x, e = found
    plain = sympy.log(grouped(node.args[0]))  # grouped: this rule does not match its own result
    return sympy.Piecewise((log1p(grouped(x - 1) + e), sympy.StrictGreaterThan(x, sympy.Rational(1, 2))),
                           (plain, True))


def _log_of_term_plus_eps(node):
    """(x, e) when ``node`` is log(x + e) with e a nonnegative parameter symbol, else None."""
    if not (isinstance(node, sympy.log) and node.args[0].is_Add and len(node.args[0].args) == 2):
        return None
    eps = [t for t in node.args[0].args if t.is_Symbol and t.is_nonnegative]
    rest = [t for t in node.args[0].args if t not in eps]
    return (rest[0], eps[0]) if len(eps) == 1 and len(rest) == 1 else None


def _complement_plus_eps(node):
    """(x, e) when ``node`` is 1 − x + e with e a nonnegative parameter symbol, else None."""
    if not (node.is_Add and len(node.args) == 3 and ONE in node.args):
        return None
    eps = [t for t in node.args if t.is_Symbol and t.is_nonnegative]
    rest = [t for t in node.args if t is not ONE and t not in eps]
    if len(eps) != 1 or len(rest) != 1 or not rest[0].could_extract_minus_sign():
        return None
    return -rest[0], eps[0]


@register_stabilize
def log_one_plus(node):
    """log(1 + u) → log1p(u)."""
    if isinstance(node, sympy.log) and node.args[0].is_Add and ONE in node.args[0].args:
        return log1p(node.args[0] - ONE)
    return None


@register_stabilize
def exp_minus_one(node):
    """exp(u) − 1 (+ rest) → expm1(u) (+ rest)."""
    if node.is_Add and -ONE in node.args:
        for term in node.args:
            if isinstance(term, sympy.exp):
                rest = _other_args(node, term, -ONE)
                return sympy.Add(expm1(term.args[0]), *rest)
    return None


@register_stabilize
def one_minus_exp(node):
    """1 − exp(u) (+ rest) → −expm1(u) (+ rest)."""
    if node.is_Add and ONE in node.args:
        for term in node.args:
            if term.is_Mul and term.args == (-ONE, term.args[1]) and isinstance(term.args[1], sympy.exp):
                rest = _other_args(node, term, ONE)
                return sympy.Add(-expm1(term.args[1].args[0]), *rest)
    return None




@register_stabilize
def power_over_base(node):
    """u**g / u → u**(g − 1), u**g / (−u) → −u**(g − 1): no 0/0 where u = 0 (d u**g = g·u**g/u·du)."""
    if not node.is_Mul:
        return None
    for power in node.args:
        if not (power.is_Pow and not power.exp.is_Number):
            continue
        for divisor in node.args:
            if divisor.is_Pow and divisor.exp == -1 and divisor.base in (power.base, -power.base):
                sign = 1 if divisor.base == power.base else -1
                rest = _other_args(node, power, divisor)
                return sympy.Mul(sign, power.base ** (power.exp - 1), *rest)
    return None


@register_stabilize
def pick_of_log_softmax(node):
    """Σ_j w_j·(e_j − logsumexp(e))·[j = y] → (Σ_j w_j·[j = y])·rlog_softmax_at(e, y): the
    label's log-probability as one node, which lowering keeps exact for a confident prediction
    (Σ_j [j = y] = 1 alone folds to 1: labels are validated to lie in range)."""
    if not isinstance(node, rsum):
        return None
    factors = list(sympy.Mul.make_args(node.args[0]))
    labels = [one_hot_label(f) for f in factors if one_hot_label(f) is not None]
    log_softmax = [f for f in factors if log_softmax_argument(f) is not None]
    if not labels or len(log_softmax) != 1:
        return None
    rest = [f for f in factors if f is not log_softmax[0]]
    weight = rsum(sympy.Mul(*rest)) if len(rest) > 1 else ONE
    return weight * rlog_softmax_at(log_softmax_argument(log_softmax[0]), labels[0])




@register_stabilize
def logsumexp_with_label(node):
    """logsumexp(e) → rlogsumexp_labelled(e, y) in an expression that also holds e's label's
    log-probability rlog_softmax_at(e, y) (one label y): both then lower to the same excess,
    one row sum where the label-free form needs two (lowering.excess). Fires at the smallest
    node holding both (label smoothing's Σ_j log p_j next to the picked log p_y)."""
    plain = [r for r in node.atoms(rlogsumexp) if type(r) is rlogsumexp]
    labels = {}
    for picked in node.atoms(rlog_softmax_at) if plain else ():
        labels.setdefault(picked.args[0], set()).add(picked.args[1])
    swap = {r: rlogsumexp_labelled(r.args[0], *labels[r.args[0]])
            for r in plain if len(labels.get(r.args[0], ())) == 1}
    return node.xreplace(swap) if swap else None


@register_stabilize
def function_of_where(node):
    """f(c + k·where(cond, a, b)) → where(cond, f(c + k·a), f(c + k·b)) for f = log, log1p or a
    non-integer power: the rules then see each branch, so max/min/clip keep their terms'
    stable forms (log(1 − max(p − m, 0)) with p = sigmoid(x) reaches log(sigmoid(−x) + m),
    log(min(p + ε, 1)) reaches log1p(p − 1 + ε) near p = 1)."""
    if isinstance(node, (sympy.log, log1p)):
        argument, rebuild = node.args[0], node.func
    elif node.is_Pow and not node.exp.is_Integer:
        argument, rebuild = node.base, lambda base: base**node.exp
    else:
        return None
    inner = _linear_where(argument)
    if inner is None:
        return None
    return sympy.Piecewise(*((rebuild(argument.xreplace({inner: value})), cond) for value, cond in inner.args))


def _linear_where(argument):
    """The where() of ``argument`` when it is w, c + w or c + k·w for one where w, else None."""
    found = []
    for term in sympy.Add.make_args(argument):
        found += [f for f in sympy.Mul.make_args(term) if isinstance(f, sympy.Piecewise)]
    return found[0] if len(found) == 1 and not any(a.has(found[0]) for a in _others(argument, found[0])) else None


def _others(argument, inner):
    """The factors and terms of ``argument`` besides ``inner``."""
    return [f for term in sympy.Add.make_args(argument) for f in sympy.Mul.make_args(term) if f is not inner]


@register_stabilize
def conjugate_of_sqrt(node):
    """k·sqrt(X) − k·Y → k·(X − Y²)/(sqrt(X) + Y) for a nonnegative Y where X − Y² cancels:
    sqrt(1 + u) − 1 → u/(sqrt(1 + u) + 1) (pseudo-Huber), sqrt(d² + ε²) − ε → d²/(sqrt(d² + ε²) + ε)."""
    if not node.is_Add:
        return None
    for term in node.args:
        k, root = _coefficient(term, lambda f: f.is_Pow and f.exp == sympy.S.Half)
        if root is None:
            continue
        for other in node.args:
            y = -other / k
            if other is term or not y.is_nonnegative or y.has(root):
                continue
            difference = sympy.expand(root.base - y**2)
            if sympy.count_ops(difference) < sympy.count_ops(sympy.expand(root.base)):
                rest = _other_args(node, term, other)
                return sympy.Add(k * difference / (root + y), *rest)
    return None


@register_stabilize
def power_minus_one(node):
    """k·(1 + u)^a − k → k·expm1(a·log1p(u)); for a whole a from 2 to 8, k·u·Σ_{i<a} (1 + u)^i
    (neither cancels when (1 + u)^a is near 1)."""
    if not node.is_Add:
        return None
    for term in node.args:
        k, power = _coefficient(term, lambda f: f.is_Pow and f.base.is_Add and ONE in f.base.args and f.exp != ONE)
        if power is None:
            continue
        for other in node.args:
            if other is term or sympy.expand(other + k) != 0:
                continue
            u, a = power.base - 1, power.exp
            if a.is_Integer and 2 <= a <= 8:
                difference = u * sympy.Add(*(grouped(power.base) ** i for i in range(int(a))))
            else:
                difference = expm1(a * log1p(u))
            rest = _other_args(node, term, other)
            return sympy.Add(k * difference, *rest)
    return None


def _coefficient(term, is_factor):
    """(k, f) when ``term`` is k·f for exactly one factor f with ``is_factor(f)``, else (None, None)."""
    found = [f for f in sympy.Mul.make_args(term) if is_factor(f)]
    if len(found) != 1:
        return None, None
    return sympy.Mul(*[f for f in sympy.Mul.make_args(term) if f is not found[0]]), found[0]


@register_stabilize
def complement_of_mixture(node):
    """1 − a·b − c·d with a + c = 1 and b + d = 1 → a·d + c·b: 1 − p_t of a binary prediction,
    p_t = p·y + (1 − p)·(1 − y), without cancelling when p_t is near 1 (Poly-1)."""
    if not (node.is_Add and ONE in node.args):
        return None
    products = [t for t in node.args if t.is_Mul and len(t.args) == 3 and t.args[0] == -ONE]
    for first, second in itertools.combinations(products, 2):
        for a, b in (first.args[1:], first.args[:0:-1]):
            for c, d in (second.args[1:], second.args[:0:-1]):
                if _complements(a, c) and _complements(b, d):
                    rest = _other_args(node, ONE, first, second)
                    return sympy.Add(a * d, c * b, *rest)
    return None


@register_stabilize
def power_of_mixture(node):
    """m**q → exp(q·log m) for a binary mixture m = a·b + c·d (a + c = 1, b + d = 1, such as
    p_t = y·σ(x) + (1 − y)·σ(−x)) and q not an integer: log_of_mixture then keeps log m exact
    near m = 1, where 1 − m**q (generalized cross-entropy, focal terms) would cancel. (An
    integer power stays: SymPy folds exp(k·log m) back, and 1/m is exact.)"""
    if node.is_Pow and node.exp.is_integer is not True and _mixture_complement(node.base) is not None:
        return sympy.exp(node.exp * sympy.log(node.base))
    return None


@register_stabilize
def log_of_mixture(node):
    """log m of a binary mixture (see power_of_mixture) → log1p(−(a·d + c·b)) where m > ½
    (the complement summed from its non-negative terms, not rounded from 1 − m), log m
    elsewhere (where m itself is small and exact)."""
    if not isinstance(node, sympy.log):
        return None
    complement = _mixture_complement(node.args[0])
    if complement is None:
        return None
    mixture = node.args[0]
    return sympy.Piecewise((log1p(-complement), mixture > sympy.Rational(1, 2)), (sympy.log(grouped(mixture)), True))


def _mixture_complement(node):
    """a·d + c·b, the complement 1 − node of a mixture node = a·b + c·d with a + c = 1 and
    b + d = 1; None for anything else."""
    if not (node.is_Add and len(node.args) == 2 and all(t.is_Mul and len(t.args) == 2 for t in node.args)):
        return None
    first, second = node.args
    for a, b in (first.args, first.args[::-1]):
        for c, d in (second.args, second.args[::-1]):
            if _complements(a, c) and _complements(b, d):
                return a * d + c * b
    return None


def _complements(a, b):
    """Whether a + b = 1 (sigmoid(x) + sigmoid(−x) included)."""
    if isinstance(a, sigmoid) and isinstance(b, sigmoid):
        return sympy.expand(a.args[0] + b.args[0]) == 0
    return sympy.expand(a + b - 1) == 0


@register_stabilize
def softplus_minus_half_argument(node):
    """softplus(w) − w/2 → log 2 + log cosh(w/2) (:func:`_log_cosh`): log(1 + exp(2d)) − d − log 2,
    log cosh written with a softplus, without cancelling near d = 0."""
    if not node.is_Add:
        return None
    for term in node.args:
        if not isinstance(term, softplus):
            continue
        half = term.args[0] / 2
        own = sympy.Add.make_args(sympy.expand(-half))
        if all(t in node.args for t in own):
            rest = [t for t in node.args if t is not term and t not in own]
            return sympy.Add(sympy.log(2), _log_cosh(half), *rest)
    return None


@register_stabilize
def softplus_minus_linear(node):
    """softplus(x) − x·y → y·softplus(−x) + (1 − y)·softplus(x): binary cross-entropy written
    log(1 + exp(x)) − x·y, without cancelling two large terms at a confident prediction."""
    if not node.is_Add:
        return None
    for term in node.args:
        if not isinstance(term, softplus):
            continue
        x = term.args[0]
        for other in node.args:
            y = -other / x
            if other is term or not other.has(*x.free_symbols) or not y.free_symbols.isdisjoint(x.free_symbols):
                continue
            rest = _other_args(node, term, other)
            return sympy.Add(y * softplus(-x), (1 - y) * term, *rest)
    return None


@register_stabilize
def softplus_with_sigmoid(node):
    """a·softplus(v) + b·sigmoid(v) → a·h(v) + (a + b)·sigmoid(v), h = softplus − sigmoid in two
    regimes (:func:`_softplus_minus_sigmoid`): log(1 + e^v) − e^v/(1 + e^v) ≈ e^(2v)/2 cancels as
    v → −∞, and Poly-1 with ε = −1 (bce − (1 − p_t)) lost every digit there; a and a + b = a·(1 + ε)
    are never of opposite signs for ε ≥ −1, so nothing cancels after. Each coefficient is
    factored (y·(1 + ε), not y + ε·y), the terms without those functions are kept as they are."""
    if not (node.is_Add and node.has(softplus) and node.has(sigmoid)):
        return None
    pairs = [(softplus(v), sigmoid(v)) for v in sorted({f.args[0] for f in node.atoms(softplus)},
                                                       key=sympy.default_sort_key) if node.has(sigmoid(v))]
    atoms = [f for pair in pairs for f in pair]
    involved = [t for t in node.args if t.has(*atoms)]
    coefficients = sympy.collect(sympy.expand(sympy.Add(*involved)), atoms, evaluate=False)
    found = [(gap, s) for gap, s in pairs if gap in coefficients and s in coefficients]
    if not found or any(c.has(*atoms) for c in coefficients.values()):
        return None
    terms = [t for t in node.args if not t.has(*atoms)]
    for gap, s in found:
        a = sympy.factor(coefficients.pop(gap))
        terms += [a * _softplus_minus_sigmoid(gap.args[0]), sympy.factor(a + coefficients.pop(s)) * s]
    return sympy.Add(*terms, *(sympy.factor(c) * f for f, c in coefficients.items()))


SERIES_BELOW = sympy.Rational(1, 10)  # σ(v) below which h(v) is summed as a series
SERIES_TERMS = 16  # w²/2 + … + w¹⁶/16: the rest is below 2·10⁻¹⁵ of h for w < 1/10


def _softplus_minus_sigmoid(v):
    """h(v) = softplus(v) − σ(v) = −log(1 − w) − w = Σ_{k≥2} w^k/k with w = σ(v): the series
    (all terms positive, Horner's form) where w < 1/10, the difference elsewhere (which loses
    at most a factor 4/w ≤ 40 of rounding); its derivative σ(v)² stays accurate in both."""
    w = sigmoid(v)
    series = sympy.S.Zero
    for k in range(SERIES_TERMS, 1, -1):
        series = (series + sympy.Rational(1, k)) * w
    series = series * w
    return sympy.Piecewise((series, sympy.StrictLessThan(w, SERIES_BELOW)), (grouped(softplus(v)) - w, True))


@register_stabilize
def difference_of_log1p(node):
    """log1p(a) − log1p(b) → log1p((a − b)/(1 + b)): log(1 + a) − log(1 + b) (the squared log
    error) without cancelling when a ≈ b."""
    if not node.is_Add:
        return None
    for term in node.args:
        if not isinstance(term, log1p):
            continue
        for other in node.args:
            if other.is_Mul and len(other.args) == 2 and other.args[0] == -ONE and isinstance(other.args[1], log1p):
                a, b = term.args[0], other.args[1].args[0]
                rest = _other_args(node, term, other)
                return sympy.Add(log1p(grouped(a - b) / (1 + b)), *rest)
    return None


@register_stabilize
def log_of_exp_mixture(node):
    """log(a·exp(u) + b·exp(v)), a, b > 0 → u + log a + softplus(v − u + log(b/a)) where u ≥ v,
    the same with the terms swapped elsewhere: a regime split, so neither exponential overflows.
    For a = b and v = −u, log(2a) + log cosh u, itself split (:func:`_log_cosh`)."""
    if not (isinstance(node, sympy.log) and node.args[0].is_Add and len(node.args[0].args) == 2):
        return None
    terms = [_scaled_exp(t) for t in node.args[0].args]
    if None in terms:
        return None
    (a, u), (b, v) = terms
    if a == b and sympy.expand(u + v) == 0:
        return sympy.log(2 * a) + _log_cosh(u)
    first = u + sympy.log(a) + softplus(v - u + sympy.log(b / a))
    second = v + sympy.log(b) + softplus(u - v + sympy.log(a / b))
    return sympy.Piecewise((first, sympy.GreaterThan(u, v)), (second, True))


def _log_cosh(u):
    """log cosh(u) in two regimes: log1p(m²/(2(1 + m))), m = expm1(|u|), for |u| < 1 (cosh u − 1
    without cancelling, so log cosh u ≈ u²/2 keeps its digits), |u| − log 2 + softplus(−2|u|)
    above (no overflow)."""
    m = expm1(sympy.Abs(u))
    small = log1p(m**2 / (2 * (1 + m)))
    large = grouped(sympy.Abs(u) - sympy.log(2)) + softplus(-2 * sympy.Abs(u))  # grouped: not softplus − w/2 again
    return sympy.Piecewise((small, sympy.StrictLessThan(sympy.Abs(u), 1)), (large, True))


def _scaled_exp(term):
    """(c, u) when ``term`` is c·exp(u) with c > 0, else None."""
    c, found = _coefficient(term, lambda f: isinstance(f, sympy.exp))
    return (c, found.args[0]) if found is not None and c.is_positive else None


def _other_args(node, *dropped):
    """``node``'s arguments other than the ``dropped`` objects (compared by identity)."""
    return [a for a in node.args if not any(a is d for d in dropped)]


MAX_PASSES = 20


class RewriteLimitWarning(UserWarning):
    """The rules did not reach a fixed point: the form reached so far is used (still equal to
    the declared one, every rule being an identity), but a rule pair may undo each other."""


def stabilize(expr):
    """Apply the enabled canonicalize and stabilize rules (:mod:`rules`) bottom-up to a fixed
    point and return the rewritten expression. Where rules undo each other (no fixed point
    within :data:`MAX_PASSES` passes or replacements of one node), a
    :class:`RewriteLimitWarning` says so and the form of the last complete pass is returned."""
    active = enabled("canonicalize", "stabilize")
    for _ in range(MAX_PASSES):
        try:
            rewritten = _rewrite(expr, active)
        except _Cycle:
            break
        if rewritten == expr:
            return rewritten
        expr = rewritten
    text = str(expr)
    warnings.warn(RewriteLimitWarning(f"the rewrite rules did not reach a fixed point within {MAX_PASSES} passes; "
                                      f"using {text[:200]}{'…' if len(text) > 200 else ''}"), stacklevel=2)
    return expr


class _Cycle(Exception):
    """Raised inside :func:`_rewrite` when one node keeps being replaced."""


def _rewrite(node, active, depth=0):
    """``node`` with its arguments rewritten, then the first rule that applies, until none does
    (``depth``: how many replacements led here; past MAX_PASSES it is a cycle)."""
    if depth > MAX_PASSES:
        raise _Cycle
    if node.args:
        args = tuple(_rewrite(a, active, depth) for a in node.args)
        if args != node.args:
            node = node.func(*args)
    for _ in range(MAX_PASSES):
        for rule in active:
            replaced = rule.apply(node) if isinstance(node, sympy.Basic) else None
            if replaced is not None:
                note_fired(rule)
                node = _rewrite(replaced, active, depth + 1) if replaced.args else replaced
                break
        else:
            return node
    raise _Cycle
