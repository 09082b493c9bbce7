"""Reductions along the class axis, as SymPy nodes, and their derivative rules.

A loss over (rows, classes) mixes three levels: *element* values (one per class, like the
logits), *row* values (one per row, like a sparse label or a logsumexp) and scalars
(parameters). Three primitive reductions take an element-level argument to a row value:

    rsum(e)        Σ_j e_j                       ∂/∂e_j = 1
    rmax(e)        max_j e_j                     ∂/∂e_j = [e_j = max]   (the arg-max mask)
    rlogsumexp(e)  log Σ_j exp(e_j), row max     ∂/∂e_j = exp(e_j − logsumexp) = softmax_j
                   subtracted first

Everything else in the language is built from them: mean = rsum/classes, norm = √rsum(e²),
dot = rsum(a·b), softmax = exp(e − rlogsumexp(e)), log_softmax = e − rlogsumexp(e),
one_hot(y) = [j = y] over the class index j, pick(e, y) = rsum(e · one_hot(y)).
"""
import sympy

CLASS_INDEX = sympy.Symbol("_j", integer=True, nonnegative=True)
CLASSES = sympy.Symbol("classes", positive=True, integer=True)


class NotDifferentiable(TypeError):
    """SymPy was asked to differentiate a node that only :mod:`derive` differentiates."""


class Reduction(sympy.Function):
    """A row value computed from an element-level argument along the class axis."""

    nargs = 1

    def _eval_is_real(self):
        return True

    def fdiff(self, argindex=1):
        raise NotDifferentiable("reductions are differentiated by lossc.compiler.derive, not by SymPy")

    def local_derivative(self):
        """∂ self / ∂ argument_j, an element-level expression."""
        raise NotImplementedError


class rsum(Reduction):
    """Σ over the class axis."""

    def local_derivative(self):
        return sympy.S.One

    def _latex(self, printer, exp=None):
        return _power(r"\sum_{j} %s" % printer.parenthesize(self.args[0], 1000), exp)


class rmax(Reduction):
    """max over the class axis; its derivative is the mask of the arg-max (every tie)."""

    def local_derivative(self):
        return one_hot_where(sympy.Eq(self.args[0], self))

    def _latex(self, printer, exp=None):
        return _power(r"\max_{j} %s" % printer.parenthesize(self.args[0], 1000), exp)


class rlogsumexp(Reduction):
    """log Σ exp over the class axis (the row max is subtracted before exponentiating)."""

    def local_derivative(self):
        return sympy.exp(self.args[0] - self)

    def _latex(self, printer, exp=None):
        return _power(r"\log \sum_{j} e^{%s}" % printer._print(self.args[0]), exp)


class rlogsumexp_labelled(rlogsumexp):
    """logsumexp(e) in a loss that also picks the row's label y from log_softmax(e): the same
    value and derivative as rlogsumexp(e); the label only lets lowering write the excess
    Σ_j exp(e_j − max) − 1 with one row sum (lowering.excess)."""

    nargs = 2


class rlog_softmax_at(Reduction):
    """log softmax(e) at the row's label y: e_y − logsumexp(e), the label's log-probability.

    One node (rewrites.pick_of_log_softmax makes it from pick(log_softmax(e), y)) so that
    lowering can keep it relatively exact when the prediction is confident and it is tiny:
    (e_y − max e) − log1p(Σ_{j≠y} exp(e_j − max) + expm1(e_y − max)), every term ≥ 0 when y
    is the arg-max (lowering.excess says why it is exact otherwise too).
    Its derivative, [j = y] − softmax_j, is ``onehot_minus_softmax``, lowered the same way.
    """

    nargs = 2

    def local_derivative(self):
        return onehot_minus_softmax(*self.args)

    def definition(self):
        """The plain form: Σ_j (e_j − logsumexp(e))·[j = y]."""
        e, label = self.args
        return rsum((e - rlogsumexp(e)) * one_hot(label))

    def _latex(self, printer, exp=None):
        e, label = (printer._print(a) for a in self.args)
        return _power(r"\left(%s - \log \sum_{j} e^{%s}\right)_{j = %s}" % (e, e, label), exp)


class onehot_minus_softmax(sympy.Function):
    """[j = y] − softmax(e)_j (element-level): the derivative of rlog_softmax_at(e, y)."""

    nargs = 2

    def _eval_is_real(self):
        return True

    def fdiff(self, argindex=1):
        raise NotDifferentiable("onehot_minus_softmax is a derivative rule's result, not differentiated further")

    def definition(self):
        """The plain form: [j = y] − exp(e − logsumexp(e))."""
        e, label = self.args
        return one_hot(label) - sympy.exp(e - rlogsumexp(e))

    def _latex(self, printer, exp=None):
        e, label = (printer._print(a) for a in self.args)
        return r"\left([j = %s] - \frac{e^{%s}}{\sum_{k} e^{%s}}\right)%s" % (label, e, e, "" if exp is None else f"^{{{exp}}}")


