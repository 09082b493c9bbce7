"""Native CPU kernels for the losses over a class axis: a generated module's launch plan
(``STAGES``: one reduction per row statistic, then the fused loss-and-gradient stage) run
row by row on the host, from the same CUDA ``__device__`` functions the GPU runs.

Rows are split over the library's threads; each row is read once per group of statistics
that do not depend on each other (e.g. the row max, then every sum after it) while it is in
cache (a row block per thread at most, never a rows × classes temporary), its statistics
kept in registers, then the final stage writes the loss and every gradient of the row.
Every statistic is reduced over the classes in a fixed order (GROUP lanes, then pairwise),
and every element goes through the same vector code (a last partial group padded), so a
row's bits depend on nothing but the row. Arrays reach the kernel as (pointer, row stride,
class stride) with class stride 0 or 1: a row input or a class-broadcast array is filled
into a per-thread row buffer. float16, or anything the kernel cannot take, runs the
module's NumPy kernels.
"""
import ctypes

import numpy as np

from . import native
from .native import GROUP, _DTYPES, _C_TYPES

ROW_MIN_CHUNK = 1 << 14  # elements per thread at least: a row kernel does several passes per element
REDUCE = {"sum": "{a} + {b}", "max": "(({a}) != ({a}) || ({a}) > ({b})) ? ({a}) : ({b})"}
IDENTITY = {"sum": "0", "max": "-INFINITY"}


def _arrays(device_module, kind):
    """Names of the array arguments of ``kind``'s kernel, in its argument order."""
    return list(device_module.INPUTS) + (["grad_output"] if kind == "forward_backward" else [])


def _value(name, arrays, parameters, padded, per_row=()):
    """The C expression a stage argument reads for lane j (``padded``: from the tail buffers;
    an array in ``per_row`` holds one value per row, read as such)."""
    if name in per_row:
        return f"w{arrays.index(name)}"
    if name in arrays:
        return f"t{arrays.index(name)}[j]" if padded else f"q{arrays.index(name)}[j0 + j]"
    if name == "_j":
        return "tj[j]" if padded else "jv[j0 + j]"
    if name == "classes":
        return "s_classes"
    if name in parameters:
        return f"p{parameters.index(name)}"
    if name.startswith("_r"):
        return name
    raise ValueError(f"unknown stage argument {name!r}")


def _row_value(name, arrays, parameters):
    """The C expression of an argument of a row-level final stage."""
    return f"q{arrays.index(name)}[0]" if name in arrays else _value(name, arrays, parameters, False)


def _tail_copies(stage, arrays, per_row):
    """Fill the padded tail buffers of the arrays (and class index) a stage reads (not of
    the ``per_row`` arrays, read once per row)."""
    lines = []
    for name in stage["arguments"]:
        if name in per_row:
            continue
        source = f"q{arrays.index(name)}" if name in arrays else "jv" if name == "_j" else None
        target = f"t{arrays.index(name)}" if name in arrays else "tj"
        if source:
            lines.append(f"            for (long j = 0; j < {GROUP}; ++j) {target}[j] = {source}[j0 + (j < m ? j : m - 1)];")
    return lines


def _groups(reductions):
    """The reduction stages as consecutive groups that can share one pass over a row: a stage
    joins the current group unless it reads a statistic of that group."""
    groups = []
    for index, stage in enumerate(reductions):
        if groups and not any(f"_r{k}" in stage["arguments"] for k, _ in groups[-1]):
            groups[-1].append((index, stage))
        else:
            groups.append([(index, stage)])
    return groups


