"""PyTorch (CPU) as a second oracle where it has the same loss; skipped without torch."""
import importlib

import numpy as np
import pytest

from lossc.compiler.ir import variant_module_name


def kernel(name, **variant):
    return importlib.import_module(f"lossc.generated.numpy.{variant_module_name(name, variant)}")


def torch_value_and_grad(torch, fn, pred, *rest):
    x = torch.tensor(pred, requires_grad=True)
    loss = fn(x, *(torch.tensor(r) for r in rest))
    loss.sum().backward()
    return loss.detach().numpy(), x.grad.numpy()


def check(ours, theirs, rtol=1e-12, atol=1e-15):
    (loss, (dpred,)), (tloss, tgrad) = ours, theirs
    np.testing.assert_allclose(loss, tloss, rtol=rtol, atol=atol)
    np.testing.assert_allclose(dpred, tgrad, rtol=rtol, atol=atol)


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    return rng.normal(0, 3, 500), rng.normal(0, 3, 500), (rng.random(500) > 0.5).astype(np.float64), rng


def test_bce_with_logits_and_pos_weight(torch, data):
    x, _, y, rng = data
    pw = rng.uniform(0.2, 4, 500)
    fn = lambda a, b, w: torch.nn.functional.binary_cross_entropy_with_logits(a, b, pos_weight=w, reduction="none")
    check(kernel("sigmoid_bce", from_sigmoid=False).forward_backward(x, y, pw), torch_value_and_grad(torch, fn, x, y, pw))


def test_bce_from_probabilities(torch, data):
    _, _, y, rng = data
    p = rng.uniform(0.01, 0.99, 500)
    fn = lambda a, b: torch.nn.functional.binary_cross_entropy(a, b, reduction="none")
    # gluon adds eps = 1e-12 inside the logs; torch does not: agreement to ~1e-10.
    check(kernel("sigmoid_bce", from_sigmoid=True).forward_backward(p, y), torch_value_and_grad(torch, fn, p, y), rtol=1e-9)


def test_l1_l2_huber(torch, data):
    x, t, _, _ = data
    check(kernel("l1").forward_backward(x, t), torch_value_and_grad(torch, lambda a, b: torch.abs(a - b), x, t))
    mse = lambda a, b: torch.nn.functional.mse_loss(a, b, reduction="none")
    check(kernel("mse").forward_backward(x, t), torch_value_and_grad(torch, mse, x, t))
    half_mse = lambda a, b: 0.5 * torch.nn.functional.mse_loss(a, b, reduction="none")
    check(kernel("l2").forward_backward(x, t), torch_value_and_grad(torch, half_mse, x, t))
    for rho in (0.5, 1.0, 3.0):
        fn = lambda a, b: torch.nn.functional.smooth_l1_loss(a, b, beta=rho, reduction="none")
        check(kernel("huber").forward_backward(x, t, rho=rho), torch_value_and_grad(torch, fn, x, t))


def test_logistic_is_soft_margin(torch, data):
    x, _, y, _ = data
    signed = 2 * y - 1
    fn = lambda a, b: torch.nn.functional.soft_margin_loss(a, b, reduction="none")
    check(kernel("logistic", label_format="signed").forward_backward(x, signed), torch_value_and_grad(torch, fn, x, signed))
    check(kernel("logistic", label_format="binary").forward_backward(x, y), torch_value_and_grad(torch, fn, x, signed))


def test_hinge_family(torch, data):
    x, _, y, _ = data
    s = 2 * y - 1
    for margin in (0.5, 1.0):
        fn = lambda a, b: torch.clamp(margin - a * b, min=0)
        check(kernel("hinge").forward_backward(x, s, margin=margin), torch_value_and_grad(torch, fn, x, s))
        fn2 = lambda a, b: torch.clamp(margin - a * b, min=0) ** 2
        check(kernel("squared_hinge").forward_backward(x, s, margin=margin), torch_value_and_grad(torch, fn2, x, s))


@pytest.mark.parametrize("log_input", [True, False])
@pytest.mark.parametrize("full", [True, False])
def test_poisson_nll(torch, data, log_input, full):
    x, _, _, rng = data
    pred = x if log_input else rng.uniform(0.05, 10, 500)
    target = rng.choice([0.0, 0.5, 1.0, 2.0, 3.0, 17.0], 500)
    fn = lambda a, b: torch.nn.functional.poisson_nll_loss(a, b, log_input=log_input, full=full, eps=1e-8, reduction="none")
    ours = kernel("poisson_nll", from_logits=log_input, compute_full=full).forward_backward(pred, target)
    check(ours, torch_value_and_grad(torch, fn, pred, target), rtol=1e-11)


def test_sigmoid_focal_as_torchvision_computes_it(torch, data):
    x, _, y, _ = data

    def focal(a, b, alpha=0.25, gamma=2.0):  # torchvision.ops.sigmoid_focal_loss, reduction='none'
        p = torch.sigmoid(a)
        ce = torch.nn.functional.binary_cross_entropy_with_logits(a, b, reduction="none")
        p_t = p * b + (1 - p) * (1 - b)
        return (alpha * b + (1 - alpha) * (1 - b)) * ce * (1 - p_t) ** gamma

    check(kernel("sigmoid_focal").forward_backward(x, y), torch_value_and_grad(torch, focal, x, y), rtol=1e-10, atol=1e-13)
    check(kernel("sigmoid_focal").forward_backward(x, y, alpha=0.6, gamma=0.5),
          torch_value_and_grad(torch, lambda a, b: focal(a, b, 0.6, 0.5), x, y), rtol=1e-10, atol=1e-13)
