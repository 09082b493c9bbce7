"""The CuPy side of generated modules: CuPy kernels around their CUDA device functions.

A generated ``lossc.generated.cupy`` module holds only data (its device code, the names
of its functions and, for losses with reductions, its launch plan); this builds the
``cupy.ElementwiseKernel`` / ``cupy.ReductionKernel`` objects per kernel kind and dtype,
lazily and cached. float16 is computed in float32; float32 stays in single precision.
CuPy is imported on first use only.

Kernel parameter names all start with ``_lossc_`` (``_lossc_s_pred`` for the spec's ``pred``,
``_lossc_j`` for the generated ``_j``), so no spec name meets CuPy's own kernel variables
(``i``, ``n``, ``_ind``…), the type placeholders or another parameter.
"""

# Device code every generated module may use (guarded: several modules can share a source).
COMMON_DEVICE_CODE = r"""
#ifndef LOSSC_COMMON_DEVICE_CODE
#define LOSSC_COMMON_DEVICE_CODE
__device__ __forceinline__ double lossc_negative_infinity() { return -__longlong_as_double(0x7ff0000000000000LL); }
#ifdef __CUDACC__
__device__ __forceinline__ double lossc_lgamma(double x) { return lgamma(x); }
__device__ __forceinline__ float lossc_lgammaf(float x) { return lgammaf(x); }
#else
inline double lossc_lgamma(double x) { int sign; return lgamma_r(x, &sign); }  /* lgamma writes a global */
inline float lossc_lgammaf(float x) { int sign; return lgammaf_r(x, &sign); }
#endif
/* digamma as lossc.kernels.special.digamma computes it: reflect, shift by 10, asymptotic series */
__device__ __forceinline__ double lossc_digamma(double x)
{
    const bool reflect = x < 0.5;
    double z = reflect ? 1.0 - x : x, shift = 0.0, series = 0.0;
    for (int k = 0; k < 10; ++k) shift = shift + 1.0 / (z + k);
    z = z + 10;
    const double w = 1.0 / (z * z);
    const double coefficients[7] = {1.0 / 12, -1.0 / 120, 1.0 / 252, -1.0 / 240, 1.0 / 132, -691.0 / 32760, 1.0 / 12};
    for (int k = 6; k >= 0; --k) series = (series + coefficients[k]) * w;
    double value = log(z) - 0.5 / z - series - shift;
    if (reflect) value = x == floor(x) ? __longlong_as_double(0x7ff8000000000000LL)
                                       : value - 3.141592653589793 / tan(3.141592653589793 * x);
    return value;
}
__device__ __forceinline__ float lossc_digammaf(float x) { return (float)lossc_digamma((double)x); }
#endif
"""
# Row statistics: op → (reduce_expr over a and b, identity). max propagates NaN as NumPy does.
REDUCTIONS = {
    "sum": ("a + b", "0"),
    "max": ("(a != a || a > b) ? a : b", "lossc_negative_infinity()"),
}


def precision(dtype):
    """(compute dtype name, C type) for arrays of ``dtype``: float16 computes in float32."""
    compute = "float64" if dtype.name == "float64" else "float32"
    return compute, "double" if compute == "float64" else "float"


def kernel_name(name):
    """The name a value has as a CuPy kernel parameter: _j → _lossc_j, pred → _lossc_s_pred."""
    return f"_lossc{name}" if name.startswith("_") else f"_lossc_s_{name}"


