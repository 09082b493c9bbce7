"""JAX emitter: a DerivedLoss → a module in ``generated/jax/`` of jax.numpy code.

The same stable, lowered, CSE'd kernels the other targets print (no second derivation and
no autodiff of the formula): ``forward`` computes the loss, ``forward_backward`` the loss
and every gradient in one traced program that XLA fuses. Losses over a class axis take
(rows, classes) arrays (row inputs (rows, 1)); their reductions are jnp sums and maxima
along the last axis. Conditions are ``jnp.where``: both branches are evaluated, and as
lossc's custom_vjp (``lossc.jax``) never differentiates this code, a non-finite value in
the unselected branch never reaches a gradient. A condition on runtime parameters only is a
Python conditional (lossc.jax passes parameters as Python numbers, never traced), so e.g.
label smoothing's extra row sum is not computed when label_smoothing is 0.
"""
import sympy
from sympy.core.numbers import equal_valued

from .. import primitives
from ..derive import GRAD_OUTPUT
from ..reductions import CLASS_INDEX, CLASSES
from . import code_name, module_docstring, python_signature, template
from .cuda_printer import indicator_symbols, masked_product
from .row_stages import element_names, hoist_row_factors
from .strict import StrictPrinter

NOTES = ("forward / forward_backward are jax.numpy programs for lossc.jax's custom_vjp; the gradients",
         "are d Σ(grad_output·loss)/d input.")
ROWS_NOTE = "Inputs are laid out as (rows, classes) with the class axis last; row inputs are (rows, 1)."


class JaxPrinter(StrictPrinter):
    """Prints lowered, CSE'd loss expressions as jax.numpy code (``_jnp`` is jax.numpy)."""

    column, target = "jax", "JAX"

    def __init__(self, indicators=frozenset(), scalars=frozenset(), outputs=(), conditions=None, labels=frozenset()):
        super().__init__({"order": "none"})
        self.indicators = indicators  # temporaries holding an indicator [c] (0 or 1)
        self.conditions = conditions or {}  # temporary holding a condition c (or [c]) → c
        self.labels = labels  # the row inputs (one value per row: a class index where one is compared with _j)
        self.scalars = scalars  # parameters, and temporaries of parameters only (Python values)
        self.outputs = set(outputs)  # the returned expressions (arrays, whatever the parameters)

    def _print_Symbol(self, expr):
        if expr == CLASS_INDEX:
            return "_j"
        if expr == CLASSES:
            return "_classes"
        return code_name(expr.name)

    def _print_Float(self, expr):
        return repr(float(expr))

    def _print_Integer(self, expr):
        return repr(float(expr.p))

    def _print_Rational(self, expr):
        return repr(expr.p / expr.q)

    def _print_Pi(self, expr):
        return "_jnp.pi"

    def _print_Exp1(self, expr):
        return "_jnp.e"

    def _print_Pow(self, expr, rational=False):
        base = self.parenthesize(expr.base, 1000)
        if equal_valued(expr.exp, 2):
            return f"({base}*{base})"
        if equal_valued(expr.exp, -1):
            return f"(1.0/{base})"
        if equal_valued(expr.exp, 0.5):
            return f"_jnp.sqrt({self._print(expr.base)})"
        if equal_valued(expr.exp, -0.5):
            return f"(1.0/_jnp.sqrt({self._print(expr.base)}))"
        return f"_jnp.power({self._print(expr.base)}, {self._print(expr.exp)})"

    def _print_rsum(self, expr):
        """A row sum; Σ_j x_j·[j = label] (the label's entry) as a gather of that one entry —
        0 where the label is no class index in range, as the sum gives."""
        picked = self._label_pick(expr.args[0])
        if picked is not None:
            value, label = picked
            label = self._print(label)
            index = (f"_jnp.where(({label} >= 0) & ({label} < _classes) & ({label} == _jnp.floor({label})), "
                     f"{label}, _classes).astype(_jnp.int32)")
            return (f"_jnp.take_along_axis(_jnp.broadcast_to({self._print(value)}, _shape), {index}, axis=-1, "
                    "mode='fill', fill_value=0)")
        return f"_jnp.sum(_jnp.broadcast_to({self._print(expr.args[0])}, _shape), axis=-1, keepdims=True)"

    def _label_pick(self, expr):
        """(x, label) when ``expr`` is x·[j = label] with ``label`` a row input; None otherwise."""
        masked = masked_product(expr, self.indicators)
        if masked is None and isinstance(expr, sympy.Piecewise) and len(expr.args) == 2 and expr.args[1] == (0, True):
            masked = expr.args[0].cond, expr.args[0].expr
        if masked is None:
            return None
        cond, value = masked
        if isinstance(cond, sympy.Ne) and cond.rhs == 0:
            cond = cond.lhs
        while cond in self.conditions:
            cond = self.conditions[cond]
        if not isinstance(cond, sympy.Eq) or CLASS_INDEX not in cond.args:
            return None
        label = cond.rhs if cond.lhs == CLASS_INDEX else cond.lhs
        return (value, label) if label in self.labels else None

    def _print_rmax(self, expr):
        return f"_jnp.max(_jnp.broadcast_to({self._print(expr.args[0])}, _shape), axis=-1, keepdims=True)"

    def _print_Mul(self, expr):
        """x·[c] as where(c, x, 0): a masked (−inf) logit times a one-hot 0 is 0, not NaN."""
        masked = masked_product(expr, self.indicators)
        if masked is None:
            return super()._print_Mul(expr)
        cond, rest = masked
        return f"_jnp.where({self._print(cond)}, {self._print(rest)}, 0.0)"

    def _print_Piecewise(self, expr):
        """Nested jnp.where; a condition on parameters only (Python numbers: lossc.jax never
        traces them) is a Python conditional, so the branch not taken is never computed —
        except for a returned expression, which must stay an array."""
        *pieces, (last_value, last_cond) = expr.args
        code = self._print(last_value) if last_cond == True else "_jnp.nan"  # noqa: E712
        for value, cond in reversed(pieces):
            if cond.free_symbols <= self.scalars and expr not in self.outputs:
                code = f"({self._print(value)} if {self._python_condition(cond)} else {code})"
            else:
                code = f"_jnp.where({self._print(cond)}, {self._print(value)}, {code})"
        return code

    def _python_condition(self, cond):
        """A condition on Python numbers as a Python expression (and / or / not, not jnp's)."""
        if isinstance(cond, (sympy.And, sympy.Or)):
            word = " and " if isinstance(cond, sympy.And) else " or "
            return "(" + word.join(self._python_condition(a) for a in cond.args) + ")"
        if isinstance(cond, sympy.Not):
            return f"(not {self._python_condition(cond.args[0])})"
        return self._print(cond)

    def _print_Relational(self, expr):
        return f"({self._print(expr.lhs)} {expr.rel_op} {self._print(expr.rhs)})"

    def _print_And(self, expr):
        return self._logical("_jnp.logical_and", expr.args)

    def _print_Or(self, expr):
        return self._logical("_jnp.logical_or", expr.args)

    def _print_Not(self, expr):
        return f"_jnp.logical_not({self._print(expr.args[0])})"

    def _logical(self, function, args):
        code = self._print(args[0])
        for arg in args[1:]:
            code = f"{function}({code}, {self._print(arg)})"
        return code

    def _print_BooleanTrue(self, expr):
        return "True"

    def _print_BooleanFalse(self, expr):
        return "False"


