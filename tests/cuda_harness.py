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
from lossc.kernels.cupy_runtime import COMMON_DEVICE_CODE

HOST_PRELUDE = """#include <cmath>
#include <cstddef>
#include <cstring>
#define __device__
#define __forceinline__ inline
static inline double __longlong_as_double(long long bits) { double d; std::memcpy(&d, &bits, sizeof d); return d; }
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


def nvcc_source(cupy_modules=None):
    """The device code of ``cupy_modules`` (default: every generated one, and CTC's) plus one
    __global__ kernel calling each device function."""
    from lossc.algorithms.ctc_cuda import SOURCE as CTC_SOURCE

    parts = [COMMON_DEVICE_CODE, CTC_SOURCE if cupy_modules is None else "",
             'extern "C" __global__ void lossc_identity(double* o) { o[0] = lossc_negative_infinity(); }\n']
    for module in modules() if cupy_modules is None else cupy_modules:
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


def nvcc_compile(source, folder, name="all_losses"):
    """Compile CUDA ``source`` with nvcc for sm_80 and sm_90 into ``folder``; (result, object path)."""
    path, obj = Path(folder) / f"{name}.cu", Path(folder) / f"{name}.o"
    path.write_text(source)
    command = ["nvcc", "-c", str(path), "-o", str(obj),
               "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
    return subprocess.run(command, capture_output=True, text=True), obj


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


RAW_KERNEL_PRELUDE = HOST_PRELUDE + """#include <barrier>
#include <thread>
#include <vector>
#define __global__
struct lossc_dim3 { int x, y, z; };
static thread_local lossc_dim3 threadIdx;
static lossc_dim3 blockIdx, blockDim, gridDim;
static std::barrier<>* lossc_barrier;
#define __syncthreads() lossc_barrier->arrive_and_wait()
// One block at a time, each of its threads a real thread; __syncthreads is a barrier.
template <typename... Args> static void lossc_launch(void (*kernel)(Args...), int grid, int block, Args... args)
{
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    for (int b = 0; b < grid; ++b) {
        blockIdx = {b, 0, 0};
        std::barrier<> barrier(block);
        lossc_barrier = &barrier;
        std::vector<std::thread> threads;
        for (int t = 0; t < block; ++t)
            threads.emplace_back([=] { threadIdx = {t, 0, 0}; kernel(args...); });
        for (auto& thread : threads) thread.join();
    }
}
"""


def ctc_host_library(folder):
    """The CTC RawKernel source, unchanged, compiled for the host (threads and barriers stand in
    for a block); returns ``launch(name, grid, block, arguments)`` with ctc_cuda.run_kernel's arguments."""
    from lossc.algorithms.ctc_cuda import KERNELS, SOURCE

    launchers = []
    for precision, name in KERNELS.items():
        real = CTYPES[precision][0]
        params = (f"const {real}* logp, const long long* ext, const long long* t_len, const long long* l_len, "
                  f"int steps, int batch, int alphabet, int width, int blank, {real}* alpha, {real}* beta, "
                  f"double* loss, {real}* grad, int with_grad")
        names = "logp, ext, t_len, l_len, steps, batch, alphabet, width, blank, alpha, beta, loss, grad, with_grad"
        launchers.append(f'extern "C" void launch_{name}(int grid, int block, {params}) '
                         f"{{ lossc_launch({name}, grid, block, {names}); }}")
    path = Path(folder) / "ctc_host.cpp"
    path.write_text("\n".join([RAW_KERNEL_PRELUDE, SOURCE] + launchers))
    library_path = Path(folder) / "ctc_host.so"
    subprocess.run(["g++", "-O2", "-std=c++20", "-pthread", "-shared", "-fPIC", str(path), "-o", str(library_path)],
                   check=True, capture_output=True, text=True)
    library = ctypes.CDLL(str(library_path))

    def launch(name, grid, block, arguments):
        converted = [a.ctypes.data_as(ctypes.c_void_p) if isinstance(a, np.ndarray) and a.ndim else ctypes.c_int(int(a))
                     for a in arguments]
        getattr(library, f"launch_{name}")(ctypes.c_int(grid[0]), ctypes.c_int(block[0]), *converted)

    return launch