def _reductions(group, precision, arrays, parameters, ctype, per_row):
    """C lines computing the row statistics of one group (_r<index> each) in one pass over the row."""
    lines = [f"        {ctype} {', '.join(f'_r{index}' for index, _ in group)};", "        {"]
    lines += [f"        alignas(64) {ctype} acc{index}[{GROUP}], v{index}[{GROUP}];" for index, _ in group]
    lines += [f"        for (int j = 0; j < {GROUP}; ++j) acc{index}[j] = {IDENTITY[stage['op']]};"
              for index, stage in group]
    full, tail, combine, store = [], [], [], []
    for index, stage in group:
        function, op = stage["functions"][precision], REDUCE[stage["op"]]
        arguments = stage["arguments"]
        full.append(f"const {ctype} x{index} = {function}({', '.join(_value(a, arrays, parameters, False, per_row) for a in arguments)}); "
                    f"acc{index}[j] = {op.format(a=f'acc{index}[j]', b=f'x{index}')};")
        tail.append(f"v{index}[j] = {function}({', '.join(_value(a, arrays, parameters, True, per_row) for a in arguments)});")
        combine.append(f"acc{index}[j] = {op.format(a=f'acc{index}[j]', b=f'v{index}[j]')};")
        store.append(f"acc{index}[j] = {op.format(a=f'acc{index}[j]', b=f'acc{index}[j + width]')};")
    read = {"arguments": sorted({a for _, stage in group for a in stage["arguments"]})}
    lines += [f"        for (long j0 = 0; j0 < C; j0 += {GROUP}) {{",
              f"            const long m = C - j0 < {GROUP} ? C - j0 : {GROUP};",
              f"            if (m == {GROUP}) {{", "#pragma omp simd",
              f"                for (long j = 0; j < {GROUP}; ++j) {{ {' '.join(full)} }}",
              "                continue;", "            }",
              *_tail_copies(read, arrays, per_row), "#pragma omp simd",
              f"            for (long j = 0; j < {GROUP}; ++j) {{ {' '.join(tail)} }}",
              f"            for (long j = 0; j < m; ++j) {{ {' '.join(combine)} }}", "        }",
              f"        for (int width = {GROUP} / 2; width > 0; width /= 2)",
              f"            for (int j = 0; j < width; ++j) {{ {' '.join(store)} }}"]
    lines += [f"        _r{index} = acc{index}[0];" for index, _ in group]
    return lines + ["        }"]


def _final(stage, precision, arrays, parameters, loss_level, ctype, per_row):
    """C lines writing one row's loss and gradients (with a "split", what reads no element
    value first, once for the row)."""
    function = stage["functions"][precision]
    outputs = stage["outputs"]
    if stage["level"] == "row":
        call = ", ".join([_row_value(a, arrays, parameters) for a in stage["arguments"]] + ["&c.o0[row]"])
        return [f"        {function}({call});"]
    lines, extra = [], []
    split = stage.get("split")
    if split:
        invariants = [f"i{k}" for k in range(len(split["invariants"]))]
        row_call = [_row_value(a, arrays, parameters) for a in split["row_arguments"]] + [f"&{i}" for i in invariants]
        lines += [f"        {ctype} {', '.join(invariants)};", f"        {split['row'][precision]}({', '.join(row_call)});"]
        function, extra = split["element"][precision], invariants
    row_loss = loss_level == "row"
    full = [_value(a, arrays, parameters, False, per_row) for a in stage["arguments"]] + extra
    tail = [_value(a, arrays, parameters, True, per_row) for a in stage["arguments"]] + extra
    direct = ["&u0[j]" if row_loss else "&r0[j0 + j]"] + [f"&r{k}[j0 + j]" for k in range(1, outputs)]
    padded = [f"&u{k}[j]" for k in range(outputs)]
    lines += [f"        {ctype}* __restrict r{k} = c.o{k} + row * C;" for k in range(0 if not row_loss else 1, outputs)]
    lines += [f"        for (long j0 = 0; j0 < C; j0 += {GROUP}) {{",
              f"            const long m = C - j0 < {GROUP} ? C - j0 : {GROUP};",
              f"            if (m == {GROUP}) {{", "#pragma omp simd",
              f"                for (long j = 0; j < {GROUP}; ++j) {function}({', '.join(full + direct)});"]
    if row_loss:
        lines.append("                if (j0 == 0) c.o0[row] = u0[0];")
    lines += ["                continue;", "            }", *_tail_copies(stage, arrays, per_row), "#pragma omp simd",
              f"            for (long j = 0; j < {GROUP}; ++j) {function}({', '.join(tail + padded)});"]
    if row_loss:
        lines.append("            if (j0 == 0) c.o0[row] = u0[0];")
    lines += [f"            for (long j = 0; j < m; ++j) r{k}[j0 + j] = u{k}[j];"
              for k in range(0 if not row_loss else 1, outputs)]
    return lines + ["        }"]


