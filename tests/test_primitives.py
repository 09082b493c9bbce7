"""The table of primitives: every primitive reaches every target, the printers refuse what the
table does not cover, and a spec calling every function of the spec language builds and runs
on every CPU-runnable target within the accuracy bounds of the 50-digit truth."""
import math
import shutil
from pathlib import Path

import mpmath
import numpy as np
import pytest
import sympy

from lossc.kernels import native, special
from lossc.compiler import primitives
from lossc.compiler.accuracy import measure
from lossc.compiler.build import build, compile_spec
from lossc.compiler.docs import DocLatexPrinter
from lossc.compiler.docs.mathml import mathml
from lossc.compiler.emit.cuda_printer import CudaPrinter
from lossc.compiler.emit.jax_emitter import JaxPrinter
from lossc.compiler.emit.numpy_printer import NumPyPrinter
from lossc.compiler.emit.numpy_ufuncs import linearize
from lossc.compiler.derive import Kernel
from lossc.compiler.expr_parser import FUNCTIONS, Scope, parse_expression
from lossc.core.targets import folder_loader

import cuda_harness

SPECS = sorted((Path(__file__).parent / "primitive_specs").glob("*.yaml"))
PRINTED = [p for p in primitives.PRIMITIVES if not p.lowered]
X, Y = sympy.symbols("x y", real=True)


def _call(primitive):
    return primitive.function(*[X, Y][:primitive.arity])


@pytest.mark.parametrize("primitive", primitives.PRIMITIVES, ids=lambda p: p.function.__name__)
def test_every_primitive_has_every_column(primitive):
    assert callable(primitive.mpmath) and primitive.domain
    columns = [primitive.numpy, primitive.python, primitive.c, primitive.jax]
    if primitive.lowered:
        assert columns == [None] * 4  # lowering expands it: no target ever sees it
    else:
        assert all(columns)
    assert primitives.of(_call(primitive)) is primitive


@pytest.mark.parametrize("primitive", PRINTED, ids=lambda p: p.function.__name__)
def test_every_primitive_prints_in_every_target(primitive):
    expr = _call(primitive)
    for printer in (NumPyPrinter(), CudaPrinter("float32"), CudaPrinter("float64"), JaxPrinter()):
        arguments = [printer.doprint(a) for a in expr.args]
        assert printer.doprint(expr) == primitive.code(printer.column, *arguments, **printer.fields())
        assert printer.used == {primitive}
    single, double = CudaPrinter("float32").doprint(expr), CudaPrinter("float64").doprint(expr)
    if primitive.libm:
        assert single != double and "f(" in single  # expf, log1pf, lossc_lgammaf: never promoted to double
    program = linearize(Kernel([], [expr]), [], ["_out0"], scale_gradients=False)
    assert program.used == {primitive} and program.lines
    assert DocLatexPrinter().doprint(expr) and "<math" in mathml(expr)


def test_the_spec_language_is_the_table():
    named = {p.name: p for p in primitives.PRIMITIVES if p.name}
    assert set(named) <= set(FUNCTIONS) and FUNCTIONS is primitives.SPEC_FUNCTIONS
    scope = Scope(values={"x": X, "y": Y})
    for name, primitive in named.items():
        arguments = ", ".join(["x", "y"][:primitive.arity])
        assert parse_expression(f"{name}({arguments})", scope) == _call(primitive)


@pytest.mark.parametrize("expr", [sympy.Function("mystery")(X), sympy.gamma(X), X + sympy.oo, sympy.Basic(X)],
                         ids=["unknown function", "sympy gamma", "infinity", "bare Basic"])
def test_printers_refuse_what_the_table_does_not_cover(expr):
    for printer in (NumPyPrinter(), CudaPrinter("float32"), JaxPrinter()):
        with pytest.raises(NotImplementedError, match="cannot print"):
            printer.doprint(expr)


