"""``lossc new NAME``: a commented spec skeleton and a test stub that checks it against mpmath.

The skeleton is a working loss (generalized cross-entropy, Zhang & Sabuncu 2018: binary on
a sigmoid, or over a class axis on a softmax) so that ``lossc check NAME.yaml`` and the stub's
test pass before the author changes anything; the author then edits the formula in the spec
and the mpmath reference in the test together.
"""
from pathlib import Path

from .spec import SpecError, _Validator, parse_spec_text

# The parameter and the start of the definitions, the same in both skeletons.
PARAMETERS = """\
parameters:
  - name: q                   # a float parameter: a keyword argument at call time
    type: float
    default: 0.7
    range: [0.01, 1]          # null for no limit
    doc: Exponent; q -> 0 gives cross-entropy, q = 1 the mean absolute error.
definitions:                  # named subexpressions, used by later definitions and the loss"""

ELEMENT_SPEC = """\
# A loss spec for lossc: `lossc check NAME.yaml` validates it and measures its kernels,
# `lossc build NAME.yaml --out my_losses` builds it, `pytest test_NAME.py` tests it.
# Expressions are formulas in the spec language (README, "Spec language"); quote a value
# that contains a comma, a bracket or a colon.
name: NAME
summary: Generalized cross-entropy on a sigmoid, (1 - p_t**q) / q (edit me).
doc: |
  Longer description shown on the formula page. p_t is the probability the model gives the
  label: p = sigmoid(pred) for label 1, 1 - p for label 0.
references:
  - Zhang and Sabuncu, Generalized Cross Entropy Loss for Training Deep Neural Networks with Noisy Labels, NeurIPS 2018
inputs:
  - name: pred                # the model's output: what gradients are taken with respect to
    role: prediction
    differentiable: true
    doc: Logits.
    accuracy_grid: [-10000, -30, -3, -1, 0, 1, 3, 30, 10000]   # where `lossc check` measures
  - name: label               # targets: never differentiated
    role: target
    differentiable: false
    doc: Binary targets, 0 or 1.
    accuracy_grid: [0, 1]
PARAMETERS
  - name: p
    expr: sigmoid(pred)
loss: label * (1 - p**q) / q + (1 - label) * (1 - (1 - p)**q) / q
"""

CLASS_AXIS_SPEC = """\
# A loss spec for lossc over a class axis: `lossc check NAME.yaml` validates it and measures
# its kernels, `lossc build NAME.yaml --out my_losses` builds it, `pytest test_NAME.py` tests it.
# Expressions are formulas in the spec language (README, "Spec language"); quote a value
# that contains a comma, a bracket or a colon.
name: NAME
summary: Generalized cross-entropy on a softmax, (1 - softmax(pred)[label]**q) / q (edit me).
doc: |
  Longer description shown on the formula page. Each row of pred holds one logit per class
  along the class axis (the `axis` keyword at call time); label holds one class per row.
references:
  - Zhang and Sabuncu, Generalized Cross Entropy Loss for Training Deep Neural Networks with Noisy Labels, NeurIPS 2018
class_axis: parameter         # the call's `axis` argument selects the class axis
inputs:
  - name: pred                # the model's output: what gradients are taken with respect to
    role: prediction
    differentiable: true
    doc: Logits, classes along the class axis.
    accuracy_grid: [-10000, -30, -1, 0, 0.5, 30, 10000]   # where `lossc check` measures
  - name: label               # one integer class per row
    role: target
    differentiable: false
    per: row
    class_index: true
    doc: Integer class per row.
    accuracy_grid: [0, 3, 6]
PARAMETERS
  - name: log_p_label
    expr: "pick(log_softmax(pred), label)"
loss: (1 - exp(q * log_p_label)) / q
"""

TEST_HEAD = '''\
"""Tests of the NAME loss against a 50-digit mpmath reference (written by `lossc new`).

Edit `reference` together with the spec's formula; the test builds NAME.yaml, then checks
the loss and its gradient at the POINTS below.
"""
from pathlib import Path

import mpmath
import numpy as np
import pytest

import lossc
from lossc.compiler.build import build

SPEC = Path(__file__).with_name("NAME.yaml")
'''