def _power(tex, exp):
    return tex if exp is None else r"\left(%s\right)^{%s}" % (tex, exp)


def one_hot_where(cond):
    """1 where cond else 0 (an element-level indicator)."""
    return sympy.Piecewise((sympy.S.One, cond), (sympy.S.Zero, True))


def one_hot(label):
    """[j = label]: 1 at the label's class, 0 elsewhere (all 0 for a label outside [0, classes))."""
    return one_hot_where(sympy.Eq(CLASS_INDEX, label))


def reductions_in(expr):
    """Reduction nodes of ``expr``, innermost first, each once."""
    found = []
    for node in sympy.postorder_traversal(expr):
        if isinstance(node, Reduction) and node not in found:
            found.append(node)
    return found


def row_sum(expr, element_symbols):
    """Σ_j expr, simplified where that is exact: a row-level term t gives classes·t and a
    term (row factor)·[j = y] gives the row factor (labels are validated to lie in range)."""
    kept, total = [], sympy.S.Zero
    for term in sympy.Add.make_args(expr):
        if not element_level(term, element_symbols):
            total += CLASSES * term
            continue
        factors = sympy.Mul.make_args(term)
        hot = [f for f in factors if _is_one_hot(f, element_symbols)]
        rest = sympy.Mul(*[f for f in factors if f not in hot])
        if len(hot) == 1 and not element_level(rest, element_symbols):
            total += rest
            continue
        outside = sympy.Mul(*[f for f in factors if not element_level(f, element_symbols)])
        kept.append((outside, sympy.Mul(*[f for f in factors if element_level(f, element_symbols)])))
    groups = {}
    for outside, inside in kept:
        groups.setdefault(inside, []).append(outside)
    return total + sympy.Add(*[sympy.Add(*outs) * rsum(inside) for inside, outs in groups.items()])


def _is_one_hot(expr, element_symbols):
    label = one_hot_label(expr)
    return label is not None and not element_level(label, element_symbols)


def one_hot_label(expr):
    """y when expr is the one-hot [j = y] (Piecewise((1, Eq(j, y)), (0, True))), else None."""
    if not (isinstance(expr, sympy.Piecewise) and len(expr.args) == 2):
        return None
    (one, cond), (zero, _) = expr.args
    if one != 1 or zero != 0 or not isinstance(cond, sympy.Eq):
        return None
    sides = (cond.lhs, cond.rhs)
    return sides[1] if sides[0] == CLASS_INDEX else sides[0] if sides[1] == CLASS_INDEX else None


def log_softmax_argument(expr):
    """e when expr is e − logsumexp(e) (log_softmax), else None."""
    if not expr.is_Add:
        return None
    for term in expr.args:
        if term.is_Mul and len(term.args) == 2 and term.args[0] == -1 and isinstance(term.args[1], rlogsumexp):
            logits = term.args[1].args[0]
            if sympy.expand(expr - term - logits) == 0:
                return logits
    return None


def element_level(expr, element_symbols):
    """True when expr depends on element-level values (or the class index) outside any reduction."""
    if isinstance(expr, Reduction):
        return False
    if expr.is_Symbol:
        return expr in element_symbols or expr == CLASS_INDEX
    return any(element_level(a, element_symbols) for a in expr.args)


def split_row_sums(expr, element_symbols):
    """Apply the linearity of Σ_j inside expr: row-level factors and terms move out of each
    rsum (Σ_j (e_j − r)·[j = y] → Σ_j e_j·[j = y] − r), so fewer element passes remain. A
    log-softmax e − logsumexp(e) stays whole (split, Σ e·p − logsumexp·Σ p would cancel)."""
    def split(node):
        if not isinstance(node, rsum):
            return node
        kept = {s: sympy.Dummy(real=True) for s in sympy.preorder_traversal(node.args[0])
                if isinstance(s, sympy.Expr) and log_softmax_argument(s) is not None}
        expanded = sympy.expand_mul(node.args[0].xreplace(kept))
        return row_sum(expanded.xreplace({d: s for s, d in kept.items()}), element_symbols)
    return _bottom_up(expr, split)


def _bottom_up(expr, rule):
    if expr.args:
        args = tuple(_bottom_up(a, rule) for a in expr.args)
        if args != expr.args:
            expr = expr.func(*args)
    return rule(expr)
