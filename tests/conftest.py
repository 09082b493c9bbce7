"""Shared fixtures: repository paths and optional oracles (torch) that skip cleanly."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
GENERATED = ROOT / "generated"


@pytest.fixture
def torch():
    """PyTorch (CPU) as an oracle; the test is skipped where it is not installed."""
    return pytest.importorskip("torch")


@pytest.fixture
def cupy():
    """CuPy with a CUDA device; the test is skipped without either."""
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception as err:  # noqa: BLE001 - no driver means no device
        pytest.skip(f"no CUDA device: {err}")
    return cupy


def run_cli(*args, env=None, cwd=ROOT):
    """``lossc ARGS`` in a fresh interpreter (its output captured as text)."""
    return subprocess.run([sys.executable, "-m", "lossc.compiler.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd)


def spec_paths():
    """Every spec file of the repository."""
    return sorted(SPECS.glob("*.yaml"))


def random_inputs(loss, rng, shape=(5, 4)):
    """Valid random inputs of a loss with a class axis (last) for a prediction of ``shape``:
    class indices or ±1 for row inputs, positive per-class weights, distributions for
    dense targets, normal values otherwise."""
    arrays = []
    for spec in loss.inputs:
        if spec["per"] == "row":
            if spec["class_index"] or loss.name == "focal":
                arrays.append(rng.integers(0, shape[-1], shape[0]))
            else:
                arrays.append(rng.choice([-1.0, 1.0], shape[0]))
        elif spec["role"] == "extra":
            arrays.append(rng.uniform(0.5, 2, shape[-1]))
        elif spec["role"] == "target" and not spec["differentiable"]:
            arrays.append(rng.dirichlet(np.ones(shape[-1]), shape[0]))
        else:
            arrays.append(rng.normal(0, 2, shape))
    return arrays


def random_call_inputs(loss, rng, shape=(5, 4)):
    """Arguments of a call to ``loss``: its pair inputs ((batch, features) each) when it has
    them, else random_inputs for a prediction of ``shape``."""
    if loss.pair_inputs:
        return [rng.normal(0, 1, shape) for _ in loss.pair_inputs]
    return random_inputs(loss, rng, shape)