def test_square_roots_and_squares_are_recognised_however_sympy_writes_the_exponent():
    for half in (sympy.Rational(1, 2), sympy.Float(0.5)):
        assert CudaPrinter("float32").doprint(sympy.Pow(X, half, evaluate=False)) == "sqrtf(s_x)"
        assert JaxPrinter().doprint(sympy.Pow(X, half, evaluate=False)) == "_jnp.sqrt(s_x)"
        lines = linearize(Kernel([], [sympy.Pow(X, half, evaluate=False)]), [], ["_out0"], False).lines
        assert lines == ["np.sqrt(s_x, out=_out0)"]
    assert CudaPrinter("float64").doprint(sympy.Pow(X, sympy.Float(2), evaluate=False)) == "(s_x*s_x)"


@pytest.mark.parametrize("x", [0.1, 0.5, 1.0, 1.4616321449683622, 2.5, 7.25, 30.0, 1e3, -0.5, -2.7, -10.3])
def test_the_numpy_special_functions_against_mpmath(x):
    assert math.isclose(special.digamma(x), float(mpmath.digamma(x)), rel_tol=1e-13, abs_tol=1e-15)
    assert math.isclose(special.lgamma(x), float(mpmath.loggamma(x).real), rel_tol=1e-13, abs_tol=1e-15)
    out = np.empty(3, np.float32)
    special.digamma(np.full(3, x, np.float32), out=out)
    assert math.isclose(out[0], float(mpmath.digamma(np.float32(x))), rel_tol=4e-6, abs_tol=1e-6)


def test_digamma_has_no_value_at_its_poles_and_lgamma_is_infinite_there():
    assert np.isnan(special.digamma(np.array([0.0, -1.0, -4.0]))).all()
    assert np.isinf(special.lgamma(np.array([0.0, -1.0, -4.0]))).all()


def test_clip_follows_torch_clamp_at_its_bounds():
    """clip(x, lo, hi): derivative 1 at both bounds, hi wherever lo > hi (torch.clamp)."""
    lo, hi = sympy.symbols("lo hi", real=True)
    clip = parse_expression("clip(x, lo, hi)", Scope(values={"x": X, "lo": lo, "hi": hi}))
    slope = sympy.diff(clip, X)
    for at in (-1, 1):
        assert slope.subs({X: at, lo: -1, hi: 1}) == 1
    assert [clip.subs({X: v, lo: -1, hi: 1}) for v in (-3, 0.5, 3)] == [-1, 0.5, 1]
    assert clip.subs({X: 0, lo: 2, hi: 1}) == 1


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The every-primitive specs built into a folder of their own, measured as `lossc build` does
    (which keeps the more accurate of alternative forms)."""
    folder = tmp_path_factory.mktemp("primitives")
    build(SPECS, folder, full=False, log=lambda *_: None, measure=True)
    return folder


def test_the_specs_reach_every_printed_primitive():
    reached = set()
    for path in SPECS:
        for derived in compile_spec(path).derived:
            for kernel in (derived.forward, derived.forward_backward):
                for expr in [e for _, e in kernel.assignments] + list(kernel.outputs):
                    reached |= {type(f) for f in expr.atoms(sympy.Function)}
    assert {p.function for p in PRINTED} <= reached
    assert not reached & {p.function for p in primitives.PRIMITIVES if p.lowered}


@pytest.mark.parametrize("kernels", ["numpy", "native", "jax"])
@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_every_primitive_runs_within_the_bounds(built, path, kernels):
    if kernels == "native" and not native.available():
        pytest.skip("no C++ compiler for the native kernels")
    if kernels == "jax":
        pytest.importorskip("jax").config.update("jax_enable_x64", True)  # the float64 column
    rows = measure(path, kernels=kernels, folder=built)
    assert len(rows) == 2 * (2 + len(compile_spec(path).spec.differentiable_inputs))
    failing = [(r.output, r.dtype, r.max_error, r.nonfinite) for r in rows if not r.ok]
    assert not failing


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_every_primitive_compiles_with_nvcc(built, tmp_path):
    load = folder_loader(built)
    modules = [load(d.ir.module_name, "cupy") for path in SPECS for d in compile_spec(path).derived]
    result, obj = cuda_harness.nvcc_compile(cuda_harness.nvcc_source(modules), tmp_path, "every_primitive")
    assert result.returncode == 0, result.stderr[-3000:]
    assert obj.stat().st_size > 0
