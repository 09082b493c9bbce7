"""What a non-editable install holds: every package of the runtime, compiler and generated
folders is declared, and the public short module paths are the runtime's modules."""
import subprocess
import sys
import tomllib

from conftest import GENERATED, ROOT

from lossc.core import targets

PACKAGE_DIRS = {"lossc": ROOT / "lossc", "lossc.compiler": ROOT / "compiler", "lossc.generated": GENERATED}


def _declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return set(project["tool"]["setuptools"]["packages"])


def test_every_package_on_disk_is_declared():
    found = set()
    for name, folder in PACKAGE_DIRS.items():
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            found.add(".".join((name, *parts)))
    assert found - _declared() == set()
    assert _declared() - found == set()


def test_every_target_folder_is_a_declared_package():
    for folder in targets.folders():
        assert f"lossc.generated.{folder}" in _declared()
        assert (GENERATED / folder / "__init__.py").is_file()


def test_public_short_paths_are_the_runtime_modules():
    code = ("import lossc.gluon, lossc.native, lossc.layers.gluon, lossc.kernels.native, sys\n"
            "from lossc.ssd import SSDMultiBoxLoss\n"
            "from lossc.sampling import hard_negative_mask\n"
            "from lossc.mmdet import build_loss\n"
            "assert lossc.gluon is lossc.layers.gluon and lossc.native is lossc.kernels.native\n"
            "assert SSDMultiBoxLoss.__module__ == 'lossc.algorithms.ssd'\n"
            "assert hard_negative_mask.__module__ == 'lossc.algorithms.sampling'\n"
            "assert build_loss is lossc.layers.mmdet.build_loss\n"
            "assert not {'torch', 'jax', 'paddle'} & set(sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
