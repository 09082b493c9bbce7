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

Run: python benchmarks/bench_cpu.py [--sizes 1e6 1e7] [--repeat 15]
"""
import argparse
import os
import statistics
import time
import tracemalloc

import numpy as np

import lossc
from lossc import native


WARM_UP_SECONDS = 0.25  # an idle vCPU runs slow for ~50 ms after waking: every function warms up first


def timed(fn, repeat):
    """Median wall time of ``fn()`` over ``repeat`` back-to-back runs, after warming up."""
    start = time.perf_counter()
    fn()
    while time.perf_counter() - start < WARM_UP_SECONDS:
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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
    from lossc.ctc import ctc_loss

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
          f"torch {t_torch*1e3:.2f} ms, lossc/torch time {t_ours/t_torch:.2f} (target <= 2)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7])
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
    softmax_ce(rng, args.repeat, torch_info)
    ctc(rng, args.repeat, torch_info)
    if torch_info:
        print(f"torch {torch_info[0].__version__}, {torch_info[0].get_num_threads()} threads; numpy {np.__version__}")


if __name__ == "__main__":
    main()
