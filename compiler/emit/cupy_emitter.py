"""CuPy emitter: a DerivedLoss → a module in ``generated/cupy/``.

Its device code is a plain CUDA C++ ``__device__`` function per kernel and precision
(inputs and parameters in, loss and gradients out through pointers); ``cupy.ElementwiseKernel``
wrappers call it, so a loss and all its gradients cost one launch. Losses with reductions
along a class axis are not emitted for CuPy yet (see the CuPy issue).
"""
from dataclasses import dataclass

from . import python_signature, template, variant_text
from .cuda_printer import CudaPrinter

PRECISIONS = ("float32", "float64")


@dataclass
class DeviceFunction:
    """One __device__ function: its name, argument list and body statements."""

    name: str
    arguments: str
    statements: list


def device_functions(derived, kind, kernel, n_outputs):
    """The float32 and float64 __device__ functions computing ``kernel``."""
    ir = derived.ir
    names = [i.name for i in ir.spec.inputs]
    if kind == "fb":
        names.append("grad_output")
    names += [p.name for p in ir.spec.runtime_params]
    functions = []
    for precision in PRECISIONS:
        printer = CudaPrinter(precision)
        statements = [f"const {printer.type} {s.name} = {printer.doprint(e)};" for s, e in kernel.assignments]
        for index, expr in enumerate(kernel.outputs[:n_outputs]):
            code = printer.doprint(expr)
            if kind == "fb" and index > 0:
                code = f"grad_output * ({code})"
            statements.append(f"*out{index} = {code};")
        arguments = ", ".join([f"{printer.type} {n}" for n in names] + [f"{printer.type}* out{i}" for i in range(n_outputs)])
        functions.append(DeviceFunction(f"lossc_{ir.module_name}_{kind}_{'f32' if precision == 'float32' else 'f64'}",
                                        arguments, statements))
    return functions


def emit_cupy(derived, spec_file):
    """Render the CuPy module of one element-wise loss variant as Python source text."""
    ir = derived.ir
    spec = ir.spec
    differentiable = [i.name for i in spec.differentiable_inputs]
    forward = device_functions(derived, "fwd", derived.forward, 1)
    backward = device_functions(derived, "fb", derived.forward_backward, 1 + len(differentiable))
    return template("cupy_module.py.j2").render(
        name=spec.name,
        summary=spec.summary,
        spec_file=spec_file,
        variant_text=variant_text(ir.variant),
        inputs=[i.name for i in spec.inputs],
        differentiable=differentiable,
        params=[p.name for p in spec.runtime_params],
        functions=forward + backward,
        forward=forward,
        backward=backward,
        signature=python_signature(spec),
    )
