"""Native CPU kernels: a generated native module's C++ compiled for this machine.

A generated native module (``generated/native/``, :mod:`lossc.compiler.emit.native_emitter`)
holds the CUDA ``__device__`` functions of the loss (plain C++) and the loops around them.
Compiled for the host by the system's C++ compiler (``$CXX``, else ``g++``) — optimised for
this CPU, every loop an OpenMP SIMD loop, exp/log/log1p/expm1/pow from glibc's vector math library
(libmvec) where there is one — they compute the loss and every gradient in one vectorised
pass over the elements, where the NumPy kernels make one pass per operation. Strict IEEE
semantics stay on (no fast-math, no FMA contraction): the stable forms are evaluated exactly
as written; only the rounding of the vector math functions differs from NumPy's libm
(libmvec: within 4 ulp).

A module's library is built on first use and cached on disk (``$LOSSC_CACHE_DIR``, else
``~/.cache/lossc``), keyed by its source, the compiler and the CPU. One call runs a whole
kernel (ctypes releases the GIL): the library splits it over up to ``WORKERS`` threads, its
own helper threads spinning briefly after each job so that back-to-back calls (a training
loop) do not wait for sleeping threads to wake (``POOL_CODE``). Without a compiler, when the
build fails, for float16 or broadcast (non-flat) inputs, or with ``LOSSC_NATIVE=0``, the
generated NumPy kernels run instead; :func:`status` says which and why.
"""
import ctypes
import functools
import hashlib
import inspect
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .cupy_runtime import COMMON_DEVICE_CODE
from .numpy_runtime import WORKERS, is_flat

_BYTE = ctypes.c_char
_DTYPES = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}  # native dtypes
# libmvec has vector versions of these (glibc ≥ 2.35 for log1p/expm1); declaring them
# ``omp declare simd`` lets the compiler call them on whole vectors without -ffast-math.
_VECTOR_FUNCTIONS = {"exp": 1, "log": 1, "log1p": 1, "expm1": 1, "pow": 2}
# No -ffast-math: no FMA contraction, errno and FP traps unobserved (results identical), SIMD loops.
_CXX_FLAGS = ["-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd",
              "-shared", "-fPIC"]
# x86-64: this CPU's instruction set, and full-width AVX-512 vectors where it has them (measured faster)
_X86_FLAGS = ["-march=native", "-mprefer-vector-width=512"]

PRELUDE = r"""#include <cmath>
#include <cstring>
#include <vector>
#define __device__
#define __forceinline__ inline __attribute__((always_inline))
static inline double __longlong_as_double(long long bits) { double d; std::memcpy(&d, &bits, sizeof d); return d; }
"""

# lossc_parallel(job, context, n, parts): job(context, begin, end) over [0, n) cut into ``parts``
# equal parts, part 0 on the calling thread, the others on helper threads. A helper spins for
# SPIN_MICROSECONDS after each job, so back-to-back calls do not wait for a sleeping thread to
# wake, then sleeps on a condition variable. One job at a time per library: a concurrent caller
# runs its job alone. A forked child starts with a fresh pool (the parent's helpers are not there).
def _spin_microseconds():
    """``$LOSSC_SPIN_MICROSECONDS`` (an integer from 0 to 100000; default 200), read at import."""
    text = os.environ.get("LOSSC_SPIN_MICROSECONDS", "200")
    if not (text.isascii() and text.isdigit()) or int(text) > 100000:
        raise ValueError(f"LOSSC_SPIN_MICROSECONDS must be an integer from 0 to 100000, got {text!r}")
    return int(text)


