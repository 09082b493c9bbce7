"""Split a fused kernel with class-axis reductions into GPU stages.

A GPU cannot compute a row statistic and use it in the same element-wise launch, so a
kernel whose expressions contain reductions becomes a sequence of stages:

    one reduction stage per row statistic  _r0 = Σ_j f0(...), _r1 = max_j f1(..., _r0), ...
    one final stage                        loss, gradients = g(..., _r0, _r1, ...)

Each stage keeps only the CSE'd assignments it needs, with every reduction it depends
on replaced by the symbol of an earlier statistic. A stage is element-level (run over
(rows, classes)) when it reads an element value, the class index, or an element-level
grad_output; otherwise row-level (run over rows).
"""
from dataclasses import dataclass

import sympy

from ..derive import GRAD_OUTPUT
from ..reductions import CLASS_INDEX, CLASSES, Reduction, rmax, rsum
from .cuda_printer import masked_product

REDUCE_OPS = {rsum: "sum", rmax: "max"}


@dataclass
class Stage:
    """Straight-line code of one launch: assignments, then the output expressions."""

    op: str
    arguments: list
    assignments: list
    outputs: list
    level: str


def element_names(ir, element_grad_output):
    """The symbols that vary along a row: element inputs, the class index, and grad_output
    when it is per element."""
    return set(ir.element_symbols) | {CLASS_INDEX} | ({GRAD_OUTPUT} if element_grad_output else set())


def row_invariant_split(assignments, outputs, element):
    """(row part, invariants, element part) of a final stage's code: the assignments that
    read no ``element`` symbol (directly or through another assignment) — computed once per
    row —, those of them the rest reads, and the remaining assignments."""
    row_part, element_part, varying = [], [], set(element)
    for symbol, expr in assignments:
        if expr.free_symbols & varying:
            element_part.append((symbol, expr))
            varying.add(symbol)
        else:
            row_part.append((symbol, expr))
    read = set().union(set(), *(e.free_symbols for _, e in element_part), *(e.free_symbols for e in outputs))
    return row_part, [symbol for symbol, _ in row_part if symbol in read], element_part


def hoist_row_factors(assignments, outputs, element, indicators):
    """(assignments, outputs) with every product that mixes values varying along a row and
    row-invariant factors — several of them, or a division — multiplied by one new
    temporary ``_v0``, ``_v1``, … holding the invariant part: e·a/b becomes e·_v0 with
    _v0 = a/b, computed once per row, so an element costs one multiplication instead of a
    multiplication and a division. A value varies when it reads an ``element`` symbol outside
    a reduction (a row statistic is invariant). Masked products x·[c] (``indicators``) keep
    their form: every target prints them as a selection."""
    varying, hoisted, result = set(element), {}, []

    def reads_element(expr):
        if isinstance(expr, Reduction):
            return False
        if expr.is_Symbol:
            return expr in varying
        return any(reads_element(a) for a in expr.args)

    def rewrite(expr, pending):
        if not expr.args or not reads_element(expr):
            return expr
        if isinstance(expr, sympy.Piecewise):
            return sympy.Piecewise(*[(rewrite(value, pending), cond) for value, cond in expr.args], evaluate=False)
        args = [rewrite(a, pending) for a in expr.args]
        if isinstance(expr, sympy.Mul) and masked_product(expr, indicators) is None:
            fixed = [a for a in args if not reads_element(a)]
            if len([a for a in fixed if a != -1]) > 1 or any(a.is_Pow and a.exp.is_negative for a in fixed):
                product = sympy.Mul(*fixed, evaluate=False)  # c·(a + b) is not distributed: no new constant
                if product not in hoisted:
                    hoisted[product] = sympy.Symbol(f"_v{len(hoisted)}", real=True)
                    pending.append((hoisted[product], product))
                return sympy.Mul(*[a for a in args if reads_element(a)], hoisted[product])
        if all(new is old for new, old in zip(args, expr.args)):
            return expr
        return expr.func(*args, evaluate=False)

    for symbol, expr in assignments:
        pending = []
        expr = rewrite(expr, pending)
        if reads_element(expr):
            varying.add(symbol)
        result += pending + [(symbol, expr)]
    pending = []
    outputs = [rewrite(e, pending) for e in outputs]
    return result + pending, outputs


def stages(kernel, ir, element_grad_output):
    """The reduction stages then the final stage computing ``kernel``'s outputs."""
    statistics, assignments, outputs = _flatten(kernel)
    element = element_names(ir, element_grad_output)
    order = _argument_order(ir, statistics)
    result = [_stage(REDUCE_OPS[type(node)], [node.args[0]], assignments, order, element)
              for node, _ in statistics]
    result.append(_stage("final", outputs, assignments, order, element))
    return result


def statistic_symbol(index):
    """The symbol holding row statistic ``index``."""
    return sympy.Symbol(f"_r{index}", real=True)


def _flatten(kernel):
    """Replace every reduction by a statistic symbol, innermost first; return the
    statistics [(reduction with substituted argument, symbol)], assignments and outputs."""
    statistics = {}

    def extract(expr):
        if not expr.args:
            return expr
        args = tuple(extract(a) for a in expr.args)
        node = expr.func(*args) if args != expr.args else expr
        if isinstance(node, Reduction):
            if type(node) not in REDUCE_OPS:
                raise TypeError(f"{type(node).__name__} must be lowered before staging")
            if node not in statistics:
                statistics[node] = statistic_symbol(len(statistics))
            return statistics[node]
        return node

    assignments = [(symbol, extract(expr)) for symbol, expr in kernel.assignments]
    outputs = [extract(expr) for expr in kernel.outputs]
    return list(statistics.items()), assignments, outputs


def _argument_order(ir, statistics):
    """Every name a stage may read, in a fixed order: inputs, grad_output, class index,
    class count, parameters, then the statistics."""
    return (list(ir.input_symbols) + [GRAD_OUTPUT, CLASS_INDEX, CLASSES]
            + list(ir.param_symbols) + [symbol for _, symbol in statistics])


def _stage(op, exprs, assignments, order, element):
    """The pruned code computing ``exprs`` and the names it reads."""
    needed, kept = set().union(*(e.free_symbols for e in exprs)), []
    for symbol, expr in reversed(assignments):
        if symbol in needed:
            kept.append((symbol, expr))
            needed |= expr.free_symbols
    kept.reverse()
    defined = {symbol for symbol, _ in kept}
    names = {s.name for s in needed - defined}
    arguments = [s for s in order if s.name in names]
    missing = names - {s.name for s in arguments}
    if missing:
        raise ValueError(f"stage reads unknown names: {sorted(missing)}")
    level = "element" if any(s.name in {e.name for e in element} for s in arguments) else "row"
    return Stage(op, arguments, kept, exprs, level)
