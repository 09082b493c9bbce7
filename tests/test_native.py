"""Native CPU kernels (lossc.native): the generated device code compiled for the host.

Each is checked against the generated NumPy kernels it stands in for (which the accuracy
and oracle tests check against mpmath, finite differences and PyTorch), over random and
extreme inputs, split over threads and with a ragged last block, with scalar and mixed-dtype
inputs, from concurrent callers and a forked child; and every way of falling back to the
NumPy kernels is exercised.
"""
import importlib
import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import lossc
from lossc.kernels import native
from lossc.native import NativeModule
from lossc.compiler.derive import declared_gradients
from lossc.compiler.emit import native_emitter
from lossc.compiler.emit.native_emitter import GROUP, MIN_CHUNK
from lossc.compiler.ir import build_ir
from lossc.compiler.mp_eval import NotReal, truth
from lossc.compiler.spec import load_spec

from conftest import SPECS
from cuda_harness import elementwise_modules

needs_native = pytest.mark.skipif(not native.available(), reason=native.status())
# Libm vs libmvec rounding (≤ 4 ulp per function), compounded through a few operations.
TOLERANCE = {np.float32: 2e-5, np.float64: 1e-12}
# the samples of test_native_matches_numpy_kernels, fixed (not tied to MIN_CHUNK): at a point of
# heavy cancellation both kernels err by ~condition × ulp, and which is 4× the other is chance
SAMPLE_SIZE = 2 * 65536 + 3 * 1024 + 5


def module_names():
    """Every generated element-wise module (those have native kernels)."""
    return [m.__name__.rsplit(".", 1)[1] for m in elementwise_modules()]


def numpy_and_native(name):
    numpy_module = importlib.import_module(f"lossc.generated.numpy.{name}")
    return numpy_module, NativeModule(numpy_module, lambda: importlib.import_module(f"lossc.generated.native.{name}"))


def sample_inputs(module, rng, size, dtype):
    """Random inputs of every scale, extremes mixed in, in the ranges the losses accept."""
    arrays = []
    for name in module.INPUTS:
        values = rng.normal(0, 3, size) * rng.choice([1e-3, 1, 30, 1e4], size)
        if name in ("label", "target") or "prob" in name or module.VARIANT.get("from_sigmoid"):
            values = rng.random(size)
            values[::7], values[3::7] = 0.0, 1.0
        if (module.VARIANT.get("from_logits") is False and name == "pred") or "weight" in name:
            values = np.abs(values) + 1e-3
        arrays.append(values.astype(dtype))
    return arrays


