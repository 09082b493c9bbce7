"""Chunked, multi-threaded drivers for the generated NumPy kernels, and their helpers.

A generated kernel is straight-line three-address code: one ufunc call per operation, each
into a scratch buffer (``out=``). ``run_elementwise`` cuts the broadcast iteration space of an
element-wise loss into cache-sized chunks; ``run_rows`` cuts the (rows, classes) layout of a
loss with reductions into blocks of whole rows. Each thread has its own scratch buffers and
chunks run on a thread pool (ufuncs release the GIL). Only the outputs are full size: a fused
forward+backward allocates no full-size temporaries. The ``*_into`` helpers (bit-exact
branch-free select, gather for pick, scatter-add for one-hot terms) are called by the kernels.
"""
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CHUNK_ELEMENTS = 1 << 18  # fastest measured (1e6 and 1e7 float32): per-call overhead vs cache spill
ROW_CHUNK_ELEMENTS = 1 << 19  # row kernels: longer ufunc calls let the threads overlap (measured)
_BITS = {4: np.int32, 8: np.int64}
_FLOATS = {4: np.dtype(np.float32), 8: np.dtype(np.float64)}
WORKERS = max(1, min(8, os.cpu_count() or 1))  # threads that run chunks at once
_DONE = object()
_pool = None
_local = threading.local()


def _executor():
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(1, WORKERS - 1), thread_name_prefix="lossc")
    return _pool


def run_all(run, chunks):
    """run(chunk) for every chunk, on WORKERS threads: this one and WORKERS − 1 from the pool,
    each taking the next chunk until none is left."""
    chunks = list(chunks)
    helpers = min(len(chunks), WORKERS) - 1
    if helpers <= 0:
        for chunk in chunks:
            run(chunk)
        return
    remaining, lock = iter(chunks), threading.Lock()

    def drain():
        while True:
            with lock:
                chunk = next(remaining, _DONE)
            if chunk is _DONE:
                return
            run(chunk)

    pending = [_executor().submit(drain) for _ in range(helpers)]
    drain()
    for future in pending:
        if not future.cancel():  # a helper that never started (pool busy, or after a fork) is not awaited
            future.result()


def compute_dtype(dtype):
    """The dtype arithmetic runs in: float16 is computed in float32, others as themselves."""
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


def select_into(out, cond, if_true, if_false, mask, blend):
    """out = where(cond, if_true, if_false), branch-free: a bitwise blend of the float bits.

    NumPy's ``where`` branches per element (~4 ns/element on unpredictable conditions);
    blending the integer views is exact (an unused inf/NaN never leaks) and allocation-free.
    ``mask`` and ``blend`` are integer scratch buffers of out's size; ``out`` may be
    ``if_false`` itself, never ``if_true``.
    """
    mask_into(mask, cond)
    blend_into(out, mask, if_true, if_false, blend)


def mask_into(mask, cond):
    """mask = all-ones bits where cond, else 0 (``mask`` an int buffer of the float's width)."""
    np.copyto(mask, cond, casting="unsafe")
    np.negative(mask, out=mask)


def blend_into(out, mask, if_true, if_false, blend):
    """out = if_true where mask (from mask_into) else if_false; exact, branch-free.

    ``out`` may be ``if_false`` itself, never ``if_true``.
    """
    bits = mask.dtype
    floats = _FLOATS[bits.itemsize]
    false_bits = _bits(if_false, floats, bits)
    np.bitwise_xor(_bits(if_true, floats, bits), false_bits, out=blend)
    np.bitwise_and(blend, mask, out=blend)
    if out.dtype == floats:
        np.bitwise_xor(false_bits, blend, out=out.view(bits))
    else:  # a float16 output: blend in the computing dtype, then round once
        np.bitwise_xor(false_bits, blend, out=blend)
        np.copyto(out, blend.view(floats), casting="unsafe")


