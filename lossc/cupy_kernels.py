"""The CuPy side of generated modules: ElementwiseKernels around their CUDA device functions.

A generated ``lossc.generated.cupy`` module holds only data (its device code and the names
of its functions); this builds, per kernel kind and dtype, one ``cupy.ElementwiseKernel``
computing the loss and every gradient in a single launch, lazily and cached. float16 is
computed in float32; float32 stays in single precision. CuPy is imported on first use only.
"""


class KernelCache:
    """Lazily built ElementwiseKernels of one generated module."""

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

        compute = "float64" if dtype.name == "float64" else "float32"
        ctype = "double" if compute == "float64" else "float"
        inputs = list(self.inputs) + (["grad_output"] if kind == "forward_backward" else [])
        outputs = ["loss"] + ([f"d_{n}" for n in self.differentiable] if kind == "forward_backward" else [])
        in_params = ", ".join([f"T {inputs[0]}"] + [f"U{i} {n}" for i, n in enumerate(inputs[1:])]
                              + [f"float64 {p}" for p in self.parameters])
        out_params = ", ".join(f"T {n}" for n in outputs)
        locals_ = " ".join(f"{ctype} _o{i};" for i in range(len(outputs)))
        arguments = ", ".join([f"({ctype}){n}" for n in inputs + list(self.parameters)]
                              + [f"&_o{i}" for i in range(len(outputs))])
        stores = " ".join(f"{n} = (T)_o{i};" for i, n in enumerate(outputs))
        body = f"{locals_} {self.functions[kind][compute]}({arguments}); {stores}"
        return cupy.ElementwiseKernel(in_params, out_params, body, f"lossc_{self.name}_{kind}_{dtype.name}",
                                      preamble=self.device_code)
