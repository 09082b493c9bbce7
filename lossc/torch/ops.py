"""One ``torch.library`` custom op per loss variant, with a fake (meta) kernel and autograd.

``lossc::<module>`` runs the generated kernels of one build-time variant on the tensors'
memory: CPU tensors through zero-copy NumPy views (the native kernels where they run), CUDA
tensors through DLPack to the CuPy kernels on torch's current stream. With ``with_grad``
the one fused pass returns the pipeline's loss *and* the gradient of that loss (summed
over its elements) w.r.t. each differentiable input; the backward multiplies those saved
gradients by the incoming gradient, never running a kernel again — except for
reduction='none' where one output depends on several inputs (an element loss over a class
axis, or a differentiable input broadcast to the loss shape): there the backward runs the
fused kernel once with the incoming gradient as the element weight (d Σ g·w·loss / d x).

Schema (the same for every op):
``(Tensor[] inputs, float[] params, Tensor? weight, str reduction, float? avg_factor,
float loss_weight, int axis, bool with_grad) -> Tensor[]``: the spec's inputs in order, its
runtime parameters in order, MMDetection's pipeline arguments, the class axis, and whether
to return [loss, *gradients] or [loss].
"""
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode as _dispatch_mode

from ..core import bridge
from ..core.registry import get

SCHEMA = ("(Tensor[] inputs, float[] params, Tensor? weight, str reduction, float? avg_factor, float loss_weight, "
          "int axis, bool with_grad) -> Tensor[]")
_ops = {}


def op(loss, variant):
    """The custom op of ``loss``'s build-time ``variant``, registered on first use."""
    module = loss.variant_module(variant)
    if module not in _ops:
        _ops[module] = _register(loss.name, module, dict(variant))
    return _ops[module]


def _register(name, module, variant):
    """Define lossc::<module> with its implementation, fake kernel and autograd formula."""

    @torch.library.custom_op(f"lossc::{module}", mutates_args=(), schema=SCHEMA)
    def kernel(inputs, params, weight, reduction, avg_factor, loss_weight, axis, with_grad):
        return _run(get(name), variant, inputs, params, weight, reduction, avg_factor, loss_weight, axis, with_grad)

    @kernel.register_fake
    def _(inputs, params, weight, reduction, avg_factor, loss_weight, axis, with_grad):
        loss = get(name)
        shape = () if reduction != "none" else bridge.output_shape(loss, variant, [t.shape for t in inputs], axis)
        outputs = [inputs[0].new_empty(shape)]
        if with_grad:
            outputs += [inputs[k].new_empty(inputs[k].shape) for k in bridge.differentiable(loss)]
        return outputs

    def setup_context(ctx, inputs, output):
        tensors, params, weight, reduction, avg_factor, loss_weight, axis, with_grad = inputs
        ctx.arguments = (list(tensors), list(params), weight, reduction, avg_factor, loss_weight, axis)
        ctx.save_for_backward(*output[1:])

    def backward(ctx, grads):
        result = input_gradients(get(name), variant, kernel, ctx.arguments, ctx.saved_tensors, grads[0])
        params = ctx.arguments[1]
        no_params = [] if not params else None  # torch's input spec: an empty list stays a list, floats a leaf
        return result, no_params, None, None, None, None, None, None

    kernel.register_autograd(backward, setup_context=setup_context)
    return kernel


def input_gradients(loss, variant, kernel, arguments, saved, upstream):
    """[gradient or None per input] of Σ upstream·loss: the saved gradients times the
    incoming gradient, or one more fused pass (``kernel``, the op or its eager twin's
    implementation) where they do not suffice."""
    tensors, params, weight, reduction, avg_factor, loss_weight, axis = arguments
    shapes = [t.shape for t in tensors]
    if not saved or (reduction == "none" and not bridge.saved_gradient_suffices(loss, variant, shapes, axis)):
        saved, factor = _vector_jacobian(kernel, tensors, params, weight, reduction, avg_factor, loss_weight,
                                         axis, upstream), None
    else:
        factor = upstream if reduction != "none" else upstream.reshape(
            bridge.upstream_shape(loss, variant, upstream.shape, tensors[0].dim(), axis))
        if _is_one(factor):  # loss.backward() of a scalar loss: the saved gradients are the result
            factor = None
    result = [None] * len(tensors)
    for k, gradient in zip(bridge.differentiable(loss), saved):
        result[k] = gradient if factor is None else gradient * factor
    return result


