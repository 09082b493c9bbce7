"""Stage 5: lowering, the ``lower`` rules of :mod:`rules`, each applied once in order: the
stable special functions → overflow-free primitives shared by all targets.

Reductions: logsumexp(e) = m + log1p(excess(e)) with m = max_j e_j and excess(e) =
Σ_j exp(e_j − m) − 1 summed from nonnegative terms (or, where the loss picks the row's label
y, Σ_{j≠y} exp(e_j − m) + expm1(e_y − m): one row sum), and the softmax exp(e − logsumexp(e)) =
exp(e − m) / (1 + excess(e)), so the gradient reuses the exponentials the loss already
computed (CSE shares them) and nothing exponentiates an unshifted value. The label's
log-probability and its derivative [j = y] − softmax stay relatively exact for a confident
prediction: (e_y − m) − log1p(excess) and −expm1(log p_y) at the label.

After differentiation, ``sigmoid`` and ``softplus`` are expanded around one shared
``e = exp(−|u|)`` (which never overflows), so common-subexpression elimination can share
it between a loss and its gradients:

    softplus(u) = max(u, 0) + log1p(e)
    sigmoid(u)  = (1 if u ≥ 0 else e) / (1 + e)
"""
import functools

import sympy

from . import dag
from .functions import expm1, grouped, log1p, one_if_nonneg, relu, sigmoid, softplus, unit_clip
from .rules import enabled, register_lower

ONE = sympy.S.One
from .reductions import (CLASS_INDEX, element_level, log_softmax_argument, onehot_minus_softmax, one_hot,
                         rlog_softmax_at, rlogsumexp, rlogsumexp_labelled, rmax, rsum)


def excess(e, label=None):
    """Σ_j exp(e_j − max e) − 1 written so that log Σ exp(e − max) = log1p(excess) keeps full
    relative accuracy when one entry dominates.

    Without a label, a sum of terms that are ≥ 0 or exact: the exponentials below 1
    (x − floor(x) of each x = exp(e_j − max e) in (0, 1]), plus (number of ones − 1) counted on
    its own. With the row's label y (a loss that picks log p_y), one row sum:
    Σ_{j≠y} exp(e_j − max e) + expm1(e_y − max e). When y is the arg-max, every term is ≥ 0 (a
    tie adds its exact 1). Otherwise the sum holds the max's 1, so the cancellation costs at most
    one rounding of 1 + excess: p_j and log p_y stay relatively exact, since −log p_y ≥ log 2."""
    if label is not None:
        return rsum(_off_label_exp(e, label)) + expm1(_shifted_at(e, label))
    exponentials = sympy.exp(e - rmax(e))  # in (0, 1], exactly 1 at the max (and at entries that round to it)
    ones = sympy.floor(exponentials)
    return rsum(exponentials - ones) + grouped(rsum(ones) - 1)


def _off_label_exp(e, label):
    """exp(e_j − max e) at every class but the label's, 0 at the label's."""
    return sympy.Piecewise((sympy.S.Zero, sympy.Eq(CLASS_INDEX, label)), (sympy.exp(e - rmax(e)), True))


def _shifted_at(e, label):
    """e_y − max e, the label's entry picked before the max is subtracted (the same rounding as
    (e − max e)_y, and no element-sized e − max e needed for it); grouped, so that a sum around
    it never adds max e or e_y to anything else first."""
    return grouped(rsum(e * one_hot(label)) - rmax(e))


def stable_softmax(e, label=None):
    """softmax(e) as exp(e − max e) / (1 + excess(e, label)): nothing exponentiates an unshifted value."""
    return sympy.exp(e - rmax(e)) / (1 + excess(e, label))


def softmax_off_label(e, label):
    """softmax(e)_j for j ≠ y (0 at y) through the label's excess: the exponentials it divides are
    the ones the excess sums, one element value for both."""
    return _off_label_exp(e, label) / (1 + excess(e, label))


