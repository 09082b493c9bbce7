"""Native emitter: a DerivedLoss → a module in ``generated/native/`` holding the C++ of its
host kernels.

The native target runs the CuPy target's CUDA ``__device__`` functions (plain C++) on the CPU:
``SOURCE`` is those functions followed by the loops that call them, every loop an OpenMP SIMD
loop over groups of GROUP elements, split over threads by ``lossc_parallel`` (the runtime,
:mod:`lossc.kernels.native`, adds its prelude, thread pool and vector-math declarations and
compiles the whole). ``KERNELS`` names the extern "C" entry points per kind and precision.

Element-wise losses: ``lossc_run_<f>`` writes the loss and gradients over n elements,
``lossc_sum_<f>`` sums the loss in the same pass instead of storing it (fixed-order partial
sums). Losses over a class axis: ``lossc_rows_<module>_<kind>_<precision>`` follows the launch
plan row by row (see :func:`row_wrapper`).
"""
import pprint
import re
from types import SimpleNamespace

from . import module_docstring, template
from .cupy_emitter import PRECISIONS, device_code

C_TYPES = {"float32": "float", "float64": "double"}
GROUP = 64  # elements per inner SIMD loop (a constant trip count: no scalar remainder, see _wrapper)
MIN_CHUNK = 1 << 15  # elements per thread at least (PyTorch's GRAIN_SIZE): fewer cost about what handing them over does
SUM_CHUNK = 4096  # elements per partial sum of a reducing kernel (a multiple of GROUP)
ROW_MIN_CHUNK = 1 << 14  # elements per thread at least: a row kernel does several passes per element
REDUCE = {"sum": "{a} + {b}", "max": "(({a}) != ({a}) || ({a}) > ({b})) ? ({a}) : ({b})"}
IDENTITY = {"sum": "0", "max": "-INFINITY"}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
NOTES = ("SOURCE holds the CUDA __device__ functions of the CuPy module and the host loops that call",
         "them; KERNELS names the functions its library exports. lossc.kernels.native compiles it.")


def emit_native(derived, spec_file):
    """Render the native module of one loss variant as Python source text."""
    ir = derived.ir
    code = device_code(derived)
    kernels, loops = _row_loops(code, f"lossc_{ir.module_name}") if ir.has_reductions else _element_loops(code)
    return template("native_module.py.j2").render(
        module_doc=module_docstring(ir.spec, ir.variant, spec_file, "native", NOTES),
        functions=code.functions, host_loops=loops, kernels=pprint.pformat(kernels, width=110, sort_dicts=False),
        row_inputs=code.row_inputs, loss_level=code.loss_level, **code.common)


def _element_loops(code):
    """(KERNELS, loops) of an element-wise loss: per kind and precision a storing and a summing loop."""
    n_inputs, n_params = len(code.common["inputs"]), len(code.common["params"])
    kernels, loops = {}, []
    for kind, functions in (("forward", code.forward), ("forward_backward", code.backward)):
        backward = kind == "forward_backward"
        counts = (n_inputs + backward, n_params, 1 + (len(code.common["differentiable"]) if backward else 0))
        kernels[kind] = {}
        for function, precision in zip(functions, PRECISIONS):
            kernels[kind][precision] = (f"lossc_run_{function.name}", f"lossc_sum_{function.name}")
            loops += [element_wrapper(function.name, C_TYPES[precision], *counts),
                      sum_wrapper(function.name, C_TYPES[precision], *counts)]
    return kernels, loops


def _row_loops(code, symbol):
    """(KERNELS, loops) of a loss over a class axis: per kind and precision one row kernel."""
    plans = {kind: [_stage(stage) for stage in plan] for kind, plan in code.plans.items()}
    layout = SimpleNamespace(INPUTS=code.common["inputs"], PARAMETERS=code.common["params"], STAGES=plans,
                             ROW_INPUTS=code.row_inputs, LOSS_LEVEL=code.loss_level)
    kernels = {kind: {p: f"lossc_rows_{symbol}_{kind}_{p}" for p in PRECISIONS} for kind in plans}
    return kernels, [row_wrapper(layout, symbol, kind, p) for kind in plans for p in PRECISIONS]


def _stage(plan):
    """A launch-plan stage (cupy_emitter.StagePlan) as the dictionary the loop writers read."""
    stage = {"op": plan.op, "level": plan.level, "arguments": plan.arguments, "outputs": plan.outputs,
             "functions": plan.functions}
    if plan.split:
        stage["split"] = {"row_arguments": plan.split["row_arguments"], "invariants": plan.split["invariants"],
                          **plan.split["functions"]}
    return stage