def assert_close(got, want, dtype):
    """Same non-finite positions; elsewhere relative agreement, absolute below the smallest normal."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    finite = np.isfinite(want)
    scale = np.maximum(np.abs(want[finite]), np.finfo(dtype).tiny)
    error = np.abs(got[finite] - want[finite]) / scale
    assert error.max(initial=0) <= TOLERANCE[dtype], f"max relative difference {error.max()}"


def declared_truths(module):
    """The declared SymPy expressions of a module's outputs (loss, then gradients), via its spec;
    None for a module without a spec of its own (a pair term)."""
    path = SPECS / f"{module.NAME}.yaml"
    if not path.exists():
        return None
    ir = build_ir(load_spec(path), module.VARIANT)
    gradients = declared_gradients(ir)
    return [ir.loss] + [gradients[name] for name in module.DIFFERENTIABLE]


def worst_errors(expr, module, arrays, at, outputs, dtype):
    """Max relative error vs 50-digit mpmath of each of ``outputs`` at the elements ``at``."""
    info = np.finfo(dtype)
    worst = [0.0] * len(outputs)
    params = {p.name: float(dtype(p.default)) for p in load_spec(SPECS / f"{module.NAME}.yaml").runtime_params}
    for i in at:
        scalars = {name: float(a[i]) for name, a in zip(module.INPUTS, arrays)}
        scalars.update(params)
        try:
            value = float(truth(expr, scalars))
        except NotReal:
            continue
        if not np.isfinite(value) or abs(value) > info.max:
            continue
        for k, output in enumerate(outputs):
            worst[k] = max(worst[k], abs(float(output[i]) - value) / max(abs(value), info.tiny))
    return worst


@needs_native
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", module_names())
def test_native_matches_numpy_kernels(name, dtype):
    """Where the native and NumPy kernels differ most (libmvec vs libm rounding, amplified by
    the loss's own conditioning), the native result is as close to mpmath as NumPy's."""
    numpy_module, fast = numpy_and_native(name)
    rng = np.random.default_rng(7)
    size = SAMPLE_SIZE
    assert size >= 2 * MIN_CHUNK  # several threads, a ragged last group
    arrays = sample_inputs(numpy_module, rng, size, dtype)
    with np.errstate(all="ignore"):
        want_loss, want_grads = numpy_module.forward_backward(*arrays)
        loss, grads = fast.forward_backward(*arrays)
        pairs = [(fast.forward(*arrays), numpy_module.forward(*arrays), 0), (loss, want_loss, 0)]
    pairs += [(got, want, k + 1) for k, (got, want) in enumerate(zip(grads, want_grads))]
    truths = declared_truths(numpy_module)
    for got, want, output in pairs:
        assert got.dtype == dtype
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
        finite = np.flatnonzero(np.isfinite(want))
        difference = np.abs(got[finite] - want[finite]) / np.maximum(np.abs(want[finite]), np.finfo(dtype).tiny)
        if truths is None:  # no spec (a pair term): compare directly
            assert difference.max(initial=0) <= TOLERANCE[dtype]
            continue
        at = finite[np.argsort(difference)[-20:]]
        ours, theirs = worst_errors(truths[output], numpy_module, arrays, at, [got, want], dtype)
        assert ours <= 4 * theirs + 16 * np.finfo(dtype).eps, (output, ours, theirs)


@needs_native
@pytest.mark.parametrize("size", [1, GROUP - 1, GROUP + 1, MIN_CHUNK + 1, 4 * MIN_CHUNK])
def test_scalar_inputs_and_sizes(size):
    """Scalar inputs (read from one value, expanded per block) and every size give the
    NumPy kernels' results: exactly, for Huber (no transcendental functions)."""
    numpy_module, fast = numpy_and_native("huber")
    rng = np.random.default_rng(size)
    pred = rng.normal(0, 2, size)
    label = rng.normal(0, 2, size)
    for args in [(pred, label), (pred, 0.5), (pred, np.float64(-1.5))]:
        for kwargs in [{}, {"rho": 0.25, "grad_output": 3.0}, {"grad_output": label}]:
            want_loss, (want_grad,) = numpy_module.forward_backward(*args, **kwargs)
            loss, (grad,) = fast.forward_backward(*args, **kwargs)
            np.testing.assert_array_equal(loss, want_loss)
            np.testing.assert_array_equal(grad, want_grad)


@needs_native
def test_mixed_input_dtypes_are_cast_like_the_numpy_kernels():
    numpy_module, fast = numpy_and_native("sigmoid_bce__from_sigmoid_false")
    rng = np.random.default_rng(1)
    pred = rng.normal(0, 5, 5000).astype(np.float32)
    for label in [rng.integers(0, 2, 5000), (rng.random(5000) > 0.5).astype(np.float64), True]:
        want_loss, (want_grad,) = numpy_module.forward_backward(pred, label)
        loss, (grad,) = fast.forward_backward(pred, label)
        assert loss.dtype == grad.dtype == np.float32
        assert_close(loss, want_loss, np.float32)
        assert_close(grad, want_grad, np.float32)


@needs_native
def test_losses_run_native_kernels_through_the_public_api(monkeypatch):
    """'none' runs the element kernel, 'sum' the kernel that sums in the same pass (the fast
    path): the same gradient bits, the sum of the same element losses, NumPy's results."""
    loss = lossc.get("sigmoid_focal")
    rng = np.random.default_rng(2)
    x = rng.normal(0, 4, 10000).astype(np.float32)
    y = (rng.random(10000) > 0.7).astype(np.float32)
    call = loss.bind((x, y), {})
    assert isinstance(call.module, native.NativeModule)
    calls, original = [], native.run_native
    monkeypatch.setattr(native, "run_native", lambda *a: calls.append(a) or original(*a))
    elements, (element_grad,) = loss.value_and_grad(x, y, reduction="none")
    assert len(calls) == 1
    value, (grad,) = loss.value_and_grad(x, y, reduction="sum")
    assert len(calls) == 1  # the reducing kernel: no element loss array, no second pass
    np.testing.assert_array_equal(grad, element_grad)
    assert float(value) == np.float32(math.fsum(elements.astype(np.float64)))
    monkeypatch.setenv("LOSSC_NATIVE", "0")
    numpy_value, (numpy_grad,) = loss.value_and_grad(x, y, reduction="sum")
    np.testing.assert_allclose(value, numpy_value, rtol=1e-5)
    assert_close(grad, numpy_grad, np.float32)


def test_fallbacks_give_the_numpy_kernels_results_exactly(monkeypatch):
    """float16, broadcast inputs, LOSSC_NATIVE=0, no compiler: the NumPy kernels run."""
    numpy_module, fast = numpy_and_native("sigmoid_bce__from_sigmoid_false")
    rng = np.random.default_rng(3)
    x = rng.normal(0, 3, (50, 40))
    y = (rng.random((50, 40)) > 0.5).astype(np.float64)
    cases = [(x.astype(np.float16), y), (x, y[:1]), (x[:, :1], y)]
    monkeypatch.setattr(native, "run_native", lambda *a: pytest.fail("native kernel ran"))
    for args in cases:
        want_loss, (want_grad,) = numpy_module.forward_backward(*args)
        loss, (grad,) = fast.forward_backward(*args)
        np.testing.assert_array_equal(loss, want_loss)
        np.testing.assert_array_equal(grad, want_grad)
    monkeypatch.undo()
    for setting, value in [("LOSSC_NATIVE", "0"), ("CXX", "/nonexistent/c++")]:
        with monkeypatch.context() as patch:
            patch.delenv("LOSSC_NATIVE", raising=False)
            patch.setenv(setting, value)
            assert not native.available()
            assert "NumPy kernels (" in native.status() and (setting in native.status() or "compiler" in native.status())
            _, fresh = numpy_and_native("sigmoid_bce__from_sigmoid_false")
            want = numpy_module.forward_backward(x, y)
            got = fresh.forward_backward(x, y)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1][0], want[1][0])


