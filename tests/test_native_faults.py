"""Native kernels survive faults: a fork during a compile, a damaged cache, broken, hanging
or missing compilers, and builds killed half-way. Each falls back to (or rebuilds) exact
results, says why in ``lossc.native.status()``, and never takes the loss call down."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from lossc.kernels import native
from test_native import fake_native_module, needs_native

SCRIPT = textwrap.dedent("""\
    import numpy as np, lossc, lossc.native as n
    x = np.linspace(-9, 9, 1001)
    loss, (grad,) = lossc.get("sigmoid_bce").value_and_grad(x, (x > 0) * 1.0, reduction="none")
    p = 1 / (1 + np.exp(-x))
    assert np.allclose(grad, p - (x > 0), rtol=1e-12, atol=1e-15), "wrong gradient"
    print(n.status())
    """)
WORKING = "void lossc_ok_{k}_{p}({t} pred, {outs}) {{ *out0 = pred * 2; {extra} }}"


def working_native_module(tag):
    """A tiny native module (loss 2·pred, gradient 2) whose source is unique to ``tag``."""
    code = []
    for kind, outs, extra in (("forward", "{t}* out0", ""), ("forward_backward", "{t} g, {t}* out0, {t}* out1",
                                                            "*out1 = g * 2;")):
        for p, t in (("float32", "float"), ("float64", "double")):
            code.append(WORKING.format(k=kind, p=p, t=t, outs=outs.format(t=t), extra=extra))
    return fake_native_module(f"// {tag}\n" + "\n".join(code), function="lossc_ok")


def run_script(env, timeout=300):
    return subprocess.run([sys.executable, "-c", SCRIPT], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout)


def script_compiler(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(body)
    path.chmod(0o755)
    return str(path)


@needs_native
@pytest.mark.parametrize("damage", ["truncated", "empty", "random bytes", "other library"])
def test_a_damaged_cached_library_is_rebuilt_not_loaded(damage, tmp_path):
    env = {"LOSSC_CACHE_DIR": str(tmp_path)}
    assert run_script(env).returncode == 0
    libraries = sorted((tmp_path / "native").glob("*.so"))
    assert libraries
    for library in libraries:
        data = library.read_bytes()
        damaged = {"truncated": data[: len(data) // 2], "empty": b"",
                   "random bytes": np.random.default_rng(1).bytes(len(data)),
                   "other library": libraries[0].read_bytes() if library != libraries[0] else data[:100]}[damage]
        library.write_bytes(damaged)
    for _ in range(2):  # the first process rebuilds, the second loads what it rebuilt
        result = run_script(env)
        assert result.returncode == 0, (result.returncode, result.stderr[-2000:])  # SIGBUS would be -7
        assert result.stdout.startswith("native kernels"), result.stdout
    for library in sorted((tmp_path / "native").glob("*.so")):
        assert library.stem.split("-", 1)[1] == native._content_hash(library)


@needs_native
def test_a_fork_while_another_thread_compiles_does_not_deadlock(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSC_CACHE_DIR", str(tmp_path))
    slow = script_compiler(tmp_path, "slow-cxx", f"#!/bin/sh\ncase \"$*\" in *kernels.cpp*) sleep 3;; esac\n"
                                                 f"exec {native._compiler()} \"$@\"\n")
    monkeypatch.setenv("CXX", slow)
    compiling = threading.Thread(target=native.library, args=(working_native_module("parent"),))
    compiling.start()
    deadline = time.time() + 30
    while not native._lock.locked() and time.time() < deadline:
        time.sleep(0.01)
    assert native._lock.locked(), "the compile did not start"
    pid = os.fork()
    if pid == 0:  # the child: its own compile must not wait for the parent's thread
        try:
            ok = native.library(working_native_module("child")) is not None
            os._exit(0 if ok else 3)
        except BaseException:
            os._exit(4)
    try:
        for _ in range(600):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child deadlocked on the native build lock")
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        compiling.join()


@needs_native
@pytest.mark.parametrize("case", ["no shebang", "not executable text", "fails --version", "hangs on --version",
                                  "hangs compiling", "crashes compiling", "writes nothing"])
def test_a_broken_compiler_falls_back_with_the_reason(case, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_failures", [])
    monkeypatch.setattr(native, "VERSION_TIMEOUT", 1)
    monkeypatch.setenv("LOSSC_COMPILE_TIMEOUT", "1")
    real = native._compiler()
    bodies = {
        "no shebang": "echo not a program\n",
        "not executable text": "\x7fELF garbage",
        "fails --version": "#!/bin/sh\nexit 7\n",
        "hangs on --version": "#!/bin/sh\nsleep 60\n",
        "hangs compiling": f"#!/bin/sh\ncase \"$*\" in *kernels.cpp*) sleep 60;; esac\nexec {real} \"$@\"\n",
        "crashes compiling": f"#!/bin/sh\ncase \"$*\" in *kernels.cpp*) kill -9 $$;; esac\nexec {real} \"$@\"\n",
        "writes nothing": f"#!/bin/sh\ncase \"$*\" in *kernels.cpp*) exit 0;; esac\nexec {real} \"$@\"\n",
    }
    monkeypatch.setenv("CXX", script_compiler(tmp_path, f"cxx-{case.replace(' ', '-')}", bodies[case]))
    started = time.time()
    device = working_native_module(case)
    assert native.library(device) is None
    assert time.time() - started < 20
    assert "native build failed" in native.status() and "fake_native_module" in native.status()
    numpy_module = __import__("lossc.generated.numpy.l2", fromlist=["forward"])
    fallback = native.NativeModule(numpy_module, lambda: device)
    x = np.arange(5.0)
    np.testing.assert_array_equal(fallback.forward(x, np.ones(5)), numpy_module.forward(x, np.ones(5)))
    assert not list((tmp_path / "native").glob("*.so"))


def test_an_empty_cxx_means_the_default_compiler(monkeypatch):
    monkeypatch.setenv("CXX", "")
    import shutil

    assert native._compiler() == shutil.which("g++")


@needs_native
def test_build_folders_of_killed_builds_are_cleaned(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSC_CACHE_DIR", str(tmp_path))
    folder = native._cache_dir()
    stale, fresh = folder / f"{native.BUILD_PREFIX}killed", folder / f"{native.BUILD_PREFIX}running"
    for work in (stale, fresh):
        work.mkdir()
        (work / "kernels.cpp").write_text("// half-written")
    old = time.time() - native.STALE_BUILD_SECONDS - 60
    os.utime(stale, (old, old))
    assert native.library(working_native_module("cleanup")) is not None
    assert not stale.exists() and fresh.exists()  # a build that may still be running is left alone


@needs_native
def test_a_compile_killed_by_sigkill_leaves_nothing_that_is_loaded(tmp_path):
    env = {**os.environ, "LOSSC_CACHE_DIR": str(tmp_path)}
    child = subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "native").glob(f"{native.BUILD_PREFIX}*")):
        time.sleep(0.01)
    child.kill()
    child.wait()
    assert not [p for p in (tmp_path / "native").glob("*.so") if p.stem.split("-", 1)[1] != native._content_hash(p)]
    result = run_script({"LOSSC_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0 and result.stdout.startswith("native kernels"), result.stderr
