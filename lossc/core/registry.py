"""Which losses exist: the built-in ``lossc.generated`` ones plus folders users built."""
import json
from pathlib import Path

from . import exposure, targets
from .targets import builtin_folder, folder_loader
from .loss import Loss

_losses = {}
_origins = {}  # name → the built folder it was registered from
_builtin_loaded = False
_hooks = []


def _load_builtin():
    global _builtin_loaded
    if not _builtin_loaded:
        _builtin_loaded = True
        _register_folder(builtin_folder(), folder_loader(builtin_folder()))


def _register_folder(folder, load_module, replace=False):
    """Register every loss of the built ``folder``. Registering a folder again (after rebuilding
    it, or twice in one session) refreshes its losses; a name another folder registered is an
    error unless ``replace``."""
    manifests = [targets.check_manifest(json.loads(p.read_text(encoding="utf-8")), p)
                 for p in sorted(Path(folder, "losses").glob("*.json"))]
    for manifest in manifests:  # every loss checked before any is registered
        name = manifest["name"]
        if name in _losses and _origins[name] != folder and not replace:
            raise ValueError(f"a loss named '{name}' is already registered from {_origins[name]}; pass "
                             "replace=True to override it")
        _check_exposure(manifest)
    for manifest in manifests:
        _losses[manifest["name"]], _origins[manifest["name"]] = Loss(manifest, load_module), folder
    for hook in _hooks:
        hook()
    return [manifest["name"] for manifest in manifests]


def _check_exposure(manifest):
    """A loss's ``exposed_as`` names fit the layers: no handwritten API of another spec, no
    adapter name another registered loss has."""
    for layer, layer_name in manifest.get("exposed_as", {}).items():
        problem = exposure.conflict(layer, layer_name, manifest["name"])
        taken = exposure.adapters([loss.manifest for loss in _losses.values()], layer).get(layer_name)
        if problem is None and taken not in (None, manifest["name"]):
            problem = f"lossc.{layer}.{layer_name} is already the registered loss '{taken}'"
        if problem:
            raise ValueError(f"{manifest['name']}: exposed_as {layer}: {layer_name}: {problem}")


def exposed(layer):
    """{Name: loss name}: the generic adapters ``layer`` offers for the registered losses'
    ``exposed_as`` (:mod:`lossc.core.exposure`)."""
    _load_builtin()
    return exposure.adapters([loss.manifest for loss in _losses.values()], layer)


def on_register(hook):
    """Call ``hook()`` after every registration (a layer that keeps its own registry, such as
    mmengine's, adds the new adapters)."""
    _hooks.append(hook)


def register_generated(folder, replace=False):
    """Register the losses a ``lossc build SPEC --out FOLDER`` wrote; returns their names.
    The package's own folder (``lossc build SPEC`` without --out) is registered already: its
    names are returned."""
    _load_builtin()
    folder = Path(folder).resolve()
    if not (folder / "losses").is_dir():
        raise FileNotFoundError(f"{folder} has no losses/ folder: build into it with `lossc build SPEC --out {folder}`")
    return _register_folder(folder, folder_loader(folder), replace)


def list_losses():
    """Names of every registered loss, sorted."""
    _load_builtin()
    return sorted(_losses)


def get(name):
    """The :class:`Loss` called ``name``; a KeyError lists the known names."""
    _load_builtin()
    if name not in _losses:
        raise KeyError(f"unknown loss {name!r}; known: {', '.join(sorted(_losses))}")
    return _losses[name]