def _checked(name):
    """``name`` when it is a C identifier (every name the compiler makes is); a ValueError otherwise."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"bad device function name {name!r}")
    return name


def _part_prologue(context, part, ctype, n_inputs, n_params, n_outputs, stored_from=0, extra_fields=()):
    """(extern argument list, context initialiser values, C lines) shared by the element
    kernels: the context struct of the inputs a_k (s_k: 1 = an array, 0 = one value),
    parameters p_k, the stored outputs o_k (k ≥ ``stored_from``) and ``extra_fields``; the
    opening of the per-thread ``part(context, first, last)``, its parameters, a GROUP buffer
    per single-value input (c_k) and the padded tail buffers (t_k, u_k)."""
    arguments = ([f"const {ctype}* a{k}, long s{k}" for k in range(n_inputs)]
                 + [f"{ctype} p{k}" for k in range(n_params)]
                 + [f"{ctype}* o{k}" for k in range(stored_from, n_outputs)])
    fields = [f"{a.replace(', ', '; ')};" for a in arguments] + [f"{f};" for f in extra_fields]
    values = [", ".join(piece.split()[-1] for piece in a.split(", ")) for a in arguments]
    lines = [f"struct {context} {{ {' '.join(fields)} }};",
             f"static void {part}(const void* context, long first, long last)", "{",
             f"    const {context}& c = *static_cast<const {context}*>(context);"]
    lines += [f"    const {ctype} p{k} = c.p{k};" for k in range(n_params)]
    for k in range(n_inputs):
        lines.append(f"    alignas(64) {ctype} c{k}[{GROUP}], t{k}[{GROUP}];")
        lines.append(f"    if (!c.s{k}) for (int j = 0; j < {GROUP}; ++j) c{k}[j] = c.a{k}[0];")
    lines += [f"    alignas(64) {ctype} u{k}[{GROUP}];" for k in range(n_outputs)]
    return arguments, values, lines


def _padded_call(n_inputs, n_params, n_outputs):
    """The device function's arguments for a padded group: tail buffers in, u_k out."""
    return ", ".join([f"t{k}[j]" for k in range(n_inputs)] + [f"p{k}" for k in range(n_params)]
                     + [f"&u{k}[j]" for k in range(n_outputs)])


def element_wrapper(function, ctype, n_inputs, n_params, n_outputs):
    """extern "C" lossc_run_<function>(n, a0, s0, …, p0, …, o0, …, threads): the device function
    over n elements on up to ``threads`` threads, input k read from a_k (s_k = 1) or broadcast
    from a_k[0] (s_k = 0).

    Every element goes through the same vector code: the inner loop always runs GROUP
    iterations (so the compiler emits no scalar remainder, whose libm exp/log round
    differently from libmvec's), and a last partial group is copied into padded local
    buffers first. An element's bits therefore depend only on its inputs, never on its
    position, the array's size or the number of threads."""
    function = _checked(function)
    arguments, values, lines = _part_prologue(f"lossc_context_{function}", f"lossc_part_{function}", ctype,
                                              n_inputs, n_params, n_outputs)
    call = ", ".join([f"q{k}[j]" for k in range(n_inputs)] + [f"p{k}" for k in range(n_params)]
                     + [f"&r{k}[j]" for k in range(n_outputs)])
    padded = _padded_call(n_inputs, n_params, n_outputs)
    lines.append(f"    for (long b = first; b < last; b += {GROUP}) {{")
    lines.append(f"        const long m = last - b < {GROUP} ? last - b : {GROUP};")
    lines += [f"        const {ctype}* __restrict q{k} = c.s{k} ? c.a{k} + b : c{k};" for k in range(n_inputs)]
    lines += [f"        {ctype}* __restrict r{k} = c.o{k} + b;" for k in range(n_outputs)]
    lines += [f"        if (m == {GROUP}) {{", "#pragma omp simd",
              f"            for (long j = 0; j < {GROUP}; ++j) {function}({call});", "            continue;", "        }"]
    lines += [f"        for (long j = 0; j < {GROUP}; ++j) t{k}[j] = q{k}[j < m ? j : m - 1];" for k in range(n_inputs)]
    lines += ["#pragma omp simd", f"        for (long j = 0; j < {GROUP}; ++j) {function}({padded});"]
    lines += [f"        for (long j = 0; j < m; ++j) r{k}[j] = u{k}[j];" for k in range(n_outputs)]
    lines += ["    }", "}",
              f'extern "C" void lossc_run_{function}(long n, {", ".join(arguments)}, int threads)', "{",
              f"    const lossc_context_{function} c{{{', '.join(values)}}};",
              f"    const long parts = n / {MIN_CHUNK} < threads ? n / {MIN_CHUNK} : threads;",
              f"    lossc_parallel(lossc_part_{function}, &c, n, parts < 1 ? 1 : int(parts));", "}"]
    return "\n".join(lines) + "\n"


