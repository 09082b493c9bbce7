"""CPU benchmark: fused forward+backward of generated kernels vs baselines, in one run.

Also softmax cross-entropy forward+backward on (10000, 1000) float32 against PyTorch CPU
eager, with the peak memory it allocates beyond its outputs (tracemalloc).

For sigmoid focal, SigmoidBCE and Huber at N = 1e6 and 1e7 float32 it prints the median
time of: the lossc fused kernel (loss + gradient) as users get it (native CPU kernels where
a C++ compiler exists, see lossc.native), the generated NumPy kernels (LOSSC_NATIVE=0), the
same loss and hand-derived gradient written as plain NumPy expressions, PyTorch CPU eager
forward + backward (if installed), and one ``np.add(a, b, out=c)`` streaming pass (the
memory-bandwidth floor). Ratios are against the baselines measured in this same run, never
against stored numbers.

Then the same three losses through the public API (``lossc.get(name).value_and_grad(...,
reduction='sum')``, the fast path) at N = 1e3 … 1e7 against their raw reducing kernel, PyTorch
eager, ``torch.compile`` and ``jax.jit(jax.value_and_grad(optax ...))`` where installed.

Run: python benchmarks/bench_cpu.py [--sizes 1e6 1e7] [--api-sizes 1e3 1e5] [--repeat 15]
"""
import argparse
import os
import statistics
import time
import tracemalloc

import numpy as np

import lossc
from lossc.kernels import native


WARM_UP_SECONDS = 0.25  # an idle vCPU runs slow for ~50 ms after waking: every function warms up first


def timed(fn, repeat):
    """Median wall time of ``fn()`` over ``repeat`` back-to-back runs, after warming up."""
    return timed_together([fn], repeat)[0]


def timed_together(fns, repeat):
    """Median wall time of each of ``fns`` over ``repeat`` rounds, after warming each up; every
    round runs each once, in turn, so a slow spell of a noisy machine hits all of them alike."""
    for fn in fns:
        start = time.perf_counter()
        fn()
        while time.perf_counter() - start < WARM_UP_SECONDS:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, spent in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - t0)
    return [statistics.median(spent) for spent in times]


def without_native(fn):
    """``fn`` run with the native kernels switched off (LOSSC_NATIVE=0): the NumPy kernels."""
    def run():
        previous = os.environ.get("LOSSC_NATIVE")
        os.environ["LOSSC_NATIVE"] = "0"
        try:
            return fn()
        finally:
            if previous is None:
                del os.environ["LOSSC_NATIVE"]
            else:
                os.environ["LOSSC_NATIVE"] = previous

    return run


def numpy_focal(x, y, alpha=0.25, gamma=2.0):
    p = 1 / (1 + np.exp(-x))
    ce = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
    p_t = p * y + (1 - p) * (1 - y)
    a_t = alpha * y + (1 - alpha) * (1 - y)
    mod = (1 - p_t) ** gamma
    loss = a_t * ce * mod
    dce = p - y
    dmod = gamma * (1 - p_t) ** (gamma - 1) * -(y - (1 - y)) * p * (1 - p)
    return loss, a_t * (dce * mod + ce * dmod)


def numpy_bce(x, y):
    loss = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
    return loss, 1 / (1 + np.exp(-x)) - y


def numpy_huber(x, y, rho=1.0):
    d = x - y
    a = np.abs(d)
    small = a < rho
    return np.where(small, 0.5 * d * d / rho, a - 0.5 * rho), np.where(small, d / rho, np.sign(d))


def torch_loss_functions(torch):
    """The element losses in PyTorch ops (focal as torchvision.ops.sigmoid_focal_loss computes it)."""
    F = torch.nn.functional

    def focal(x, y, alpha=0.25, gamma=2.0):
        p = torch.sigmoid(x)
        ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        p_t = p * y + (1 - p) * (1 - y)
        return (alpha * y + (1 - alpha) * (1 - y)) * ce * (1 - p_t) ** gamma

    return {
        "sigmoid_focal": focal,
        "sigmoid_bce": lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction="none"),
        "huber": lambda x, y: F.smooth_l1_loss(x, y, reduction="none", beta=1.0),
    }