def row_wrapper(device_module, kind, precision):
    """extern "C" lossc_rows_<module>_<kind>_<precision>(rows, classes, a0, rs0, cs0, …, p0, …,
    o0, …, threads): ``kind``'s launch plan over (rows, classes), arrays read as
    a[row·rs + j·cs] (cs 0 or 1), the loss into o0 ((rows,) or (rows, classes)), gradients
    into o1, … ((rows, classes))."""
    ctype = _C_TYPES[precision]
    name = f"{_symbol(device_module)}_{kind}_{precision}"
    arrays, parameters = _arrays(device_module, kind), list(device_module.PARAMETERS)
    *reductions, final = device_module.STAGES[kind]
    outputs = final["outputs"]
    arguments = ([f"const {ctype}* a{k}, long rs{k}, long cs{k}" for k in range(len(arrays))]
                 + [f"{ctype} p{k}" for k in range(len(parameters))] + [f"{ctype}* o{k}" for k in range(outputs)])
    fields = [f"{a.replace(', ', '; ')};" for a in arguments] + ["long classes;"]
    values = [", ".join(part.split()[-1] for part in a.split(", ")) for a in arguments] + ["classes"]
    lines = [f"struct lossc_rows_context_{name} {{ {' '.join(fields)} }};",
             f"static void lossc_rows_part_{name}(const void* context, long first, long last)", "{",
             f"    const lossc_rows_context_{name}& c = *static_cast<const lossc_rows_context_{name}*>(context);",
             "    const long C = c.classes;", f"    const {ctype} s_classes = {ctype}(C);"]
    lines += [f"    const {ctype} p{k} = c.p{k};" for k in range(len(parameters))]
    lines += [f"    std::vector<{ctype}> jv(C), b{k};" if k == 0 else f"    std::vector<{ctype}> b{k};"
              for k in range(len(arrays))]
    lines += ["    for (long j = 0; j < C; ++j) jv[j] = " + ctype + "(j);",
              f"    alignas(64) {ctype} tj[{GROUP}];"]
    lines += [f"    alignas(64) {ctype} t{k}[{GROUP}];" for k in range(len(arrays))]
    lines += [f"    alignas(64) {ctype} u{k}[{GROUP}];" for k in range(outputs)]
    # one value per row (class stride 0 by the caller's layout): read as a scalar, never spread over a row buffer
    per_row = set(device_module.ROW_INPUTS) | (
        {"grad_output"} if kind == "forward_backward" and device_module.LOSS_LEVEL == "row" else set())
    spread = [k for k, name in enumerate(arrays) if name not in per_row]  # a single value spreads over C classes
    lines += [f"    if (!c.cs{k} && !c.rs{k}) b{k}.assign(C, c.a{k}[0]);" for k in spread]
    lines.append("    for (long row = first; row < last; ++row) {")
    for k in range(len(arrays)):
        lines.append(f"        const {ctype}* __restrict q{k} = c.a{k} + row * c.rs{k};")
        if k not in spread:
            lines.append(f"        const {ctype} w{k} = q{k}[0];")
        else:
            lines.append(f"        if (!c.cs{k}) {{ if (c.rs{k}) b{k}.assign(C, q{k}[0]); q{k} = b{k}.data(); }}")
    for group in _groups(reductions):
        lines += _reductions(group, precision, arrays, parameters, ctype, per_row)
    lines += _final(final, precision, arrays, parameters, device_module.LOSS_LEVEL, ctype, per_row)
    lines += ["    }", "}",
              f'extern "C" void lossc_rows_{name}(long rows, long classes, {", ".join(arguments)}, int threads)', "{",
              f"    const lossc_rows_context_{name} c{{{', '.join(values)}}};",
              f"    const long parts = rows * classes / {ROW_MIN_CHUNK} < threads ? rows * classes / {ROW_MIN_CHUNK} : threads;",
              f"    const long usable = parts < rows ? parts : rows;",
              f"    lossc_parallel(lossc_rows_part_{name}, &c, rows, usable < 1 ? 1 : int(usable));", "}"]
    return "\n".join(lines) + "\n"


def _symbol(device_module):
    """A C identifier for the module (its name's last part; generated names are identifiers)."""
    return "lossc_" + device_module.__name__.rsplit(".", 1)[-1]


def wrappers(device_module):
    """Every row kernel of a module (forward and forward_backward, both precisions)."""
    return [row_wrapper(device_module, kind, precision) for kind in device_module.STAGES for precision in _C_TYPES]


