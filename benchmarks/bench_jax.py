"""JAX benchmark: lossc.jax vs optax under ``jax.jit(jax.value_and_grad(...))`` on the CPU.

The same float32 arrays go through both: sigmoid focal, sigmoid BCE and Huber at
N = 1e4 … 1e7 elements (reduction 'sum'), softmax cross-entropy with integer labels on
rows × 1000 classes. Times are medians after a warm-up (compilation excluded), the two
timed in alternation; the ratio is optax's time over lossc's, measured in this same run
(> 1: lossc is faster). XLA fuses both; lossc's edge is exactness at extreme inputs, and it
must not cost speed.

Run: python benchmarks/bench_jax.py [--sizes 1e4 1e5 1e6 1e7] [--rows 100 1000 10000] [--repeat 15]
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lossc.jax as lj
from bench_cpu import timed_together

ELEMENTWISE = {
    "sigmoid focal": (lambda x, y: lj.sigmoid_focal(x, y, reduction="sum"),
                      lambda x, y: optax.sigmoid_focal_loss(x, y, alpha=0.25, gamma=2.0).sum()),
    "BCE": (lambda x, y: lj.sigmoid_bce(x, y, reduction="sum"),
            lambda x, y: optax.sigmoid_binary_cross_entropy(x, y).sum()),
    "Huber": (lambda x, y: lj.huber(x, y, reduction="sum"), lambda x, y: optax.huber_loss(x, y).sum()),
}


def step(fn):
    """jit(value_and_grad(fn)) run to completion."""
    compiled = jax.jit(jax.value_and_grad(fn))
    return lambda *args: jax.block_until_ready(compiled(*args))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6, 1e7])
    parser.add_argument("--rows", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"jax {jax.__version__}, optax {optax.__version__}, devices {jax.devices()}")
    print("| loss | N | lossc.jax ms | optax ms | vs optax |")
    print("|---|---|---|---|---|")
    for label, (ours, theirs) in ELEMENTWISE.items():
        ours_step, theirs_step = step(ours), step(theirs)
        for size in args.sizes:
            n = int(size)
            x = jnp.asarray(rng.normal(0, 3, n).astype(np.float32))
            y = jnp.asarray((rng.random(n) > 0.5).astype(np.float32))
            t_ours, t_theirs = timed_together([lambda: ours_step(x, y), lambda: theirs_step(x, y)], args.repeat)
            print(f"| {label} | {size:.0e} | {t_ours * 1e3:.3f} | {t_theirs * 1e3:.3f} | {t_theirs / t_ours:.2f}× |")
    ours_step = step(lambda x, t: lj.softmax_ce(x, t, reduction="sum"))
    theirs_step = step(lambda x, t: optax.softmax_cross_entropy_with_integer_labels(x, t).sum())
    for rows in args.rows:
        x = jnp.asarray((rng.normal(size=(rows, 1000)) * 3).astype(np.float32))
        t = jnp.asarray(rng.integers(0, 1000, rows))
        t_ours, t_theirs = timed_together([lambda: ours_step(x, t), lambda: theirs_step(x, t)], args.repeat)
        print(f"| softmax CE | {rows}×1000 | {t_ours * 1e3:.3f} | {t_theirs * 1e3:.3f} | {t_theirs / t_ours:.2f}× |")


if __name__ == "__main__":
    main()
