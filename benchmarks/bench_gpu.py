"""GPU benchmark (needs CuPy and a CUDA device; PyTorch for the comparisons).

For N = 1e6, 1e7, 1e8 float32 it times the fused forward+backward of sigmoid focal,
SigmoidBCE and Huber (one kernel launch each) and reports the achieved bandwidth (bytes that
must move: the inputs read plus the loss and gradient written) against a device-to-device copy
measured in the same run, and the time against PyTorch eager forward+backward and
torch.compile on the same data. Softmax CE runs on (N / 1000) rows × 1000 classes: its
reduction kernels (one per row statistic) plus the fused loss-and-gradient kernel, against
F.cross_entropy(reduction='none') forward+backward. CTC (B=32, T=200, alphabet 30, label length
40, the CuPy RawKernel) runs against torch's CUDA ctc_loss forward+backward.

Run on a GPU machine: python benchmarks/bench_gpu.py
"""
import sys

import numpy as np

from bench_cpu import torch_loss_functions  # benchmarks/ is on sys.path when run as a script


def cuda_time(cupy, fn, repeat=20):
    """Median milliseconds of fn() on the device, timed with CUDA events after a warm-up."""
    fn()
    cupy.cuda.Device().synchronize()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(repeat):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return float(np.median(times))


def main():
    try:
        import cupy
    except ImportError:
        sys.exit("bench_gpu needs CuPy and a CUDA device (pip install -e .[cuda])")
    import lossc

    try:
        import torch
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    print(f"device: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}")
    print(f"{'loss':14s} {'N':>6s} {'lossc ms':>9s} {'GB/s':>8s} {'copy GB/s':>9s} {'% copy':>7s} "
          f"{'eager ms':>9s} {'compile ms':>10s} {'vs eager':>9s} {'vs compile':>10s}")
    for n in (10**6, 10**7, 10**8):
        x = cupy.asarray(rng.normal(0, 3, n).astype(np.float32))
        y = cupy.asarray((rng.random(n) > 0.5).astype(np.float32))
        out = cupy.empty_like(x)
        copy_ms = cuda_time(cupy, lambda: cupy.copyto(out, x))
        copy_gbs = 2 * x.nbytes / copy_ms / 1e6
        for name in ("sigmoid_focal", "sigmoid_bce", "huber"):
            module = lossc.get(name).bind((x, y), {}).module
            ms = cuda_time(cupy, lambda: module.forward_backward(x, y))
            moved = 4 * x.nbytes  # read pred and label, write loss and gradient
            torch_fn = torch_loss_functions(torch)[name] if torch is not None else None
            report(cupy, torch, name, n, ms, moved, copy_gbs, torch_fn, x, y)
        logits = x.reshape(-1, 1000)
        labels = cupy.asarray(rng.integers(0, 1000, logits.shape[0]))
        module = lossc.get("softmax_ce").bind((logits, labels), {}).module
        ms = cuda_time(cupy, lambda: module.forward_backward(logits, labels))
        moved = 2 * x.nbytes + labels.nbytes + 4 * labels.size  # pred in, gradient out, labels in, row loss out
        torch_fn = (lambda a, b: torch.nn.functional.cross_entropy(a, b, reduction="none")) if torch is not None else None
        report(cupy, torch, "softmax_ce", n, ms, moved, copy_gbs, torch_fn, logits, labels)
    bench_ctc(cupy, torch, rng)


def bench_ctc(cupy, torch, rng):
    """CTC fwd+bwd, B=32 T=200 C=30 L=40 float32: lossc's RawKernel vs torch CUDA ctc_loss."""
    from lossc.algorithms.ctc import ctc_loss

    batch, steps, alphabet, length = 32, 200, 30, 40
    scores = rng.normal(0, 1, (batch, steps, alphabet)).astype(np.float32)
    labels = rng.integers(1, alphabet, (batch, length))
    x, y = cupy.asarray(scores), cupy.asarray(labels)
    ms = cuda_time(cupy, lambda: ctc_loss.value_and_grad(x, y, reduction="sum"))
    line = f"ctc B={batch} T={steps} C={alphabet} L={length}: lossc {ms:.3f} ms"
    if torch is not None:
        xt = torch.as_tensor(x, device="cuda")
        yt = torch.as_tensor(y, device="cuda")
        lengths = (torch.full((batch,), steps, dtype=torch.long, device="cuda"),
                   torch.full((batch,), length, dtype=torch.long, device="cuda"))

        def step():
            xg = xt.detach().requires_grad_(True)
            log_probs = torch.nn.functional.log_softmax(xg, -1).transpose(0, 1)
            torch.nn.functional.ctc_loss(log_probs, yt, *lengths, blank=0, reduction="sum").backward()

        torch_ms = cuda_time(cupy, step)
        line += f", torch {torch_ms:.3f} ms, lossc/torch time {ms / torch_ms:.2f}"
    print(line)


def report(cupy, torch, name, n, ms, moved, copy_gbs, torch_fn, x, y):
    """Print one row: lossc's time and bandwidth, and PyTorch eager / torch.compile fwd+bwd times."""
    gbs = moved / ms / 1e6
    eager = compiled = float("nan")
    if torch_fn is not None:
        xt, yt = torch.as_tensor(x, device="cuda"), torch.as_tensor(y, device="cuda")

        def step(f=torch_fn):
            xg = xt.detach().requires_grad_(True)
            out = f(xg, yt)
            out.backward(torch.ones_like(out))

        eager = cuda_time(cupy, step)
        compiled_fn = torch.compile(torch_fn)
        compiled = cuda_time(cupy, lambda: step(compiled_fn))
    print(f"{name:14s} {n:6.0e} {ms:9.3f} {gbs:8.1f} {copy_gbs:9.1f} {100 * gbs / copy_gbs:6.1f}% "
          f"{eager:9.3f} {compiled:10.3f} {eager / ms:8.2f}x {compiled / ms:9.2f}x")


if __name__ == "__main__":
    main()
