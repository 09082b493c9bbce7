"""Lowering: the stable special functions → overflow-free primitives shared by all targets.

After differentiation, ``sigmoid`` and ``softplus`` are expanded around one shared
``e = exp(−|u|)`` (which never overflows), so common-subexpression elimination can share
it between a loss and its gradients:

    softplus(u) = max(u, 0) + log1p(e)
    sigmoid(u)  = (1 if u ≥ 0 else e) / (1 + e)
"""
import sympy

from .functions import log1p, one_if_nonneg, relu, sigmoid, softplus


def lower_sigmoid(u):
    """sigmoid(u) as (u ≥ 0 ? 1 : e) / (1 + e), e = exp(−|u|)."""
    e = sympy.exp(-sympy.Abs(u))
    return one_if_nonneg(u, e) / (1 + e)


def lower_softplus(u):
    """softplus(u) as max(u, 0) + log1p(exp(−|u|))."""
    return relu(u) + log1p(sympy.exp(-sympy.Abs(u)))


def lower(expr):
    """Replace every sigmoid/softplus in ``expr`` by its primitive, stable form."""
    return expr.replace(sigmoid, lower_sigmoid).replace(softplus, lower_softplus)
