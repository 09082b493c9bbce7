"""How a loss is called, one strategy per ``call_shape`` of its manifest (:mod:`lossc.core.targets`).

- :class:`ElementWise`: every input broadcasts to the prediction; one loss value per element.
- :class:`OverRows`: a class axis; the inputs are laid out as (rows, classes) or (rows,)
  (:class:`lossc.core.layout.RowLayout`) and the loss is one value per element or per row.
- :class:`OverPairs`: the inputs are built from every pair of two batches (``pair_inputs``),
  then run as over rows; gradients chain back through each pair term.

Each binds a call's arguments to a :class:`BoundCall` (arrays checked, kernels chosen) and
evaluates it: the kernel, then the weighting/reduction pipeline.
"""
from dataclasses import dataclass

import numpy as np

from .backend import array_module, broadcasts_to, sum_to_shape
from ..kernels.numpy_runtime import compute_dtype
from .layout import RowLayout
from .pairs import PairArrays, check_pair_arrays, pair_gradients, pair_matrix


@dataclass
class BoundCall:
    """A loss's inputs (in spec order, as arrays), kernel module and runtime parameters."""

    xp: object
    module: object
    arrays: list
    params: dict
    layout: object = None
    pairs: object = None

    @property
    def prediction(self):
        """The first input (role 'prediction'); it decides dtype and element shape."""
        return self.arrays[0]


class ElementWise:
    """The call of an element-wise loss (see the module docstring)."""

    def __init__(self, loss):
        self.loss = loss

    def bind(self, args, kwargs):
        """Match arguments to inputs and parameters, check them, choose the kernels."""
        loss = self.loss
        values = loss.match(args, kwargs, loss.inputs)
        axis = values.pop("axis", -1)
        raw = [values[i["name"]] for i in loss.inputs]
        xp = array_module(*raw)
        variant, runtime = loss.split_params(values)
        return self.lay_out(BoundCall(xp, loss.kernels_of(xp, variant), [], runtime), raw, axis)

    def lay_out(self, call, raw, axis):
        """``call`` with its arrays: each input checked against the prediction's shape."""
        call.arrays = [self._input_array(call.xp, spec, value, raw[0]) for spec, value in zip(self.loss.inputs, raw)]
        return call

    def evaluate(self, call, pipeline, with_grad, grad_output):
        """Run the kernel and ``pipeline``; with_grad also returns the input gradients."""
        xp, pred = call.xp, call.prediction
        elem_shape = np.broadcast_shapes(*(a.shape for a in call.arrays))
        pipeline.check(elem_shape)
        compute = compute_dtype(pred.dtype)
        if not with_grad:
            return pipeline.apply(xp, call.module.forward(*call.arrays, **call.params), compute)
        upstream = pipeline.upstream(xp, elem_shape, compute, grad_output)
        elem, grads = call.module.forward_backward(*call.arrays, **call.params, grad_output=upstream)
        loss = pipeline.apply(xp, elem, compute)
        shapes = [a.shape for a, i in zip(call.arrays, self.loss.inputs) if i["differentiable"]]
        return loss, tuple(sum_to_shape(xp, g, s) for g, s in zip(grads, shapes))

    def checked(self, xp, spec, value):
        """The input as an array of xp: floating point for the prediction, real numbers otherwise."""
        name = self.loss.name
        array = xp.asarray(value)
        if array.dtype.byteorder not in "=|":  # e.g. big-endian '>f8' read from a file: NumPy's ufunc loops need native
            array = array.astype(array.dtype.newbyteorder("="))
        if spec["role"] == "prediction" and array.dtype.kind != "f":
            raise TypeError(f"{name}: input '{spec['name']}' must be a floating-point array, got dtype {array.dtype}")
        if array.dtype.kind not in "biuf":
            raise TypeError(f"{name}: input '{spec['name']}' must be real numbers, got dtype {array.dtype}")
        return array

    def _input_array(self, xp, spec, value, prediction):
        array = self.checked(xp, spec, value)
        name, loss_name = spec["name"], self.loss.name
        if spec["role"] == "prediction":
            return array
        pred_shape = np.shape(prediction)
        if spec["role"] == "target" and array.shape != pred_shape:
            raise ValueError(f"{loss_name}: '{name}' has shape {array.shape} but the prediction has shape {pred_shape}")
        if not broadcasts_to(array.shape, pred_shape):
            raise ValueError(f"{loss_name}: '{name}' of shape {array.shape} does not broadcast to the prediction "
                             f"shape {pred_shape}")
        return array