def sum_wrapper(function, ctype, n_inputs, n_params, n_outputs):
    """extern "C" double lossc_sum_<function>(n, a0, s0, …, p0, …, o1, …, threads): like
    :func:`element_wrapper`, but output 0 (the element loss) is summed instead of stored — the
    'sum' / 'mean' reductions in the same pass, no element-sized loss array. The sum is
    fixed by n alone: each CHUNK of elements is summed in double, lane by lane over its
    groups, its GROUP lanes then added pairwise in a fixed order; the chunk sums are added in
    order after the threads finish (threads take whole chunks)."""
    function = _checked(function)
    arguments, values, lines = _part_prologue(f"lossc_sum_context_{function}", f"lossc_sum_part_{function}", ctype,
                                              n_inputs, n_params, n_outputs, 1, ("double* sums", "long n"))
    values += ["sums.data()", "n"]
    call = ", ".join([f"q{k}[j]" for k in range(n_inputs)] + [f"p{k}" for k in range(n_params)]
                     + ["&u0[j]"] + [f"&r{k}[j]" for k in range(1, n_outputs)])
    padded = _padded_call(n_inputs, n_params, n_outputs)
    lines += ["    for (long chunk = first; chunk < last; ++chunk) {",
              f"        alignas(64) double acc[{GROUP}] = {{}};",
              f"        const long end = (chunk + 1) * {SUM_CHUNK} < c.n ? (chunk + 1) * {SUM_CHUNK} : c.n;",
              f"        for (long b = chunk * {SUM_CHUNK}; b < end; b += {GROUP}) {{",
              f"            const long m = end - b < {GROUP} ? end - b : {GROUP};"]
    lines += [f"            const {ctype}* __restrict q{k} = c.s{k} ? c.a{k} + b : c{k};" for k in range(n_inputs)]
    lines += [f"            {ctype}* __restrict r{k} = c.o{k} + b;" for k in range(1, n_outputs)]
    lines += [f"            if (m == {GROUP}) {{", "#pragma omp simd",
              f"                for (long j = 0; j < {GROUP}; ++j) {function}({call});", "#pragma omp simd",
              f"                for (long j = 0; j < {GROUP}; ++j) acc[j] += double(u0[j]);",
              "                continue;", "            }"]
    lines += [f"            for (long j = 0; j < {GROUP}; ++j) t{k}[j] = q{k}[j < m ? j : m - 1];" for k in range(n_inputs)]
    lines += ["#pragma omp simd", f"            for (long j = 0; j < {GROUP}; ++j) {function}({padded});"]
    lines += [f"            for (long j = 0; j < m; ++j) r{k}[j] = u{k}[j];" for k in range(1, n_outputs)]
    lines += ["            for (long j = 0; j < m; ++j) acc[j] += double(u0[j]);", "        }",
              f"        for (int width = {GROUP} / 2; width > 0; width /= 2)",
              "            for (int j = 0; j < width; ++j) acc[j] += acc[j + width];",
              "        c.sums[chunk] = acc[0];", "    }", "}",
              f'extern "C" double lossc_sum_{function}(long n, {", ".join(arguments)}, int threads)', "{",
              f"    std::vector<double> sums(n / {SUM_CHUNK} + 1);",
              f"    const lossc_sum_context_{function} c{{{', '.join(values)}}};",
              f"    const long chunks = (n + {SUM_CHUNK} - 1) / {SUM_CHUNK};",
              f"    const long parts = n / {MIN_CHUNK} < threads ? n / {MIN_CHUNK} : threads;",
              f"    lossc_parallel(lossc_sum_part_{function}, &c, chunks, parts < 1 ? 1 : int(parts));",
              "    double total = 0;", "    for (long k = 0; k < chunks; ++k) total += sums[k];", "    return total;", "}"]
    return "\n".join(lines) + "\n"


def _arrays(layout, kind):
    """Names of the array arguments of ``kind``'s kernel, in its argument order."""
    return list(layout.INPUTS) + (["grad_output"] if kind == "forward_backward" else [])


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


def row_wrapper(layout, symbol, kind, precision):
    """extern "C" lossc_rows_<module>_<kind>_<precision>(rows, classes, a0, rs0, cs0, …, p0, …,
    o0, …, threads): ``kind``'s launch plan over (rows, classes), arrays read as
    a[row·rs + j·cs] (cs 0 or 1), the loss into o0 ((rows,) or (rows, classes)), gradients
    into o1, … ((rows, classes))."""
    ctype = C_TYPES[precision]
    name = f"{_checked(symbol)}_{kind}_{precision}"
    arrays, parameters = _arrays(layout, kind), list(layout.PARAMETERS)
    *reductions, final = layout.STAGES[kind]
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
    per_row = set(layout.ROW_INPUTS) | (
        {"grad_output"} if kind == "forward_backward" and layout.LOSS_LEVEL == "row" else set())
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
    lines += _final(final, precision, arrays, parameters, layout.LOSS_LEVEL, ctype, per_row)
    lines += ["    }", "}",
              f'extern "C" void lossc_rows_{name}(long rows, long classes, {", ".join(arguments)}, int threads)', "{",
              f"    const lossc_rows_context_{name} c{{{', '.join(values)}}};",
              f"    const long parts = rows * classes / {ROW_MIN_CHUNK} < threads ? rows * classes / {ROW_MIN_CHUNK} : threads;",
              f"    const long usable = parts < rows ? parts : rows;",
              f"    lossc_parallel(lossc_rows_part_{name}, &c, rows, usable < 1 ? 1 : int(usable));", "}"]
    return "\n".join(lines) + "\n"


