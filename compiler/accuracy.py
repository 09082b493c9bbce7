"""``lossc accuracy``: the generated NumPy kernels, and the native CPU and JAX kernels where
they run, vs 50-digit (and more) mpmath truth.

The grid for each loss is the Cartesian product of its inputs' ``accuracy_grid`` values,
with parameters at their defaults, for every variant, in float32 and float64 (inputs and
parameters rounded to the dtype first, so the truth is the exact value at the numbers the
kernel really received). Losses with a class axis are measured on rows built from the
element inputs' grids: the whole grid as one row, and every window of three neighbouring
values (``row_layouts``), so moderate and confident predictions are measured, not only
the extremes. The error is relative, except where the truth is below the
dtype's smallest normal, where the absolute error must stay below that smallest normal.
Points where the truth is not real (e.g. a probability outside [0, 1]) or overflows the
dtype are left out, and the grids avoid the zeros of each output (a gradient's root, or
a loss of ~eps at a perfect prediction), where a relative bound means nothing for any
evaluation in the same precision; the tests cover those places with absolute bounds.
Bounds: float64 ≤ 1e-12, float32 ≤ 4e-6, and never NaN/Inf where
the truth is finite.
"""
import functools
import itertools
import math
import random
from dataclasses import dataclass, field

import numpy as np

from .derive import declared_program
from .ir import build_ir, variants
from .mp_eval import NotReal, truth
from .reductions import element_level
from .spec import load_spec

BOUNDS = {np.float32: 4e-6, np.float64: 1e-12}


@dataclass
class AccuracyRow:
    """Worst error of one output (loss or a gradient) of one variant in one dtype."""

    loss: str
    variant: dict
    output: str
    dtype: str
    max_error: float
    worst_inputs: dict
    nonfinite: int
    points: int
    undefined_at: list = field(default_factory=list)

    @property
    def ok(self):
        """Within the dtype's bound and never non-finite where the truth is finite."""
        return self.nonfinite == 0 and self.max_error <= BOUNDS[np.dtype(self.dtype).type]

    @property
    def score(self):
        """The worst error as a multiple of the dtype's bound (inf where non-finite)."""
        return math.inf if self.nonfinite else self.max_error / BOUNDS[np.dtype(self.dtype).type]


def grid_points(spec):
    """The accuracy grid: a list of {input name: value} dicts."""
    names = [i.name for i in spec.inputs]
    return [dict(zip(names, combo)) for combo in itertools.product(*(i.accuracy_grid for i in spec.inputs))]


def measure(spec_path, dtypes=(np.float32, np.float64), kernels="numpy", folder=None):
    """AccuracyRows for every variant, output and dtype of the spec at ``spec_path``, of the
    kernels of one target of ``lossc.core.targets`` (``kernels``: 'numpy', 'native' — the NumPy
    modules where native kernels cannot run — or 'jax', which has none for losses over pair
    inputs), as built in ``folder`` (default: the installed ``lossc.generated`` package)."""
    from lossc.core import targets

    from .workspace import manifests, package_folder

    folder = folder or package_folder()
    load = targets.folder_loader(folder)
    spec = load_spec(spec_path)
    manifest = manifests(folder)[spec.name]
    rows = []
    for variant in variants(spec):
        ir = build_ir(spec, variant)
        entry = next(v for v in manifest["variants"] if v["values"] == variant)
        if entry["modules"][kernels] is None:
            continue
        module = targets.TARGETS[kernels].load(load, entry)
        rows += measure_kernels(ir, JaxKernels(module) if kernels == "jax" else module, dtypes)
    return rows


def measure_kernels(ir, module, dtypes=(np.float32, np.float64), samples=0):
    """AccuracyRows of one variant's kernels ``module`` against the declared formula's truth,
    on the accuracy grid plus ``samples`` log-uniform draws from the inputs' domains
    (:func:`sampled_points`, :func:`sampled_layouts`)."""
    steps, gradients = declared_program(ir)
    truths = {"loss": ir.loss, **{f"d/d{k}": g for k, g in gradients.items()}, "steps": steps}
    rows = []
    for dtype in dtypes:
        measure_one = _measure_rows if ir.has_reductions else _measure_variant
        rows += measure_one(ir.spec, ir, module, truths, dtype, samples)
    return rows