def _scalar_symbols(kernel, ir):
    """The runtime parameters (and the class count) and every temporary of ``kernel`` computed
    from them alone: Python numbers in the generated code."""
    scalars = set(ir.param_symbols) | ({CLASSES} if ir.has_reductions else set())
    for symbol, expr in kernel.assignments:
        if expr.free_symbols <= scalars:
            scalars.add(symbol)
    return frozenset(scalars)


def _conditions(assignments):
    """{temporary: c} for the temporaries of ``assignments`` holding a condition c or an
    indicator [c]."""
    indicators = indicator_symbols(assignments)
    return {symbol: expr.args[0].cond if symbol in indicators else expr
            for symbol, expr in assignments if symbol in indicators or isinstance(expr, sympy.Eq)}


def _body(kernel, scale_gradients, printer):
    """Lines of one kernel: its assignments, then ``return loss`` or ``return loss, (grads...)``."""
    lines = [f"{printer.doprint(s)} = {printer.doprint(e)}" for s, e in kernel.assignments]
    codes = [printer.doprint(e) for e in kernel.outputs]
    if len(codes) == 1:
        return lines + [f"return {codes[0]}"]
    grads = [f"{printer.doprint(GRAD_OUTPUT)} * ({c})" if scale_gradients else c for c in codes[1:]]
    return lines + [f"return {codes[0]}, ({', '.join(grads)},)"]


def emit_jax(derived, spec_file):
    """The JAX module of one loss variant (None for a loss over pair inputs: not in this target)."""
    ir = derived.ir
    spec = ir.spec
    if spec.pair_inputs:
        return None
    rows = ir.has_reductions
    n_grads = len(spec.differentiable_inputs)
    forward = derived.forward
    forward_backward = type(forward)(derived.forward_backward.assignments,
                                     derived.forward_backward.outputs[:1 + n_grads])
    if rows:  # a row-invariant factor is computed on (rows, 1), not per element
        element = element_names(ir, not derived.loss_is_row_level)
        forward, forward_backward = (type(k)(*hoist_row_factors(k.assignments, k.outputs, element,
                                                                indicator_symbols(k.assignments)))
                                     for k in (forward, forward_backward))
    names = [i.name for i in spec.inputs] + [p.name for p in spec.runtime_params]
    labels = frozenset(symbol for symbol, i in zip(ir.input_symbols, spec.inputs) if i.per == "row")
    printers = {key: JaxPrinter(indicator_symbols(kernel.assignments), _scalar_symbols(kernel, ir), kernel.outputs,
                                _conditions(kernel.assignments), labels)
                for key, kernel in (("forward", forward), ("forward_backward", forward_backward))}
    bodies = {"forward": _body(forward, False, printers["forward"]),
              "forward_backward": _body(forward_backward, not rows, printers["forward_backward"])}
    return template("jax_module.py.j2").render(
        module_doc=module_docstring(spec, ir.variant, spec_file, target="JAX",
                                    notes=list(NOTES) + ([ROWS_NOTE] if rows else [])),
        name=spec.name,
        inputs=[i.name for i in spec.inputs],
        row_inputs=[i.name for i in spec.inputs if i.per == "row"],
        differentiable=[i.name for i in spec.differentiable_inputs],
        params=[p.name for p in spec.runtime_params],
        loss_level=("row" if derived.loss_is_row_level else "element") if rows else "element",
        signature=python_signature(spec),
        kernel_args=", ".join(code_name(n) for n in names),
        call_args=", ".join(names),
        first=code_name(names[0]),
        rows=rows,
        forward=bodies["forward"],
        forward_backward=bodies["forward_backward"],
        imports=primitives.imports("jax", printers["forward"].used | printers["forward_backward"].used),
    )