class OverRows(ElementWise):
    """The call of a loss over a class axis (see the module docstring)."""

    def lay_out(self, call, raw, axis):
        """``call`` with its row layout and its inputs as (rows, classes) or (rows,) arrays."""
        call.layout = RowLayout(self.loss.name, np.shape(raw[0]), self.loss.class_axis, axis)
        call.arrays = [self._row_input(call.xp, spec, value, call.layout, call.params)
                       for spec, value in zip(self.loss.inputs, raw)]
        return call

    def evaluate(self, call, pipeline, with_grad, grad_output):
        """Run the row kernels and ``pipeline`` on (rows, classes), then restore the caller's shapes."""
        xp, layout = call.xp, call.layout
        row_level = call.module.LOSS_LEVEL == "row"
        out_shape = layout.row_shape if row_level else layout.pred_shape
        pipeline.check(out_shape)
        compute = compute_dtype(call.prediction.dtype)

        def restore(loss):
            return loss.reshape(out_shape) if row_level else layout.rows_to_elements(loss)

        if not with_grad:
            return pipeline.apply(xp, restore(call.module.forward(*call.arrays, **call.params)), compute)
        upstream = pipeline.upstream(xp, out_shape, compute, grad_output)
        upstream = layout.row_values(upstream) if row_level else layout.elements_to_rows(upstream)
        elem, grads = call.module.forward_backward(*call.arrays, **call.params, grad_output=upstream)
        loss = pipeline.apply(xp, restore(elem), compute)
        return loss, tuple(layout.rows_to_elements(g) for g in grads)

    def _row_input(self, xp, spec, value, layout, params):
        """One input laid out as (rows, classes) or (rows,)."""
        name, loss_name = spec["name"], self.loss.name
        array = self.checked(xp, spec, value)
        if spec["role"] == "prediction":
            return layout.elements_to_rows(array)
        if spec["per"] == "element":
            expected = layout.pred_shape
            if spec["role"] == "target" and array.shape != expected:
                raise ValueError(f"{loss_name}: '{name}' has shape {array.shape} but the prediction has shape {expected}")
            try:
                return layout.elements_to_rows(array)
            except ValueError:
                raise ValueError(f"{loss_name}: '{name}' of shape {array.shape} does not broadcast to "
                                 f"{expected}") from None
        if spec["role"] == "target" and array.shape != layout.row_shape:
            raise ValueError(f"{loss_name}: '{name}' has shape {array.shape}; expected {layout.row_shape} "
                             f"(the prediction's shape {layout.pred_shape} without the class axis)")
        rows = layout.row_values(array)
        if spec.get("class_index"):
            self._check_class_indices(name, rows, layout.classes, params.get("ignore_index"))
        return rows

    def _check_class_indices(self, name, labels, classes, ignore_index):
        loss_name = self.loss.name
        if labels.dtype.kind == "f" and labels.size and not np.all(np.floor(labels) == labels):
            bad = labels[np.floor(labels) != labels][0].item()
            raise ValueError(f"{loss_name}: '{name}' holds class indices, got the non-integer value {bad!r}")
        valid = in_class_range(labels, classes, ignore_index)
        if labels.size and not np.all(valid):
            bad = labels[~valid][0].item()
            extra = f" or the ignore_index {ignore_index}" if ignore_index is not None else ""
            raise ValueError(f"{loss_name}: '{name}' has class index {bad!r} outside [0, {classes}){extra}")


def in_class_range(labels, classes, ignore_index):
    """Where ``labels`` are in [0, classes) or the ignore_index (None: there is none)."""
    valid = (labels >= 0) & (labels < classes)
    if ignore_index is not None:
        valid |= labels == ignore_index
    return valid


class OverPairs(OverRows):
    """The call of a loss over pair inputs (see the module docstring)."""

    def bind(self, args, kwargs):
        """Bind the pair inputs, then the inputs built from them (pair matrices, row indices)."""
        loss = self.loss
        values = loss.match(args, kwargs, loss.pair_inputs)
        raw = {p["name"]: values.pop(p["name"]) for p in loss.pair_inputs}
        xp = array_module(*raw.values())
        sides = {p["name"]: p["side"] for p in loss.pair_inputs}
        arrays = check_pair_arrays(loss.name, xp, raw, sides)
        _, runtime = loss.split_params(values)
        pairs = PairArrays(xp, arrays, sides, runtime)
        columns = next(a.shape[0] for n, a in arrays.items() if sides[n] == "column")
        if any(spec["per"] == "row" and spec.get("class_index") for spec in loss.inputs) and pairs.rows > columns:
            raise ValueError(f"{loss.name}: the row index of each row-side sample is a class index along the "
                             f"column side, so it needs at most {columns} row-side samples, got {pairs.rows}")
        built = [xp.arange(pairs.rows) if spec["per"] == "row" else
                 pair_matrix(pairs, loss.pair_term_kernels(xp, spec["name"]), columns) for spec in loss.inputs]
        call = super().bind(tuple(built), values)
        call.pairs = pairs
        return call

    def evaluate(self, call, pipeline, with_grad, grad_output):
        """Evaluate over rows, then chain the gradients through each pair term."""
        result = super().evaluate(call, pipeline, with_grad, grad_output)
        if not with_grad:
            return result
        loss, inner_grads = result
        pairs, xp = call.pairs, call.xp
        total = {n: xp.zeros_like(pairs.arrays[n]) for n in self.loss.differentiable}
        built = [i["name"] for i in self.loss.inputs if i["differentiable"]]
        for name, gradient in zip(built, inner_grads):
            for pair_name, part in pair_gradients(pairs, self.loss.pair_term_kernels(xp, name), gradient).items():
                total[pair_name] += part
        return loss, tuple(total[n] for n in self.loss.differentiable)


CALL_SHAPES = {"element": ElementWise, "row": OverRows, "pair": OverPairs}
