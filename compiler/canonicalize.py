"""Stage 3a: canonicalisation rules: the spec language's functions recognised however the
author spelled them, so the stability rules (:mod:`rewrites`) see one form.

    1/(1 + exp(−x)), exp(x)/(1 + exp(x))        → sigmoid(x)
    log(1 + exp(x))  (via log1p)                → softplus(x)
    Σ_j exp(x_j)                                → exp(logsumexp(x))
    exp(a)·exp(b)                               → exp(a + b)
    pick(softmax(x), y)                         → exp(pick(log_softmax(x), y))

With the last two, exp(x)/Σ exp(x) is the softmax exp(x − logsumexp(x)), and SymPy itself
folds log(exp(z)) → z and exp(z)^q → exp(q·z) for a real z, so log(pick(softmax(x), y)) and
pick(softmax(x), y)^q reach the label's stable log-probability.
"""
import sympy

from .functions import log1p, sigmoid, softplus
from .reductions import Reduction, log_softmax_argument, one_hot_label, rlog_softmax_at, rlogsumexp, rsum
from .rules import register_canonicalize

ONE = sympy.S.One


@register_canonicalize
def reciprocal_one_plus_exp(node):
    """1 / (1 + exp(u)) → sigmoid(−u); (1 + exp(u))^−a → sigmoid(−u)^a (SymPy folds the power
    of a reciprocal, (1/(1 + exp(−x)))^γ, into one power)."""
    if node.is_Pow and node.exp.could_extract_minus_sign() and node.base.is_Add and len(node.base.args) == 2 \
            and ONE in node.base.args:
        other = node.base.args[0] if node.base.args[1] is ONE else node.base.args[1]
        if isinstance(other, sympy.exp):
            return sigmoid(-other.args[0]) ** -node.exp
    return None


@register_canonicalize
def exp_over_one_plus_exp(node):
    """exp(u) / (1 + exp(u)) → sigmoid(u); so exp(u)·sigmoid(−u), which the rule above makes of
    it bottom-up (and which overflows to inf·0), → sigmoid(u)."""
    if not node.is_Mul:
        return None
    for factor in node.args:
        if isinstance(factor, sympy.exp):
            for denominator in ((1 + factor) ** -1, sigmoid(-factor.args[0])):
                if denominator in node.args:
                    rest = [a for a in node.args if a is not factor and a != denominator]
                    return sympy.Mul(sigmoid(factor.args[0]), *rest)
    return None


@register_canonicalize
def log1p_of_exp(node):
    """log1p(exp(u)) → softplus(u)   (exp(u) may overflow; softplus does not)."""
    if isinstance(node, log1p) and isinstance(node.args[0], sympy.exp):
        return softplus(node.args[0].args[0])
    return None


@register_canonicalize
def log1p_of_scaled_exp(node):
    """log1p(c·exp(u)), c > 0 a number → softplus(u + log c)."""
    if not (isinstance(node, log1p) and node.args[0].is_Mul and len(node.args[0].args) == 2):
        return None
    c, other = node.args[0].args
    if c.is_Number and c.is_positive and isinstance(other, sympy.exp):
        return softplus(other.args[0] + sympy.log(c))
    return None


@register_canonicalize
def sum_of_exps(node):
    """Σ_j exp(e_j) → exp(logsumexp(e)), for an e without reductions of its own (the naive
    softmax denominator; logsumexp subtracts the row max before exponentiating)."""
    if isinstance(node, rsum) and isinstance(node.args[0], sympy.exp) and not node.args[0].has(Reduction):
        return sympy.exp(rlogsumexp(node.args[0].args[0]))
    return None


@register_canonicalize
def product_of_exps(node):
    """exp(a)·exp(b)·rest → exp(a + b)·rest   (so exp(x)/exp(logsumexp(x)) is the softmax)."""
    if not node.is_Mul:
        return None
    exps = [f for f in node.args if isinstance(f, sympy.exp)]
    if len(exps) < 2:
        return None
    rest = [f for f in node.args if not isinstance(f, sympy.exp)]
    return sympy.Mul(sympy.exp(sympy.Add(*(f.args[0] for f in exps))), *rest)


@register_canonicalize
def pick_of_softmax(node):
    """Σ_j exp(e_j − logsumexp(e))·[j = y] → exp(rlog_softmax_at(e, y)): the label's
    probability through its stable log-probability."""
    if not (isinstance(node, rsum) and node.args[0].is_Mul and len(node.args[0].args) == 2):
        return None
    soft = [f for f in node.args[0].args if isinstance(f, sympy.exp) and log_softmax_argument(f.args[0]) is not None]
    labels = [one_hot_label(f) for f in node.args[0].args if one_hot_label(f) is not None]
    if len(soft) != 1 or len(labels) != 1:
        return None
    return sympy.exp(rlog_softmax_at(log_softmax_argument(soft[0].args[0]), labels[0]))
