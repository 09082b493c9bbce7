"""Every element's result is a pure function of its own inputs: the same bits whatever its
position, the array's size, the number of threads or a concurrent caller, for the native
kernels and the NumPy kernels of every element-wise loss; every row of a loss over a class
axis likewise."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import lossc
from conftest import random_inputs
from lossc.compiler.emit.native_emitter import MIN_CHUNK
from lossc.kernels import native, numpy_runtime
from test_native import module_names, numpy_and_native, sample_inputs

SIZES = [1, 2, 3, 63, 64, 65, 127, 1000, 4097, 65537, 70000]
THREADED_SIZE = 6 * MIN_CHUNK + 12345  # enough for 5 threads, ragged parts


def bits(arrays):
    """The raw bits of every output, so NaNs and signed zeros compare exactly too."""
    return [a.view(np.uint32 if a.dtype == np.float32 else np.uint64).copy() for a in arrays]


def outputs(module, arrays):
    with np.errstate(all="ignore"):
        loss, grads = module.forward_backward(*arrays)
        return bits([loss, *grads, module.forward(*arrays)])


def kernels(name):
    numpy_module, fast = numpy_and_native(name)
    return {"numpy": numpy_module, **({"native": fast} if native.available() else {})}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", module_names())
def test_position_and_size_never_change_an_elements_bits(name, dtype):
    rng = np.random.default_rng(11)
    for kind, module in kernels(name).items():
        arrays = sample_inputs(module if kind == "numpy" else module.numpy_module, rng, max(SIZES) + 7, dtype)
        full = outputs(module, arrays)
        for size in SIZES:
            for start in (0, 7):  # an offset slice: other alignment, other chunk boundaries
                part = outputs(module, [a[start:start + size] for a in arrays])
                for got, want in zip(part, full):
                    assert np.array_equal(got, want[start:start + size]), (kind, size, start)
        for i in rng.choice(max(SIZES), 40, replace=False):
            single = outputs(module, [a[i:i + 1] for a in arrays])
            assert all(np.array_equal(got, want[i:i + 1]) for got, want in zip(single, full)), (kind, i)


@pytest.mark.parametrize("name", module_names())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_count_and_concurrent_callers_never_change_bits(name, dtype, monkeypatch):
    rng = np.random.default_rng(5)
    for kind, module in kernels(name).items():
        arrays = sample_inputs(module if kind == "numpy" else module.numpy_module, rng, THREADED_SIZE, dtype)
        runs = {}
        for threads in (1, 2, 3, 5):
            monkeypatch.setattr(native, "WORKERS", threads)
            monkeypatch.setattr(numpy_runtime, "WORKERS", threads)
            runs[threads] = outputs(module, arrays)
        with ThreadPoolExecutor(3) as pool:  # callers competing for the library's one pool
            runs["concurrent"] = list(pool.map(lambda _: outputs(module, arrays), range(3)))[-1]
        for key, got in runs.items():
            assert all(np.array_equal(g, w) for g, w in zip(got, runs[1])), (kind, key)


ROW_LOSSES = [n for n in lossc.list_losses() if lossc.get(n).class_axis and not lossc.get(n).pair_inputs]


@pytest.mark.parametrize("kernel", ["numpy", "native"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ROW_LOSSES)
def test_rows_of_class_axis_losses_never_depend_on_position_or_threads(name, dtype, kernel, monkeypatch):
    """Row r of a loss over a class axis (and its gradient) has the same bits alone, in any
    slice, and with 1, 2, 3 or 5 threads running the row chunks (NumPy kernels) or the rows
    (native row kernels)."""
    if kernel == "native" and not native.available():
        pytest.skip("no C++ compiler for native kernels")
    loss = lossc.get(name)
    rng = np.random.default_rng(13)
    if kernel == "numpy":
        monkeypatch.setenv("LOSSC_NATIVE", "0")
        monkeypatch.setattr(numpy_runtime, "ROW_CHUNK_ELEMENTS", 7 * 50)  # 50 rows a chunk
        rows = 3 * 50 + 5  # several row chunks, a ragged last one
    else:
        rows = 5 * MIN_CHUNK // 7 + 13  # enough elements for 5 threads, ragged parts
    arrays = random_inputs(loss, rng, (rows, 7))
    arrays[0] = arrays[0].astype(dtype)

    def run(*sliced):
        value, grads = loss.value_and_grad(*sliced, reduction="none")
        return bits([np.asarray(value), *grads])

    def rows_of(part):
        return [a[part] if np.ndim(a) and a.shape[0] == rows else a for a in arrays]

    runs = {}
    for threads in (1, 2, 3, 5):
        monkeypatch.setattr(numpy_runtime, "WORKERS", threads)
        monkeypatch.setattr(native, "WORKERS", threads)
        runs[threads] = run(*arrays)
    assert all(all(np.array_equal(g, w) for g, w in zip(got, runs[1])) for got in runs.values())
    for part in (slice(0, 1), slice(1, 2), slice(rows - 1, rows), slice(5, 5 + rows // 2)):
        got = run(*rows_of(part))
        assert all(np.array_equal(g, w[part]) for g, w in zip(got, runs[1])), part
