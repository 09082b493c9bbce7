"""Run time of pair terms (see ``lossc.compiler.pairs``): inputs built from every pair (i, j)
of a row-side and a column-side batch of feature vectors, and the chain rule back to them.

A pair term's generated module is an element-wise loss f of the pair inputs. Its matrix
M_ij = Σ_k f(x1[i, k], x2[j, k]) is computed a block of rows at a time over broadcast views
(rows, 1, features) × (1, columns, features), so memory stays at one block; with the
loss's gradient G w.r.t. M, the same blocks of forward_backward(grad_output = G[..., None])
give G_ij·∂f/∂x1 and G_ij·∂f/∂x2, summed over j (row side) and over i (column side).
"""
from dataclasses import dataclass

BLOCK_ELEMENTS = 1 << 20


@dataclass
class PairArrays:
    """The pair inputs of one call: arrays by name, their sides, and the runtime parameters."""

    xp: object
    arrays: dict
    sides: dict
    params: dict

    @property
    def rows(self):
        """The row-side batch size."""
        return next(a.shape[0] for n, a in self.arrays.items() if self.sides[n] == "row")

    def views(self, start, stop):
        """Broadcast views for rows [start, stop): (rows, 1, F) row side, (1, columns, F) column side."""
        return [a[start:stop, None, :] if self.sides[n] == "row" else a[None, :, :] for n, a in self.arrays.items()]


def check_pair_arrays(loss_name, xp, named, sides):
    """The pair inputs as 2-D arrays of one feature size; a ValueError names the bad one."""
    arrays = {}
    for name, value in named.items():
        array = xp.asarray(value)
        if array.dtype.kind != "f" or array.ndim != 2:
            raise ValueError(f"{loss_name}: pair input '{name}' must be a 2-D floating-point (batch, features) array, "
                             f"got dtype {array.dtype}, shape {array.shape}")
        arrays[name] = array
    features = {a.shape[1] for a in arrays.values()}
    if len(features) != 1:
        raise ValueError(f"{loss_name}: pair inputs have different feature sizes: "
                         + ", ".join(f"'{n}' {a.shape}" for n, a in arrays.items()))
    for side in ("row", "column"):
        batches = {a.shape[0] for n, a in arrays.items() if sides[n] == side}
        if len(batches) > 1:
            raise ValueError(f"{loss_name}: the {side}-side pair inputs have different batch sizes {sorted(batches)}")
    return arrays


def _blocks(pairs, columns, features):
    step = max(1, BLOCK_ELEMENTS // max(1, columns * features))
    return [(start, min(start + step, pairs.rows)) for start in range(0, pairs.rows, step)]


def pair_matrix(pairs, module, columns):
    """M_ij = Σ_k f(row side i, column side j) over the features, shape (rows, columns)."""
    first = next(iter(pairs.arrays.values()))
    out = pairs.xp.empty((pairs.rows, columns), first.dtype)
    for start, stop in _blocks(pairs, columns, first.shape[1]):
        out[start:stop] = module.forward(*pairs.views(start, stop), **pairs.params).sum(axis=-1)
    return out


def pair_gradients(pairs, module, gradient):
    """{pair input: d Σ_ij G_ij·M_ij / d input} for the differentiable pair inputs of ``module``."""
    grads = {n: pairs.xp.zeros_like(pairs.arrays[n]) for n in module.DIFFERENTIABLE}
    columns = gradient.shape[1]
    for start, stop in _blocks(pairs, columns, next(iter(pairs.arrays.values())).shape[1]):
        upstream = gradient[start:stop, :, None]
        _, parts = module.forward_backward(*pairs.views(start, stop), **pairs.params, grad_output=upstream)
        for name, part in zip(module.DIFFERENTIABLE, parts):
            if pairs.sides[name] == "row":
                grads[name][start:stop] += part.sum(axis=1)
            else:
                grads[name] += part.sum(axis=0)
    return grads