def torch_cases():
    """(torch, {name: eager forward+backward on CPU tensors}), or None without torch."""
    try:
        import torch
    except ImportError:
        return None

    def run(fn):
        def go(x, y):
            xt = x.detach().requires_grad_(True)
            fn(xt, y).backward(torch.ones_like(xt))
            return xt.grad

        return go

    return torch, {name: run(fn) for name, fn in torch_loss_functions(torch).items()}


CASES = {
    "sigmoid_focal": ("sigmoid_focal", {}, numpy_focal, "binary"),
    "sigmoid_bce": ("sigmoid_bce", {}, numpy_bce, "binary"),
    "huber": ("huber", {}, numpy_huber, "real"),
}


def optax_losses():
    """{name: element loss in jax.numpy via optax}, or None without jax/optax."""
    try:
        import jax
        import optax
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", False)
    return jax, {
        "sigmoid_focal": lambda x, y: optax.sigmoid_focal_loss(x, y, alpha=0.25, gamma=2.0),
        "sigmoid_bce": optax.sigmoid_binary_cross_entropy,
        "huber": lambda x, y: optax.huber_loss(x, y, delta=1.0),
    }


def raw_kernel(loss, x, y):
    """The reducing native kernel the public path runs, called with its arguments ready."""
    function, names = loss.fast_path._kernel(tuple(sorted(loss.fast_path.variant_defaults.items())), x.dtype, True)
    extra = [np.full(1, spec["default"], x.dtype) for spec in loss.inputs[2:]]
    upstream, grad = np.ones(1, x.dtype), np.empty_like(x)
    params = [loss.parameters[n]["default"] for n in names]
    arguments = [x.size, x.ctypes.data, 1, y.ctypes.data, 1]
    for array in extra + [upstream]:
        arguments += [array.ctypes.data, 0]
    arguments += params + [grad.ctypes.data, native.WORKERS]
    held = (x, y, extra, upstream, grad)  # the kernel writes into grad: keep every buffer alive

    def run():
        return function(*arguments), held
    return run


def torch_step(fn, xt, yt):
    """One forward + backward of ``fn`` on the leaf tensor ``xt``."""
    def run():
        xt.grad = None
        fn(xt, yt).backward()
    return run