class KernelCache:
    """Lazily built ElementwiseKernels of one generated element-wise module."""

    def __init__(self, name, inputs, differentiable, parameters, functions, device_code):
        self.name, self.inputs, self.differentiable = name, tuple(inputs), tuple(differentiable)
        self.parameters, self.functions, self.device_code = tuple(parameters), functions, device_code
        self._kernels = {}

    def get(self, kind, dtype):
        """The kernel for ``kind`` ('forward' / 'forward_backward') and ``dtype``."""
        key = (kind, dtype.name)
        if key not in self._kernels:
            self._kernels[key] = self._build(kind, dtype)
        return self._kernels[key]

    def _build(self, kind, dtype):
        import cupy

        compute, ctype = precision(dtype)
        inputs = list(self.inputs) + (["grad_output"] if kind == "forward_backward" else [])
        count = 1 + (len(self.differentiable) if kind == "forward_backward" else 0)
        outputs = ["_lossc_loss"] + [f"_lossc_d{k}" for k in range(count - 1)]
        inputs = [kernel_name(n) for n in inputs]
        parameters = [kernel_name(p) for p in self.parameters]
        in_params = ", ".join([f"T {inputs[0]}"] + [f"U{i} {n}" for i, n in enumerate(inputs[1:])]
                              + [f"float64 {p}" for p in parameters])
        out_params = ", ".join(f"T {n}" for n in outputs)
        casts = [f"({ctype}){n}" for n in inputs + parameters]
        stores = [f"{n} = (T)_o{i};" for i, n in enumerate(outputs)]
        body = _call_and_store(self.functions[kind][compute], casts, ctype, stores)
        return cupy.ElementwiseKernel(in_params, out_params, body, f"lossc_{self.name}_{kind}_{dtype.name}",
                                      preamble=COMMON_DEVICE_CODE + self.device_code)


class RowKernelCache:
    """Runs the launch plan of a generated module with reductions along the class axis:
    one ReductionKernel per row statistic, then one fused ElementwiseKernel; every
    intermediate stays on the device."""

    def __init__(self, name, inputs, row_inputs, parameters, loss_level, stages, device_code):
        self.name, self.inputs, self.row_inputs = name, tuple(inputs), tuple(row_inputs)
        self.parameters, self.loss_level, self.stages = tuple(parameters), loss_level, stages
        self.device_code = device_code
        self._kernels = {}

    def run(self, kind, arrays, grad_output, params):
        """Outputs of ``kind`` for (rows, classes) / (rows,) CuPy ``arrays``: [loss, *gradients]."""
        import cupy

        pred = arrays[0]
        if pred.ndim != 2:
            raise ValueError(f"{self.name}: expected (rows, classes) predictions, got shape {pred.shape}")
        rows, classes = pred.shape
        values = self._values(cupy, arrays, grad_output, params, rows, classes)
        *reductions, final = self.stages[kind]
        for index, stage in enumerate(reductions):
            kernel = self._kernel(kind, index, pred.dtype)
            values[f"_r{index}"] = kernel(*(values[a] for a in stage["arguments"]), axis=1, keepdims=True)
        kernel = self._kernel(kind, len(reductions), pred.dtype)
        arguments = [values[a] for a in final["arguments"]]
        if final["level"] == "row":
            loss = cupy.empty((rows, 1), pred.dtype)
            kernel(*arguments, loss)
            return [loss.reshape(rows)]
        loss_shape = (rows,) if self.loss_level == "row" else (rows, classes)
        outputs = [cupy.empty(loss_shape, pred.dtype)] + [cupy.empty((rows, classes), pred.dtype)
                                                          for _ in range(final["outputs"] - 1)]
        extra = [classes] if self.loss_level == "row" else []
        kernel(*arguments, *extra, *outputs)
        return outputs

    def _values(self, cupy, arrays, grad_output, params, rows, classes):
        """Every name a stage may read: inputs ((rows, 1) for row inputs), grad_output, the
        class index (1, classes), the class count and the parameters."""
        values = {name: float(p) for name, p in zip(self.parameters, params)}
        values["classes"] = float(classes)
        values["_j"] = cupy.arange(classes, dtype=cupy.int32).reshape(1, classes)
        for name, array in zip(self.inputs, arrays):
            row = name in self.row_inputs and getattr(array, "ndim", 0)
            values[name] = array.reshape(rows, 1) if row else array
        if grad_output is not None:
            row = self.loss_level == "row" and getattr(grad_output, "ndim", 0)
            values["grad_output"] = grad_output.reshape(rows, 1) if row else grad_output
        return values

    def _kernel(self, kind, index, dtype):
        key = (kind, index, dtype.name)
        if key not in self._kernels:
            stage = self.stages[kind][index]
            build = self._reduction if stage["op"] in REDUCTIONS else self._final
            self._kernels[key] = build(kind, index, stage, dtype)
        return self._kernels[key]

    def _reduction(self, kind, index, stage, dtype):
        import cupy

        source = reduction_source(stage, self.parameters, dtype)
        return cupy.ReductionKernel(*source[:6], name=f"lossc_{self.name}_{kind}_r{index}_{dtype.name}",
                                    reduce_type=source[6], preamble=COMMON_DEVICE_CODE + self.device_code)

    def _final(self, kind, index, stage, dtype):
        import cupy

        in_params, out_params, body = final_source(stage, self.parameters, self.loss_level, dtype)
        return cupy.ElementwiseKernel(in_params, out_params, body, f"lossc_{self.name}_{kind}_out_{dtype.name}",
                                      preamble=COMMON_DEVICE_CODE + self.device_code)


