"""Build the generated CUDA device code two ways, with no GPU needed.

``nvcc_source`` wraps every __device__ function in a __global__ kernel for nvcc;
``host_library`` compiles the *unchanged* device code with g++ (a few macros stand in for
CUDA's qualifiers) plus a host loop per function, and loads it through ctypes.
"""
import ctypes
import importlib
import pkgutil
import subprocess
from pathlib import Path

import numpy as np

import lossc.generated.cupy as generated_cupy
from lossc.cupy_kernels import COMMON_DEVICE_CODE

HOST_PRELUDE = """#include <cmath>
#define __device__
#define __forceinline__ inline
"""
CTYPES = {"float32": ("float", ctypes.c_float, np.float32), "float64": ("double", ctypes.c_double, np.float64)}


def modules():
    """Every generated CuPy module."""
    return [importlib.import_module(f"lossc.generated.cupy.{m.name}") for m in pkgutil.iter_modules(generated_cupy.__path__)]


def elementwise_modules():
    """The generated CuPy modules of element-wise losses (one device function per kernel)."""
    return [m for m in modules() if hasattr(m, "FUNCTIONS")]


def signature(module, kind):
    """(array inputs, scalar parameters, outputs) of one device function kind."""
    inputs = list(module.INPUTS) + (["grad_output"] if kind == "forward_backward" else [])
    outputs = 1 + (len(module.DIFFERENTIABLE) if kind == "forward_backward" else 0)
    return inputs, list(module.PARAMETERS), outputs


def _wrapper(module, kind, precision, qualifier, loop):
    ctype = CTYPES[precision][0]
    function = module.FUNCTIONS[kind][precision]
    inputs, params, outputs = signature(module, kind)
    arguments = [f"const {ctype}* a{i}" for i in range(len(inputs))] + [f"{ctype} p{i}" for i in range(len(params))]
    arguments += [f"{ctype}* o{i}" for i in range(outputs)]
    call = ", ".join([f"a{i}[i]" for i in range(len(inputs))] + [f"p{i}" for i in range(len(params))]
                     + [f"&o{i}[i]" for i in range(outputs)])
    return f'extern "C" {qualifier} void run_{function}(long n, {", ".join(arguments)}) {{ {loop} {function}({call}); }}\n'


def _stage_wrapper(stage, precision):
    """A __global__ kernel calling one stage's __device__ function element by element."""
    ctype = CTYPES[precision][0]
    function = stage["functions"][precision]
    inputs = [f"const {ctype}* a{i}" for i in range(len(stage["arguments"]))]
    reads = [f"a{i}[i]" for i in range(len(stage["arguments"]))]
    if stage["op"] == "final":
        outputs = [f"{ctype}* o{k}" for k in range(stage["outputs"])]
        call = f"{function}({', '.join(reads + [f'&o{k}[i]' for k in range(stage['outputs'])])});"
    else:
        outputs = [f"{ctype}* o0"]
        call = f"o0[i] = {function}({', '.join(reads)});"
    return (f'extern "C" __global__ void run_{function}(long n, {", ".join(inputs + outputs)}) '
            f"{{ long i = (long)blockIdx.x * blockDim.x + threadIdx.x; if (i < n) {call} }}\n")


def nvcc_source():
    """All device code plus one __global__ kernel calling each device function."""
    parts = [COMMON_DEVICE_CODE,
             'extern "C" __global__ void lossc_identity(double* o) { o[0] = lossc_negative_infinity(); }\n']
    for module in modules():
        parts.append(module.DEVICE_CODE)
        if not hasattr(module, "FUNCTIONS"):
            for plan in module.STAGES.values():
                parts += [_stage_wrapper(stage, p) for stage in plan for p in CTYPES]
            continue
        for kind in ("forward", "forward_backward"):
            for precision in CTYPES:
                loop = "long i = (long)blockIdx.x * blockDim.x + threadIdx.x; if (i < n)"
                parts.append(_wrapper(module, kind, precision, "__global__", loop))
    return "\n".join(parts)


def host_library(folder):
    """Compile every module's device code with g++ into a shared library; return it (ctypes)."""
    source = [HOST_PRELUDE]
    for module in elementwise_modules():
        source.append(module.DEVICE_CODE)
        for kind in ("forward", "forward_backward"):
            for precision in CTYPES:
                source.append(_wrapper(module, kind, precision, "", "for (long i = 0; i < n; ++i)"))
    path = Path(folder) / "device_host.cpp"
    path.write_text("\n".join(source))
    library = Path(folder) / "device_host.so"
    subprocess.run(["g++", "-O2", "-std=c++17", "-shared", "-fPIC", str(path), "-o", str(library)], check=True,
                   capture_output=True, text=True)
    return ctypes.CDLL(str(library))


def run_host(library, module, kind, precision, arrays, params):
    """Call the host build of one device function on equal-length arrays; return its outputs."""
    _, c_scalar, dtype = CTYPES[precision]
    arrays = [np.ascontiguousarray(a, dtype=dtype) for a in arrays]
    n = arrays[0].size
    _, _, outputs = signature(module, kind)
    results = [np.empty(n, dtype) for _ in range(outputs)]
    pointer = ctypes.POINTER(c_scalar)
    function = getattr(library, f"run_{module.FUNCTIONS[kind][precision]}")
    function(ctypes.c_long(n), *[a.ctypes.data_as(pointer) for a in arrays], *[c_scalar(p) for p in params],
             *[r.ctypes.data_as(pointer) for r in results])
    return results