SPIN_MICROSECONDS = _spin_microseconds()
POOL_CODE = r"""#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <system_error>
#include <thread>
#include <pthread.h>
namespace {
typedef void (*lossc_job)(const void*, long, long);
struct lossc_pool {
    std::mutex busy, mutex;
    std::condition_variable wake;
    std::atomic<unsigned long> generation{0};
    std::atomic<int> running{0};
    lossc_job job = nullptr;
    const void* context = nullptr;
    long n = 0;
    int parts = 1, helpers = 0;
};
lossc_pool* lossc_pool_state = new lossc_pool();  // never destroyed: detached helpers outlive exit
std::once_flag lossc_fork_handler;

inline void lossc_relax()
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    std::this_thread::yield();
#endif
}

void lossc_run_part(lossc_pool* pool, int k)
{
    if (k < pool->parts) pool->job(pool->context, pool->n * k / pool->parts, pool->n * (k + 1) / pool->parts);
}

void lossc_helper(lossc_pool* pool, int k, unsigned long seen)
{
    for (;;) {
        const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(SPIN_MICROSECONDS);
        while (pool->generation.load() == seen && std::chrono::steady_clock::now() < until) lossc_relax();
        if (pool->generation.load() == seen) {
            std::unique_lock<std::mutex> lock(pool->mutex);
            pool->wake.wait(lock, [&] { return pool->generation.load() != seen; });
        }
        seen = pool->generation.load();
        lossc_run_part(pool, k);
        pool->running.fetch_sub(1);
    }
}

void lossc_parallel(lossc_job job, const void* context, long n, int parts)
{
    std::call_once(lossc_fork_handler, [] {
        pthread_atfork(nullptr, nullptr, [] { lossc_pool_state = new lossc_pool(); });
    });
    lossc_pool* pool = lossc_pool_state;
    std::unique_lock<std::mutex> busy(pool->busy, std::try_to_lock);
    while (busy.owns_lock() && pool->helpers < parts - 1) {
        try {
            std::thread(lossc_helper, pool, pool->helpers + 1, pool->generation.load()).detach();
            ++pool->helpers;
        } catch (const std::system_error&) {
            break;  // no more threads: use the ones there are
        }
    }
    parts = busy.owns_lock() && pool->helpers + 1 < parts ? pool->helpers + 1 : parts;
    if (parts <= 1 || !busy.owns_lock()) {
        job(context, 0, n);
        return;
    }
    {
        std::lock_guard<std::mutex> lock(pool->mutex);
        pool->job = job;
        pool->context = context;
        pool->n = n;
        pool->parts = parts;
        pool->running.store(pool->helpers);
        pool->generation.fetch_add(1);
    }
    pool->wake.notify_all();
    lossc_run_part(pool, 0);
    while (pool->running.load() != 0) lossc_relax();
}
}
""".replace("SPIN_MICROSECONDS", str(SPIN_MICROSECONDS))

_lock = threading.Lock()
_libraries = {}  # source digest -> ctypes library, or None when building failed
_failures = []  # why a build failed, newest last
VERSION_TIMEOUT = 30  # seconds for `$CXX --version`
BUILD_PREFIX = "build-"  # the cache's temporary build folders
STALE_BUILD_SECONDS = 3600  # a build folder this old belongs to a build that died


def _after_fork_in_child():
    """A child forked while another thread held the build lock (compiling) would wait on it
    forever: the child gets a fresh lock (the library's thread pool renews itself likewise)."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def compile_timeout():
    """Seconds a compile may take before native kernels give up on it (``$LOSSC_COMPILE_TIMEOUT``, default 300)."""
    try:
        return max(1.0, float(os.environ.get("LOSSC_COMPILE_TIMEOUT", "300")))
    except ValueError:
        return 300.0


def enabled():
    """False when ``LOSSC_NATIVE=0`` is set (read on every call): then only NumPy kernels run."""
    return os.environ.get("LOSSC_NATIVE", "1") != "0"


def available():
    """True when native kernels can run here: enabled and a C++ compiler found."""
    return enabled() and _compiler() is not None


def status():
    """A line saying whether native kernels run here and, if not, why."""
    if not enabled():
        return "NumPy kernels (native kernels disabled by LOSSC_NATIVE=0)"
    compiler = _compiler()
    if compiler is None:
        return "NumPy kernels (no C++ compiler: set CXX or install g++ for native kernels)"
    if _failures:
        return f"NumPy kernels where a native build failed ({_failures[-1]})"
    math = "libmvec vector math" if _vector_math() else "scalar libm"
    return f"native kernels ({Path(compiler).name}, {math}), NumPy kernels for float16 and broadcast inputs"


def _compiler():
    """The C++ compiler: ``$CXX`` when set and not empty, else g++ (None if not found)."""
    return shutil.which(os.environ.get("CXX") or "g++")


def _vector_math():
    """True where glibc's libmvec can be linked (x86-64 Linux)."""
    return sys.platform == "linux" and platform.machine() == "x86_64"


def _link_libraries():
    return ["-pthread"] + (["-lmvec"] if _vector_math() else [])


