"""NumPy emitter: a DerivedLoss → the source of one module in ``generated/numpy/``."""
from . import template
from .numpy_printer import NumPyPrinter


def emit_numpy(derived, spec_file):
    """Render the NumPy kernels of one loss variant as Python source text."""
    printer = NumPyPrinter({"order": "lex"})
    ir = derived.ir
    spec = ir.spec
    tpl = template("numpy_module.py.j2")
    inputs = [i.name for i in spec.inputs]
    params = [p.name for p in spec.runtime_params]
    return tpl.render(
        name=spec.name,
        summary=spec.summary,
        spec_file=spec_file,
        variant_text=", ".join(f"{k}={v!r}" for k, v in ir.variant.items()) or "the only one",
        variant_repr=repr(ir.variant),
        inputs=inputs,
        differentiable=[i.name for i in spec.differentiable_inputs],
        params=params,
        param_args="".join(f", {p}" for p in params),
        signature=_signature(spec),
        input_names=", ".join(inputs),
        param_names="".join(f"{p}, " for p in params).rstrip(" "),
        forward=_code(derived.forward, printer),
        forward_backward=_code(derived.forward_backward, printer),
    )


def _signature(spec):
    """``pred, label, pos_weight=1.0, *, eps=1e-12``: inputs, then keyword-only parameters."""
    parts = [i.name if i.default is None else f"{i.name}={i.default!r}" for i in spec.inputs]
    if spec.runtime_params:
        parts.append("*")
        parts += [f"{p.name}={p.default!r}" for p in spec.runtime_params]
    return ", ".join(parts)


class _Code:
    def __init__(self, assignments, outputs):
        self.assignments, self.outputs = assignments, outputs


def _code(kernel, printer):
    return _Code(
        [(printer.doprint(sym), printer.doprint(expr)) for sym, expr in kernel.assignments],
        [printer.doprint(expr) for expr in kernel.outputs],
    )
