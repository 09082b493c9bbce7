"""Stage 2: a validated spec and one variant → :class:`LossIR` (SymPy expressions).

Each combination of build-time (bool/choice) parameter values is one variant; its
expressions are parsed with those values fixed, so ``where(from_sigmoid, a, b)`` keeps
only the branch that variant needs and each variant compiles to its own kernel.

Definitions are inlined into the expressions that use them, so the stability rules see
across them (``p = sigmoid(x)``, then ``log(1 - p)``). A definition whose inlined form
grows past :data:`NODE_SIZE` operations or :data:`NODE_DEPTH` levels (a chain of
definitions that each use the previous one twice doubles at every step) instead becomes a
node of the loss's graph: a symbol of its own, its expression computed once, and the
gradient chained through it (``derive``). Losses over a class axis are always inlined, and
fail with a clear error past :data:`MAX_INLINED_SIZE`.
"""
import heapq
import itertools
from dataclasses import dataclass, field

import sympy

from . import dag
from .expr_parser import ExprError, Scope, check_constants, parse_expression, referenced_names
from .reductions import CLASS_INDEX, CLASSES, element_level, reductions_in


@dataclass
class LossIR:
    """One variant of one loss, in the form the spec declared it (no rewrites yet)."""

    spec: object
    variant: dict
    symbols: dict
    definitions: list
    loss: sympy.Expr
    readable_loss: sympy.Expr
    nodes: list = field(default_factory=list)

    @property
    def input_symbols(self):
        """SymPy symbols of the array inputs, in spec order."""
        return [self.symbols[i.name] for i in self.spec.inputs]

    @property
    def param_symbols(self):
        """SymPy symbols of the runtime (float/int) parameters, in spec order."""
        return [self.symbols[p.name] for p in self.spec.runtime_params]

    @property
    def element_symbols(self):
        """Symbols of the element-level inputs (one value per class)."""
        return {self.symbols[i.name] for i in self.spec.inputs if i.per == "element"}

    @property
    def row_symbols(self):
        """Symbols of the row-level inputs (one value per row, e.g. sparse labels)."""
        return {self.symbols[i.name] for i in self.spec.inputs if i.per == "row"}

    @property
    def has_reductions(self):
        """Whether the loss reduces along a class axis."""
        return self.spec.class_axis is not None

    @property
    def module_name(self):
        """Python module name of this variant's generated kernels."""
        return variant_module_name(self.spec.name, self.variant)


def variants(spec):
    """Every build-time variant of ``spec`` as a dict (the all-defaults variant first)."""
    params = spec.variant_params
    return [dict(zip((p.name for p in params), combo)) for combo in itertools.product(*(p.values for p in params))]


def variant_module_name(loss_name, variant):
    """``sigmoid_bce__from_sigmoid_false``; just the loss name when it has no variants."""
    parts = [f"{k}_{str(v).lower()}" for k, v in variant.items()]
    return "__".join([loss_name, *parts])


def build_ir(spec, variant):
    """Parse the spec's definitions and loss for one variant into a LossIR."""
    symbols = {i.name: sympy.Symbol(i.name, real=True) for i in spec.inputs}
    symbols.update({p.name: _param_symbol(p) for p in spec.runtime_params})
    base = Scope(values=dict(symbols))
    for p in spec.variant_params:
        if p.type == "bool":
            base.flags[p.name] = variant[p.name]
        else:
            base.choices[p.name] = (variant[p.name], p.choices)
    inlined, readable = Scope(dict(base.values), base.flags, base.choices), Scope(dict(base.values), base.flags, base.choices)
    definitions, nodes = [], []
    for index in definition_order(spec):
        d = spec.definitions[index]
        at = ("definitions", index, "expr")
        expr = _parse(spec, d.expr, inlined, at)
        readable.values[d.name] = sympy.Symbol(d.name, real=True)
        inlined.values[d.name] = expr
        if _needs_node(spec, expr, at):
            inlined.values[d.name] = readable.values[d.name]
            nodes.append((readable.values[d.name], expr))
        definitions.append((d.name, _parse(spec, d.expr, readable, at)))
    loss = _parse(spec, spec.loss, inlined, ("loss",))
    _needs_node(spec, loss, ("loss",))
    ir = LossIR(spec, dict(variant), symbols, definitions, loss, _parse(spec, spec.loss, readable, ("loss",)), nodes)
    _check_reductions(ir)
    return ir


NODE_SIZE = 120
NODE_DEPTH = 12
MAX_INLINED_SIZE = 20_000


def _needs_node(spec, expr, at):
    """Whether a definition's inlined ``expr`` is too large to inline further (see the module
    docstring); losses over a class axis are always inlined, up to MAX_INLINED_SIZE."""
    size, depth = tree_size(expr)
    if spec.class_axis is None:
        return size > NODE_SIZE or depth > NODE_DEPTH
    if size > MAX_INLINED_SIZE or depth > 4 * NODE_DEPTH:
        raise spec.error(at, f"with its definitions inlined this expression has {size} operations nested {depth} "
                             f"deep; a loss over a class axis allows {MAX_INLINED_SIZE} operations nested "
                             f"{4 * NODE_DEPTH} deep")
    return False


def tree_size(expr):
    """(operations, depth) of ``expr`` written out as a tree, counted over its DAG (SymPy shares
    repeated subexpressions, so the tree can be exponentially larger than the object)."""
    return dag.fold(expr, lambda node, args: (1 + sum(a[0] for a in args), 1 + max((a[1] for a in args), default=0)))


def _param_symbol(param):
    """A runtime parameter's symbol: real, positive when its range's low end is above 0 and
    nonnegative when it is 0 (so rules that need the sign, like lowering.clip_of_where and
    rewrites.log_one_minus_plus_eps, can apply)."""
    low = param.range[0]
    return sympy.Symbol(param.name, real=True, positive=True if low is not None and low > 0 else None,
                        nonnegative=True if low is not None and low >= 0 else None)


def _check_reductions(ir):
    found = reductions_in(ir.loss)
    used = ir.loss.free_symbols.union(*(expr.free_symbols for _, expr in ir.nodes))
    if (found or CLASS_INDEX in used) and ir.spec.class_axis is None:
        raise ir.spec.error(("loss",), "reductions, pick and one_hot need a class_axis (parameter, last or non_batch)")
    if CLASSES in used and ir.spec.class_axis is None:
        raise ir.spec.error(("loss",), "'classes' (the size of the class axis) needs a class_axis (parameter, last "
                                       "or non_batch)")
    for node in found:
        if not element_level(node.args[0], ir.element_symbols):
            raise ir.spec.error(("loss",), f"{type(node).__name__[1:]}() of a row-level value: {node.args[0]}")


def _parse(spec, text, scope, at):
    try:
        expr = parse_expression(text, scope)
        check_constants(expr)
    except ExprError as err:
        raise spec.error(at, str(err)) from None
    if not isinstance(expr, sympy.Expr):
        raise spec.error(at, "expected a numeric expression")
    return expr


def definition_order(spec):
    """Indices of definitions so each comes after those it uses, the earliest-declared ready
    one first (spec validated acyclic)."""
    index = {d.name: i for i, d in enumerate(spec.definitions)}
    uses = [referenced_names(d.expr) & set(index) for d in spec.definitions]
    waiting = [len(u) for u in uses]
    users = {i: [] for i in range(len(uses))}
    for i, used in enumerate(uses):
        for name in used:
            users[index[name]].append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for user in users[i]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    return order
