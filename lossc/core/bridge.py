"""What every framework bridge (``lossc.torch``, ``lossc.paddle``) shares, framework-free.

A bridge hands a loss's inputs to the generated kernels as NumPy (CPU) or CuPy (GPU) views of
the framework's tensors and wraps the results back. With gradients requested the one fused
pass returns the pipeline's loss and the gradient of that loss (summed over its elements)
w.r.t. each differentiable input; a backward multiplies those saved gradients by the
incoming gradient, reshaped by :func:`upstream_shape`. For reduction='none' where one loss
value depends on several elements of an input (:func:`saved_gradient_suffices` is False)
the backward instead runs the fused kernel once more with the incoming gradient as the
element weight (d Σ g·w·loss / dx).
"""
import numpy as np


def differentiable(loss):
    """Indices (in call order) of the inputs the loss is differentiable in."""
    return [k for k, spec in enumerate(loss.pair_inputs or loss.inputs) if spec["differentiable"]]


def runtime_names(loss):
    """Names of the loss's runtime (non-variant) parameters, in spec order."""
    return [n for n, p in loss.parameters.items() if not p["variant"]]


def kernel_kwargs(loss, variant, params, weight, reduction, avg_factor, loss_weight, axis):
    """Keyword arguments of ``loss(...)`` / ``loss.value_and_grad(...)`` for a bridge call:
    ``params`` are the runtime parameters' values in :func:`runtime_names` order."""
    runtime = {name: int(value) if loss.parameters[name]["type"] == "int" else float(value)
               for name, value in zip(runtime_names(loss), params)}
    axis_arg = {"axis": axis} if loss.class_axis == "parameter" else {}
    return dict(weight=weight, reduction=reduction, avg_factor=avg_factor, loss_weight=loss_weight, **variant,
                **runtime, **axis_arg)


def fused(loss, arrays, kwargs, with_grad):
    """[loss] or [loss, *gradients] of ``loss`` on ``arrays`` (one fused pass for both)."""
    if not with_grad:
        return [loss(*arrays, **kwargs)]
    value, grads = loss.value_and_grad(*arrays, **kwargs)
    return [value, *grads]


def host_results(results, arrays):
    """The results as C-contiguous NumPy arrays a framework may own: copied only where one
    would alias an input (a framework op's outputs never may)."""
    return [np.array(r, copy=True) if _shares_memory(r, arrays) else np.require(r, requirements="C")
            for r in results]


def _shares_memory(result, arrays):
    return any(isinstance(a, np.ndarray) and np.may_share_memory(np.asarray(result), a) for a in arrays)


def class_axis(loss, ndim, axis):
    """The class axis of a prediction with ``ndim`` dimensions (None: every non-batch axis)."""
    if loss.class_axis == "last":
        return ndim - 1
    if loss.class_axis == "non_batch":
        return None
    return axis % ndim


def output_shape(loss, variant, shapes, axis):
    """The shape of the loss before reduction, from the inputs' ``shapes`` (call order)."""
    pred = tuple(shapes[0])
    if loss.pair_inputs:  # (rows, columns) of the pairs, or one loss per row-side sample
        side = {s["side"]: shape[0] for shape, s in zip(shapes, loss.pair_inputs)}
        return (side["row"], side["column"]) if loss.loss_level(variant) == "element" else (side["row"],)
    if loss.class_axis is None:
        return _broadcast(shapes)
    if loss.loss_level(variant) == "element":
        return pred
    axis = class_axis(loss, len(pred), axis)
    return pred[:1] if axis is None else pred[:axis] + pred[axis + 1:]


def _broadcast(shapes):
    """NumPy's broadcast of ``shapes`` in plain Python (their sizes may be a tracer's symbols)."""
    ndim = max(len(s) for s in shapes)
    padded = [(1,) * (ndim - len(s)) + tuple(s) for s in shapes]
    result = []
    for sizes in zip(*padded):
        others = [n for n in sizes if n != 1]
        if any(n != others[0] for n in others):
            raise ValueError(f"shapes {', '.join(str(tuple(s)) for s in shapes)} do not broadcast")
        result.append(others[0] if others else 1)
    return tuple(result)


def saved_gradient_suffices(loss, variant, shapes, axis):
    """For reduction='none': whether each input gradient is the incoming gradient times the
    saved one (each loss value depends only on its own element, or on its own row)."""
    if loss.pair_inputs or (loss.class_axis is not None and loss.loss_level(variant) == "element"):
        return False
    index = differentiable(loss)
    if loss.class_axis is None:
        shape = output_shape(loss, variant, shapes, axis)
        return all(tuple(shapes[k]) == shape for k in index)
    return all(tuple(shapes[k]) == tuple(shapes[0]) for k in index)


def upstream_shape(loss, variant, upstream, pred_ndim, axis):
    """The shape that makes an unreduced loss's incoming gradient (of shape ``upstream``)
    broadcast against an input's gradient."""
    upstream = tuple(upstream)
    if loss.class_axis is None or loss.loss_level(variant) == "element":
        return upstream
    axis = class_axis(loss, pred_ndim, axis)
    if axis is None:
        return upstream + (1,) * (pred_ndim - 1)
    return upstream[:axis] + (1,) + upstream[axis:]
