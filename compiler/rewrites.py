"""Stage 3: numerical-stability rewrites, as small named rules.

Each rule looks at one node and returns its replacement, or None. :func:`stabilize` applies
them bottom-up until nothing changes. They run before differentiation and again on every
derived gradient, so neither the loss nor its gradients is ever emitted in a naive form
such as ``log(1 - sigmoid(x))`` or ``exp(x) - 1``.
"""
import sympy

from .functions import expm1, grouped, log1p, sigmoid, softplus
from .reductions import log_softmax_argument, one_hot_label, rlog_softmax_at, rsum

ONE = sympy.S.One


def one_minus_sigmoid(node):
    """1 − sigmoid(x) → sigmoid(−x)   (no cancellation for large x)."""
    if node.is_Add and ONE in node.args:
        for term in node.args:
            if term.is_Mul and term.args == (-ONE, term.args[1]) and isinstance(term.args[1], sigmoid):
                rest = [a for a in node.args if a is not term and a is not ONE]
                return sympy.Add(sigmoid(-term.args[1].args[0]), *rest)
    return None


def log_of_sigmoid(node):
    """log(sigmoid(x)) → −softplus(−x); with the rule above, log(1−sigmoid(x)) → −softplus(x)."""
    if isinstance(node, sympy.log) and isinstance(node.args[0], sigmoid):
        return -softplus(-node.args[0].args[0])
    return None


def power_of_sigmoid(node):
    """sigmoid(x)**g → exp(−g·softplus(−x)); so (1−sigmoid(x))**g → exp(−g·softplus(x))."""
    if node.is_Pow and isinstance(node.base, sigmoid) and node.exp != ONE:
        return sympy.exp(-node.exp * softplus(-node.base.args[0]))
    return None


def one_minus_plus_eps(node):
    """1 − x + e, e ≥ 0 a parameter (an ε added to a complement) → (1 − x) + e, summed in that
    order, as MXNet and GluonCV write it: 1 − x is exact for x in [½, 2], so at x = 1 the
    sum is e however small (float32 would round e − 1 to −1 and 1 + (e − 1) to 0)."""
    found = _complement_plus_eps(node)
    return None if found is None else grouped(1 - found[0]) + found[1]


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


def log_one_plus(node):
    """log(1 + u) → log1p(u)."""
    if isinstance(node, sympy.log) and node.args[0].is_Add and ONE in node.args[0].args:
        return log1p(node.args[0] - ONE)
    return None


def exp_minus_one(node):
    """exp(u) − 1 (+ rest) → expm1(u) (+ rest)."""
    if node.is_Add and -ONE in node.args:
        for term in node.args:
            if isinstance(term, sympy.exp):
                rest = [a for a in node.args if a is not term and a is not -ONE]
                return sympy.Add(expm1(term.args[0]), *rest)
    return None


def one_minus_exp(node):
    """1 − exp(u) (+ rest) → −expm1(u) (+ rest)."""
    if node.is_Add and ONE in node.args:
        for term in node.args:
            if term.is_Mul and term.args == (-ONE, term.args[1]) and isinstance(term.args[1], sympy.exp):
                rest = [a for a in node.args if a is not term and a is not ONE]
                return sympy.Add(-expm1(term.args[1].args[0]), *rest)
    return None


def log1p_of_exp(node):
    """log1p(exp(u)) → softplus(u)   (exp(u) may overflow; softplus does not)."""
    if isinstance(node, log1p) and isinstance(node.args[0], sympy.exp):
        return softplus(node.args[0].args[0])
    return None


def reciprocal_one_plus_exp(node):
    """1 / (1 + exp(u)) → sigmoid(−u)."""
    if node.is_Pow and node.exp == -ONE and node.base.is_Add and len(node.base.args) == 2 and ONE in node.base.args:
        other = node.base.args[0] if node.base.args[1] is ONE else node.base.args[1]
        if isinstance(other, sympy.exp):
            return sigmoid(-other.args[0])
    return None


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
                rest = [a for a in node.args if a is not power and a is not divisor]
                return sympy.Mul(sign, power.base ** (power.exp - 1), *rest)
    return None


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


RULES = (
    one_minus_sigmoid,
    log_of_sigmoid,
    power_of_sigmoid,
    one_minus_plus_eps,
    log_complement_plus_eps,
    log_near_one_plus_eps,
    log_one_plus,
    exp_minus_one,
    one_minus_exp,
    log1p_of_exp,
    reciprocal_one_plus_exp,
    power_over_base,
    pick_of_log_softmax,
)


def stabilize(expr, rules=RULES):
    """Apply ``rules`` bottom-up to a fixed point and return the rewritten expression."""
    for _ in range(20):
        rewritten = _rewrite(expr, rules)
        if rewritten == expr:
            return rewritten
        expr = rewritten
    return expr


def _rewrite(node, rules):
    if node.args:
        args = tuple(_rewrite(a, rules) for a in node.args)
        if args != node.args:
            node = node.func(*args)
    for _ in range(20):
        for rule in rules:
            replaced = rule(node) if isinstance(node, sympy.Basic) else None
            if replaced is not None:
                node = _rewrite(replaced, rules) if replaced.args else replaced
                break
        else:
            return node
    return node
