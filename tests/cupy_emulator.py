"""A host stand-in for the slice of CuPy that lossc's kernels use, so the runtime's exact
kernel strings (parameters, map/reduce expressions, bodies, preambles) run without a GPU.

``ElementwiseKernel`` and ``ReductionKernel`` here keep CuPy's semantics for what lossc
relies on: inputs broadcast to one shape, type placeholders bound from the arguments'
dtypes, ``raw`` outputs indexed by the flat index ``i``, a reduction's map expression
evaluated per element, combined with ``REDUCE(a, b)`` from ``identity`` and stored by
``POST_MAP(a)``; the loop variables carry CuPy's own internal names (``i``, ``_j``, ``_s``,
``_a``) so a parameter that would collide with them fails to compile here as on a GPU.
Each kernel becomes a host C++ function; all are compiled by g++ in one go.

Use: run the code once in ``collect`` mode (kernels record their source and return
zeros of the right shape), call ``compile()``, then run it again for real values.
"""
import ctypes
import subprocess
import types
from pathlib import Path

import numpy as np

from cuda_harness import HOST_PRELUDE

CTYPES = {"float32": "float", "float64": "double", "int32": "int", "int64": "long long", "bool": "bool"}


def parse_params(text):
    """'U0 x, raw T y, float64 p' → [(raw, type, name)]."""
    params = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        words = part.split()
        raw = words[0] == "raw"
        params.append((raw, words[-2], words[-1]))
    return params


def _dtype_of(value):
    if isinstance(value, np.ndarray):
        return value.dtype
    return np.dtype("float64") if isinstance(value, float) else np.dtype("int64")


