"""Shared fixtures: repository paths and optional oracles (torch) that skip cleanly."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
GENERATED = ROOT / "generated"


@pytest.fixture
def torch():
    """PyTorch (CPU) as an oracle; the test is skipped where it is not installed."""
    return pytest.importorskip("torch")


def spec_paths():
    """Every spec file of the repository."""
    return sorted(SPECS.glob("*.yaml"))
