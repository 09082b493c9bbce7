"""What a command works on: losses of a built folder, named, or spec files compiled on the fly.

``lossc show``, ``accuracy`` and ``docs`` take loss names (looked up in the built folder:
``--generated DIR``, by default the installed ``lossc.generated`` package) and spec files
(anything ending in .yaml or .yml), which are built first into ``--out`` or a temporary
folder, exactly as ``lossc build SPEC --out DIR`` would. Every selected loss then comes with
its manifest, the folder its kernels are in and the spec copy that folder keeps.
"""
import contextlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lossc.core import targets
from lossc.core.targets import builtin_folder as package_folder

from .spec import SpecError, load_spec

SPEC_SUFFIXES = (".yaml", ".yml")


class SelectionError(ValueError):
    """A command's arguments select no loss, or name one that is not there."""


@dataclass
class Selected:
    """One loss a command works on."""

    name: str
    manifest: dict
    folder: Path  # the built folder holding its kernels

    @property
    def spec_path(self):
        """The copy of the spec the folder's kernels were built from."""
        path = self.folder / "specs" / self.manifest["spec_file"]
        if not path.is_file():
            raise SelectionError(f"{self.folder} has no specs/{self.manifest['spec_file']} (built by an older lossc?): "
                                 f"rebuild it with `lossc build SPEC --out {self.folder}`")
        return path


def manifests(folder):
    """{loss name: manifest} of the built ``folder``."""
    folder = Path(folder)
    if not (folder / "losses").is_dir():
        raise SelectionError(f"{folder} is not a built folder (it has no losses/): build into it with "
                             f"`lossc build SPEC --out {folder}`")
    found = {}
    for path in sorted((folder / "losses").glob("*.json")):
        data = targets.check_manifest(json.loads(path.read_text(encoding="utf-8")), path)
        found[data["name"]] = data
    return found


def is_spec_file(item):
    """Whether a command-line item names a spec file rather than a loss."""
    return item.endswith(SPEC_SUFFIXES)


@contextlib.contextmanager
def selection(items, generated=None, out=None, measure=True, log=lambda *_: None):
    """Yield the :class:`Selected` losses ``items`` name (all of the built folder's when there
    are none). Spec files among them are built into ``out`` (default: a temporary folder that
    is removed afterwards), measured unless ``measure`` is false, like ``lossc build``."""
    folder = Path(generated).resolve() if generated else package_folder()
    specs = [Path(item) for item in items if is_spec_file(item)]
    names = [item for item in items if not is_spec_file(item)]
    for path in specs:
        if not path.is_file():
            raise SpecError(path, 0, "file", "no such spec file")
    with contextlib.ExitStack() as stack:
        selected = _named(names, folder, everything=not items)
        if specs:
            built = Path(out) if out else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lossc-")))
            selected += _built(specs, built, measure, log)
        yield selected


def _named(names, folder, everything):
    """The losses called ``names`` in ``folder`` (all of them with ``everything``)."""
    if not names and not everything:
        return []
    known = manifests(folder)
    if everything and not known:
        raise SelectionError(f"{folder} holds no built losses")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SelectionError(f"no loss named {', '.join(repr(n) for n in unknown)} in {folder} "
                             f"(known: {', '.join(known) or 'none'}); a spec file is given by its path (NAME.yaml), "
                             "a folder built with `lossc build --out DIR` by --generated DIR")
    return [Selected(n, known[n], folder) for n in (names or known)]


def _built(specs, folder, measure, log):
    """Build ``specs`` into ``folder`` and select what they built."""
    from .build import build

    build(specs, folder, full=False, measure=measure, log=log)
    known = manifests(folder)
    names = [load_spec(path).name for path in specs]
    return [Selected(name, known[name], folder.resolve()) for name in names]
