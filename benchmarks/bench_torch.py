"""PyTorch benchmark: forward + backward through lossc.torch vs torch eager vs torch.compile.

The same float32 tensors go through each: sigmoid focal (torchvision's formula), BCE with
logits and Huber at N = 1e4 … 1e7 elements, and softmax cross-entropy on rows × 1000
classes. Times are medians of back-to-back runs after a warm-up; ratios are baseline time
over lossc time measured in this same run (> 1: lossc is faster). The last column is the
per-call overhead of the lossc op path: its time minus the time of the kernel called
directly (lossc.get(...).value_and_grad on the NumPy views).

Run: python benchmarks/bench_torch.py [--sizes 1e4 1e5 1e6 1e7] [--rows 100 1000 10000] [--repeat 15]
"""
import argparse

import numpy as np
import torch

import lossc
import lossc.torch as lt
from bench_cpu import timed

F = torch.nn.functional


def torchvision_focal(x, y, alpha=0.25, gamma=2.0):
    """torchvision.ops.sigmoid_focal_loss(reduction='sum')."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    return ((alpha * y + (1 - alpha) * (1 - y)) * ce * (1 - p_t) ** gamma).sum()


ELEMENTWISE = {
    "sigmoid focal": (lambda x, y: lt.sigmoid_focal_loss(x, y, reduction="sum"), torchvision_focal,
                      ("sigmoid_focal", {})),
    "BCE": (lambda x, y: lt.binary_cross_entropy_with_logits(x, y, reduction="sum"),
            lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction="sum"), ("sigmoid_bce", {})),
    "Huber": (lambda x, y: lt.smooth_l1_loss(x, y, reduction="sum"),
              lambda x, y: F.smooth_l1_loss(x, y, reduction="sum"), ("huber", {})),
}


def fwd_bwd(fn, x, *rest):
    """One forward + backward of fn on a leaf tensor x."""
    def run():
        x.grad = None
        fn(x, *rest).backward()
    return run


def kernel_only(name, params, x, rest):
    arrays = [x.detach().numpy()] + [r.numpy() if isinstance(r, torch.Tensor) else r for r in rest]
    loss = lossc.get(name)
    return lambda: loss.value_and_grad(*arrays, reduction="sum", **params)


def row(label, n, ours, eager, compiled, overhead):
    return (f"| {label} | {n} | {ours * 1e3:.3f} | {eager * 1e3:.3f} | {compiled * 1e3:.3f} | "
            f"{eager / ours:.2f}× | {compiled / ours:.2f}× | {overhead * 1e6:.0f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6, 1e7])
    parser.add_argument("--rows", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {lossc.native.status()}")
    print("| loss | N | lossc.torch ms | eager ms | compile ms | vs eager | vs compile | op overhead µs |")
    print("|---|---|---|---|---|---|---|---|")
    for label, (ours, theirs, (name, params)) in ELEMENTWISE.items():
        compiled = torch.compile(theirs)
        for size in args.sizes:
            n = int(size)
            x = torch.randn(n).requires_grad_()
            y = (torch.rand(n) > 0.5).float()
            t_ours = timed(fwd_bwd(ours, x, y), args.repeat)
            t_eager = timed(fwd_bwd(theirs, x, y), args.repeat)
            t_compiled = timed(fwd_bwd(compiled, x, y), args.repeat)
            t_kernel = timed(kernel_only(name, params, x, [y.numpy()] if name != "sigmoid_bce" else [y.numpy(), 1.0]),
                             args.repeat)
            print(row(label, f"{size:.0e}", t_ours, t_eager, t_compiled, t_ours - t_kernel))
    compiled_ce = torch.compile(lambda x, t: F.cross_entropy(x, t, reduction="sum"))
    for rows in args.rows:
        x = (torch.randn(rows, 1000) * 3).requires_grad_()
        t = torch.randint(0, 1000, (rows,))
        t_ours = timed(fwd_bwd(lambda a, b: lt.cross_entropy(a, b, reduction="sum"), x, t), args.repeat)
        t_eager = timed(fwd_bwd(lambda a, b: F.cross_entropy(a, b, reduction="sum"), x, t), args.repeat)
        t_compiled = timed(fwd_bwd(compiled_ce, x, t), args.repeat)
        t_kernel = timed(kernel_only("softmax_ce", {"axis": 1}, x, [t.numpy()]), args.repeat)
        print(row("softmax CE", f"{rows}×1000", t_ours, t_eager, t_compiled, t_ours - t_kernel))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