def _measure_rows(spec, ir, module, truths, dtype, samples=0):
    """Accuracy of a loss with reductions, over the row layouts of ``row_layouts`` (and
    ``sampled_layouts``); each output's row reports the worst error over all of them."""
    per_output = {}
    for vectors, row_points in row_layouts(spec) + sampled_layouts(spec, samples):
        for row in _measure_layout(spec, ir, module, truths, dtype, vectors, row_points):
            seen = per_output.setdefault(row.output, row)
            if seen is not row:
                worst = row if row.max_error > seen.max_error or (row.nonfinite and not seen.nonfinite) else seen
                per_output[row.output] = AccuracyRow(row.loss, row.variant, row.output, row.dtype, worst.max_error,
                                                     worst.worst_inputs, seen.nonfinite + row.nonfinite,
                                                     seen.points + row.points, seen.undefined_at + row.undefined_at)
    return list(per_output.values())


def row_layouts(spec):
    """(element vectors, row points) pairs: each element input's whole grid as one row of
    classes (a single value repeated), then every window of 3 neighbouring grid values (so
    moderate logits are measured apart from the extreme ones), with class indices 0..2.
    Row points are the product of the row inputs' grids (in a window, every class index)."""
    classes = max(len(i.accuracy_grid) for i in spec.inputs if i.per == "element")
    width = min(3, classes)
    layouts = []
    for start, size in [(0, classes)] + [(k, width) for k in range(classes - width + 1) if width < classes]:
        vectors = {i.name: (i.accuracy_grid * size if len(i.accuracy_grid) == 1 else i.accuracy_grid[start:start + size])
                   for i in spec.inputs if i.per == "element"}
        grids = [list(range(size)) if i.class_index and size < classes else i.accuracy_grid
                 for i in spec.inputs if i.per == "row"]
        names = [i.name for i in spec.inputs if i.per == "row"]
        layouts.append((vectors, [dict(zip(names, combo)) for combo in itertools.product(*grids)]))
    return layouts


def _representable(values, dtype):
    """Whether every value is a finite number of ``dtype`` (an input beyond its range cannot be
    given in that dtype, so it is not measured there)."""
    return all(abs(v) <= float(np.finfo(dtype).max) for v in values)


def _measure_layout(spec, ir, module, truths, dtype, vectors, row_points):
    row_points = [p for p in row_points if _representable(p.values(), dtype)]
    if not row_points or not all(_representable(v, dtype) for v in vectors.values()):
        return []
    classes = len(next(iter(vectors.values())))
    vectors = {name: np.array(v, dtype=dtype) for name, v in vectors.items()}
    row_names = list(row_points[0])
    n = len(row_points)
    arrays = {name: np.tile(v, (n, 1)) for name, v in vectors.items()}
    arrays.update({name: np.array([p[name] for p in row_points], dtype=dtype) for name in row_names})
    params = {p.name: float(dtype(p.default)) for p in spec.runtime_params}
    outputs = _outputs(module, arrays, params)
    elements = {name: [float(x) for x in v] for name, v in vectors.items()}
    rows = []
    for output, got in outputs.items():
        expr = truths["loss" if output.startswith("loss") else output]
        per_element = got.ndim == 2
        points, values = [], []
        for r, point in enumerate(row_points):
            scalars = {k: float(dtype(v)) for k, v in point.items()} | params
            for j in range(classes) if per_element else [None]:
                points.append({**point, **elements, **({"class": j} if j is not None else {})})
                values.append((scalars, j, got[r, j] if per_element else got[r]))
        rows.append(_compare(spec, ir, output, dtype, expr, elements, points, values, truths))
    return rows


def _domain_draw(inp, rng):
    """One value of ``inp``'s domain: a magnitude log-uniform between the smallest non-zero and
    the largest magnitude of its accuracy grid, with a sign its grid has (a class index, or a
    grid of one magnitude such as labels 0 and 1, draws from the grid itself)."""
    grid = inp.accuracy_grid
    magnitudes = [abs(v) for v in grid if v != 0]
    if inp.class_index or not magnitudes or min(magnitudes) == max(magnitudes):
        return rng.choice(grid)
    low, high = math.log10(min(magnitudes)), math.log10(max(magnitudes))
    sign = rng.choice(sorted({math.copysign(1.0, v) for v in grid if v != 0}))
    return sign * 10 ** rng.uniform(low, high)


