"""JAX emitter: a DerivedLoss → a module in ``generated/jax/`` of jax.numpy code.

The same stable, lowered, CSE'd kernels the other targets print (no second derivation and
no autodiff of the formula): ``forward`` computes the loss, ``forward_backward`` the loss
and every gradient in one traced program that XLA fuses. Losses over a class axis take
(rows, classes) arrays (row inputs (rows, 1)); their reductions are jnp sums and maxima
along the last axis. Conditions are ``jnp.where``: both branches are evaluated, and as
lossc's custom_vjp (``lossc.jax``) never differentiates this code, a non-finite value in
the unselected branch never reaches a gradient.
"""
import sympy
from sympy.codegen.cfunctions import expm1, log1p
from sympy.core.numbers import equal_valued
from sympy.printing.str import StrPrinter

from ..derive import GRAD_OUTPUT
from ..reductions import CLASS_INDEX, CLASSES
from . import code_name, module_docstring, python_signature, template
from .cuda_printer import indicator_symbols, masked_product

NOTES = ("forward / forward_backward are jax.numpy programs for lossc.jax's custom_vjp; the gradients",
         "are d Σ(grad_output·loss)/d input.")
ROWS_NOTE = "Inputs are laid out as (rows, classes) with the class axis last; row inputs are (rows, 1)."
FUNCTIONS = {sympy.exp: "_jnp.exp", sympy.log: "_jnp.log", log1p: "_jnp.log1p", expm1: "_jnp.expm1",
             sympy.Abs: "_jnp.abs", sympy.floor: "_jnp.floor", sympy.sign: "_jnp.sign", sympy.loggamma: "_gammaln"}


class JaxPrinter(StrPrinter):
    """Prints lowered, CSE'd loss expressions as jax.numpy code (``_jnp`` is jax.numpy);
    an unsupported node is an error, never silently printed text."""

    def __init__(self, indicators=frozenset()):
        super().__init__({"order": "none"})
        self.indicators = indicators  # temporaries holding an indicator [c] (0 or 1)

    def emptyPrinter(self, expr):
        raise NotImplementedError(f"the JAX target cannot print {type(expr).__name__}: {expr}")

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

    def _print_Function(self, expr):
        name = FUNCTIONS.get(expr.func)
        if name is None:
            return self.emptyPrinter(expr)
        return f"{name}({', '.join(self._print(a) for a in expr.args)})"

    _print_exp = _print_log = _print_log1p = _print_expm1 = _print_Abs = _print_floor = _print_Function
    _print_sign = _print_loggamma = _print_Function

    def _print_Pow(self, expr, rational=False):
        base = self.parenthesize(expr.base, 1000)
        if expr.exp == 2:
            return f"({base}*{base})"
        if expr.exp == -1:
            return f"(1.0/{base})"
        if equal_valued(expr.exp, 0.5):
            return f"_jnp.sqrt({self._print(expr.base)})"
        if equal_valued(expr.exp, -0.5):
            return f"(1.0/_jnp.sqrt({self._print(expr.base)}))"
        return f"_jnp.power({self._print(expr.base)}, {self._print(expr.exp)})"

    def _print_grouped(self, expr):
        return f"({self._print(expr.args[0])})"

    def _print_relu(self, expr):
        x = self._print(expr.args[0])
        return f"_jnp.where({x} < 0, 0.0, {x})"

    def _print_unit_clip(self, expr):
        return f"_jnp.clip({self._print(expr.args[0])}, -1.0, 1.0)"

    def _print_step(self, expr):
        return f"_jnp.where({self._print(expr.args[0])} > 0, 1.0, 0.0)"

    def _print_one_if_nonneg(self, expr):
        u, e = (self._print(a) for a in expr.args)
        return f"_jnp.where({u} >= 0, 1.0, {e})"

    def _print_rsum(self, expr):
        return f"_jnp.sum(_jnp.broadcast_to({self._print(expr.args[0])}, _shape), axis=-1, keepdims=True)"

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
        *pieces, (last_value, last_cond) = expr.args
        code = self._print(last_value) if last_cond == True else "_jnp.nan"  # noqa: E712
        for value, cond in reversed(pieces):
            code = f"_jnp.where({self._print(cond)}, {self._print(value)}, {code})"
        return code

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


def _body(kernel, scale_gradients):
    """Lines of one kernel: its assignments, then ``return loss`` or ``return loss, (grads...)``."""
    printer = JaxPrinter(indicator_symbols(kernel.assignments))
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
    names = [i.name for i in spec.inputs] + [p.name for p in spec.runtime_params]
    bodies = {"forward": _body(forward, False), "forward_backward": _body(forward_backward, not rows)}
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
        uses_gammaln=any("_gammaln(" in line for body in bodies.values() for line in body),
    )