def _vector_declarations():
    lines = ['extern "C" {']
    for name, arity in _VECTOR_FUNCTIONS.items():
        for ctype, suffix in (("double", ""), ("float", "f")):
            arguments = ", ".join([ctype] * arity)
            lines.append(f"#pragma omp declare simd notinbranch\n{ctype} {name}{suffix}({arguments}) noexcept;")
    return "\n".join(lines + ["}"]) + "\n"


def kernel_counts(module, kind):
    """(array inputs, scalar parameters, outputs) of one kind of a generated module's kernels."""
    backward = kind == "forward_backward"
    outputs = 1 + (len(module.DIFFERENTIABLE) if backward else 0)
    return len(module.INPUTS) + backward, len(module.PARAMETERS), outputs


def source(native_module):
    """The C++ source of one generated native module's library: the code every library starts
    with, the device code's shared helpers, then the module's ``SOURCE`` (its device functions
    and the loops around them, :mod:`lossc.compiler.emit.native_emitter`)."""
    return host_source("\n".join([COMMON_DEVICE_CODE, native_module.SOURCE]))


def library(native_module):
    """The module's compiled library (ctypes), built or loaded once; None if it cannot be built."""
    if _compiler() is None:
        return None
    return build_library(source(native_module), native_module.__name__)


def host_source(code):
    """``code`` (C++ that may call exp/log/log1p/expm1/pow in SIMD loops and ``lossc_parallel``)
    with what every native library starts with: the prelude, the thread pool and the vector
    math declarations."""
    return "\n".join([PRELUDE, POOL_CODE, _vector_declarations() if _vector_math() else "", code])


def build_library(code, name):
    """The library (ctypes) compiled from the C++ ``code``, built or loaded from the cache once;
    None (the reason, naming ``name``, in :func:`status`) if it cannot be built."""
    compiler = _compiler()
    if compiler is None:
        return None
    flags = _CXX_FLAGS + (_X86_FLAGS if platform.machine() == "x86_64" else [])
    try:
        machine = _machine(compiler)
    except (OSError, subprocess.SubprocessError) as error:
        _failures.append(f"{name}: {compiler} --version failed: {error}")
        return None
    key = "\0".join([code, compiler, *flags, *_link_libraries(), machine])
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    with _lock:
        if digest not in _libraries:
            _libraries[digest] = _load_or_build(compiler, flags, code, digest, name)
        return _libraries[digest]