class NativeRowModule(native.NativeKernels):
    """A module with reductions on the native row kernels where they can run (float32/float64
    (rows, classes) predictions)."""

    def _run(self, kind, args, kwargs):
        """The native kernel's outputs, or None where the NumPy kernels must run."""
        if not native.enabled():
            return None
        bound = self._binders[kind].bind(args, kwargs)
        if bound is None:
            return None
        arrays, params = bound
        pred = arrays[0]
        if pred.dtype not in _DTYPES or pred.ndim != 2 or self._native_functions() is None:
            return None
        rows, classes = pred.shape
        names = _arrays(self._device, kind)
        laid_out = [_strided(a, name in self.ROW_INPUTS or (name == "grad_output" and self.LOSS_LEVEL == "row"),
                             rows, classes, pred.dtype) for name, a in zip(names, arrays)]
        if any(a is None for a in laid_out):
            return None
        function, n_outputs = self._functions[kind, pred.dtype]
        loss_shape = (rows,) if self.LOSS_LEVEL == "row" else (rows, classes)
        outputs = [np.empty(loss_shape, pred.dtype)] + [np.empty((rows, classes), pred.dtype)
                                                        for _ in range(n_outputs - 1)]
        if not pred.size:
            return outputs
        pointers = []
        for array, row_stride, class_stride in laid_out:
            pointers += [native.address(array), row_stride, class_stride]
        function(rows, classes, *pointers, *params, *[native.address(o) for o in outputs], native.WORKERS)
        return outputs

    def row_kernel(self, kind, dtype):
        """(ctypes function, its array arguments' names in order, parameter names in order) of
        ``kind``'s row kernel for ``dtype`` (see :func:`row_wrapper`), or None where it cannot run."""
        functions = self._native_functions()
        if functions is None or dtype not in _DTYPES:
            return None
        return functions[kind, dtype][0], _arrays(self._device, kind), self._device.PARAMETERS

    def _native_functions(self):
        """{(kind, dtype): (ctypes function, outputs)}, built on first use; None if unavailable."""
        if self._functions is None:
            try:
                self._device = self._load_device_module()
            except (ImportError, OSError, NotImplementedError) as error:
                native._failures.append(f"{self.numpy_module.__name__}: {error}")
                self._functions = False
                return None
            compiled = native.library(self._device)
            self._functions = False if compiled is None else {
                (kind, dtype): (_declared(compiled, self._device, kind, dtype), self._device.STAGES[kind][-1]["outputs"])
                for kind in self._device.STAGES for dtype in _DTYPES}
        return self._functions or None


def _declared(compiled, device_module, kind, dtype):
    """The row kernel's ctypes function with its argument types declared."""
    function = getattr(compiled, f"lossc_rows_{_symbol(device_module)}_{kind}_{dtype.name}")
    scalar = _DTYPES[dtype]
    outputs = device_module.STAGES[kind][-1]["outputs"]
    function.restype = None
    function.argtypes = ([ctypes.c_long, ctypes.c_long] + [ctypes.c_void_p, ctypes.c_long, ctypes.c_long]
                         * len(_arrays(device_module, kind)) + [scalar] * len(device_module.PARAMETERS)
                         + [ctypes.c_void_p] * outputs + [ctypes.c_int])
    return function


def _strided(array, per_row, rows, classes, dtype):
    """(array in ``dtype``, row stride, class stride) in elements, the class stride 0 or 1;
    None for a shape that does not fit (the NumPy kernels then say why)."""
    array = np.asarray(array)
    if array.ndim:  # a broadcast axis (stride 0) is one value along it: cast that, not the whole view
        array = array[tuple(slice(0, 1) if stride == 0 else slice(None) for stride in array.strides)]
    if array.dtype != dtype:
        array = array.astype(dtype)
    if per_row and array.ndim:
        if array.size == 1:
            return array.reshape(1), 0, 0
        if array.shape not in ((rows,), (rows, 1)):
            return None
        return np.ascontiguousarray(array.reshape(rows)), 1, 0
    if array.ndim == 0:
        return array.reshape(1), 0, 0
    if array.ndim > 2:
        return None
    array = array.reshape((1,) * (2 - array.ndim) + array.shape)
    if array.shape[0] not in (1, rows) or array.shape[1] not in (1, classes):
        return None
    itemsize = array.itemsize
    row_stride = array.strides[0] // itemsize if array.shape[0] != 1 else 0
    class_stride = array.strides[1] // itemsize if array.shape[1] != 1 else 0
    if class_stride not in (0, 1) or array.strides[0] % itemsize:
        array = np.ascontiguousarray(array)
        row_stride = array.shape[1] if array.shape[0] != 1 else 0
        class_stride = 1 if array.shape[1] != 1 else 0
    return array, row_stride, class_stride