def _label_positions(index, classes):
    """(index as intp positions clipped into [0, classes), which of them were in range)."""
    position = index.astype(np.intp)
    valid = (position >= 0) & (position < classes)
    np.clip(position, 0, classes - 1, out=position)
    return position, valid


def pick_into(out, values, index):
    """out[r] = values[r, index[r]], or 0 where index[r] is outside [0, classes):
    Σ_j values·[j = index] as one gather instead of two passes over the row."""
    classes = values.shape[-1]
    position, valid = _label_positions(index, classes)
    gathered = np.take_along_axis(np.broadcast_to(values, position.shape[:-1] + (classes,)), position, axis=-1)
    np.copyto(out, np.where(valid, gathered, 0), casting="unsafe")


def set_at_into(out, index, values):
    """out[r, index[r]] = values[r] where 0 ≤ index[r] < classes: where(j == index, values, out)
    in O(rows)."""
    position, valid = _label_positions(index, out.shape[-1])
    current = np.take_along_axis(out, position, axis=-1)
    np.put_along_axis(out, position, np.where(valid, values, current), axis=-1)


def scatter_add_into(out, index, values):
    """out[r, index[r]] += values[r] where 0 ≤ index[r] < classes: a term values·[j = index]
    of an element-level sum, added in O(rows) instead of three passes over the row."""
    position, valid = _label_positions(index, out.shape[-1])
    current = np.take_along_axis(out, position, axis=-1)
    np.put_along_axis(out, position, current + np.where(valid, values, 0), axis=-1)


def _bits(value, dtype, bits):
    array = np.asarray(value)
    if array.dtype != dtype:
        array = array.astype(dtype)
    return array.view(bits)


def _scratch(compute, counts, shape, row_shape=None):
    """This thread's scratch buffers: float, bool, int pools of ``shape``, then (for kernels
    with reductions) float, bool, int pools of ``row_shape``; all views of reused memory."""
    store = getattr(_local, "store", None)
    if store is None:
        store = _local.store = {}
    counts = tuple(counts) + (0,) * (6 - len(counts))
    sizes = (math.prod(shape),) * 3 + (math.prod(row_shape or ()),) * 3
    key = (compute, counts)
    capacity, buffers = store.get(key, (None, None))
    if buffers is None or any(size > cap for size, cap in zip(sizes, capacity)):
        capacity = tuple(max(size, CHUNK_ELEMENTS if i < 3 else 1) for i, size in enumerate(sizes))
        kinds = (compute, np.bool_, _BITS[compute.itemsize]) * 2
        buffers = [[np.empty(cap, kind) for _ in range(n)] for cap, kind, n in zip(capacity, kinds, counts)]
        store[key] = (capacity, buffers)
    shapes = (shape,) * 3 + (row_shape,) * 3
    return [[b[:size].reshape(s) for b in group] for group, size, s in zip(buffers, sizes, shapes)]


def run_elementwise(kernel, scratch_counts, arrays, params, n_outputs):
    """Run a generated chunk kernel over the broadcast of ``arrays``; return its outputs.

    The outputs take the first array's dtype and the broadcast shape; the other arrays
    are cast to the computing dtype one chunk at a time.
    """
    arrays = [np.asarray(a) for a in arrays]
    dtype = arrays[0].dtype
    if dtype.kind != "f":
        raise TypeError(f"expected a floating-point prediction array, got dtype {dtype}")
    compute = compute_dtype(dtype)
    shape = np.broadcast_shapes(*(a.shape for a in arrays))
    outputs = [np.empty(shape, dtype) for _ in range(n_outputs)]
    scalars = tuple(p if isinstance(p, int) and not isinstance(p, bool) else float(p) for p in params)
    tasks = _chunk_tasks(arrays, outputs, shape, compute)

    def run(task):
        inputs, targets = task
        scratch = _scratch(compute, scratch_counts, targets[0].shape)
        with np.errstate(all="ignore"):
            kernel(scratch, targets, *inputs, *scalars)

    run_all(run, tasks)
    return outputs


