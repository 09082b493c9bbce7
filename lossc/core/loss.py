"""Loss objects: bind arrays and parameters to a generated kernel, then run the pipeline
(how, by the manifest's call shape: :mod:`lossc.core.call_shapes`)."""
import math
import numbers

import numpy as np

from . import targets
from .call_shapes import CALL_SHAPES
from .targets import range_text
from ..kernels.fastpath import FastPath, RowFastPath
from .pipeline import Pipeline

PIPELINE_ARGS = ("weight", "reduction", "avg_factor", "loss_weight")


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
        self.call_shape = CALL_SHAPES[manifest["call_shape"]](self)
        # the call without binding of an element-wise or class-axis loss (None for pair losses)
        self.fast_path = {"element": FastPath, "row": RowFastPath}.get(manifest["call_shape"], lambda _: None)(self)

    def __repr__(self):
        return f"<lossc.Loss {self.name}: {self.summary}>"

    @property
    def differentiable(self):
        """Names of the inputs ``value_and_grad`` returns gradients for, in order."""
        return tuple(i["name"] for i in (self.pair_inputs or self.inputs) if i["differentiable"])

    def __call__(self, *args, weight=None, reduction="mean", avg_factor=None, loss_weight=1.0, **kwargs):
        """The loss after the pipeline (element-wise when reduction='none')."""
        if self.fast_path is not None and weight is None and avg_factor is None:
            value = self.fast_path.run(args, kwargs, reduction, loss_weight, False)
            if value is not None:
                return value
        call = self.bind(args, kwargs)
        return self.evaluate(call, Pipeline(weight, reduction, avg_factor, loss_weight))

    def value_and_grad(
        self, *args, weight=None, reduction="mean", avg_factor=None, loss_weight=1.0, grad_output=None, **kwargs
    ):
        """(loss, grads): grads[i] is d sum(loss · grad_output) / d differentiable input i."""
        if self.fast_path is not None and weight is None and avg_factor is None and grad_output is None:
            result = self.fast_path.run(args, kwargs, reduction, loss_weight, True)
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
        values = self.match(args, kwargs, specs)
        axis = values.pop("axis", -1)
        return [values[i["name"]] for i in specs], *self.split_params(values), axis

    def split_params(self, values):
        """(build-time variant, runtime parameters) from the matched ``values``, defaults filled in, validated."""
        params = {name: self.check_param(name, values.get(name, p["default"])) for name, p in self.parameters.items()}
        variant = {k: v for k, v in params.items() if self.parameters[k]["variant"]}
        runtime = {k: v for k, v in params.items() if not self.parameters[k]["variant"]}
        return variant, runtime

    def variant_entry(self, variant):
        """The manifest's entry of one build-time ``variant`` ({name: value}): its level and
        its module per target (:mod:`lossc.core.targets`)."""
        return next(v for v in self.manifest["variants"] if v["values"] == variant)

    def variant_module(self, variant):
        """The name of the generated module of one build-time ``variant``."""
        return self.variant_entry(variant)["modules"]["numpy"]

    def target_module(self, target, variant):
        """The kernels of one build-time ``variant`` for ``target`` (a name of
        ``lossc.core.targets.TARGETS``, e.g. 'jax'), loaded once; NotImplementedError where that
        target has none for this loss."""
        return self._kernels(target, tuple(sorted(variant.items())), self.variant_entry(variant))

    def loss_level(self, variant):
        """'element' when the loss has one value per element of the prediction, 'row' when a
        loss over a class axis reduces that axis away (declared by the manifest)."""
        return self.variant_entry(variant)["level"]

    def bind(self, args, kwargs):
        """Match positional/keyword arguments to inputs and parameters; validate them
        (:mod:`lossc.core.call_shapes`)."""
        return self.call_shape.bind(args, kwargs)

    def evaluate(self, call, pipeline, with_grad=False, grad_output=None):
        """Run the kernel and ``pipeline``; with_grad also returns the input gradients."""
        return self.call_shape.evaluate(call, pipeline, with_grad, grad_output)

    def match(self, args, kwargs, inputs):
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

    def check_param(self, name, value):
        """``value`` of parameter ``name`` checked against its type, choices and range (the
        number as float or int); a TypeError or ValueError naming the loss and parameter."""
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

    def kernels_of(self, xp, variant):
        """The kernels that run ``xp``'s arrays for one build-time ``variant``."""
        return self.target_module(_target_of(xp), variant)

    def pair_term_kernels(self, xp, name):
        """The kernels that run ``xp``'s arrays for the pair term building input ``name``."""
        return self._kernels(_target_of(xp), ("pair", name), self.pair_terms[name])

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