@functools.lru_cache(maxsize=None)
def _machine(compiler):
    """What the compiled code depends on besides its source: the compiler and this CPU."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    run = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT,
                         stdin=subprocess.DEVNULL)
    if run.returncode != 0:
        raise subprocess.SubprocessError(f"exit status {run.returncode}")
    return f"{platform.machine()} {run.stdout.splitlines()[0] if run.stdout else ''} {flags}"


def _cache_dir():
    """The folder compiled libraries are kept in; an OSError if it is not safely ours (a library
    planted there by another user would be loaded and run)."""
    folder = Path(os.environ.get("LOSSC_CACHE_DIR") or Path.home() / ".cache" / "lossc") / "native"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir()) / f"lossc-native-{os.getuid() if hasattr(os, 'getuid') else 0}"
        folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.stat()
    if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o022):
        raise PermissionError(f"{folder} is not owned by this user or is writable by others; not loading code from it")
    return folder


def _load_or_build(compiler, flags, code, digest, module_name):
    """Load the cached library ``digest``, compiling it first if absent or damaged; None (and
    the reason in ``_failures``) when compiling or loading fails.

    A cached library is named ``<digest>-<sha256 of its bytes>.so`` and only loaded after its
    bytes are checked against that name: a truncated or overwritten file (which ``dlopen``
    could crash on, SIGBUS) is removed and rebuilt instead."""
    try:
        folder = _cache_dir()
        _remove_stale_builds(folder)
        path = _verified_library(folder, digest)
        if path is None:
            path = _build(compiler, flags, code, folder, digest, module_name)
        return None if path is None else ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as error:
        _failures.append(f"{module_name}: {error}")
        return None


def _content_hash(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:32]


def _verified_library(folder, digest):
    """The cached library for ``digest`` whose bytes match the hash in its name; damaged
    candidates are removed. None when there is none."""
    for candidate in sorted(folder.glob(f"{digest}-*.so")):
        if candidate.stem.split("-", 1)[1] == _content_hash(candidate):
            return candidate
        candidate.unlink(missing_ok=True)
    return None


def _build(compiler, flags, code, folder, digest, module_name):
    """Compile ``code`` into ``folder`` as ``<digest>-<content hash>.so``; its path, or None."""
    with tempfile.TemporaryDirectory(dir=folder, prefix=BUILD_PREFIX) as work:
        cpp, built = Path(work, "kernels.cpp"), Path(work, "kernels.so")
        cpp.write_text(code)
        result = subprocess.run([compiler, *flags, str(cpp), "-o", str(built), *_link_libraries()],
                                capture_output=True, text=True, timeout=compile_timeout(), stdin=subprocess.DEVNULL)
        if result.returncode != 0 or not built.is_file():
            last = result.stderr.strip().splitlines()[-1:] or ["the compiler failed"]
            _failures.append(f"{module_name}: {last[0]}")
            return None
        path = folder / f"{digest}-{_content_hash(built)}.so"
        os.replace(built, path)  # atomic: a library is complete under its final name
        return path


def _remove_stale_builds(folder):
    """Remove build folders left by a build that was killed (older than STALE_BUILD_SECONDS)."""
    now = time.time()
    for work in folder.glob(f"{BUILD_PREFIX}*"):
        try:
            if work.is_dir() and now - work.stat().st_mtime > STALE_BUILD_SECONDS:
                shutil.rmtree(work, ignore_errors=True)
        except OSError:
            continue


class NativeKernels:
    """A generated NumPy module whose forward / forward_backward run native kernels where
    ``_run`` can (it returns None elsewhere), else the module's NumPy kernels; every other
    attribute is the module's."""

    def __init__(self, numpy_module, load_native_module):
        self.numpy_module = numpy_module
        self._load_native_module = load_native_module
        self._functions = None
        self._binders = {kind: _Binder(getattr(numpy_module, kind)) for kind in ("forward", "forward_backward")}

    def __getattr__(self, name):
        return getattr(self.numpy_module, name)

    def forward(self, *args, **kwargs):
        """The loss, as the NumPy module's ``forward``."""
        outputs = self._run("forward", args, kwargs)
        return self.numpy_module.forward(*args, **kwargs) if outputs is None else outputs[0]

    def forward_backward(self, *args, **kwargs):
        """(loss, grads), as the NumPy module's ``forward_backward``."""
        outputs = self._run("forward_backward", args, kwargs)
        if outputs is None:
            return self.numpy_module.forward_backward(*args, **kwargs)
        return outputs[0], tuple(outputs[1:])


def load_kernels(load_module, entry):
    """The 'native' target's kernels of a manifest ``entry`` (:mod:`lossc.core.targets`): its numpy
    module running its native module's C++ compiled for the host, as row kernels
    (:mod:`lossc.kernels.native_rows`) for a loss over a class axis."""
    from .native_rows import NativeRowModule

    modules = entry["modules"]
    if modules.get("native") is None:
        raise NotImplementedError("the native target has no kernels for this loss")
    wrapper = NativeRowModule if entry["rows"] else NativeModule
    return wrapper(load_module(modules["numpy"], "numpy"), lambda: load_module(modules["native"], "native"))


