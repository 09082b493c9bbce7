"""Chunked, multi-threaded evaluation of generated element-wise NumPy kernels.

A generated kernel is straight-line NumPy code. Running it on cache-sized chunks keeps
every temporary it creates small (a fused forward+backward allocates no full-size
temporaries; only its outputs are full size), and chunks run on a thread pool because
NumPy's ufuncs release the GIL.
"""
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CHUNK_ELEMENTS = 1 << 14
_pool = None


def _executor():
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)), thread_name_prefix="lossc")
    return _pool


def compute_dtype(dtype):
    """The dtype arithmetic runs in: float16 is computed in float32, others as themselves."""
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


def run_elementwise(kernel, arrays, params, n_outputs):
    """Evaluate ``kernel(_dtype, *arrays, *params)`` chunk by chunk into ``n_outputs`` arrays.

    The outputs take the first array's dtype and the broadcast shape of all arrays; the
    other arrays are cast to the computing dtype one chunk at a time.
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
        with np.errstate(all="ignore"):
            results = kernel(compute.type, *inputs, *scalars)
        for target, result in zip(targets, results):
            target[...] = result

    if len(tasks) >= 4:
        list(_executor().map(run, tasks))
    else:
        for task in tasks:
            run(task)
    return outputs


def _chunk_tasks(arrays, outputs, shape, compute):
    """Split the work into (input chunks, output chunks) pairs of about CHUNK_ELEMENTS."""
    size = math.prod(shape)
    if size == 0:
        return []
    flat = all(a.size == 1 or (a.shape == shape and a.flags.c_contiguous) for a in arrays)
    if flat:
        views = [_scalar(a, compute) if a.size == 1 and a.shape != shape else a.reshape(-1) for a in arrays]
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