def public_api(rng, sizes, repeat, torch_info):
    """Element-wise losses fwd+bwd, reduction 'sum', float32, as users call them, one run:
    ``lossc.get(name).value_and_grad`` vs its raw kernel, torch eager, torch.compile and
    ``jax.jit(jax.value_and_grad(optax ... .sum()))``."""
    jax_info = optax_losses()
    print("\n| loss | N | lossc µs | raw kernel µs | public/raw | torch eager µs | torch.compile µs | jax.jit µs "
          "| vs eager | vs faster compiler |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    compiled = {}
    for name in CASES:
        for size in sizes:
            n = int(size)
            x = rng.normal(0, 3, n).astype(np.float32)
            y = (rng.random(n) > 0.5).astype(np.float32) if CASES[name][3] == "binary" else \
                rng.normal(0, 3, n).astype(np.float32)
            loss = lossc.get(name)
            t_public, t_raw = timed_together([lambda: loss.value_and_grad(x, y, reduction="sum"),
                                              raw_kernel(loss, x, y)], repeat)
            t_eager = t_compile = t_jax = float("nan")
            if torch_info:
                torch = torch_info[0]
                fn = torch_loss_functions(torch)[name]
                compiled.setdefault(name, torch.compile(lambda a, b, fn=fn: fn(a, b).sum()))
                xt, yt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(y)
                t_eager = timed(torch_step(lambda a, b: fn(a, b).sum(), xt, yt), repeat)
                t_compile = timed(torch_step(compiled[name], xt, yt), repeat)
            if jax_info:
                jax, optax_fns = jax_info
                grad_fn = jax.jit(jax.value_and_grad(lambda a, b, f=optax_fns[name]: f(a, b).sum()))
                xj, yj = jax.numpy.asarray(x), jax.numpy.asarray(y)
                t_jax = timed(lambda: jax.block_until_ready(grad_fn(xj, yj)), repeat)
            measured = [t for t in (t_compile, t_jax) if not np.isnan(t)]
            faster = min(measured) if measured else float("nan")
            print(f"| {name} | {size:.0e} | {t_public*1e6:.1f} | {t_raw*1e6:.1f} | {t_public/t_raw:.2f} | "
                  f"{t_eager*1e6:.1f} | {t_compile*1e6:.1f} | {t_jax*1e6:.1f} | {t_eager/t_public:.2f}× | "
                  f"{faster/t_public:.2f}× |")


def public_softmax_ce(rng, shapes, repeat, torch_info):
    """Softmax cross-entropy fwd+bwd, reduction 'sum', float32, as users call it
    (``lossc.get('softmax_ce').value_and_grad``: the native row kernels) vs torch eager,
    torch.compile and jax.jit(value_and_grad(optax)), in one run."""
    jax_info = optax_losses()
    print("\n| softmax CE | lossc ms | torch eager ms | torch.compile ms | jax.jit ms | vs eager | vs faster compiler |")
    print("|---|---|---|---|---|---|---|")
    loss = lossc.get("softmax_ce")
    compiled = None
    for rows, classes in shapes:
        x = rng.normal(0, 3, (rows, classes)).astype(np.float32)
        y = rng.integers(0, classes, rows)
        t_public = timed(lambda: loss.value_and_grad(x, y, reduction="sum"), repeat)
        t_eager = t_compile = t_jax = float("nan")
        if torch_info:
            torch = torch_info[0]
            F = torch.nn.functional
            compiled = compiled or torch.compile(lambda a, b: F.cross_entropy(a, b, reduction="sum"))
            xt, yt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(y)
            t_eager = timed(torch_step(lambda a, b: F.cross_entropy(a, b, reduction="sum"), xt, yt), repeat)
            t_compile = timed(torch_step(compiled, xt, yt), repeat)
        if jax_info:
            jax = jax_info[0]
            import optax

            grad_fn = jax.jit(jax.value_and_grad(
                lambda a, b: optax.softmax_cross_entropy_with_integer_labels(a, b).sum()))
            xj, yj = jax.numpy.asarray(x), jax.numpy.asarray(y)
            t_jax = timed(lambda: jax.block_until_ready(grad_fn(xj, yj)), repeat)
        measured = [t for t in (t_compile, t_jax) if not np.isnan(t)]
        faster = min(measured) if measured else float("nan")
        print(f"| {rows}×{classes} | {t_public*1e3:.2f} | {t_eager*1e3:.2f} | {t_compile*1e3:.2f} | {t_jax*1e3:.2f} | "
              f"{t_eager/t_public:.2f}× | {faster/t_public:.2f}× |")


def softmax_ce(rng, repeat, torch_info, rows=10000, classes=1000):
    """Softmax CE fwd+bwd on (rows, classes) float32: time vs torch eager, peak extra memory."""
    x = rng.normal(0, 3, (rows, classes)).astype(np.float32)
    y = rng.integers(0, classes, rows)
    module = lossc.get("softmax_ce").bind((x, y), {}).module
    t_ours = timed(lambda: module.forward_backward(x, y), repeat)
    tracemalloc.start()
    loss, (grad,) = module.forward_backward(x, y)
    extra = tracemalloc.get_traced_memory()[1] - loss.nbytes - grad.nbytes
    tracemalloc.stop()
    t_torch = float("nan")
    if torch_info:
        torch = torch_info[0]
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def run():
            xg = xt.detach().requires_grad_(True)
            torch.nn.functional.cross_entropy(xg, yt, reduction="none").backward(torch.ones(rows))
            return xg.grad

        t_torch = timed(run, repeat)
    print(f"softmax_ce {rows}x{classes} float32: lossc {t_ours*1e3:.2f} ms, torch eager {t_torch*1e3:.2f} ms, "
          f"{t_torch/t_ours:.2f}x; extra memory beyond outputs {extra/2**20:.2f} MiB "
          f"(one rows x classes buffer = {x.nbytes/2**20:.1f} MiB)")


def ctc(rng, repeat, torch_info, batch=32, steps=200, alphabet=30, label_length=40):
    """CTC fwd+bwd (B=32, T=200, alphabet 30, label length 40) vs PyTorch CPU ctc_loss."""
    from lossc.algorithms.ctc import ctc_loss

    x = rng.normal(0, 1, (batch, steps, alphabet)).astype(np.float32)
    labels = rng.integers(1, alphabet, (batch, label_length))
    t_ours = timed(lambda: ctc_loss.value_and_grad(x, labels, reduction="sum"), repeat)
    t_torch = float("nan")
    if torch_info:
        torch = torch_info[0]
        xt = torch.from_numpy(x.transpose(1, 0, 2).copy())
        lt = torch.from_numpy(labels)
        lengths = torch.full((batch,), steps), torch.full((batch,), label_length)

        def run():
            xg = xt.detach().requires_grad_(True)
            torch.nn.functional.ctc_loss(xg.log_softmax(2), lt, *lengths, reduction="sum").backward()
            return xg.grad

        t_torch = timed(run, repeat)
    print(f"ctc B={batch} T={steps} C={alphabet} L={label_length}: lossc {t_ours*1e3:.2f} ms, "
          f"torch {t_torch*1e3:.2f} ms, {t_torch/t_ours:.2f}x torch (target >= 1.5x; native host code, "
          f"recursions in double)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7])
    parser.add_argument("--api-sizes", nargs="+", type=float, default=[1e3, 1e4, 1e5, 1e6, 1e7])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    torch_info = torch_cases()
    rng = np.random.default_rng(0)
    print(f"lossc kernels: {native.status()}")
    header = f"{'loss':14s} {'N':>6s} {'lossc ms':>9s} {'np-krn ms':>9s} {'numpy ms':>9s} {'torch ms':>9s} " \
             f"{'np.add ms':>9s} {'vs np-krn':>9s} {'vs numpy':>9s} {'vs torch':>9s} {'x np.add':>9s}"
    print(header)
    for size in args.sizes:
        n = int(size)
        x = rng.normal(0, 3, n).astype(np.float32)
        binary = (rng.random(n) > 0.5).astype(np.float32)
        real = rng.normal(0, 3, n).astype(np.float32)
        out = np.empty_like(x)
        for label, (name, params, plain, kind) in CASES.items():
            y = binary if kind == "binary" else real
            module = lossc.get(name).bind((x, y), params).module
            ours = lambda: module.forward_backward(x, y, **params)  # noqa: E731
            fns = [ours, without_native(ours), lambda: plain(x, y), lambda: np.add(x, real, out=out)]
            if torch_info:
                torch, cases = torch_info
                xt, yt = torch.from_numpy(x), torch.from_numpy(y)
                fns.append(lambda: cases[label](xt, yt))
            t_ours, t_kernels, t_numpy, t_add, *rest = [timed(fn, args.repeat) for fn in fns]
            t_torch = rest[0] if rest else float("nan")
            print(f"{label:14s} {size:6.0e} {t_ours*1e3:9.2f} {t_kernels*1e3:9.2f} {t_numpy*1e3:9.2f} "
                  f"{t_torch*1e3:9.2f} {t_add*1e3:9.2f} {t_kernels/t_ours:8.2f}x {t_numpy/t_ours:8.2f}x "
                  f"{t_torch/t_ours:8.2f}x {t_ours/t_add:8.2f}x")
    public_api(rng, args.api_sizes, args.repeat, torch_info)
    public_softmax_ce(rng, [(100, 1000), (1000, 1000), (10000, 1000), (512, 32000)], args.repeat, torch_info)
    softmax_ce(rng, args.repeat, torch_info)
    ctc(rng, args.repeat, torch_info)
    if torch_info:
        print(f"torch {torch_info[0].__version__}, {torch_info[0].get_num_threads()} threads; numpy {np.__version__}")


if __name__ == "__main__":
    main()
