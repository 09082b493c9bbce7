"""CuPy emitter: a DerivedLoss → a module in ``generated/cupy/``.

Its device code is plain CUDA C++ ``__device__`` functions, one per kernel, stage and
precision (inputs and parameters in, results out through pointers or returned).
Element-wise losses: one function computes the loss and every gradient, wrapped in one
``cupy.ElementwiseKernel`` launch. Losses with reductions along the class axis are split
into stages (``row_stages``): one ``cupy.ReductionKernel`` per row statistic, then one
fused element-wise launch for the loss and gradients.
"""
import itertools
from dataclasses import dataclass

import sympy
from sympy.core.numbers import equal_valued

from .. import primitives
from ..derive import GRAD_OUTPUT
from . import module_docstring, python_signature, template
from .numpy_emitter import ROWS_NOTE
from .cuda_printer import CudaPrinter, indicator_symbols, masked_product
from .row_stages import element_names, hoist_row_factors, row_invariant_split, stages

PRECISIONS = ("float32", "float64")
SHORT = {"float32": "f32", "float64": "f64"}
ELEMENTWISE_NOTES = ("DEVICE_CODE holds plain CUDA C++ __device__ functions; the ElementwiseKernels below call them,",
                     "one launch for the loss and all its gradients. float16 is computed in float32.")
ROWS_NOTES = (ROWS_NOTE,
              "DEVICE_CODE holds plain CUDA C++ __device__ functions. STAGES lists the launches of each",
              "kernel: one ReductionKernel per row statistic (_r0, _r1, … in order), then one fused",
              "ElementwiseKernel for the loss and all gradients. float16 is computed in float32.",
              "A final stage's \"split\" (for the host's row loop) computes what reads no element value once",
              "per row (\"row\"), then the rest per element (\"element\", the invariants as extra arguments).")


@dataclass
class DeviceFunction:
    """One __device__ function: return type, name, argument list and body statements."""

    returns: str
    name: str
    arguments: str
    statements: list


def device_function(precision, name, arguments, assignments, outputs, returns_value=False, scale_gradients=False,
                    indicators=None):
    """A __device__ function of ``arguments`` (symbols) computing ``outputs`` after ``assignments``:
    returned when ``returns_value``, else stored through out0, out1, … (every output after
    the first multiplied by grad_output when ``scale_gradients``). ``indicators`` given: the
    code is already speculated and those symbols hold indicators."""
    if indicators is None:
        indicators, assignments, outputs = speculated(assignments, outputs)
    printer = CudaPrinter(precision, indicators)
    statements = [f"const {printer.type} {printer.doprint(s)} = {printer.doprint(e)};" for s, e in assignments]
    parameters = [f"{printer.type} {printer.doprint(a)}" for a in arguments]
    if returns_value:
        statements.append(f"return {printer.doprint(outputs[0])};")
        return DeviceFunction(printer.type, name, ", ".join(parameters), statements)
    codes = [printer.doprint(e) for e in outputs]
    if scale_gradients:
        codes = codes[:1] + [f"{printer.doprint(GRAD_OUTPUT)} * ({c})" for c in codes[1:]]
    statements += [f"*out{i} = {c};" for i, c in enumerate(codes)]
    parameters += [f"{printer.type}* out{i}" for i in range(len(outputs))]
    return DeviceFunction("void", name, ", ".join(parameters), statements)


def speculated(assignments, outputs):
    """(indicator temporaries, statements, outputs): the code with every math call inside a
    ternary's branch (a Piecewise value, the x of x·[c]) lifted into an unconditional
    temporary _h0, _h1, … just before its statement.
    The host's SIMD loops cannot vectorise a call under a condition (glibc's vector exp/log
    have no masked forms), and computing a value that is then not selected changes nothing:
    no FP traps, no errno, the ternary still picks the same value."""
    indicators = indicator_symbols(assignments)
    names = (sympy.Symbol(f"_h{k}") for k in itertools.count())
    statements = []
    for symbol, expr in assignments:
        lifted = []
        expr = _lift(expr, False, lifted, names, indicators)
        statements += lifted + [(symbol, expr)]
    lifted = []
    outputs = [_lift(e, False, lifted, names, indicators) for e in outputs]
    return indicators, statements + lifted, outputs


def _lift(expr, in_branch, lifted, names, indicators):
    """``expr`` with its math calls under a condition replaced by the next ``names`` (their
    definitions appended to ``lifted``)."""
    if expr.is_Atom or not expr.args:
        return expr
    if isinstance(expr, sympy.Piecewise):
        return sympy.Piecewise(*[(_lift(value, True, lifted, names, indicators),
                                  _lift(cond, in_branch, lifted, names, indicators)) for value, cond in expr.args],
                               evaluate=False)
    masked = masked_product(expr, indicators) is not None
    args = [_lift(a, in_branch or masked, lifted, names, indicators) for a in expr.args]
    if any(new is not old for new, old in zip(args, expr.args)):
        expr = expr.func(*args, evaluate=False)
    if in_branch and _is_call(expr):
        symbol = next(names)
        lifted.append((symbol, expr))
        return symbol
    return expr


def _is_call(expr):
    """Whether the printer emits ``expr`` as a math-library call (a pow, or a ``libm``
    primitive: exp, log, log1p, expm1, lgamma, digamma)."""
    if isinstance(expr, sympy.Pow):
        return not any(equal_valued(expr.exp, e) for e in (2, -1, 0.5, -0.5))
    primitive = primitives.of(expr)
    return primitive is not None and primitive.libm