def eager(loss, variant, tensors, params, weight, reduction, avg_factor, loss_weight, axis, with_grad):
    """The op's outputs in eager mode without torch.library's dispatch (which costs ~100 µs a
    call): the same kernels and backward as an ``autograd.Function``. Used only where nothing
    traces (no torch.compile, no dispatch mode, plain tensors); the op everywhere else."""
    arguments = (list(tensors), list(params), weight, reduction, avg_factor, loss_weight, axis)
    return _Eager.apply(loss, variant, arguments, with_grad, *tensors)


def can_run_eagerly(tensors):
    """Whether a call may skip the custom op: eager, no dispatch mode, plain tensors."""
    return not torch.compiler.is_compiling() and _dispatch_mode() is None and all(
        type(t) is torch.Tensor and t.device.type != "meta" for t in tensors)


def fast_eager(fast, args, kwargs, reduction, loss_weight):
    """An eager call on CPU tensors through :mod:`lossc.kernels.fastpath` (no binding, no
    dispatch; the element-wise losses reduced inside the fused pass) with reduction 'sum' or
    'mean', or 'none' where the loss is one value per row, as the loss tensor in autograd;
    None where that path does not apply (the general path decides, and raises what is wrong)."""
    if torch.compiler.is_compiling() or _dispatch_mode() is not None:
        return None
    if reduction not in ("sum", "mean") and not (reduction == "none" and fast.one_value_per_row(kwargs)):
        return None
    arrays, needs_grad = [], []
    for k, value in enumerate(args):
        if type(value) is torch.Tensor:
            if value.device.type != "cpu" or value.dtype is torch.bfloat16:  # NumPy has no bfloat16
                return None
            if value.requires_grad:
                if k not in fast.differentiable:
                    return None  # the general path names the input that must be detached
                needs_grad.append(k)
            value = value.detach().numpy()
        elif k in fast.differentiable:
            return None
        arrays.append(value)
    with_grad = bool(needs_grad) and torch.is_grad_enabled()
    result = fast.run(arrays, kwargs, reduction, loss_weight, with_grad)
    if result is None or not with_grad:
        return None if result is None else torch.from_numpy(result)
    value, grads = result
    call = (fast, arrays, kwargs, reduction, loss_weight)
    return _Fast.apply(call, grads, value, *[args[k] for k in sorted(fast.differentiable)])


class _Fast(torch.autograd.Function):
    """The autograd node of :func:`fast_eager`: the forward's gradients times the incoming one."""

    @staticmethod
    def forward(ctx, call, grads, value, *inputs):
        ctx.call, ctx.grads = call, grads
        return torch.from_numpy(value)

    @staticmethod
    def backward(ctx, upstream):
        # The only reference goes to autograd (no copy into .grad); a second backward
        # (retain_graph) runs the fused pass again for the same bits.
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            fast, arrays, kwargs, reduction, loss_weight = ctx.call
            grads = fast.run(arrays, kwargs, reduction, loss_weight, True)[1]
        grads = [torch.from_numpy(g) for g in grads]
        if not _is_one(upstream):  # a scalar, or one value per row: broadcast along the classes
            grads = [g * upstream.reshape(upstream.shape + (1,) * (g.dim() - upstream.dim())) for g in grads]
        return (None, None, None, *grads)


class _Eager(torch.autograd.Function):
    """The custom op's eager twin (see :func:`eager`)."""

    @staticmethod
    def forward(ctx, loss, variant, arguments, with_grad, *tensors):
        outputs = _run(loss, variant, *arguments, with_grad)
        ctx.loss, ctx.variant, ctx.arguments, ctx.saved = loss, variant, arguments, outputs[1:]
        return outputs[0]

    @staticmethod
    def backward(ctx, upstream):
        def kernel(*args):
            return _run(ctx.loss, ctx.variant, *args)

        # Autograd takes a gradient without copying it when the result holds the only reference; a
        # second backward (retain_graph) recomputes the same bits with the forward's fused pass.
        saved, ctx.saved = ctx.saved, None
        if saved is None:
            saved = _run(ctx.loss, ctx.variant, *ctx.arguments, True)[1:]
        result = input_gradients(ctx.loss, ctx.variant, kernel, ctx.arguments, saved, upstream)
        del saved
        return (None, None, None, None, *result)


