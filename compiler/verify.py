"""Stage 6a, inside the build: measured, not hoped: each variant's freshly emitted NumPy kernel against the
50-digit truth of the formula *as declared*.

``lossc build`` and ``lossc check`` measure every variant's loss and gradients, float32 and
float64, on the spec's accuracy grid plus a log-uniform sample of its inputs' domains
(:func:`accuracy.measure_kernels`), before anything is written. Where a bound is missed
(float64 1e-12, float32 4e-6 relative; absolute below the dtype's smallest normal), the
forms with one fired rule switched off are measured too and the most accurate is kept (rules
can conflict, and a regime may favour the plain form). What still misses a bound is a
finding: the output, the dtype, the worst input and the digits lost. So is a gradient that
is identically 0 (its input only enters through a comparison, ``sign`` or ``step``) or that
is not a finite real number somewhere on the grid where the loss is. Findings are
:class:`AccuracyWarning`\\ s; ``--strict`` makes them an :class:`AccuracyError`.
"""
import importlib.util
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .accuracy import BOUNDS, finite_truth, measure_kernels
from .derive import GRAD_OUTPUT, derive
from .emit.numpy_emitter import emit_numpy
from .rules import disabled

SAMPLES = 32


class AccuracyWarning(UserWarning):
    """A compiled kernel misses its accuracy bound, or a gradient is degenerate."""


class AccuracyError(ValueError):
    """Findings of :func:`verify` under ``--strict``: the message lists them."""


@dataclass
class Verdict:
    """What measuring one variant decided: the form to emit, its measurements, how it differs
    from the first form (None: it is the first form) and the findings, as messages."""

    derived: object
    rows: list
    alternative: str | None
    findings: list


def verify(derived, spec_file, samples=SAMPLES):
    """The :class:`Verdict` for one derived variant: its kernel measured and, where it misses
    a bound, the alternative forms (:func:`alternatives`); the most accurate one kept."""
    rows = measure_derived(derived, spec_file, samples)
    best = (_worst(rows), derived, rows, None)
    for label, alternative in alternatives(derived) if best[0] > 1 else ():
        alternative_rows = measure_derived(alternative, spec_file, samples)
        if _worst(alternative_rows) < best[0]:
            best = (_worst(alternative_rows), alternative, alternative_rows, label)
    _, chosen, rows, label = best
    return Verdict(chosen, rows, label, findings(chosen, rows, spec_file))


def alternatives(derived):
    """(label, derived form) pairs to try: each fired rule switched off in turn, then the
    gradients put over one denominator (``derive(ir, together=True)``)."""
    for name in derived.rules_applied:
        with disabled(name):
            yield f"without {name}", derive(derived.ir)
    if not derived.ir.has_reductions and not derived.ir.nodes:
        yield "gradients over one denominator", derive(derived.ir, together=True)


def measure_derived(derived, spec_file, samples=SAMPLES):
    """AccuracyRows of ``derived``'s NumPy kernel, emitted and loaded from its text."""
    module = load_kernel_text(emit_numpy(derived, spec_file), derived.ir.module_name)
    return measure_kernels(derived.ir, module, samples=samples)


def load_kernel_text(text, module_name):
    """The generated NumPy module ``text`` imported as a module of its own (not installed)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{module_name}.py"
        path.write_text(text, encoding="utf-8")
        spec = importlib.util.spec_from_file_location(f"lossc_measured_{module_name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    sys.modules.pop(spec.name, None)
    return module


def _worst(rows):
    return max((row.score for row in rows), default=0.0)


def findings(derived, rows, spec_file):
    """Messages for the outputs that miss their bound and the degenerate gradients."""
    ir = derived.ir
    where = f"{spec_file}: {ir.spec.name}" + (f" ({_variant(ir.variant)})" if ir.variant else "")
    found = [f"{where}: {_missed(row)}" for row in rows if not row.ok]
    for name, gradient in derived.gradients.items():
        if gradient == 0:
            found.append(f"{where}: d loss/d {name} is identically 0 ({name} only enters through a comparison, "
                         "sign or step): training would not move it")
    undefined = {}
    for row in rows:
        for point in row.undefined_at:
            if row.output not in undefined and not _removable(derived, row.output, point):
                undefined[row.output] = point[0]
    found += [f"{where}: {output} is not a finite real number at {_point(point)}, where the loss is"
              for output, point in undefined.items()]
    return found


def _removable(derived, output, point):
    """Whether the stable form's gradient is finite at ``point`` (one of an AccuracyRow's
    ``undefined_at``) where the declared one is not: a removable singularity of the declared
    derivative (γ·p^γ·log(1 − p)/p at p = 0), not an undefined gradient."""
    _, scalars, elements, index = point
    gradient = derived.gradients[output[len("d/d"):]]
    return finite_truth(gradient, {**scalars, GRAD_OUTPUT.name: 1.0}, elements, index, derived.steps) is not None


def _missed(row):
    """What one failing AccuracyRow says."""
    dtype = np.dtype(row.dtype).type
    if row.nonfinite:
        return (f"{row.output} in {row.dtype} is not finite at {row.nonfinite} point(s) where the truth is, e.g. "
                f"{_point(row.worst_inputs)}")
    digits = -math.log10(np.finfo(dtype).eps)
    lost = min(digits, max(0.0, math.log10(row.max_error / np.finfo(dtype).eps)))
    return (f"{row.output} in {row.dtype} has relative error {row.max_error:.2g} (bound {BOUNDS[dtype]:.0e}) at "
            f"{_point(row.worst_inputs)}: {lost:.1f} of {digits:.1f} digits lost")


def _point(point):
    return "{" + ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items()) + "}"


def _variant(variant):
    return ", ".join(f"{k}={v}" for k, v in variant.items())