def is_flat(arrays, shape):
    """True when every array is a single value or C-contiguous of the full ``shape``."""
    return all(a.size == 1 or (a.shape == shape and a.flags.c_contiguous) for a in arrays)


def _chunk_tasks(arrays, outputs, shape, compute):
    """Split the work into (input chunks, output chunks) pairs of about CHUNK_ELEMENTS."""
    size = math.prod(shape)
    if size == 0:
        return []
    if is_flat(arrays, shape):
        views = [_scalar(a, compute) if a.shape != shape else a.reshape(-1) for a in arrays]
        targets = [o.reshape(-1) for o in outputs]
        step, total = CHUNK_ELEMENTS, size
    else:
        views = [_scalar(a, compute) if a.size == 1 else np.broadcast_to(a, shape) for a in arrays]
        targets = outputs
        if not shape:
            return [([_cast(v, compute) for v in views], targets)]
        step, total = max(1, CHUNK_ELEMENTS // max(1, math.prod(shape[1:]))), shape[0]
    tasks = []
    for start in range(0, total, step):
        part = slice(start, min(start + step, total))
        chunk = [v if np.ndim(v) == 0 else _cast(v[part], compute) for v in views]
        tasks.append((chunk, [t[part] for t in targets]))
    return tasks


def _scalar(array, compute):
    return compute.type(array.reshape(-1)[0])


def _cast(chunk, compute):
    return chunk if chunk.dtype == compute else chunk.astype(compute)


def run_rows(kernel, scratch_counts, arrays, row_inputs, names, grad_output, loss_level, params, n_outputs):
    """Run a generated kernel with reductions over (rows, classes) inputs, chunked by rows.

    ``arrays`` follow ``names``; those in ``row_inputs`` are (rows,), the others
    (rows, classes). The loss output is (rows,) or (rows, classes) per ``loss_level``;
    gradients are (rows, classes). No full-size temporary exists besides the outputs.
    """
    arrays = [np.asarray(a) for a in arrays]
    dtype = arrays[0].dtype
    if dtype.kind != "f":
        raise TypeError(f"expected a floating-point prediction array, got dtype {dtype}")
    if arrays[0].ndim != 2:
        raise ValueError(f"expected (rows, classes) predictions, got shape {arrays[0].shape}")
    compute = compute_dtype(dtype)
    rows, classes = arrays[0].shape
    is_row = [name in row_inputs for name in names]
    columns = [a.reshape(rows, 1) if row and a.ndim else a for a, row in zip(arrays, is_row)]
    loss_shape = (rows, classes) if loss_level == "element" else (rows, 1)
    outputs = [np.empty(loss_shape, dtype)] + [np.empty((rows, classes), dtype) for _ in range(n_outputs - 1)]
    if grad_output is not None:
        grad = np.asarray(grad_output)
        if loss_level == "element" and grad.ndim < 2:  # summed along rows inside the kernel: one per element
            grad = np.broadcast_to(grad, (rows, classes))
        columns.append(grad.reshape(rows, 1) if loss_level == "row" and grad.ndim else grad)
    class_index = np.arange(classes, dtype=compute).reshape(1, classes)
    scalars = tuple(p if isinstance(p, int) and not isinstance(p, bool) else float(p) for p in params)
    step = max(1, ROW_CHUNK_ELEMENTS // max(1, classes))

    def run(start):
        part = slice(start, min(start + step, rows))
        chunk = [c if np.ndim(c) == 0 or c.shape[0] == 1 else c[part] for c in columns]
        chunk = [_cast(np.asarray(c), compute) if np.ndim(c) else compute.type(c) for c in chunk]
        targets = [o[part] for o in outputs]
        n = targets[0].shape[0]
        scratch = _scratch(compute, scratch_counts, (n, classes), (n, 1))
        with np.errstate(all="ignore"):
            kernel(scratch, targets, *chunk, class_index, classes, *scalars)

    run_all(run, range(0, rows, step))
    if loss_level == "row":
        outputs[0] = outputs[0].reshape(rows)
    return outputs