def stable_log_softmax_at(e, label):
    """e_y − logsumexp(e) as (e_y − max e) − log1p(excess(e, y)): exactly 0 − log1p(tiny) for a
    confident prediction, where e_y + ... − logsumexp would cancel."""
    return _shifted_at(e, label) - log1p(excess(e, label))


def _label_of(expr, e):
    """y when ``expr`` holds rlogsumexp_labelled(e, y) (one label), else None: the label-free excess."""
    labels = {r.args[1] for r in expr.atoms(rlogsumexp_labelled) if r.args[0] == e}
    return labels.pop() if len(labels) == 1 else None


def _softmax_argument(term):
    """e when term is exp(e − logsumexp(e)), else None."""
    return log_softmax_argument(term.args[0]) if isinstance(term, sympy.exp) else None


def _without(product, factor):
    """The product of ``product``'s factors other than ``factor`` (no division, which SymPy may
    leave as factor·factor⁻¹)."""
    factors = list(sympy.Mul.make_args(product))
    factors.remove(factor)
    return sympy.Mul(*factors)


@register_lower
def clip_of_where(node):
    """where(|u| < r, k·u/r, k·sign(u)) → k·clip(u/r, −1, 1) for a positive r (Huber's gradient):
    one pass instead of a sign and a blend; equal at |u| = r, where both sides are ±k."""
    if not (isinstance(node, sympy.Piecewise) and len(node.args) == 2 and node.args[1][1] == True):  # noqa: E712
        return None
    (inside, cond), (outside, _) = node.args
    if not isinstance(cond, (sympy.StrictLessThan, sympy.StrictGreaterThan)) or not isinstance(cond.lts, sympy.Abs):
        return None
    u, r = cond.lts.args[0], cond.gts
    if not r.is_positive:
        return None
    k = sympy.simplify(outside / sympy.sign(u))
    if k.has(sympy.sign) or k.has(u) or sympy.simplify(inside - k * u / r) != 0:
        return None
    return unit_clip(-u / r) if k == -1 else k * unit_clip(u / r)  # clip is odd: fold a −1 into its argument



@register_lower
def lower_label_gradient(node):
    """A·([j = y] − softmax(e)) + B·softmax(e) + C with A, B, C one value per row (softmax CE's
    and softmax focal's gradients) → one where(j = y, ..., ...): at the label
    −A·expm1(log p_y) + B·p_y + C (exact for a confident prediction), elsewhere
    (B − A)·exp(e − max e)/(1 + excess) + C — one element expression, the label set per row."""
    if not node.is_Add:
        return None
    found = [t for t in node.args if t.has(onehot_minus_softmax)]
    if len(found) != 1:
        return None
    hot = [f for f in sympy.Mul.make_args(found[0]) if isinstance(f, onehot_minus_softmax)]
    if len(hot) != 1:
        return None
    e, label = hot[0].args
    elements = e.free_symbols
    a, b, c = _without(found[0], hot[0]), sympy.S.Zero, []
    for term in node.args:
        if term is found[0]:
            continue
        soft = [f for f in sympy.Mul.make_args(term) if _softmax_argument(f) == e]
        if len(soft) == 1:
            b += _without(term, soft[0])
        else:
            c.append(term)
    c = sympy.Add(*c)
    if any(element_level(x, elements) or x.has(onehot_minus_softmax) for x in (a, b, c)):
        return None
    log_py = stable_log_softmax_at(e, label)
    at_label = -a * expm1(log_py) + b * sympy.exp(log_py) + c
    elsewhere = (b - a) * softmax_off_label(e, label) + c
    return sympy.Piecewise((at_label, sympy.Eq(CLASS_INDEX, label)), (elsewhere, True))


