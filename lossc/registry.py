"""Which losses exist: the built-in ``lossc.generated`` ones plus folders users built."""
import hashlib
import importlib
import importlib.util
import json
from pathlib import Path

from .loss import Loss

_losses = {}
_builtin_loaded = False


def _builtin_dir():
    import lossc.generated

    return Path(lossc.generated.__file__).resolve().parent


def _load_builtin():
    global _builtin_loaded
    if not _builtin_loaded:
        _builtin_loaded = True
        _register_folder(_builtin_dir(),
                         lambda module, backend="numpy": importlib.import_module(f"lossc.generated.{backend}.{module}"))


def _register_folder(folder, load_module, replace=False):
    names = []
    for path in sorted(Path(folder, "losses").glob("*.json")):
        manifest = json.loads(path.read_text(encoding="utf-8"))
        name = manifest["name"]
        if name in _losses and not replace:
            raise ValueError(f"a loss named '{name}' is already registered; pass replace=True to override it")
        _losses[name] = Loss(manifest, load_module)
        names.append(name)
    return names


def register_generated(folder, replace=False):
    """Register the losses a ``lossc build SPEC --out FOLDER`` wrote; returns their names."""
    _load_builtin()
    folder = Path(folder).resolve()
    if not (folder / "losses").is_dir():
        raise FileNotFoundError(f"{folder} has no losses/ folder: build into it with `lossc build SPEC --out {folder}`")
    tag = hashlib.sha1(str(folder).encode()).hexdigest()[:10]

    def load_module(module, backend="numpy"):
        qualified = f"lossc_user_{tag}_{backend}_{module}"
        spec = importlib.util.spec_from_file_location(qualified, folder / backend / f"{module}.py")
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        return loaded

    return _register_folder(folder, load_module, replace)


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
