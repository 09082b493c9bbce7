"""NumPy emitter: a DerivedLoss → the source of one module in ``generated/numpy/``."""
from dataclasses import dataclass

from .. import primitives
from ..derive import GRAD_OUTPUT
from ..reductions import CLASSES
from . import code_name, module_docstring, python_signature, template
from .numpy_ufuncs import POOLS, linearize


ROWS_NOTE = "Inputs are laid out as (rows, classes) with the class axis last; row inputs are (rows,)."


@dataclass
class KernelCode:
    """One generated kernel function: signature pieces, scratch sizes and body lines."""

    name: str
    doc: str
    args: str
    targets: str
    unpack: list
    lines: list
    scratch: tuple
    used: frozenset


def emit_numpy(derived, spec_file):
    """Render the NumPy kernels of one loss variant as Python source text."""
    ir = derived.ir
    spec = ir.spec
    inputs = [i.name for i in spec.inputs]
    params = [p.name for p in spec.runtime_params]
    differentiable = [i.name for i in spec.differentiable_inputs]
    rows = ir.has_reductions
    extra = ["_j", "classes"] if rows else []
    kernels = [
        _kernel("_forward", "Loss of one chunk, into _out.", derived.forward, ir,
                inputs + extra + params, 1, scale=False),
        _kernel("_forward_backward", "Loss and d Σ(grad_output·loss)/d input of one chunk, into _out.",
                derived.forward_backward, ir, inputs + ["grad_output"] + extra + params, 1 + len(differentiable),
                scale=not rows),
    ]
    return template("numpy_rows_module.py.j2" if rows else "numpy_module.py.j2").render(
        row_inputs=[i.name for i in spec.inputs if i.per == "row"],
        loss_level="row" if derived.loss_is_row_level else "element",
        name=spec.name,
        module_doc=module_docstring(spec, ir.variant, spec_file, notes=[ROWS_NOTE] if rows else []),
        variant_repr=repr(ir.variant),
        inputs=inputs,
        differentiable=differentiable,
        params=params,
        kernels=kernels,
        imports=primitives.imports("numpy", set().union(*(k.used for k in kernels))),
        signature=python_signature(spec),
        input_names=", ".join(inputs),
        param_names="".join(f"{p}, " for p in params).rstrip(" "),
    )


def _kernel(name, doc, kernel, ir, args, n_outputs, scale):
    targets = [f"_out{i}" for i in range(n_outputs)]
    rows = set(ir.row_symbols)
    if ir.has_reductions and not _element_loss(ir, kernel):
        rows.add(GRAD_OUTPUT)
    scalars = list(ir.param_symbols) + ([CLASSES] if ir.has_reductions else [])
    program = linearize(kernel, scalars, targets, scale_gradients=scale, row_symbols=rows)
    unpack = [
        f"{', '.join(f'{prefix}{i}' for i in range(count))}, = _s[{slot}]"
        for slot, (prefix, count) in enumerate(zip(POOLS.values(), program.counts))
        if count
    ]
    return KernelCode(name, doc, ", ".join(code_name(a) for a in args), ", ".join(targets) + ",", unpack, program.lines, program.counts,
                      program.used)


def _element_loss(ir, kernel):
    from ..reductions import element_level

    loss = kernel.outputs[0]
    for symbol, expr in reversed(kernel.assignments):
        loss = loss.xreplace({symbol: expr})
    return element_level(loss, ir.element_symbols)