def _is_one(factor):
    """Whether an incoming gradient is the scalar 1, read only where that costs nothing (an eager
    CPU scalar; never while torch.compile traces or on a device, where it would sync)."""
    tracing = torch.compiler.is_compiling() or type(factor) is not torch.Tensor or _dispatch_mode() is not None
    return not tracing and factor.device.type == "cpu" and factor.numel() == 1 and factor.item() == 1.0


def _vector_jacobian(kernel, tensors, params, weight, reduction, avg_factor, loss_weight, axis, upstream):
    """The gradients of Σ upstream·loss by one more fused pass: for 'none', the incoming
    gradient becomes the element weight (d Σ g·w·loss / dx); for a reduced loss (called
    without with_grad) the saved-gradient rule's factor is applied to a fresh pass."""
    if reduction == "none":
        weighted = upstream if weight is None else upstream * weight
        _, *grads = kernel(tensors, params, weighted, "sum", None, loss_weight, axis, True)
        return grads
    _, *grads = kernel(tensors, params, weight, reduction, avg_factor, loss_weight, axis, True)
    return [g * upstream for g in grads]


def _run(loss, variant, inputs, params, weight, reduction, avg_factor, loss_weight, axis, with_grad):
    """The kernels on the tensors' memory; new tensors of torch's for every result."""
    kwargs = bridge.kernel_kwargs(loss, variant, params, None if weight is None else _array(weight), reduction,
                                  avg_factor, loss_weight, axis)
    return _evaluate(loss, inputs[0].device, [_array(t) for t in inputs], kwargs, with_grad)


def _evaluate(loss, device, arrays, kwargs, with_grad):
    """[loss, *gradients] (or [loss]) of a lossc loss on the arrays, as new torch tensors: on
    CUDA on torch's current stream (DLPack), on the CPU copied only where a result would
    alias an input (a custom op's outputs never may)."""
    if device.type == "cuda":
        import cupy

        with cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream):
            return [torch.from_dlpack(cupy.ascontiguousarray(r)) for r in bridge.fused(loss, arrays, kwargs, with_grad)]
    return [torch.from_numpy(r) for r in bridge.host_results(bridge.fused(loss, arrays, kwargs, with_grad), arrays)]


def _array(tensor):
    """A zero-copy NumPy (CPU) or CuPy (CUDA) view of a tensor, made contiguous once."""
    tensor = tensor.detach().contiguous()
    if tensor.device.type == "cuda":
        import cupy

        return cupy.from_dlpack(tensor)
    return tensor.numpy()


CTC_SCHEMA = ("(Tensor log_probs, Tensor targets, Tensor input_lengths, Tensor target_lengths, int blank, "
              "bool zero_infinity, bool with_grad) -> Tensor[]")


@torch.library.custom_op("lossc::ctc", mutates_args=(), schema=CTC_SCHEMA)
def ctc(log_probs, targets, input_lengths, target_lengths, blank, zero_infinity, with_grad):
    """lossc's CTC on (T, N, C) scores and (N, S) targets padded with −1: [losses (N,)] or
    [losses, d Σ losses / d log_probs] (log_softmax applied inside, so for log-probabilities
    the gradient is exp(log_probs) − the posterior, as PyTorch's)."""
    from ..algorithms.ctc import ctc_loss

    arrays = [_array(t) for t in (log_probs, targets, input_lengths, target_lengths)]
    kwargs = dict(blank=int(blank), layout="TNC", zero_infinity=bool(zero_infinity), reduction="none")
    return _evaluate(ctc_loss, log_probs.device, arrays, kwargs, with_grad)


@ctc.register_fake
def _(log_probs, targets, input_lengths, target_lengths, blank, zero_infinity, with_grad):
    outputs = [log_probs.new_empty(log_probs.shape[1:2])]
    return outputs + ([log_probs.new_empty(log_probs.shape)] if with_grad else [])


def _ctc_setup(ctx, inputs, output):
    ctx.arguments = inputs[:6]
    ctx.save_for_backward(*output[1:])


def _ctc_backward(ctx, grads):
    saved = ctx.saved_tensors
    if not saved:
        saved = ctc(*ctx.arguments, True)[1:]
    return saved[0] * grads[0][None, :, None], None, None, None, None, None, None


ctc.register_autograd(_ctc_backward, setup_context=_ctc_setup)