def test_unknown_arguments_raise_the_numpy_modules_error():
    _, fast = numpy_and_native("huber")
    with pytest.raises(TypeError, match="unexpected keyword argument 'rhoo'"):
        fast.forward(np.zeros(3), np.zeros(3), rhoo=1.0)


def fake_native_module(device_code, function="lossc_fake"):
    """A native module of one input and no parameters around ``device_code``, which defines the
    device functions <function>_<kind>_<precision> (loops written by the native emitter)."""
    loops, kernels = [], {}
    for kind, outputs in (("forward", 1), ("forward_backward", 2)):
        kernels[kind] = {}
        for precision, ctype in native_emitter.C_TYPES.items():
            name = f"{function}_{kind}_{precision}"
            counts = (1 + (kind == "forward_backward"), 0, outputs)
            loops += [native_emitter.element_wrapper(name, ctype, *counts),
                      native_emitter.sum_wrapper(name, ctype, *counts)]
            kernels[kind][precision] = (f"lossc_run_{name}", f"lossc_sum_{name}")
    return types.SimpleNamespace(__name__="fake_native_module", INPUTS=("pred",), DIFFERENTIABLE=("pred",),
                                 PARAMETERS=(), KERNELS=kernels, SOURCE="\n".join([device_code, *loops]))


@needs_native
def test_a_failed_build_falls_back_and_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("LOSSC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_failures", [])  # this test's failures stay out of the others'
    broken = fake_native_module("this is not C++;")
    assert native.library(broken) is None
    assert "native build failed" in native.status() and "fake_native_module" in native.status()
    assert not list((tmp_path / "native").glob("*.so"))
    numpy_module = importlib.import_module("lossc.generated.numpy.l2")
    fallback = native.NativeModule(numpy_module, lambda: broken)
    np.testing.assert_array_equal(fallback.forward(np.arange(3.0), np.ones(3)), numpy_module.forward(np.arange(3.0), np.ones(3)))


def test_device_function_names_are_checked_before_reaching_the_compiler():
    with pytest.raises(ValueError, match="bad device function name"):
        fake_native_module("", function="f(); system(\"rm -rf /\"); void g")


