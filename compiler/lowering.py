"""Lowering: the stable special functions → overflow-free primitives shared by all targets.

Reductions: logsumexp(e) = m + log Σ_j exp(e_j − m) with m = max_j e_j, and the softmax
exp(e − logsumexp(e)) = exp(e − m) / Σ_j exp(e_j − m), so the gradient reuses the
exponentials the loss already computed (CSE shares them) and nothing exponentiates an
unshifted value.

After differentiation, ``sigmoid`` and ``softplus`` are expanded around one shared
``e = exp(−|u|)`` (which never overflows), so common-subexpression elimination can share
it between a loss and its gradients:

    softplus(u) = max(u, 0) + log1p(e)
    sigmoid(u)  = (1 if u ≥ 0 else e) / (1 + e)
"""
import sympy

from .functions import log1p, one_if_nonneg, relu, sigmoid, softplus
from .reductions import rlogsumexp, rmax, rsum


def lower_sigmoid(u):
    """sigmoid(u) as (u ≥ 0 ? 1 : e) / (1 + e), e = exp(−|u|)."""
    e = sympy.exp(-sympy.Abs(u))
    return one_if_nonneg(u, e) / (1 + e)


def lower_softplus(u):
    """softplus(u) as max(u, 0) + log1p(exp(−|u|))."""
    return relu(u) + log1p(sympy.exp(-sympy.Abs(u)))


def lower_softmax(node):
    """exp(e − logsumexp(e)) → exp(e − max e) / Σ exp(e − max e); other nodes unchanged."""
    if isinstance(node, sympy.exp) and node.args[0].is_Add:
        for term in node.args[0].args:
            if term.is_Mul and term.args[0] == -1 and isinstance(term.args[1], rlogsumexp):
                e = term.args[1].args[0]
                if node.args[0] - term == e:
                    shifted = sympy.exp(e - rmax(e))
                    return shifted / rsum(shifted)
    return None


def lower_logsumexp(e):
    """logsumexp(e) as max e + log Σ exp(e − max e)."""
    return rmax(e) + sympy.log(rsum(sympy.exp(e - rmax(e))))


def lower(expr):
    """Replace every sigmoid/softplus/softmax/logsumexp in ``expr`` by its primitive, stable form."""
    expr = expr.replace(lambda n: lower_softmax(n) is not None, lower_softmax)
    expr = expr.replace(rlogsumexp, lower_logsumexp)
    return expr.replace(sigmoid, lower_sigmoid).replace(softplus, lower_softplus)