def sampled_points(spec, count, seed=0):
    """``count`` points drawn from the inputs' domains (:func:`_domain_draw`), the same for a
    given seed on every machine."""
    rng = random.Random(seed)
    return [{i.name: _domain_draw(i, rng) for i in spec.inputs} for _ in range(count)]


def sampled_layouts(spec, count, seed=0):
    """Row layouts as :func:`row_layouts` gives them, with rows of three classes drawn from
    the element inputs' domains: one layout per 8 of ``count``."""
    rng = random.Random(seed)
    layouts = []
    for _ in range(count // 8):
        vectors = {i.name: [_domain_draw(i, rng) for _ in range(3)] for i in spec.inputs if i.per == "element"}
        grids = [list(range(3)) if i.class_index else i.accuracy_grid for i in spec.inputs if i.per == "row"]
        names = [i.name for i in spec.inputs if i.per == "row"]
        layouts.append((vectors, [dict(zip(names, combo)) for combo in itertools.product(*grids)]))
    return layouts


def _measure_variant(spec, ir, module, truths, dtype, samples=0):
    points = [p for p in grid_points(spec) + sampled_points(spec, samples) if _representable(p.values(), dtype)]
    if not points:
        return []
    arrays = {name: np.array([p[name] for p in points], dtype=dtype) for name in points[0]}
    params = {p.name: float(dtype(p.default)) for p in spec.runtime_params}
    outputs = _outputs(module, arrays, params)
    exact_inputs = [{k: float(v[i]) for k, v in arrays.items()} for i in range(len(points))]
    shape = outputs["loss"].shape
    rows = []
    for output, got in outputs.items():
        expr = truths["loss" if output.startswith("loss") else output]
        got = np.broadcast_to(got, shape)
        values = [({**inputs, **params}, None, got[i]) for i, inputs in enumerate(exact_inputs)]
        rows.append(_compare(spec, ir, output, dtype, expr, None, exact_inputs, values, truths))
    return rows


def _outputs(module, arrays, params):
    """{'loss', 'loss (forward)', 'd/d<input>'...}: what the kernels return for ``arrays``."""
    loss, grads = module.forward_backward(**arrays, **params)
    outputs = {"loss": loss, "loss (forward)": module.forward(**arrays, **params)}
    outputs.update({f"d/d{name}": g for name, g in zip(module.DIFFERENTIABLE, grads)})
    return outputs


def _compare(spec, ir, output, dtype, expr, elements, points, values, truths):
    """Worst error of the kernel values vs the mpmath truth: ``values`` holds one
    (scalar inputs, class index or None, kernel value) per point of ``points``. A gradient
    whose truth is not a finite real number where the loss's is records the point in
    ``undefined_at`` as (point, scalar inputs, element rows, class index)."""
    info = np.finfo(dtype)
    worst, worst_at, nonfinite, used, undefined = 0.0, {}, 0, 0, []
    for where, (scalars, index, got) in zip(points, values):
        value = finite_truth(expr, scalars, elements, index, truths["steps"])
        if value is None:
            loss_index = index if element_level(truths["loss"], ir.element_symbols) else None
            if expr is not truths["loss"] and finite_truth(truths["loss"], scalars, elements, loss_index,
                                                            truths["steps"]) is not None:
                undefined.append((where, scalars, elements, index))
            continue
        if abs(value) > info.max:
            continue
        used += 1
        g = float(got)
        if not np.isfinite(g):
            nonfinite += 1
            worst_at = where
            continue
        error = abs(g - value) / abs(value) if abs(value) >= info.tiny else abs(g - value) / info.tiny * BOUNDS[dtype]
        if abs(value) < info.tiny and abs(g - value) <= info.tiny:
            error = 0.0
        if error > worst:
            worst = error
            worst_at = worst_at if nonfinite else where  # a non-finite value is the worse finding
    return AccuracyRow(spec.name, ir.variant, output, np.dtype(dtype).name, worst, worst_at, nonfinite, used,
                       undefined)


def finite_truth(expr, scalars, elements, index, steps):
    """The truth as a float, or None where it is not a finite real number."""
    try:
        value = _truth(expr, tuple(sorted(scalars.items())),
                       tuple((k, tuple(v)) for k, v in sorted((elements or {}).items())), index, tuple(steps))
    except NotReal:
        return None
    return value if math.isfinite(value) else None


@functools.lru_cache(maxsize=1 << 16)
def _truth(expr, scalars, elements, index, steps):
    """mp_eval's truth as a float, cached: the loss's outputs and the candidate forms of one
    formula share their points."""
    return float(truth(expr, dict(scalars), dict(elements) or None, index, steps))


class JaxKernels:
    """A generated JAX module called like the NumPy kernels: NumPy arrays in ((rows,) row
    inputs for a loss over a class axis), NumPy arrays out."""

    def __init__(self, module):
        self.module = module
        self.DIFFERENTIABLE = module.DIFFERENTIABLE

    def _arguments(self, kwargs):
        """The call's arrays as JAX arrays (row inputs as (rows, 1)); parameters as they are."""
        import jax.numpy as jnp

        return {name: jnp.asarray(a.reshape(-1, 1) if name in self.module.ROW_INPUTS else a)
                if isinstance(a, np.ndarray) else a for name, a in kwargs.items()}

    def _host(self, value):
        value = np.asarray(value)
        return value.reshape(-1) if self.module.LOSS_LEVEL == "row" and self.module.CLASS_AXIS else value

    def forward(self, **kwargs):
        """The loss, as the NumPy kernels' forward."""
        return self._host(self.module.forward(**self._arguments(kwargs)))

    def forward_backward(self, **kwargs):
        """(loss, gradients), as the NumPy kernels' forward_backward."""
        loss, grads = self.module.forward_backward(**self._arguments(kwargs))
        return self._host(loss), tuple(np.asarray(g) for g in grads)


def _jax_available():
    """Whether JAX imports here; its float64 columns need x64 mode, switched on here."""
    try:
        import jax
    except ImportError:
        return False
    jax.config.update("jax_enable_x64", True)
    return True


def accuracy_report(selected, log=print):
    """Print the accuracy table of the :class:`workspace.Selected` losses: their NumPy kernels
    and, where they run here, native CPU kernels and JAX kernels; True if all pass. A row
    that fails says why: the error beyond the bound, or the non-finite values, and where."""
    from lossc.kernels import native

    kinds = ["numpy"] + (["native"] if native.available() else []) + (["jax"] if _jax_available() else [])
    log(f"kernels: NumPy; {native.status()}; " + ("JAX" if "jax" in kinds else "no JAX (pip install jax)"))
    ok = True
    header = " ".join(f"{k[:6] + d[-2:]:>10s}" for k in kinds for d in ("float32", "float64"))
    log(f"{'loss':16s} {'variant':40s} {'output':16s} {header}  status")
    for chosen in selected:
        rows = {}
        for kind in kinds:
            measured = measure(chosen.spec_path, kernels=kind, folder=chosen.folder)
            rows.update({(r.loss, str(r.variant), r.output, kind, r.dtype): r for r in measured})
        for key in dict.fromkeys(k[:3] for k in rows):
            found = {k[3:]: r for k, r in rows.items() if k[:3] == key}
            good = all(r.ok for r in found.values())
            ok &= good
            variant = ", ".join(f"{k}={v}" for k, v in found["numpy", "float64"].variant.items()) or "-"
            errors = [f"{found[k, d].max_error:10.2e}" if (k, d) in found else f"{'-':>10s}"
                      for k in kinds for d in ("float32", "float64")]
            log(f"{key[0]:16s} {variant:40s} {key[2]:16s} {' '.join(errors)}  {'ok' if good else 'FAIL'}"
                + "".join(f" ({k} {d}: {_why(r)})" for (k, d), r in found.items() if not r.ok))
    return ok


def _why(row):
    """Why an AccuracyRow fails, in words."""
    if row.nonfinite:
        return (f"{row.nonfinite} non-finite value(s) where the truth is finite, e.g. at {row.worst_inputs}")
    return f"error {row.max_error:.2e} above the bound {BOUNDS[np.dtype(row.dtype).type]:.0e} at {row.worst_inputs}"