@needs_native
def test_libraries_are_cached_on_disk_and_vectorised(tmp_path):
    """A second process loads the cached library without compiling; on x86-64 Linux the
    loops call libmvec's vector functions (symbols _ZGV…)."""
    log = tmp_path / "compiles.log"
    compiler = tmp_path / "cxx"
    compiler.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nexec {native._compiler()} \"$@\"\n")
    compiler.chmod(0o755)
    script = ("import numpy as np, lossc, lossc.native as n; x = np.linspace(-9, 9, 10**5); "
              "lossc.get('sigmoid_bce').value_and_grad(x, x > 0); print(n.status())")
    env = {**os.environ, "CXX": str(compiler), "LOSSC_CACHE_DIR": str(tmp_path / "cache")}
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("native kernels"), result.stdout
    builds = [line for line in log.read_text().splitlines() if "kernels.cpp" in line]
    assert len(builds) == 1
    libraries = list((tmp_path / "cache" / "native").glob("*.so"))
    assert len(libraries) == 1
    if native._vector_math():
        symbols = subprocess.run(["nm", "-D", str(libraries[0])], capture_output=True, text=True).stdout
        assert "_ZGV" in symbols and "log1p" in symbols


def test_arguments_are_matched_like_the_numpy_module(monkeypatch):
    """Inputs by position or name, defaults filled in, grad_output as an array; a call the
    signature rejects goes to the NumPy module, which raises its TypeError."""
    numpy_module, fast = numpy_and_native("huber")
    x, y = np.linspace(-3, 3, 11), np.linspace(2, -2, 11)
    real, calls = native.run_native, []
    monkeypatch.setattr(native, "run_native", lambda *a: calls.append(a) or real(*a))
    for args, kwargs in [((x, y), {}), ((x,), {"label": y}), ((), {"pred": x, "label": y, "rho": 0.5}),
                         ((x, y), {"grad_output": y, "rho": 2.0})]:
        want = numpy_module.forward_backward(*args, **kwargs)
        got = fast.forward_backward(*args, **kwargs)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-15)
        np.testing.assert_allclose(got[1][0], want[1][0], rtol=1e-15)
    assert len(calls) == 4 if native.available() else not calls
    for args, kwargs in [((x,), {}), ((x, y, y), {}), ((x, y), {"pred": x}), ((x, y), {"grad_output": 1.0})]:
        with pytest.raises(TypeError):
            fast.forward(*args, **kwargs)


def test_a_thread_pool_that_cannot_help_does_not_hang(monkeypatch):
    """If no pool thread ever picks up its share (a busy pool, or a pool inherited through
    fork), the calling thread does all the chunks and does not wait for the helpers."""
    from concurrent.futures import Future

    from lossc.kernels import numpy_runtime

    class StuckPool:
        def submit(self, fn):
            return Future()  # never runs

    monkeypatch.setattr(numpy_runtime, "_executor", lambda: StuckPool())
    monkeypatch.setattr(numpy_runtime, "WORKERS", 2)
    done = []
    numpy_runtime.run_all(done.append, range(5))
    assert done == [0, 1, 2, 3, 4]


@needs_native
@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_any_number_of_threads_gives_the_same_result(monkeypatch, workers):
    numpy_module, fast = numpy_and_native("huber")
    rng = np.random.default_rng(workers)
    size = 5 * MIN_CHUNK + 17
    pred, label = rng.normal(0, 2, size), rng.normal(0, 2, size)
    want = numpy_module.forward_backward(pred, label, grad_output=label)
    monkeypatch.setattr(native, "WORKERS", workers)
    for _ in range(3):  # helpers started by one call serve the next ones
        loss, (grad,) = fast.forward_backward(pred, label, grad_output=label)
        np.testing.assert_array_equal(loss, want[0])
        np.testing.assert_array_equal(grad, want[1][0])


