"""The target registry (lossc.core.targets) and the versioned manifest it shares with the compiler."""
import importlib
import json

import numpy as np
import pytest

from conftest import GENERATED, run_cli

import lossc
from lossc.core import targets


def _manifests():
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((GENERATED / "losses").glob("*.json"))]


def _kernel_entries(manifest):
    return [*manifest["variants"], *manifest.get("pair_terms", [])]


def test_every_manifest_names_a_module_per_target_that_exports_its_protocol():
    checked = 0
    for manifest in _manifests():
        assert manifest["manifest_version"] == targets.MANIFEST_VERSION
        assert manifest["call_shape"] in targets.CALL_SHAPES
        for entry in _kernel_entries(manifest):
            assert entry["level"] in targets.LEVELS
            assert set(entry["modules"]) == set(targets.TARGETS), manifest["name"]
            for name, target in targets.TARGETS.items():
                module_name = entry["modules"][name]
                if target.folder is None or module_name is None:
                    continue
                module = importlib.import_module(f"lossc.generated.{target.folder}.{module_name}")
                missing = [e for e in target.exports if not hasattr(module, e)]
                assert not missing, f"{target.folder}/{module_name}.py lacks {missing}"
                checked += 1
    assert checked > 100  # every variant of every built-in loss on numpy, native, cupy and jax


def test_every_native_module_defines_the_entry_points_it_names():
    """The native target's modules are C++ of their own: SOURCE defines each extern "C" function
    KERNELS names (per kind and precision: run and sum element-wise, the row kernel over a class
    axis), with no reference to the CuPy module it shares device functions with."""
    modules = sorted((GENERATED / "native").glob("*.py"))
    for path in modules:
        if path.name == "__init__.py":
            continue
        module = importlib.import_module(f"lossc.generated.native.{path.stem}")
        assert set(module.KERNELS) == {"forward", "forward_backward"}, path.name
        for precisions in module.KERNELS.values():
            assert set(precisions) == {"float32", "float64"}, path.name
            for names in precisions.values():
                for name in (names if isinstance(names, tuple) else (names,)):
                    assert f'extern "C" double {name}(' in module.SOURCE or f'extern "C" void {name}(' in module.SOURCE
        assert "DEVICE_CODE" not in module.SOURCE and "cupy" not in module.SOURCE
    assert len(modules) > 30


def test_the_pair_loss_has_no_jax_module_and_says_so():
    sdml = lossc.get("sdml")
    assert [v["modules"]["jax"] for v in sdml.manifest["variants"]] == [None]
    with pytest.raises(NotImplementedError, match="jax target has no kernels"):
        targets.TARGETS["jax"].load(lambda *a: None, sdml.manifest["variants"][0])


def test_dispatch_names_registered_targets():
    assert set(targets.DISPATCH.values()) <= set(targets.TARGETS)


OLD_SPEC = """\
name: old_l2
summary: A squared error built, then tampered into another manifest version.
inputs:
  - {name: pred, role: prediction, differentiable: true}
  - {name: label, role: target, differentiable: false}
loss: (pred - label)**2
"""


def test_a_folder_built_by_another_manifest_version_is_refused_and_registers_nothing(tmp_path):
    out = tmp_path / "built"
    spec = tmp_path / "old_l2.yaml"
    spec.write_text(OLD_SPEC, encoding="utf-8")
    assert run_cli("build", str(spec), "--out", str(out), "--no-measure").returncode == 0
    manifest_file = out / "losses" / "old_l2.json"
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    manifest["manifest_version"] = 1
    manifest_file.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ValueError, match=r"old_l2.json: manifest version 1, this lossc reads version 2; rebuild"):
        lossc.register_generated(out)
    assert "old_l2" not in lossc.list_losses()
    del manifest["manifest_version"]
    manifest_file.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ValueError, match="manifest version None"):
        lossc.register_generated(out)


def test_the_same_loss_runs_alike_through_every_numpy_target():
    """numpy (ufunc) and native (compiled device code) kernels of one manifest entry agree."""
    loss = lossc.get("sigmoid_bce")
    entry = loss.manifest["variants"][0]
    load = targets.folder_loader(targets.builtin_folder())
    pred, label = np.linspace(-30, 30, 101), np.linspace(0, 1, 101)
    params = [p["default"] for p in loss.manifest["parameters"] if not p["variant"]]
    numpy_kernels = targets.TARGETS["numpy"].load(load, entry)
    native_kernels = targets.TARGETS["native"].load(load, entry)
    np.testing.assert_allclose(native_kernels.forward(pred, label, *params), numpy_kernels.forward(pred, label, *params),
                               rtol=1e-14)