@register_lower
def lower_onehot_minus_softmax(node):
    """onehot_minus_softmax(e, y) = [j = y] − softmax_j → −expm1(log p_y) = −(p_y − 1) at the
    label (no 1 − p cancellation), −stable_softmax(e) elsewhere."""
    if not isinstance(node, onehot_minus_softmax):
        return None
    e, label = node.args
    at_label = expm1(stable_log_softmax_at(e, label))
    return -sympy.Piecewise((at_label, sympy.Eq(CLASS_INDEX, label)), (softmax_off_label(e, label), True))


@register_lower
def lower_log_softmax_at(node):
    """rlog_softmax_at(e, y) → (e_y − max e) − log1p(excess(e)) (stable_log_softmax_at)."""
    return stable_log_softmax_at(*node.args) if isinstance(node, rlog_softmax_at) else None


@register_lower
def lower_softmax(node):
    """exp(e − logsumexp(e)) → exp(e − max e)/(1 + excess(e)) (stable_softmax)."""
    e = _softmax_argument(node)
    return None if e is None else stable_softmax(e, _label_of(node, e))


@register_lower
def lower_log_softmax(node):
    """k·(e − logsumexp(e)) + rest, k = ±1 → k·((e − max e) − log1p(excess(e))) + rest: the
    log-probabilities without adding a large logit to a large logsumexp."""
    if not node.is_Add:
        return None
    terms = list(node.args)
    for term in node.args:
        for k in (ONE, -ONE):
            if isinstance(-k * term, rlogsumexp):
                e = (-k * term).args[0]
                own = list(sympy.Add.make_args(sympy.expand(k * e)))
                if all(t in terms for t in own):
                    rest = [t for t in terms if t is not term and t not in own]
                    return sympy.Add(k * (grouped(e - rmax(e)) - log1p(excess(e, _label_of(term, e)))), *rest)
    return None


@register_lower
def lower_logsumexp(node):
    """logsumexp(e) → max e + log1p(excess(e))."""
    if not isinstance(node, rlogsumexp):
        return None
    e = node.args[0]
    return rmax(e) + log1p(excess(e, _label_of(node, e)))


@register_lower
def lower_sigmoid(node):
    """sigmoid(u) → (u ≥ 0 ? 1 : e)/(1 + e), e = exp(−|u|) (never overflows)."""
    if not isinstance(node, sigmoid):
        return None
    e = sympy.exp(-sympy.Abs(node.args[0]))
    return one_if_nonneg(node.args[0], e) / (1 + e)


@register_lower
def lower_softplus(node):
    """softplus(u) → max(u, 0) + log1p(exp(−|u|))."""
    if not isinstance(node, softplus):
        return None
    return relu(node.args[0]) + log1p(sympy.exp(-sympy.Abs(node.args[0])))


def lower(expr):
    """Replace every sigmoid/softplus/softmax/logsumexp in ``expr`` by its primitive, stable form:
    the enabled ``lower`` rules (:mod:`rules`), each once over the whole expression, in order."""
    return _lowered(expr, tuple(rule.name for rule in enabled("lower")))


@functools.lru_cache(maxsize=4096)
def _lowered(expr, names):
    """``lower`` for the rules ``names`` (a pure function of both, cached: a graph's nodes are
    lowered once for both kernels)."""
    rules = {rule.name: rule for rule in enabled("lower")}
    for name in names:
        expr = replace_shared(expr, rules[name].apply)
    return expr


def replace_shared(expr, rule):
    """``expr`` rebuilt bottom-up with every node for which ``rule(node)`` is not None replaced
    by that value (as SymPy's ``replace``), visiting each distinct subexpression once: a
    subexpression shared n times (definitions, lowered softplus) costs once, not 2^n."""
    def visit(node, args):
        rebuilt = node.func(*args) if tuple(args) != node.args else node
        replaced = rule(rebuilt) if isinstance(rebuilt, sympy.Basic) else None
        return rebuilt if replaced is None else replaced

    return dag.fold(expr, visit)
