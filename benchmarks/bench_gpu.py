"""GPU benchmark (needs CuPy and a CUDA device; PyTorch for the comparisons).

For N = 1e6, 1e7, 1e8 float32 it times the fused forward+backward of sigmoid focal,
SigmoidBCE and Huber (one kernel launch each) and reports the achieved bandwidth (bytes that
must move: the inputs read plus the loss and gradient written) against a device-to-device copy
measured in the same run, and the time against PyTorch eager forward+backward and
torch.compile on the same data. Softmax CE has no CuPy kernels yet and is reported as such.

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
            gbs = 4 * x.nbytes / ms / 1e6  # read pred and label, write loss and gradient
            eager = compiled = float("nan")
            if torch is not None:
                xt, yt = torch.as_tensor(x, device="cuda"), torch.as_tensor(y, device="cuda")
                fn = torch_loss_functions(torch)[name]

                def step(f=fn):
                    xg = xt.detach().requires_grad_(True)
                    f(xg, yt).backward(torch.ones_like(xg))

                eager = cuda_time(cupy, step)
                compiled_fn = torch.compile(fn)
                compiled = cuda_time(cupy, lambda: step(compiled_fn))
            print(f"{name:14s} {n:6.0e} {ms:9.3f} {gbs:8.1f} {copy_gbs:9.1f} {100 * gbs / copy_gbs:6.1f}% "
                  f"{eager:9.3f} {compiled:10.3f} {eager / ms:8.2f}x {compiled / ms:9.2f}x")
    print("softmax_ce: no CuPy kernels yet (row reductions are NumPy-only in this version)")


if __name__ == "__main__":
    main()
