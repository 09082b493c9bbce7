"""Plots of a loss and its gradient against the prediction (matplotlib, optional)."""
import importlib
import io

import numpy as np


def available():
    """True when matplotlib can be imported (the optional ``docs`` extra)."""
    return importlib.util.find_spec("matplotlib") is not None


def plot(derived, module, fmt="svg"):
    """Loss and d loss/d prediction of the default variant over the prediction, as bytes;
    ``module`` is the variant's generated NumPy module."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "lossc"
    spec = derived.ir.spec
    pred_input = spec.inputs[0]
    low, high = max(min(pred_input.accuracy_grid), -6.0), min(max(pred_input.accuracy_grid), 6.0)
    x = np.linspace(low if low < high else -6.0, high if low < high else 6.0, 400)
    fig, (ax_loss, ax_grad) = plt.subplots(1, 2, figsize=(8, 3.2))
    if spec.class_axis:
        return _plot_rows(plt, fig, ax_loss, ax_grad, module, spec, x, fmt)
    target = next((i for i in spec.inputs[1:] if i.role == "target"), None)
    labels = (target.accuracy_grid[:3] if target else [None])
    for label in labels:
        arrays = [x] + [np.full_like(x, label if i is target else (i.default if i.default is not None else 1.0))
                        for i in spec.inputs[1:]]
        loss, grads = module.forward_backward(*arrays)
        name = f"{target.name} = {label:g}" if target else None
        ax_loss.plot(x, loss, label=name)
        if grads:
            ax_grad.plot(x, grads[0], label=name)
    ax_loss.set_title("loss")
    ax_grad.set_title(f"d loss / d {pred_input.name}")
    for ax in (ax_loss, ax_grad):
        ax.set_xlabel(pred_input.name)
        ax.grid(alpha=0.3)
        if target:
            ax.legend(fontsize=8)
    return _save(plt, fig, fmt)


def _plot_rows(plt, fig, ax_loss, ax_grad, module, spec, x, fmt, classes=3):
    """A loss with reductions: one 3-class row whose first element varies, per label."""
    pred = spec.inputs[0]
    row_inputs = [i for i in spec.inputs if i.per == "row"]
    labels = [v for v in (row_inputs[0].accuracy_grid if row_inputs else [None]) if v is None or v < classes][:2] or [None]
    for label in labels:
        arrays = []
        for i in spec.inputs:
            if i is pred:
                row = np.zeros((x.size, classes))
                row[:, 0] = x
                arrays.append(row)
            elif i.per == "row":
                arrays.append(np.full(x.size, label if i is row_inputs[0] else i.accuracy_grid[0]))
            else:
                grid = (i.accuracy_grid * classes)[:classes]
                vector = np.array(grid) / max(sum(grid), 1e-300) if i.role == "target" and not i.differentiable else np.array(grid)
                arrays.append(np.tile(vector, (x.size, 1)))
        loss, grads = module.forward_backward(*arrays)
        name = f"{row_inputs[0].name} = {label:g}" if row_inputs else None
        ax_loss.plot(x, loss if loss.ndim == 1 else loss.sum(axis=1), label=name)
        ax_grad.plot(x, grads[0][:, 0], label=name)
    ax_loss.set_title(f"loss ({classes} classes)")
    ax_grad.set_title(f"d loss / d {pred.name}[0]")
    for ax in (ax_loss, ax_grad):
        ax.set_xlabel(f"{pred.name}[0] (others 0)")
        ax.grid(alpha=0.3)
        if row_inputs:
            ax.legend(fontsize=8)
    return _save(plt, fig, fmt)


def _save(plt, fig, fmt):
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, metadata={"Date": None} if fmt == "svg" else {"CreationDate": None})
    plt.close(fig)
    return buffer.getvalue()