TEST_FIXTURE = '''

@pytest.fixture(scope="module")
def loss(tmp_path_factory):
    folder = tmp_path_factory.mktemp("built")
    build([SPEC], folder, full=False, log=lambda *_: None)
    lossc.register_generated(folder)
    return lossc.get("NAME")


'''

ELEMENT_TEST = ('''\
POINTS = [(-30.0, 1.0), (-3.0, 0.0), (-0.5, 1.0), (0.0, 0.0), (0.7, 1.0), (4.0, 0.0), (25.0, 1.0)]
Q = 0.7


def reference(pred, label, q=Q):
    """The loss at one point, in mpmath: edit together with the spec's formula."""
    p = 1 / (1 + mpmath.exp(-pred))
    p_t = label * p + (1 - label) * (1 - p)
    return (1 - p_t**q) / q
''', '''\
def test_loss_and_gradient_match_mpmath(loss):
    pred = np.array([p for p, _ in POINTS])
    label = np.array([y for _, y in POINTS])
    value, (d_pred,) = loss.value_and_grad(pred, label, q=Q, reduction="none")
    with mpmath.workdps(50):
        for i, (p, y) in enumerate(POINTS):
            want = reference(mpmath.mpf(p), mpmath.mpf(y))
            slope = mpmath.diff(lambda x: reference(x, mpmath.mpf(y)), mpmath.mpf(p))
            assert abs(value[i] - want) <= 1e-12 * abs(want) + 1e-300, (p, y, value[i], want)
            assert abs(d_pred[i] - slope) <= 1e-12 * abs(slope) + 1e-300, (p, y, d_pred[i], slope)
''')

CLASS_AXIS_TEST = ('''\
ROWS = [([2.0, -1.0, 0.5], 0), ([-20.0, 3.0, 3.5], 2), ([0.0, 0.0, 0.0], 1), ([30.0, -30.0, 1.0], 1)]
Q = 0.7


def reference(row, label, q=Q):
    """The loss of one row, in mpmath: edit together with the spec's formula."""
    top = max(row)
    log_p_label = row[label] - top - mpmath.log(sum(mpmath.exp(x - top) for x in row))
    return (1 - mpmath.exp(q * log_p_label)) / q
''', '''\
def test_loss_and_gradient_match_mpmath(loss):
    pred = np.array([row for row, _ in ROWS])
    label = np.array([y for _, y in ROWS])
    value, (d_pred,) = loss.value_and_grad(pred, label, q=Q, reduction="none")
    with mpmath.workdps(50):
        for r, (row, y) in enumerate(ROWS):
            exact = [mpmath.mpf(x) for x in row]
            want = reference(exact, y)
            assert abs(value[r] - want) <= 1e-12 * abs(want) + 1e-300, (row, y, value[r], want)
            for j in range(len(row)):
                def along_j(x, j=j):
                    return reference(exact[:j] + [x] + exact[j + 1:], y)

                slope = mpmath.diff(along_j, exact[j])
                assert abs(d_pred[r, j] - slope) <= 1e-12 * abs(slope) + 1e-300, (row, y, j, d_pred[r, j], slope)
''')


def write_skeleton(name, folder, class_axis=False):
    """Write ``NAME.yaml`` and ``test_NAME.py`` into ``folder`` (an element-wise loss, or with
    ``class_axis`` one over a class axis); returns their paths. Existing files are never
    overwritten; ``name`` must be a valid loss name."""
    _Validator("lossc new", {}).identifier(name, ("name",))  # before it is written anywhere
    spec_text = (CLASS_AXIS_SPEC if class_axis else ELEMENT_SPEC).replace("PARAMETERS", PARAMETERS).replace("NAME", name)
    spec_path, test_path = Path(folder) / f"{name}.yaml", Path(folder) / f"test_{name}.py"
    parse_spec_text(spec_text, str(spec_path))
    for path in (spec_path, test_path):
        if path.exists():
            raise SpecError(path, 0, "file", "already exists; `lossc new` does not overwrite files")
    Path(folder).mkdir(parents=True, exist_ok=True)
    spec_path.write_text(spec_text, encoding="utf-8")
    references, test = CLASS_AXIS_TEST if class_axis else ELEMENT_TEST
    points = "ROWS" if class_axis else "POINTS"
    text = TEST_HEAD.replace("POINTS", points) + references + TEST_FIXTURE + test
    test_path.write_text(text.replace("NAME", name), encoding="utf-8")
    return [spec_path, test_path]
