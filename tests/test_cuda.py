"""CuPy backend: the generated CUDA compiles with nvcc, and its exact device functions,
compiled for the host, agree with the NumPy kernels (no GPU needed). Real-GPU tests are
marked ``gpu`` and skip without CuPy and a device."""
import importlib
import inspect
import itertools
import shutil
import time

import numpy as np
import pytest

from conftest import random_call_inputs, random_inputs, spec_paths
import cuda_harness
from lossc.compiler.ir import variants
from lossc.compiler.spec import load_spec

ELEMENTWISE = [load_spec(p) for p in spec_paths() if not load_spec(p).class_axis]
ROW_SPECS = [load_spec(p) for p in spec_paths() if load_spec(p).class_axis]
PAIR_TERM_MODULES = [m for m in cuda_harness.elementwise_modules() if "__pair_" in m.NAME]


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ not installed")
    return cuda_harness.host_library(tmp_path_factory.mktemp("host"))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_all_generated_cuda_compiles_with_nvcc_for_sm80_and_sm90(tmp_path):
    result, obj = cuda_harness.nvcc_compile(cuda_harness.nvcc_source(), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert obj.stat().st_size > 0


def grid(spec, dtype):
    names = [i.name for i in spec.inputs]
    points = list(itertools.product(*(i.accuracy_grid for i in spec.inputs)))
    return [np.array([p[k] for p in points], dtype=dtype) for k in range(len(names))]


@pytest.mark.parametrize("spec", ELEMENTWISE, ids=lambda s: s.name)
def test_device_functions_on_the_host_agree_with_numpy(spec, host):
    from lossc.compiler.ir import variant_module_name

    for variant in variants(spec):
        name = variant_module_name(spec.name, variant)
        cuda = importlib.import_module(f"lossc.generated.cupy.{name}")
        numpy_module = importlib.import_module(f"lossc.generated.numpy.{name}")
        params = [p.default for p in spec.runtime_params]
        for precision, dtype in (("float64", np.float64), ("float32", np.float32)):
            arrays = grid(spec, dtype)
            gout = np.full_like(arrays[0], 0.75)
            want_loss, want_grads = numpy_module.forward_backward(*arrays, **dict(zip(cuda.PARAMETERS, params)),
                                                                  grad_output=gout)
            got = cuda_harness.run_host(host, cuda, "forward_backward", precision, arrays + [gout],
                                        [dtype(p) for p in params])
            forward = cuda_harness.run_host(host, cuda, "forward", precision, arrays, [dtype(p) for p in params])
            for label, g, w in zip(["loss", "forward"] + list(cuda.DIFFERENTIABLE), got[:1] + forward + got[1:],
                                   [want_loss, want_loss, *want_grads]):
                _assert_close(g, w, precision, f"{name} {precision} {label}")


def _assert_close(got, want, precision, label):
    both_nan = np.isnan(got) & np.isnan(want)
    same_inf = np.isinf(got) & (got == want)
    ok = both_nan | same_inf
    finite = ~ok
    if precision == "float64":
        tolerance = 1e-13 * np.abs(want[finite]) + np.finfo(np.float64).tiny
    else:  # 8 ulp of the larger magnitude
        tolerance = 8 * np.spacing(np.maximum(np.abs(got[finite]), np.abs(want[finite])).astype(np.float32))
    error = np.abs(got[finite].astype(np.float64) - want[finite].astype(np.float64))
    bad = error > tolerance
    assert not bad.any(), (label, got[finite][bad][:5], want[finite][bad][:5])


# ------------------------------------------------------------------ real GPU (marked, skipped here)
@pytest.mark.gpu
@pytest.mark.parametrize("spec", ELEMENTWISE, ids=lambda s: s.name)
def test_every_elementwise_loss_on_the_gpu_matches_numpy(spec, cupy):
    import lossc

    loss = lossc.get(spec.name)
    for variant in variants(spec):
        for dtype, rtol in ((np.float16, 2e-3), (np.float32, 1e-5), (np.float64, 1e-12)):
            arrays = grid(spec, np.float64)
            host_arrays = [a.astype(dtype) if i == 0 else a for i, a in enumerate(arrays)]
            _compare_on_gpu(cupy, loss, variant, host_arrays, dtype, rtol, atol=1e-6)


def _compare_on_gpu(cupy, loss, variant, host_arrays, dtype, rtol, atol):
    """value_and_grad on CuPy copies of ``host_arrays`` against NumPy; prints the first-call time."""
    started = time.perf_counter()
    value, grads = loss.value_and_grad(*[cupy.asarray(a) for a in host_arrays], reduction="none", **variant)
    print(f"{loss.name} {variant} {np.dtype(dtype).name}: first call {time.perf_counter() - started:.3f} s")
    want, want_grads = loss.value_and_grad(*host_arrays, reduction="none", **variant)
    assert value.dtype == dtype and value.shape == want.shape
    np.testing.assert_allclose(cupy.asnumpy(value).astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(cupy.asnumpy(g).astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol)


@pytest.mark.gpu
def test_gluon_layer_on_cupy_arrays(cupy):
    from lossc import gluon

    rng = np.random.default_rng(0)
    pred, label = rng.normal(0, 2, (64, 10)), (rng.random((64, 10)) > 0.5).astype(np.float64)
    want = gluon.SigmoidBCELoss()(pred, label)
    got = gluon.SigmoidBCELoss()(cupy.asarray(pred), cupy.asarray(label))
    np.testing.assert_allclose(cupy.asnumpy(got), want, rtol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("spec", ROW_SPECS, ids=lambda s: s.name)
def test_every_row_loss_on_the_gpu_matches_numpy(spec, cupy):
    """Reduction kernels then the fused kernel, through lossc.get(...).value_and_grad, every
    variant and dtype, against the NumPy backend."""
    import lossc

    loss = lossc.get(spec.name)
    rng = np.random.default_rng(0)
    for variant in variants(spec):
        arrays = random_call_inputs(loss, rng, (64, 10))
        if variant.get("from_logits") and spec.name == "focal":
            arrays[0] = 1 / (1 + np.exp(-arrays[0]))
        for dtype, rtol in ((np.float16, 5e-3), (np.float32, 1e-5), (np.float64, 1e-12)):
            cast = len(arrays) if loss.pair_inputs else 1
            host_arrays = [a.astype(dtype) for a in arrays[:cast]] + arrays[cast:]
            _compare_on_gpu(cupy, loss, variant, host_arrays, dtype, rtol, atol=1e-5)


@pytest.mark.gpu
def test_gluon_softmax_ce_and_ssd_mining_on_cupy_arrays(cupy):
    """The gluon layer and the SSD loss (its mining on the device) on CuPy arrays."""
    from lossc import gluon
    from lossc.ssd import SSDMultiBoxLoss

    rng = np.random.default_rng(1)
    pred, label = rng.normal(0, 3, (32, 7, 5)), rng.integers(0, 7, (32, 5))
    want, (want_grad,) = gluon.SoftmaxCELoss(axis=1).value_and_grad(pred, label)
    got, (grad,) = gluon.SoftmaxCELoss(axis=1).value_and_grad(cupy.asarray(pred), cupy.asarray(label))
    assert isinstance(got, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(got), want, rtol=1e-12)
    np.testing.assert_allclose(cupy.asnumpy(grad), want_grad, rtol=1e-12, atol=1e-15)
    cls_pred, box_pred = rng.normal(0, 2, (2, 50, 4)), rng.normal(0, 1, (2, 50, 4))
    cls_target, box_target = rng.choice([-1, 0, 0, 0, 1, 2, 3], (2, 50)), rng.normal(0, 1, (2, 50, 4))
    want_losses, want_grads = SSDMultiBoxLoss().value_and_grad(cls_pred, box_pred, cls_target, box_target)
    losses, grads = SSDMultiBoxLoss().value_and_grad(*(cupy.asarray(a) for a in (cls_pred, box_pred, cls_target, box_target)))
    for got_list, want_list in zip(losses, want_losses):
        np.testing.assert_allclose(cupy.asnumpy(got_list[0]), want_list[0], rtol=1e-12)
    for g, w in zip(grads[0], want_grads[0]):
        assert isinstance(g, cupy.ndarray)
        np.testing.assert_allclose(cupy.asnumpy(g), w, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------ CuPy kernels on an emulated CuPy
PRECISIONS = (("float64", np.float64), ("float32", np.float32))
CTYPES_NP = dict(PRECISIONS)


def _row_case(spec, variant, dtype, rng, masked=False):
    """(arrays in the (rows, classes) layout, parameters) for one variant: random logits with
    one row of 1e4 gaps, an ignored row where the loss has an ignore_index; ``masked`` adds a
    −inf logit at a class the target does not use (no label smoothing: that makes it inf)."""
    import lossc

    loss = lossc.get(spec.name)
    rows, classes = 7, 5
    arrays = random_inputs(loss, rng, (rows, classes))
    arrays[0][0] *= 1e4
    if variant.get("from_logits") and spec.name in ("focal", "focal_dense"):
        arrays[0] = 1 / (1 + np.exp(-np.clip(arrays[0], -8, 8)))
    params = {p.name: p.default for p in spec.runtime_params}
    if "label_smoothing" in params:
        params["label_smoothing"] = 0.0 if masked else 0.1
    if "ignore_index" in params:
        arrays[1][1] = params["ignore_index"]
    arrays = [np.broadcast_to(a, (rows, classes)) if a.ndim == 1 and s["per"] == "element" else a
              for a, s in zip(arrays, loss.inputs)]
    if masked:
        _mask(arrays, loss)
    arrays[0] = arrays[0].astype(dtype)
    return arrays, params


# Losses whose prediction is logits (or log-probabilities) over the classes: −inf masks a class.
MASKABLE = ("softmax_ce", "softmax_ce_dense", "kl_div", "softmax_focal", "focal")


def _mask(arrays, loss):
    """Row 2 gets a −inf logit at class 1, which its target does not use (a masked class)."""
    arrays[0][2, 1] = -np.inf
    for k, spec in enumerate(loss.inputs[1:], 1):
        if spec["role"] != "target":
            continue
        if spec["per"] == "row":
            arrays[k][2] = 0
        else:
            arrays[k] = np.array(arrays[k], dtype=np.float64)
            arrays[k][2, 1] = 0.0
            arrays[k][2] /= arrays[k][2].sum()


def _belongs(module_name, item):
    """Whether a generated module is one of a spec's variants (not a pair term) or is the given module."""
    if hasattr(item, "NAME"):
        return module_name == item.NAME
    return module_name.split("__")[0] == item.name and "__pair_" not in module_name


def _powers_of_two(n):
    """A grad_output that differs per element (so its wiring is checked) and scales exactly."""
    return 2.0 ** (np.arange(n) % 4 - 1)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """Every generated CuPy module's forward and forward_backward, run through the runtime's
    KernelCache / RowKernelCache on an emulated CuPy (tests/cupy_emulator.py), next to the
    NumPy module's results: {(module, precision): (got, want, pred)}."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not installed")
    import sys

    from cupy_emulator import Emulator
    from lossc.compiler.ir import variant_module_name

    emulator = Emulator(tmp_path_factory.mktemp("emulated"))
    saved = sys.modules.get("cupy")
    sys.modules["cupy"] = emulator.cupy()
    cases = []
    for spec in ELEMENTWISE:
        for variant in variants(spec):
            name = variant_module_name(spec.name, variant)
            for precision, dtype in PRECISIONS:
                arrays = grid(spec, dtype)
                params = {p.name: p.default for p in spec.runtime_params}
                cases.append((name, importlib.import_module(f"lossc.generated.cupy.{name}"),
                              importlib.import_module(f"lossc.generated.numpy.{name}"), precision, arrays, params,
                              _powers_of_two(arrays[0].size)))
    for cuda in PAIR_TERM_MODULES:  # element-wise summands of pair terms: random values
        defaults = inspect.signature(cuda.forward).parameters
        for precision, dtype in PRECISIONS:
            arrays = [np.random.default_rng(k).normal(0, 2, 40).astype(dtype) for k in range(len(cuda.INPUTS))]
            cases.append((cuda.NAME, cuda, importlib.import_module(f"lossc.generated.numpy.{cuda.NAME}"), precision,
                          arrays, {p: defaults[p].default for p in cuda.PARAMETERS}, _powers_of_two(40)))
    for spec in ROW_SPECS:
        for variant in variants(spec):
            name = variant_module_name(spec.name, variant)
            cuda = importlib.import_module(f"lossc.generated.cupy.{name}")
            numpy_module = importlib.import_module(f"lossc.generated.numpy.{name}")
            maskable = spec.name in MASKABLE and not (spec.name == "focal" and variant.get("from_logits"))
            for (precision, dtype), masked in itertools.product(PRECISIONS, (False, True) if maskable else (False,)):
                arrays, params = _row_case(spec, variant, dtype, np.random.default_rng(len(cases)), masked)
                gout = np.linspace(0.5, 1.5, arrays[0].shape[0] * (1 if cuda.LOSS_LEVEL == "row" else arrays[0].shape[1]))
                gout = gout.reshape(arrays[0].shape[0], -1).squeeze(-1) if cuda.LOSS_LEVEL == "row" else gout.reshape(arrays[0].shape)
                cases.append((name + (" (masked)" if masked else ""), cuda, numpy_module, precision, arrays, params,
                              gout))
    try:
        for collect in (True, False):
            if not collect:
                emulator.compile()
            results = {}
            for name, cuda, numpy_module, precision, arrays, params, gout in cases:
                got_fb = cuda.forward_backward(*arrays, **params, grad_output=gout)
                got_forward = cuda.forward(*arrays, **params)
                want = numpy_module.forward_backward(*arrays, **params, grad_output=gout)
                results[name, precision] = ([got_fb[0], got_forward, *got_fb[1]],
                                            [want[0], numpy_module.forward(*arrays, **params), *want[1]],
                                            (cuda, arrays, params, gout))
    finally:
        for _, cuda, *_ in cases:
            cuda._kernels._kernels.clear()
        if saved is None:
            del sys.modules["cupy"]
        else:
            sys.modules["cupy"] = saved
    return results


@pytest.mark.parametrize("spec", ROW_SPECS, ids=lambda s: s.name)
def test_row_kernels_on_emulated_cupy_agree_with_numpy(spec, emulated):
    """Reduction stages then the fused element-wise stage, through the runtime's own launch
    code, kernel strings and device functions: loss (fused and forward-only) and gradients.

    Sums run in another order on the device (sequentially, not pairwise), so where a result
    cancels terms of its row (a loss of logits 1e4 apart, a gradient near 0) the bound is
    relative to that row's scale: its largest |logit| for a loss, its largest |gradient| for
    a gradient, at least 1 (a gradient is a difference of probabilities times weights of
    order 1); 1e-13 (float64) or 8 float32 epsilons."""
    checked = 0
    for (name, precision), (got, want, (_, arrays, _, _)) in emulated.items():
        if not _belongs(name, spec):
            continue
        pred = arrays[0]
        rel = 1e-13 if precision == "float64" else 8 * np.finfo(np.float32).eps
        for label, g, w in zip(["loss", "forward", "grad"], got, want):
            assert g.shape == w.shape and g.dtype == w.dtype, (name, label, g.shape, w.shape)
            g64, w64 = g.astype(np.float64), w.astype(np.float64)
            finite_pred = np.where(np.isfinite(pred), pred, 0).astype(np.float64)
            scale = np.maximum(np.abs(w64 if label == "grad" else finite_pred).max(axis=1), 1.0)
            scale = scale.reshape(-1, *(1,) * (w.ndim - 1))
            assert np.isfinite(g64).all() and np.isfinite(w64).all(), (name, label)
            error = np.abs(g64 - w64)
            bad = error > rel * (np.abs(w64) + scale)
            assert not bad.any(), (name, precision, label, g64[bad][:4], w64[bad][:4])
            if label == "grad":  # a masked (−inf) class gets gradient exactly 0 on both
                assert np.all(g64[np.isneginf(pred)] == 0) and np.all(w64[np.isneginf(pred)] == 0), name
            checked += 1
    assert checked >= 6


@pytest.mark.parametrize("spec", ELEMENTWISE + PAIR_TERM_MODULES,
                         ids=lambda s: getattr(s, "name", None) or s.NAME)
def test_elementwise_kernels_on_emulated_cupy_match_their_device_functions(spec, emulated, host):
    """The exact ElementwiseKernel parameters and body KernelCache builds, with its preamble,
    over the accuracy grid: one launch gives the loss and every gradient, bit for bit what
    the device function computes when called directly (the test above compares that one
    with NumPy)."""
    checked = 0
    for (name, precision), (got, _, (cuda, arrays, params, gout)) in emulated.items():
        if not _belongs(name, spec):
            continue
        dtype = CTYPES_NP[precision]
        values = [dtype(params[p]) for p in cuda.PARAMETERS]
        direct = cuda_harness.run_host(host, cuda, "forward_backward", precision, arrays + [gout], values)
        forward = cuda_harness.run_host(host, cuda, "forward", precision, arrays, values)
        for label, g, w in zip(["loss", "forward", "grad"], got, direct[:1] + forward + direct[1:]):
            assert g.shape == w.shape and g.dtype == w.dtype, (name, label)
            np.testing.assert_array_equal(g, w, err_msg=f"{name} {precision} {label}")
            checked += 1
    assert checked >= 6


def test_row_launch_plans_read_only_earlier_statistics():
    """Every stage reads inputs, parameters and statistics computed before it; softmax CE's
    plan starts with the row max, and its Σ_{j≠label} exp(pred − max) stage reads that max."""
    from lossc.compiler.ir import variant_module_name

    for spec in ROW_SPECS:
        for variant in variants(spec):
            module = importlib.import_module(f"lossc.generated.cupy.{variant_module_name(spec.name, variant)}")
            for kind, plan in module.STAGES.items():
                *reductions, final = plan
                assert final["op"] == "final" and all(s["op"] in ("sum", "max") for s in reductions)
                for index, stage in enumerate(plan):
                    statistics = [int(a[2:]) for a in stage["arguments"] if a.startswith("_r")]
                    assert all(k < index for k in statistics), (module.NAME, kind, index, stage["arguments"])
                if kind == "forward_backward":
                    assert final["level"] == "element" and final["outputs"] == 1 + len(module.DIFFERENTIABLE)
    ce = importlib.import_module("lossc.generated.cupy.softmax_ce__from_logits_false__class_weighted_false")
    first, *sums = ce.STAGES["forward_backward"][:-1]
    assert (first["op"], first["arguments"]) == ("max", ("pred",))
    assert ("sum", ("pred", "label", "_j", "_r0")) in [(s["op"], s["arguments"]) for s in sums]
    assert "expf(" in ce.DEVICE_CODE and "log1pf(" in ce.DEVICE_CODE and "expm1(" in ce.DEVICE_CODE


def test_float32_device_functions_never_promote_to_double():
    """float32 functions call expf/log1pf/... and use f-suffixed literals only; float64 ones the double forms."""
    import re

    double_call = re.compile(r"\b(exp|log|log1p|expm1|fabs|sqrt|pow|lgamma|floor)\(")
    single_call = re.compile(r"\b(expf|logf|log1pf|expm1f|fabsf|sqrtf|powf|lgammaf|floorf)\(")
    double_literal = re.compile(r"(?<![\w.])(?:\d+\.\d*(?:e[-+]?\d+)?|\d+e[-+]?\d+)(?![\w.])")
    function = re.compile(r"__device__ __forceinline__ \w+ (\w+)\(([^)]*)\)\n\{\n(.*?)\n\}", re.S)
    checked = 0
    for module in cuda_harness.modules():
        for name, parameters, body in function.findall(module.DEVICE_CODE):
            if name.endswith("_f32"):
                assert "double" not in parameters + body, name
                assert not double_call.search(body) and not double_literal.search(body), (name, body)
            else:
                assert name.endswith("_f64") and not single_call.search(body), name
            checked += 1
    assert checked > 100