@needs_native
def test_concurrent_callers_each_get_their_own_result():
    """Python threads calling one library at once: one uses the helper threads, the others
    run alone (the library's pool runs one job at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    numpy_module, fast = numpy_and_native("sigmoid_bce__from_sigmoid_false")
    rng = np.random.default_rng(11)
    cases = [(rng.normal(0, 4, 3 * MIN_CHUNK), (rng.random(3 * MIN_CHUNK) > 0.5) * 1.0)
             for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda case: [fast.forward_backward(*case) for _ in range(20)], cases))
    for case, runs in zip(cases, results):
        want_loss, (want_grad,) = fast.forward_backward(*case)
        for loss, (grad,) in runs:
            np.testing.assert_array_equal(loss, want_loss)
            np.testing.assert_array_equal(grad, want_grad)
        assert_close(want_loss, numpy_module.forward(*case), np.float64)


def _forked_child_result(queue):
    _, fast = numpy_and_native("huber")
    x = np.linspace(-5, 5, 4 * MIN_CHUNK)
    queue.put(float(fast.forward_backward(x, x[::-1].copy())[0].sum()))


@needs_native
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_a_fresh_thread_pool():
    """After the parent's helpers have run, a forked child (e.g. a data-loader worker) must
    not wait for helper threads that do not exist in it."""
    import multiprocessing

    numpy_module, fast = numpy_and_native("huber")
    x = np.linspace(-5, 5, 4 * MIN_CHUNK)
    want = float(fast.forward_backward(x, x[::-1].copy())[0].sum())  # the parent's pool is started
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_forked_child_result, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung")
    assert child.exitcode == 0
    assert queue.get(timeout=5) == want


def test_a_module_without_device_code_falls_back(monkeypatch):
    monkeypatch.setattr(native, "_failures", [])  # this test's failures stay out of the others'
    numpy_module = importlib.import_module("lossc.generated.numpy.l1")

    def missing():
        raise ImportError("no module named lossc.generated.native.l1")

    fallback = native.NativeModule(numpy_module, missing)
    x, y = np.linspace(-2, 2, 9), np.zeros(9)
    np.testing.assert_array_equal(fallback.forward(x, y), numpy_module.forward(x, y))
    assert "lossc.generated.numpy.l1" in native.status()


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_a_cache_folder_others_can_write_is_not_used(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_failures", [])  # this test's failures stay out of the others'
    shared = tmp_path / "shared"
    (shared / "native").mkdir(parents=True)
    (shared / "native").chmod(0o777)
    monkeypatch.setenv("LOSSC_CACHE_DIR", str(shared))
    assert native._load_or_build("g++", [], "", "digest", "some_module") is None
    assert "writable by others" in native.status()


def test_the_spin_time_is_a_setting_and_a_bad_one_is_named():
    """LOSSC_SPIN_MICROSECONDS=0 (helpers sleep at once) gives the same bits; a bad value fails
    the import with a message naming the variable."""
    script = ("import numpy as np, lossc, lossc.native as n; x = np.linspace(-9, 9, 10**6); "
              "v, (g,) = lossc.get('huber').value_and_grad(x, 0 * x, reduction='sum'); "
              "print(n.SPIN_MICROSECONDS, repr(float(v)), g[::99991].tobytes().hex())")
    runs = {}
    for spin in ("0", "200"):
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                env={**os.environ, "LOSSC_SPIN_MICROSECONDS": spin})
        assert result.returncode == 0, result.stderr
        runs[spin] = result.stdout.split()
    assert runs["0"][0] == "0" and runs["200"][0] == "200"
    assert runs["0"][1:] == runs["200"][1:]
    bad = subprocess.run([sys.executable, "-c", "import lossc"], capture_output=True, text=True,
                         env={**os.environ, "LOSSC_SPIN_MICROSECONDS": "-5"})
    assert bad.returncode != 0 and "LOSSC_SPIN_MICROSECONDS must be an integer from 0 to 100000" in bad.stderr


def test_an_arrays_address_is_its_first_elements_whatever_its_kind():
    """native.address reads a writable C-contiguous array's buffer and falls back for the rest:
    the same address as NumPy's ctypes.data for offset views, read-only, strided and empty arrays."""
    base = np.arange(24.0).reshape(4, 6)
    read_only = base.copy()
    read_only.flags.writeable = False
    for array in (base, base[1:], base[2], base[:, 1:], base[::2], base.T, read_only,
                  np.broadcast_to(base[0], (4, 6)), np.empty(0)):
        assert native.address(array) == array.ctypes.data
