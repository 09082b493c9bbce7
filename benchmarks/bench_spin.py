"""Spin or sleep: the native thread pool's helpers after a call, measured as training uses them.

After each job a helper spins ``LOSSC_SPIN_MICROSECONDS`` (default 200) before sleeping, so
back-to-back calls find it awake; a spinning helper also burns CPU that torch's own threads
(or a container's quota) may want. Each setting runs in its own process, in the same run:
lossc calls back to back, and a loop alternating a lossc call with torch work (a matmul and a
ReLU on torch's threads), the pattern of a training step; "torch alone" is a control with no
lossc call (its spread between processes is the machine's noise). Medians of the
per-iteration time; the ratio is the no-spin time over the spin time (> 1: spinning is faster).

Run: python benchmarks/bench_spin.py [--spins 0 50 200 1000] [--size 1e5] [--iterations 200]
"""
import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np
import lossc
size, iterations = int(float(sys.argv[1])), int(sys.argv[2])
rng = np.random.default_rng(0)
x = rng.normal(0, 3, size).astype(np.float32)
y = (rng.random(size) < 0.3).astype(np.float32)
focal = lossc.get("sigmoid_focal")
step = lambda: focal.value_and_grad(x, y, reduction="sum")
def median_loop(body):
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        body()
        times.append(time.perf_counter() - start)
    return float(np.median(times))
result = {"back to back": median_loop(step)}
try:
    import torch
except ImportError:
    torch = None
if torch is not None:
    a = torch.randn(384, 384)
    def alternate():
        step()
        torch.relu(a @ a)
    result["alternating with torch"] = median_loop(alternate)
    result["torch alone"] = median_loop(lambda: torch.relu(a @ a))
print(json.dumps(result))
"""


def measure(spin, size, iterations):
    """{case: seconds per iteration} of one process with the helpers spinning ``spin`` µs."""
    env = dict(os.environ, LOSSC_SPIN_MICROSECONDS=str(spin))
    run = subprocess.run([sys.executable, "-c", CHILD, str(size), str(iterations)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spins", type=int, nargs="+", default=[0, 50, 200, 1000])
    parser.add_argument("--size", type=float, default=1e5)
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args()
    results = {spin: measure(spin, args.size, args.iterations) for spin in args.spins}
    cases = list(results[args.spins[0]])
    print(f"sigmoid focal value_and_grad, N = {args.size:g}, float32; µs per iteration (median)")
    print("| spin µs | " + " | ".join(cases) + " |")
    print("|---|" + "---|" * len(cases))
    for spin, times in results.items():
        print(f"| {spin} | " + " | ".join(f"{times[c] * 1e6:.1f}" for c in cases) + " |")
    if 0 in results:
        for spin in (s for s in args.spins if s):
            ratios = ", ".join(f"{c} {results[0][c] / results[spin][c]:.2f}x" for c in cases)
            print(f"no spin / spin {spin} µs: {ratios}")


if __name__ == "__main__":
    main()