class NativeModule(NativeKernels):
    """An element-wise loss's module on the native library where it can run (float32/float64,
    flat inputs)."""

    def _run(self, kind, args, kwargs):
        """The native kernel's outputs, or None where the NumPy kernels must run."""
        if not enabled():
            return None
        bound = self._binders[kind].bind(args, kwargs)
        if bound is None:
            return None  # the NumPy module raises the error
        arrays, params = bound
        if arrays[0].dtype not in _DTYPES or self._native_functions() is None:
            return None
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
        if not is_flat(arrays, shape):
            return None  # broadcasting beyond single values: the NumPy kernels
        function, counts = self._functions[kind, arrays[0].dtype]
        if (len(arrays), len(params)) != counts[:2]:  # a wrong argument list would crash the process
            raise RuntimeError(f"{self.numpy_module.__name__}.{kind}: {len(arrays)} arrays and {len(params)} "
                               f"parameters do not match its native kernel's {counts[0]} and {counts[1]}")
        return run_native(function, arrays, shape, params, counts[2])

    def sum_kernel(self, kind, dtype):
        """(ctypes function, parameter names in its order) of the kernel that sums the loss in
        the pass (``lossc_sum_*``, argument types declared), or None where it cannot run."""
        functions = self._native_functions()
        if functions is None or dtype not in _DTYPES:
            return None
        native_module = self._native
        n_inputs, n_params, n_outputs = kernel_counts(native_module, kind)
        function = getattr(self._library, native_module.KERNELS[kind][dtype.name][1])
        function.restype = ctypes.c_double
        function.argtypes = ([ctypes.c_long] + [ctypes.c_void_p, ctypes.c_long] * n_inputs
                             + [_DTYPES[dtype]] * n_params + [ctypes.c_void_p] * (n_outputs - 1) + [ctypes.c_int])
        return function, native_module.PARAMETERS

    def _native_functions(self):
        """{(kind, dtype): (library function, kernel_counts)}, built on first use; None if unavailable."""
        if self._functions is None:
            try:
                native_module = self._load_native_module()
            except (ImportError, OSError, NotImplementedError) as error:  # no native module was generated
                _failures.append(f"{self.numpy_module.__name__}: {error}")
                self._functions = False
                return None
            self._native = native_module
            compiled = self._library = library(native_module)
            self._functions = False if compiled is None else {
                (kind, dtype): (getattr(compiled, entry_points[dtype.name][0]), kernel_counts(native_module, kind))
                for kind, entry_points in native_module.KERNELS.items() for dtype in _DTYPES}
        return self._functions or None


class _Binder:
    """Matches a call's arguments to a generated forward / forward_backward's signature
    (inputs, grad_output, keyword-only parameters; defaults filled in), cheaper than
    inspect.Signature.bind on every call."""

    def __init__(self, function):
        parameters = list(inspect.signature(function).parameters.values())
        self.positional = [p.name for p in parameters if p.kind == p.POSITIONAL_OR_KEYWORD]
        self.keyword = [p.name for p in parameters if p.kind == p.KEYWORD_ONLY]
        self.defaults = {p.name: p.default for p in parameters if p.default is not p.empty}
        self.arrays = self.positional + [n for n in self.keyword if n == "grad_output"]
        self.params = [n for n in self.keyword if n != "grad_output"]

    def bind(self, args, kwargs):
        """([arrays in order], [parameters in order]), or None when the call does not match."""
        if len(args) > len(self.positional) or any(n in kwargs for n in self.positional[:len(args)]):
            return None
        values = dict(self.defaults)
        values.update(zip(self.positional, args))
        values.update(kwargs)
        if len(values) != len(self.positional) + len(self.keyword):
            return None  # a missing or an unknown argument
        try:
            return [np.asarray(values[n]) for n in self.arrays], [values[n] for n in self.params]
        except KeyError:
            return None


def address(array):
    """The address of a NumPy array's first element, for a kernel's pointer argument. A writable
    C-contiguous array's comes from its buffer (ctypes.c_char.from_buffer: 0.7 µs, where
    ``array.ctypes.data`` costs 2.2 µs, several times per call); any other array's the slow way."""
    try:
        return ctypes.addressof(_BYTE.from_buffer(array))
    except (TypeError, ValueError, BufferError):  # read-only, not C-contiguous or empty
        return array.ctypes.data


def run_native(function, arrays, shape, params, n_outputs):
    """Call a native kernel once (it runs on up to WORKERS threads) over ``arrays``, each of the
    broadcast ``shape`` and C-contiguous, or a single value; return its outputs."""
    dtype = arrays[0].dtype
    outputs = [np.empty(shape, dtype) for _ in range(n_outputs)]
    if not outputs[0].size:
        return outputs
    c_scalar = _DTYPES[dtype]
    held = [np.full(1, a.reshape(-1)[0], dtype) if a.shape != shape else a.astype(dtype, copy=False) for a in arrays]
    pointers = []
    for array in held:
        pointers += [ctypes.c_void_p(address(array)), ctypes.c_long(array.shape == shape)]
    function(ctypes.c_long(outputs[0].size), *pointers, *[c_scalar(p) for p in params],
             *[ctypes.c_void_p(address(o)) for o in outputs], ctypes.c_int(WORKERS))
    return outputs
