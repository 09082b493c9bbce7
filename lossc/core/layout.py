"""(rows, classes) layout for losses that reduce along a class axis.

The kernels of such losses see the class axis last and every other axis flattened into
rows. ``class_axis`` in the spec says which axis is the class axis: 'parameter' (the
loss's ``axis`` argument, default −1, any axis as in gluon), 'last', or 'non_batch'
(every axis but the first, flattened, as gluon's TripletLoss sums them).
"""
import math

import numpy as np


class RowLayout:
    """How one call's arrays map to (rows, classes) and back."""

    def __init__(self, name, pred_shape, class_axis, axis):
        ndim = len(pred_shape)
        self.pred_shape = tuple(pred_shape)
        if ndim == 0:
            raise ValueError(f"{name}: the prediction needs at least one axis (the class axis), got a scalar")
        if class_axis == "non_batch":
            self.axis = None
            self.row_shape = self.pred_shape[:1]
            self.classes = math.prod(self.pred_shape[1:]) if ndim > 1 else 1
        else:
            if class_axis == "last":
                axis = -1
            if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
                raise ValueError(f"{name}: axis {axis!r} is out of range for a prediction of shape {self.pred_shape}")
            self.axis = int(axis) % ndim
            self.row_shape = self.pred_shape[:self.axis] + self.pred_shape[self.axis + 1:]
            self.classes = self.pred_shape[self.axis]
        self.rows = math.prod(self.row_shape)

    def elements_to_rows(self, array):
        """A (broadcast) element-level array as (rows, classes)."""
        array = np.broadcast_to(array, self.pred_shape)
        if self.axis is None:
            return array.reshape(self.rows, self.classes)
        return np.moveaxis(array, self.axis, -1).reshape(self.rows, self.classes)

    def rows_to_elements(self, array):
        """(rows, classes) back to the prediction's shape."""
        if self.axis is None:
            return array.reshape(self.pred_shape)
        moved = self.row_shape + (self.classes,)
        return np.moveaxis(array.reshape(moved), -1, self.axis)

    def row_values(self, array):
        """A row-level array (broadcastable to the row shape) as (rows,)."""
        return np.broadcast_to(array, self.row_shape).reshape(self.rows)
