"""The registry of targets and the generated-module protocol, shared by compiler and runtime.

A *target* is one way to run a derived loss. Each entry says what the compiler emits for it
(``emitter``: a ``module:function`` of ``lossc.compiler`` returning a module's text, or None
for no module of its own), which runtime function loads a variant's kernels (``kernels``),
the folders of ``generated/`` whose modules those kernels run (``reads``: a variant has
kernels on the target where each was written) and what its generated module exports. ``lossc build``,
the manifest, ``--check``'s managed folders and the runtime's dispatch all loop over
:data:`TARGETS`; the strings are resolved on first use, so the runtime never imports the
compiler (nor the compiler the runtime's kernels).

The manifest (``generated/losses/<name>.json``, :data:`MANIFEST_VERSION`) names every
variant's module per target under ``modules`` (None where a target has none) and declares
its ``level``: ``element`` (one loss value per element of the prediction) or ``row`` (a loss
over a class axis that reduces it away); ``call_shape`` says how the loss is called:
``element`` (element-wise inputs), ``row`` (a class axis) or ``pair`` (pair inputs).

Every generated Python module exports ``NAME``, ``INPUTS``, ``DIFFERENTIABLE``,
``PARAMETERS``, and ``forward(inputs..., params...)`` → loss and
``forward_backward(inputs..., params..., grad_output=1.0)`` → (loss, gradients); a module of
a loss over a class axis also ``ROW_INPUTS`` and ``LOSS_LEVEL``. A CuPy module adds
``DEVICE_CODE`` (the CUDA device functions) with ``FUNCTIONS`` (element-wise: kernel kind →
precision → device function) or ``STAGES`` (its launch plan over a class axis). A native
module is C++ for the host, not kernels to call: ``NAME``, ``INPUTS``, ``DIFFERENTIABLE``,
``PARAMETERS`` (and ``ROW_INPUTS``, ``LOSS_LEVEL`` over a class axis), ``SOURCE`` (the device
functions and the loops around them) and ``KERNELS`` (kind → precision → its extern "C"
entry points: (run, sum) element-wise, the row kernel over a class axis).
"""
import hashlib
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

MANIFEST_VERSION = 2
LEVELS = ("element", "row")
CALL_SHAPES = ("element", "row", "pair")
COMMON_EXPORTS = ("NAME", "INPUTS", "DIFFERENTIABLE", "PARAMETERS", "forward", "forward_backward")
NATIVE_EXPORTS = ("NAME", "INPUTS", "DIFFERENTIABLE", "PARAMETERS", "KERNELS", "SOURCE")


@dataclass(frozen=True)
class Target:
    """One target of the registry (see the module docstring)."""

    name: str
    emitter: str | None
    kernels: str
    reads: tuple
    exports: tuple

    @property
    def folder(self):
        """The folder of ``generated/`` holding its modules (None: it has none of its own)."""
        return self.name if self.emitter else None

    def emit(self, derived, spec_file):
        """{relative path: text} of this target for one derived loss (its kernel module)."""
        if self.emitter is None:
            return {}
        text = _resolve(self.emitter)(derived, spec_file)
        return {} if text is None else {f"{self.folder}/{derived.ir.module_name}.py": text}

    def load(self, load_module, entry):
        """This target's kernels of one manifest ``entry`` (a variant or a pair term: its
        ``modules``, target → module name, and whether its kernels are over ``rows``);
        ``load_module(name, folder)`` imports a generated module."""
        return _resolve(self.kernels)(load_module, entry)


def _resolve(path):
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def load_own_module(target):
    """The ``kernels`` loader of a target whose kernels are its own generated module."""

    def load(load_module, entry):
        name = entry["modules"].get(target)
        if name is None:
            raise NotImplementedError(f"the {target} target has no kernels for this loss")
        return load_module(name, target)

    return load


load_numpy, load_cupy, load_jax = (load_own_module(t) for t in ("numpy", "cupy", "jax"))

TARGETS = {  # NumPy ufunc kernels: any dtype and broadcasting, the fallback of 'native'
    "numpy": Target("numpy", "lossc.compiler.emit.numpy_emitter:emit_numpy", "lossc.core.targets:load_numpy",
                    ("numpy",), COMMON_EXPORTS),
    # C++ host loops around the CUDA device code, compiled for the host CPU (threads, SIMD):
    # NumPy arrays of float32/float64, the 'numpy' modules for everything else
    "native": Target("native", "lossc.compiler.emit.native_emitter:emit_native", "lossc.kernels.native:load_kernels",
                     ("numpy", "native"), NATIVE_EXPORTS),
    # CuPy ElementwiseKernel/ReductionKernel launches of that device code, on CuPy arrays
    "cupy": Target("cupy", "lossc.compiler.emit.cupy_emitter:emit_cupy", "lossc.core.targets:load_cupy",
                   ("cupy",), COMMON_EXPORTS + ("DEVICE_CODE",)),
    # jax.numpy programs for lossc.jax's custom_vjp (not for pair inputs)
    "jax": Target("jax", "lossc.compiler.emit.jax_emitter:emit_jax", "lossc.core.targets:load_jax",
                  ("jax",), COMMON_EXPORTS + ("ROW_INPUTS", "LOSS_LEVEL", "CLASS_AXIS")),
}
# the target that runs each array library's arrays (the first in TARGETS serving it, but
# 'native' over 'numpy': it falls back to the NumPy modules itself)
DISPATCH = {"numpy": "native", "cupy": "cupy", "jax": "jax"}


def range_text(low, high):
    """A parameter's range in words: 'in [0, 1]', 'at least 0' (no upper limit), 'at most 1'."""
    if low is not None and high is not None:
        return f"in [{low}, {high}]"
    if low is not None:
        return f"at least {low} (no upper limit)"
    if high is not None:
        return f"at most {high} (no lower limit)"
    return "a finite number"


def folders():
    """The folders of ``generated/`` the targets write, in registry order."""
    return [t.folder for t in TARGETS.values() if t.folder]


def check_manifest(manifest, where):
    """``manifest`` itself when it is of this protocol's version; a ValueError naming ``where``
    (its file) otherwise — a folder built by another lossc must be rebuilt."""
    version = manifest.get("manifest_version")
    if version != MANIFEST_VERSION:
        raise ValueError(f"{where}: manifest version {version!r}, this lossc reads version {MANIFEST_VERSION}; "
                         "rebuild the folder with `lossc build`")
    return manifest


def builtin_folder():
    """The folder of the installed ``lossc.generated`` package (the built-in losses)."""
    import lossc.generated

    return Path(lossc.generated.__file__).resolve().parent


def folder_loader(folder):
    """``load(module, backend='numpy')`` for the generated modules of the built ``folder``
    (``backend`` a target's folder, :mod:`lossc.core.targets`): the installed ``lossc.generated``
    package by import, any other folder from its files."""
    folder = Path(folder).resolve()
    if folder == builtin_folder():
        return lambda module, backend="numpy": importlib.import_module(f"lossc.generated.{backend}.{module}")
    tag = hashlib.sha1(str(folder).encode()).hexdigest()[:10]

    def load_module(module, backend="numpy"):
        qualified = f"lossc_user_{tag}_{backend}_{module}"
        spec = importlib.util.spec_from_file_location(qualified, folder / backend / f"{module}.py")
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        return loaded

    return load_module