def _as_2d(array, shape):
    """A view of ``array`` broadcast to the 2-D ``shape``, and its element strides."""
    view = np.broadcast_to(array, shape) if array.ndim <= len(shape) else array
    view = view.reshape((1,) * (2 - view.ndim) + view.shape) if view.ndim < 2 else view
    return view, [s // view.itemsize for s in view.strides]


class Emulator:
    """Builds fake CuPy kernels, collects their sources, compiles and runs them."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.kernels = []
        self.library = None

    def cupy(self):
        """A module object standing in for ``cupy``."""
        fake = types.ModuleType("cupy")
        fake.ElementwiseKernel = lambda *args, **kwargs: _Elementwise(self, *args, **kwargs)
        fake.ReductionKernel = lambda *args, **kwargs: _Reduction(self, *args, **kwargs)
        fake.empty, fake.arange, fake.asarray = np.empty, np.arange, np.asarray
        fake.int32, fake.float32, fake.float64, fake.ndarray = np.int32, np.float32, np.float64, type(None)
        return fake

    def compile(self):
        """Compile every kernel collected so far into one shared library."""
        groups = {}
        for kernel in self.kernels:
            groups.setdefault(kernel.preamble, []).append(kernel)
        source = [HOST_PRELUDE] + [part for preamble, members in groups.items()
                              for part in [preamble] + [k.source for k in members]]
        path = self.folder / "emulated_kernels.cpp"
        path.write_text("\n".join(source))
        library = self.folder / "emulated_kernels.so"
        result = subprocess.run(["g++", "-O1", "-std=c++17", "-shared", "-fPIC", str(path), "-o", str(library)],
                                capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(result.stderr[-4000:])
        self.library = ctypes.CDLL(str(library))


class _Kernel:
    """What the two kernel kinds share: parameter parsing, type binding and the call."""

    def __init__(self, emulator, in_params, out_params, name, preamble):
        self.emulator, self.name, self.preamble = emulator, name, preamble
        self.in_params, self.out_params = parse_params(in_params), parse_params(out_params)
        self.sources = {}

    def _bind(self, args):
        """{placeholder: C type} from the arguments' dtypes."""
        types_ = {}
        for (_, kind, _), value in zip(self.in_params + self.out_params, args):
            if kind not in CTYPES and value is not None:
                types_.setdefault(kind, CTYPES[_dtype_of(value).name])
        return types_

    def _declarations(self, args, types_, row, column):
        lines = []
        for k, ((raw, kind, name), value) in enumerate(zip(self.in_params + self.out_params, args)):
            ctype = types_.get(kind, CTYPES.get(kind))
            output = k >= len(self.in_params)
            if not isinstance(value, np.ndarray):
                lines.append(f"const {ctype} {name} = *(const {ctype}*)_args[{k}];")
            elif raw:
                lines.append(f"{ctype}* {name} = ({ctype}*)_args[{k}];")
            else:
                ref = f"(({ctype}*)_args[{k}])[{row} * _strides[{2 * k}] + {column} * _strides[{2 * k + 1}]]"
                lines.append(f"{ctype}& {name} = {ref};" if output else f"const {ctype} {name} = {ref};")
        return " ".join(lines)

    def _launch(self, key, make_source, args, shape):
        if key not in self.sources:
            symbol = f"lossc_emulated_{len(self.emulator.kernels)}"
            self.sources[key] = symbol
            self.source = make_source(symbol)
            self.emulator.kernels.append(_Source(self.preamble, self.source))
        if self.emulator.library is None:
            return
        pointers, strides, keep = [], [], []
        for (raw, kind, _), value in zip(self.in_params + self.out_params, args):
            if isinstance(value, np.ndarray):
                view, element_strides = (value, [0, 0]) if raw else _as_2d(value, shape)
                pointers.append(view.ctypes.data)
                strides += element_strides
                keep.append(view)
            else:
                scalar = np.array([value], dtype=kind if kind in CTYPES else _dtype_of(value))
                keep.append(scalar)
                pointers.append(scalar.ctypes.data)
                strides += [0, 0]
        function = getattr(self.emulator.library, self.sources[key])
        function(ctypes.c_longlong(shape[0]), ctypes.c_longlong(shape[1]), (ctypes.c_void_p * len(pointers))(*pointers),
                 (ctypes.c_longlong * len(strides))(*strides))


class _Source:
    def __init__(self, preamble, source):
        self.preamble, self.source = preamble, source


def _shape_2d(arrays):
    shape = np.broadcast_shapes(*(a.shape for a in arrays))
    return (1,) * (2 - len(shape)) + shape


def _signature(symbol):
    return f'extern "C" void {symbol}(long long _rows, long long _columns, void** _args, long long* _strides)'


class _Elementwise(_Kernel):
    def __init__(self, emulator, in_params, out_params, operation, name="kernel", preamble="", **kwargs):
        super().__init__(emulator, in_params, out_params, name, preamble)
        self.operation = operation

    def __call__(self, *args):
        allocate = len(args) == len(self.in_params)
        assert allocate or len(args) == len(self.in_params) + len(self.out_params), "pass no or every output"
        if allocate:  # CuPy allocates non-raw outputs of the broadcast shape, typed by their placeholder
            shape = np.broadcast_shapes(*(a.shape for a in args if isinstance(a, np.ndarray)))
            bound = {kind: _dtype_of(a) for (_, kind, _), a in zip(self.in_params, args)}
            args = args + tuple(np.empty(shape, bound.get(kind, kind)) for _, kind, _ in self.out_params)
        arrays = [a for a, (raw, _, _) in zip(args, self.in_params + self.out_params) if isinstance(a, np.ndarray) and not raw]
        shape = _shape_2d(arrays)
        types_ = self._bind(args)
        key = tuple(sorted(types_.items())) + tuple(isinstance(a, np.ndarray) for a in args)

        def source(symbol):
            typedefs = " ".join(f"typedef {c} {t};" for t, c in types_.items())
            return (f"{_signature(symbol)} {{ {typedefs} for (ptrdiff_t i = 0; i < _rows * _columns; ++i) {{ "
                    f"const ptrdiff_t _row = i / _columns, _column = i % _columns; "
                    f"{self._declarations(args, types_, '_row', '_column')} {self.operation}; }} }}")

        self._launch(key, source, args, shape)
        outputs = args[len(self.in_params):]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


class _Reduction(_Kernel):
    def __init__(self, emulator, in_params, out_params, map_expr, reduce_expr, post_map_expr, identity,
                 name="reduce_kernel", reduce_type=None, preamble="", **kwargs):
        super().__init__(emulator, in_params, out_params, name, preamble)
        self.map_expr, self.reduce_expr, self.post_map_expr = map_expr, reduce_expr, post_map_expr
        self.identity, self.reduce_type = identity, reduce_type

    def __call__(self, *args, axis=None, keepdims=False):
        assert axis == 1 and keepdims and len(args) == len(self.in_params), "lossc reduces (rows, classes) along 1"
        (_, out_type, _), = self.out_params
        shape = _shape_2d([a for a in args if isinstance(a, np.ndarray)])
        out = np.zeros((shape[0], 1), dtype=out_type)
        types_ = self._bind(list(args) + [out])
        key = tuple(sorted(types_.items())) + tuple(isinstance(a, np.ndarray) for a in args)

        def source(symbol):
            typedefs = " ".join(f"typedef {c} {t};" for t, c in types_.items())
            inputs = self._declarations(args, types_, "_i", "_J")
            (_, _, out_name), = self.out_params
            k = len(self.in_params)
            return (f"#define REDUCE(a, b) ({self.reduce_expr})\n#define POST_MAP(a) ({self.post_map_expr})\n"
                    f"{_signature(symbol)} {{ {typedefs} typedef {self.reduce_type} _type_reduce; "
                    f"for (ptrdiff_t _i = 0; _i < _rows; ++_i) {{ _type_reduce _s = _type_reduce({self.identity}); "
                    f"ptrdiff_t _J = 0; for (ptrdiff_t _j = 0; _j < _columns; ++_j, ++_J) {{ {inputs} "
                    f"_type_reduce _a = static_cast<_type_reduce>({self.map_expr}); _s = REDUCE(_s, _a); }} "
                    f"{CTYPES[out_type]}& {out_name} = (({CTYPES[out_type]}*)_args[{k}])[_i]; POST_MAP(_s); }} }}\n"
                    "#undef REDUCE\n#undef POST_MAP")

        self._launch(key, source, list(args) + [out], shape)
        return out