def elementwise_functions(derived, kind, kernel, n_outputs):
    """The float32 and float64 __device__ functions of an element-wise loss's ``kernel``;
    the forward-backward one multiplies each gradient by grad_output."""
    ir = derived.ir
    arguments = list(ir.input_symbols) + ([GRAD_OUTPUT] if kind == "fb" else []) + list(ir.param_symbols)
    return [device_function(p, f"lossc_{ir.module_name}_{kind}_{SHORT[p]}", arguments, kernel.assignments,
                            kernel.outputs[:n_outputs], scale_gradients=kind == "fb")
            for p in PRECISIONS]


@dataclass
class DeviceCode:
    """A loss variant's device code as the CuPy and native targets take it: the template values
    they share (``common``), every __device__ function, and either the element-wise kernels'
    functions per precision (``forward``, ``backward``) or the launch plan of each kind
    (``plans``, with ``row_inputs`` and ``loss_level``)."""

    common: dict
    functions: list
    forward: list = None
    backward: list = None
    plans: dict = None
    row_inputs: list = None
    loss_level: str = None


def device_code(derived):
    """The :class:`DeviceCode` of one derived loss variant."""
    spec = derived.ir.spec
    common = dict(
        name=spec.name,
        inputs=[i.name for i in spec.inputs],
        differentiable=[i.name for i in spec.differentiable_inputs],
        params=[p.name for p in spec.runtime_params],
        signature=python_signature(spec),
    )
    if derived.ir.has_reductions:
        return _row_code(derived, common)
    forward = elementwise_functions(derived, "fwd", derived.forward, 1)
    backward = elementwise_functions(derived, "fb", derived.forward_backward, 1 + len(common["differentiable"]))
    return DeviceCode(common, forward + backward, forward=forward, backward=backward)


def emit_cupy(derived, spec_file):
    """Render the CuPy module of one loss variant as Python source text."""
    ir = derived.ir
    code = device_code(derived)
    module_doc = module_docstring(ir.spec, ir.variant, spec_file, "CuPy",
                                  ROWS_NOTES if ir.has_reductions else ELEMENTWISE_NOTES)
    if ir.has_reductions:
        return template("cupy_rows_module.py.j2").render(functions=code.functions, plans=code.plans,
                                                         row_inputs=code.row_inputs, loss_level=code.loss_level,
                                                         module_doc=module_doc, **code.common)
    return template("cupy_module.py.j2").render(functions=code.functions, forward=code.forward, backward=code.backward,
                                                module_doc=module_doc, **code.common)


@dataclass
class StagePlan:
    """One launch of a row kernel as the runtime sees it: op, level, argument names,
    the __device__ function per precision, and how many results it writes."""

    op: str
    level: str
    arguments: tuple
    functions: dict
    outputs: int
    split: dict = None


def _split_final(stage, outputs, element, prefix, functions):
    """For the host's row loop: the final stage as a row function (the code that reads no
    element value, run once per row, its results stored through pointers) and an element
    function taking those results as extra arguments. None when nothing is row-invariant.
    Appends both functions (both precisions) to ``functions``."""
    indicators, assignments, outputs = speculated(stage.assignments, outputs)
    assignments, outputs = hoist_row_factors(assignments, outputs, element, indicators)
    row_part, invariants, element_part = row_invariant_split(assignments, outputs, element)
    if not invariants:
        return None
    row_arguments = [a for a in stage.arguments if a not in element]
    plan = {"row_arguments": tuple(a.name for a in row_arguments), "invariants": tuple(s.name for s in invariants),
            "functions": {"row": {}, "element": {}}}
    for precision in PRECISIONS:
        for part, arguments, code, results in (("row", row_arguments, row_part, invariants),
                                               ("element", list(stage.arguments) + invariants, element_part, outputs)):
            name = f"{prefix}_{part}_{SHORT[precision]}"
            functions.append(device_function(precision, name, arguments, code, results, indicators=indicators))
            plan["functions"][part][precision] = name
    return plan


def _row_code(derived, common):
    """The device code of a loss with class-axis reductions: per kind, its stages' device
    functions (both precisions) and the launch plan the runtime follows."""
    ir = derived.ir
    row_loss = derived.loss_is_row_level
    functions, plans = [], {}
    for kind, tag, kernel, n_outputs in (("forward", "fwd", derived.forward, 1),
                                         ("forward_backward", "fb", derived.forward_backward,
                                          1 + len(common["differentiable"]))):
        plans[kind] = []
        for index, stage in enumerate(stages(kernel, ir, element_grad_output=tag == "fb" and not row_loss)):
            final = stage.op == "final"
            suffix = "out" if final else f"r{index}"
            outputs = stage.outputs[:n_outputs] if final else stage.outputs
            names = {}
            for precision in PRECISIONS:
                name = f"lossc_{ir.module_name}_{tag}_{suffix}_{SHORT[precision]}"
                functions.append(device_function(precision, name, stage.arguments, stage.assignments, outputs,
                                                 returns_value=not final))
                names[precision] = name
            split = None
            if final and stage.level == "element":
                split = _split_final(stage, outputs, element_names(ir, tag == "fb" and not row_loss),
                                     f"lossc_{ir.module_name}_{tag}_out", functions)
            plans[kind].append(StagePlan(stage.op, stage.level, tuple(a.name for a in stage.arguments), names,
                                         len(outputs) if final else 1, split))
    return DeviceCode(common, functions, plans=plans, row_inputs=[i.name for i in ir.spec.inputs if i.per == "row"],
                      loss_level="row" if row_loss else "element")
