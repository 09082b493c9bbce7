"""Loss objects: bind arrays and parameters to a generated kernel, then run the pipeline."""
import math
import numbers
from dataclasses import dataclass

import numpy as np

from . import targets
from .targets import range_text
from .backend import array_module, broadcasts_to, sum_to_shape
from .elementwise import compute_dtype
from .fastpath import FastPath
from .layout import RowLayout
from .pairs import PairArrays, check_pair_arrays, pair_gradients, pair_matrix
from .pipeline import Pipeline

PIPELINE_ARGS = ("weight", "reduction", "avg_factor", "loss_weight")


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


class Loss:
    """One loss built from a spec: ``loss(pred, label, ..., reduction='mean', weight=...)``.

    Inputs go positionally or by name, parameters by name; ``weight``, ``reduction``
    ('none' | 'mean' | 'sum'), ``avg_factor`` and ``loss_weight`` are the shared pipeline.
    A loss over pair inputs (its spec's ``pair_inputs``) takes those instead and builds
    its inputs from every pair of them.
    """

    def __init__(self, manifest, load_module):
        self.name = manifest["name"]
        self.summary = manifest["summary"]
        self.doc = manifest["doc"]
        self.manifest = manifest
        self.inputs = manifest["inputs"]
        self.parameters = {p["name"]: p for p in manifest["parameters"]}
        self.exposed_as = manifest.get("exposed_as", {})
        self.class_axis = manifest.get("class_axis")
        self.pair_inputs = manifest.get("pair_inputs", [])
        self.pair_terms = {t["input"]: t for t in manifest.get("pair_terms", [])}
        self._load_module = load_module
        self._modules = {}
        self._fast = FastPath(self) if self.class_axis is None and not self.pair_inputs else None

    def __repr__(self):
        return f"<lossc.Loss {self.name}: {self.summary}>"

    @property
    def differentiable(self):
        """Names of the inputs ``value_and_grad`` returns gradients for, in order."""
        return tuple(i["name"] for i in (self.pair_inputs or self.inputs) if i["differentiable"])

    def __call__(self, *args, weight=None, reduction="mean", avg_factor=None, loss_weight=1.0, **kwargs):
        """The loss after the pipeline (element-wise when reduction='none')."""
        if self._fast is not None and weight is None and avg_factor is None:
            value = self._fast.run(args, kwargs, reduction, loss_weight, False)
            if value is not None:
                return value
        call = self.bind(args, kwargs)
        return self.evaluate(call, Pipeline(weight, reduction, avg_factor, loss_weight))

    def value_and_grad(
        self, *args, weight=None, reduction="mean", avg_factor=None, loss_weight=1.0, grad_output=None, **kwargs
    ):
        """(loss, grads): grads[i] is d sum(loss · grad_output) / d differentiable input i."""
        if self._fast is not None and weight is None and avg_factor is None and grad_output is None:
            result = self._fast.run(args, kwargs, reduction, loss_weight, True)
            if result is not None:
                return result
        call = self.bind(args, kwargs)
        return self.evaluate(call, Pipeline(weight, reduction, avg_factor, loss_weight), True, grad_output)

    def check_parameters(self, params, owner, others):
        """A TypeError naming ``owner`` where ``params`` (a layer's constructor keywords) has a
        keyword that is none of this loss's parameters; ``others`` are the layer's own keywords,
        listed first among the allowed ones."""
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            raise TypeError(f"{owner} got unknown argument(s) {', '.join(map(repr, unknown))}; "
                            f"allowed: {', '.join([*others, *self.parameters])}")

    def split_arguments(self, args, kwargs):
        """(input values in spec order — the pair inputs of a loss over pairs —, build-time variant,
        runtime parameters, class axis) of a call, defaults filled in and parameters validated;
        the arrays themselves are not checked here (``bind`` does that). For bridges that hand
        arrays to kernels themselves."""
        specs = self.pair_inputs or self.inputs
        values = self._match(args, kwargs, specs)
        axis = values.pop("axis", -1)
        return [values[i["name"]] for i in specs], *self._split_params(values), axis

    def _split_params(self, values):
        """(build-time variant, runtime parameters) from the matched ``values``, defaults filled in, validated."""
        params = {name: self._param(name, values.get(name, p["default"])) for name, p in self.parameters.items()}
        variant = {k: v for k, v in params.items() if self.parameters[k]["variant"]}
        runtime = {k: v for k, v in params.items() if not self.parameters[k]["variant"]}
        return variant, runtime

    def variant_entry(self, variant):
        """The manifest's entry of one build-time ``variant`` ({name: value}): its level and
        its module per target (:mod:`lossc.targets`)."""
        return next(v for v in self.manifest["variants"] if v["values"] == variant)

    def variant_module(self, variant):
        """The name of the generated module of one build-time ``variant``."""
        return self.variant_entry(variant)["modules"]["numpy"]

    def target_module(self, target, variant):
        """The kernels of one build-time ``variant`` for ``target`` (a name of
        ``lossc.targets.TARGETS``, e.g. 'jax'), loaded once; NotImplementedError where that
        target has none for this loss."""
        return self._kernels(target, tuple(sorted(variant.items())), self.variant_entry(variant))

    def loss_level(self, variant):
        """'element' when the loss has one value per element of the prediction, 'row' when a
        loss over a class axis reduces that axis away (declared by the manifest)."""
        return self.variant_entry(variant)["level"]

    def bind(self, args, kwargs):
        """Match positional/keyword arguments to inputs and parameters; validate them."""
        if self.pair_inputs:
            return self._bind_pairs(args, kwargs)
        return self._bind_inputs(args, kwargs)

    def _bind_pairs(self, args, kwargs):
        """Bind the pair inputs, then the inputs built from them (pair matrices, row indices)."""
        values = self._match(args, kwargs, self.pair_inputs)
        raw = {p["name"]: values.pop(p["name"]) for p in self.pair_inputs}
        xp = array_module(*raw.values())
        sides = {p["name"]: p["side"] for p in self.pair_inputs}
        arrays = check_pair_arrays(self.name, xp, raw, sides)
        runtime = {n: self._param(n, values.get(n, p["default"])) for n, p in self.parameters.items() if not p["variant"]}
        pairs = PairArrays(xp, arrays, sides, runtime)
        columns = next(a.shape[0] for n, a in arrays.items() if sides[n] == "column")
        if any(spec["per"] == "row" and spec.get("class_index") for spec in self.inputs) and pairs.rows > columns:
            raise ValueError(f"{self.name}: the row index of each row-side sample is a class index along the "
                             f"column side, so it needs at most {columns} row-side samples, got {pairs.rows}")
        built = [xp.arange(pairs.rows) if spec["per"] == "row" else
                 pair_matrix(pairs, self._pair_module(xp, spec["name"]), columns) for spec in self.inputs]
        call = self._bind_inputs(tuple(built), values)
        call.pairs = pairs
        return call

    def _match(self, args, kwargs, inputs):
        """{name: value} of positional and keyword arguments, defaults filled in for ``inputs``
        (dicts with name, default); a TypeError for extra, repeated, unknown or missing ones."""
        values = dict(kwargs)
        names = [i["name"] for i in inputs]
        if len(args) > len(names):
            raise TypeError(f"{self.name} takes at most {len(names)} inputs, got {len(args)}")
        for name, arg in zip(names, args):
            if name in values:
                raise TypeError(f"{self.name} got input '{name}' twice")
            values[name] = arg
        accepted = set(names) | set(self.parameters) | ({"axis"} if self.class_axis == "parameter" else set())
        unknown = sorted(set(values) - accepted)
        if unknown:
            raise TypeError(
                f"{self.name} got unknown argument(s) {', '.join(map(repr, unknown))}; inputs: "
                f"{', '.join(names)}; parameters: {', '.join(self.parameters) or 'none'}; "
                f"pipeline: {', '.join(PIPELINE_ARGS)}"
            )
        for spec in inputs:
            if values.setdefault(spec["name"], spec.get("default")) is None:
                raise TypeError(f"{self.name} is missing input '{spec['name']}'")
        return values

    def _pair_module(self, xp, name):
        return self._kernels(_target_of(xp), ("pair", name), self.pair_terms[name])

    def _bind_inputs(self, args, kwargs):
        values = self._match(args, kwargs, self.inputs)
        axis = values.pop("axis", -1)
        raw = [values[i["name"]] for i in self.inputs]
        xp = array_module(*raw)
        variant, runtime = self._split_params(values)
        if self.class_axis is None:
            arrays = [self._input_array(xp, spec, value, raw[0]) for spec, value in zip(self.inputs, raw)]
            return BoundCall(xp, self._module(xp, variant), arrays, runtime)
        layout = RowLayout(self.name, np.shape(raw[0]), self.class_axis, axis)
        arrays = [self._row_input(xp, spec, value, layout, runtime) for spec, value in zip(self.inputs, raw)]
        return BoundCall(xp, self._module(xp, variant), arrays, runtime, layout)

    def evaluate(self, call, pipeline, with_grad=False, grad_output=None):
        """Run the kernel and ``pipeline``; with_grad also returns the input gradients."""
        if call.pairs is not None:
            return self._evaluate_pairs(call, pipeline, with_grad, grad_output)
        if call.layout is not None:
            return self._evaluate_rows(call, pipeline, with_grad, grad_output)
        xp, pred = call.xp, call.prediction
        elem_shape = np.broadcast_shapes(*(a.shape for a in call.arrays))
        pipeline.check(elem_shape)
        compute = compute_dtype(pred.dtype)
        if not with_grad:
            return pipeline.apply(xp, call.module.forward(*call.arrays, **call.params), compute)
        upstream = pipeline.upstream(xp, elem_shape, compute, grad_output)
        elem, grads = call.module.forward_backward(*call.arrays, **call.params, grad_output=upstream)
        loss = pipeline.apply(xp, elem, compute)
        shapes = [a.shape for a, i in zip(call.arrays, self.inputs) if i["differentiable"]]
        return loss, tuple(sum_to_shape(xp, g, s) for g, s in zip(grads, shapes))

    def _evaluate_pairs(self, call, pipeline, with_grad, grad_output):
        """evaluate() for a loss over pair inputs: the chain rule through each pair term."""
        result = self._evaluate_rows(call, pipeline, with_grad, grad_output)
        if not with_grad:
            return result
        loss, inner_grads = result
        pairs, xp = call.pairs, call.xp
        total = {n: xp.zeros_like(pairs.arrays[n]) for n in self.differentiable}
        built = [i["name"] for i in self.inputs if i["differentiable"]]
        for name, gradient in zip(built, inner_grads):
            for pair_name, part in pair_gradients(pairs, self._pair_module(xp, name), gradient).items():
                total[pair_name] += part
        return loss, tuple(total[n] for n in self.differentiable)

    def _evaluate_rows(self, call, pipeline, with_grad, grad_output):
        """evaluate() for losses with reductions: kernels run on (rows, classes)."""
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
        """One input of a loss with reductions, laid out as (rows, classes) or (rows,)."""
        name = spec["name"]
        array = self._checked(xp, spec, value)
        if spec["role"] == "prediction":
            return layout.elements_to_rows(array)
        if spec["per"] == "element":
            expected = layout.pred_shape
            if spec["role"] == "target" and array.shape != expected:
                raise ValueError(f"{self.name}: '{name}' has shape {array.shape} but the prediction has shape {expected}")
            try:
                return layout.elements_to_rows(array)
            except ValueError:
                raise ValueError(f"{self.name}: '{name}' of shape {array.shape} does not broadcast to {expected}") from None
        if spec["role"] == "target" and array.shape != layout.row_shape:
            raise ValueError(f"{self.name}: '{name}' has shape {array.shape}; expected {layout.row_shape} "
                             f"(the prediction's shape {layout.pred_shape} without the class axis)")
        rows = layout.row_values(array)
        if spec.get("class_index"):
            self._check_class_indices(name, rows, layout.classes, params.get("ignore_index"))
        return rows

    def _check_class_indices(self, name, labels, classes, ignore_index):
        if labels.dtype.kind == "f" and labels.size and not np.all(np.floor(labels) == labels):
            bad = labels[np.floor(labels) != labels][0].item()
            raise ValueError(f"{self.name}: '{name}' holds class indices, got the non-integer value {bad!r}")
        valid = (labels >= 0) & (labels < classes)
        if ignore_index is not None:
            valid |= labels == ignore_index
        if labels.size and not np.all(valid):
            bad = labels[~valid][0].item()
            extra = f" or the ignore_index {ignore_index}" if ignore_index is not None else ""
            raise ValueError(f"{self.name}: '{name}' has class index {bad!r} outside [0, {classes}){extra}")

    def _checked(self, xp, spec, value):
        """The input as an array of xp: floating point for the prediction, real numbers otherwise."""
        array = xp.asarray(value)
        if array.dtype.byteorder not in "=|":  # e.g. big-endian '>f8' read from a file: NumPy's ufunc loops need native
            array = array.astype(array.dtype.newbyteorder("="))
        if spec["role"] == "prediction" and array.dtype.kind != "f":
            raise TypeError(f"{self.name}: input '{spec['name']}' must be a floating-point array, got dtype {array.dtype}")
        if array.dtype.kind not in "biuf":
            raise TypeError(f"{self.name}: input '{spec['name']}' must be real numbers, got dtype {array.dtype}")
        return array

    def _input_array(self, xp, spec, value, prediction):
        array = self._checked(xp, spec, value)
        name = spec["name"]
        if spec["role"] == "prediction":
            return array
        pred_shape = np.shape(prediction)
        if spec["role"] == "target" and array.shape != pred_shape:
            raise ValueError(f"{self.name}: '{name}' has shape {array.shape} but the prediction has shape {pred_shape}")
        if not broadcasts_to(array.shape, pred_shape):
            raise ValueError(f"{self.name}: '{name}' of shape {array.shape} does not broadcast to the prediction shape {pred_shape}")
        return array

    def _param(self, name, value):
        p = self.parameters[name]
        kind = p["type"]
        if kind == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{self.name}: parameter '{name}' must be True or False, got {value!r}")
            return bool(value)
        if kind == "choice":
            if value not in p["choices"]:
                raise ValueError(f"{self.name}: parameter '{name}' must be one of {', '.join(map(repr, p['choices']))}, got {value!r}")
            return value
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{self.name}: parameter '{name}' must be a real number, got {type(value).__name__}")
        if kind == "int" and int(value) != value:
            raise ValueError(f"{self.name}: parameter '{name}' must be an integer, got {value!r}")
        low, high = p["range"]
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"{self.name}: parameter '{name}' must be {range_text(low, high)}, got {value!r}")
        return int(value) if kind == "int" else float(value)

    def _module(self, xp, variant):
        """The kernels that run ``xp``'s arrays for one build-time ``variant``."""
        return self.target_module(_target_of(xp), variant)

    def _kernels(self, target, key, entry):
        """``target``'s kernels of a manifest ``entry`` (a variant or a pair term), loaded once."""
        if (target, key) not in self._modules:
            try:
                loaded = targets.TARGETS[target].load(self._load_module, entry)
            except NotImplementedError as error:
                raise NotImplementedError(f"{self.name}: {error}") from None
            self._modules[target, key] = loaded
        return self._modules[target, key]


def _target_of(xp):
    """The target that runs the arrays of ``xp`` (numpy or cupy)."""
    return targets.DISPATCH["numpy" if xp is np else "cupy"]