def _in_params(stage, parameters):
    """Typed CuPy parameters of a stage: arrays get their own type placeholder, scalars float64."""
    scalars = set(parameters) | {"classes"}
    return [f"float64 {kernel_name(a)}" if a in scalars else f"U{i} {kernel_name(a)}"
            for i, a in enumerate(stage["arguments"])]


def _casts(stage, ctype):
    return [f"({ctype}){kernel_name(a)}" for a in stage["arguments"]]


def _call_and_store(function, casts, ctype, stores):
    """A kernel body: locals _o0, _o1, … for the device function's results, the call, then ``stores``."""
    locals_ = " ".join(f"{ctype} _o{k};" for k in range(len(stores)))
    arguments = ", ".join(casts + [f"&_o{k}" for k in range(len(stores))])
    return f"{locals_} {function}({arguments}); {' '.join(stores)}"


def reduction_source(stage, parameters, dtype):
    """(in_params, out_params, map_expr, reduce_expr, post_map_expr, identity, reduce_type)
    of the ReductionKernel computing one row statistic."""
    compute, ctype = precision(dtype)
    reduce_expr, identity = REDUCTIONS[stage["op"]]
    map_expr = f"{stage['functions'][compute]}({', '.join(_casts(stage, ctype))})"
    return (", ".join(_in_params(stage, parameters)), f"{compute} _lossc_out", map_expr,
            reduce_expr, "_lossc_out = a", identity, ctype)


def final_source(stage, parameters, loss_level, dtype):
    """(in_params, out_params, body) of the ElementwiseKernel computing the loss and
    gradients. Over rows when the stage is row-level; else over (rows, classes), where a
    row-level loss is a raw (rows,) output written once per row (class 0), the extra
    int64 parameter _lossc_classes giving the row length."""
    compute, ctype = precision(dtype)
    count = stage["outputs"]
    names = ["_lossc_loss"] + [f"_lossc_d{k}" for k in range(count - 1)]
    row_loss_per_element = stage["level"] == "element" and loss_level == "row"
    in_params = _in_params(stage, parameters) + (["int64 _lossc_classes"] if row_loss_per_element else [])
    out_params = [("raw T " if k == 0 and row_loss_per_element else "T ") + n for k, n in enumerate(names)]
    stores = [f"{n} = (T)_o{k};" for k, n in enumerate(names)]
    if row_loss_per_element:
        stores[0] = "if (i % _lossc_classes == 0) _lossc_loss[i / _lossc_classes] = (T)_o0;"
    body = _call_and_store(stage["functions"][compute], _casts(stage, ctype), ctype, stores)
    return ", ".join(in_params), ", ".join(out_params), body
