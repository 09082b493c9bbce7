"""Stage 2: a validated spec and one variant → :class:`LossIR` (SymPy expressions).

Each combination of build-time (bool/choice) parameter values is one variant; its
expressions are parsed with those values fixed, so ``where(from_sigmoid, a, b)`` keeps
only the branch that variant needs and each variant compiles to its own kernel.
"""
import itertools
from dataclasses import dataclass

import sympy

from .expr_parser import ExprError, Scope, parse_expression, referenced_names
from .reductions import CLASS_INDEX, element_level, reductions_in


@dataclass
class LossIR:
    """One variant of one loss, in the form the spec declared it (no rewrites yet)."""

    spec: object
    variant: dict
    symbols: dict
    definitions: list
    loss: sympy.Expr
    readable_loss: sympy.Expr

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
    definitions = []
    for index in _definition_order(spec):
        d = spec.definitions[index]
        at = ("definitions", index, "expr")
        inlined.values[d.name] = _parse(spec, d.expr, inlined, at)
        readable.values[d.name] = sympy.Symbol(d.name, real=True)
        definitions.append((d.name, _parse(spec, d.expr, readable, at)))
    loss = _parse(spec, spec.loss, inlined, ("loss",))
    ir = LossIR(spec, dict(variant), symbols, definitions, loss, _parse(spec, spec.loss, readable, ("loss",)))
    _check_reductions(ir)
    return ir


def _param_symbol(param):
    """A runtime parameter's symbol: real, and positive when its range's low end is above 0
    (so rules that need a positive parameter, like lowering.clip_of_where, can apply)."""
    low = param.range[0]
    return sympy.Symbol(param.name, real=True, positive=True if low is not None and low > 0 else None)


def _check_reductions(ir):
    found = reductions_in(ir.loss)
    uses_index = CLASS_INDEX in ir.loss.free_symbols
    if (found or uses_index) and ir.spec.class_axis is None:
        raise ir.spec.error(("loss",), "reductions, pick and one_hot need a class_axis (parameter, last or non_batch)")
    for node in found:
        if not element_level(node.args[0], ir.element_symbols):
            raise ir.spec.error(("loss",), f"{type(node).__name__[1:]}() of a row-level value: {node.args[0]}")


def _parse(spec, text, scope, at):
    try:
        expr = parse_expression(text, scope)
    except ExprError as err:
        raise spec.error(at, str(err)) from None
    if not isinstance(expr, sympy.Expr):
        raise spec.error(at, "expected a numeric expression")
    return expr


def _definition_order(spec):
    """Indices of definitions so each comes after those it uses (spec validated acyclic)."""
    names = [d.name for d in spec.definitions]
    deps = {i: referenced_names(d.expr) & set(names) for i, d in enumerate(spec.definitions)}
    order, placed = [], set()
    while len(order) < len(names):
        for i in range(len(names)):
            if i not in order and deps[i] <= placed:
                order.append(i)
                placed.add(names[i])
                break
    return order
