"""lossc.torch: every loss a differentiable, compilable torch op.

gradcheck through the ops for every loss and variant, opcheck on every op, a compiled
training step with no graph break, DDP over two gloo processes, and the drop-ins against
torch.nn.functional (mpmath where PyTorch itself is not exact)."""
import os

import mpmath
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lossc  # noqa: E402
import lossc.torch as lt  # noqa: E402
from lossc.torch.ops import SCHEMA, op  # noqa: E402

pytestmark = pytest.mark.torch
F = torch.nn.functional


def _variants(name):
    return [v["values"] for v in lossc.get(name).manifest["variants"]]


CASES = [(name, variant) for name in lossc.list_losses() for variant in _variants(name)]


def _ids(case):
    name, variant = case
    return name + "".join(f"-{k}={v}" for k, v in variant.items())


def _probabilities(name, variant):
    """Whether this variant's prediction is a probability (or a positive rate)."""
    return bool(variant.get("from_sigmoid")) or (name in ("focal", "focal_dense") and variant.get("from_logits")) \
        or (name == "poisson_nll" and not variant.get("from_logits"))


def inputs_for(name, variant, gen, shape=(4, 5)):
    """Float64 tensors a loss accepts at smooth points: probabilities where the variant wants
    them, class indices for row inputs, distributions for dense targets, ±1 or [0, 1] labels."""
    loss = lossc.get(name)
    if loss.pair_inputs:  # (batch, features) pairs: SDML's two batches
        return [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in loss.pair_inputs]
    tensors = []
    for spec in loss.inputs:
        if spec["role"] == "prediction":
            pred = torch.rand(shape, generator=gen, dtype=torch.float64) * 0.8 + 0.1 if _probabilities(name, variant) \
                else torch.randn(shape, generator=gen, dtype=torch.float64) * 1.5
            tensors.append(pred)
        elif spec["per"] == "row":
            if spec.get("class_index") or name == "focal":
                tensors.append(torch.randint(0, shape[-1], shape[:-1], generator=gen))
            else:
                tensors.append(torch.randint(0, 2, shape[:-1], generator=gen).double() * 2 - 1)
        elif spec["role"] == "extra":
            tensors.append(torch.rand(shape[-1], generator=gen, dtype=torch.float64) + 0.5)
        elif loss.class_axis and name in ("softmax_ce_dense", "kl_div"):
            tensors.append(torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float64), -1))
        elif spec["differentiable"]:
            tensors.append(torch.randn(shape, generator=gen, dtype=torch.float64))
        else:
            tensors.append(torch.rand(shape, generator=gen, dtype=torch.float64))
    return tensors


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_gradcheck_through_every_op(case, reduction):
    name, variant = case
    gen = torch.Generator().manual_seed(3)
    tensors = inputs_for(name, variant, gen)
    loss = lossc.get(name)
    differentiable = [k for k, s in enumerate(loss.pair_inputs or loss.inputs) if s["differentiable"]]
    for k in differentiable:
        tensors[k].requires_grad_()
    fn = lt.get(name)
    weight = torch.rand(tensors[0].shape[:1] + (1,) * (tensors[0].dim() - 1), generator=gen, dtype=torch.float64)
    if loss.class_axis and loss.loss_level(variant) == "row":
        weight = weight.reshape(-1)

    def call(*grads_inputs):
        args = list(tensors)
        for k, t in zip(differentiable, grads_inputs):
            args[k] = t
        return fn(*args, reduction=reduction, weight=weight, **variant)

    assert torch.autograd.gradcheck(call, tuple(tensors[k] for k in differentiable), eps=1e-6, atol=1e-6)


FAST_CASES = [case for case in CASES if lossc.get(case[0]).fast_path is not None]


PER_ROW_CASES = [case for case in FAST_CASES if lossc.get(case[0]).manifest["call_shape"] == "row"
                 and lossc.get(case[0]).loss_level(case[1]) == "row"]


@pytest.mark.parametrize("case, reduction", [(case, r) for case in FAST_CASES for r in ("mean", "sum")]
                         + [(case, "none") for case in PER_ROW_CASES], ids=lambda c: c if isinstance(c, str) else _ids(c))
def test_gradcheck_through_the_fast_eager_call(case, reduction, monkeypatch):
    """Element-wise and class-axis losses without a weight take lossc.kernels.fastpath's call
    ('none' where each row has one loss): gradcheck in float64 through it, and it really ran."""
    name, variant = case
    loss = lossc.get(name)
    tensors = inputs_for(name, variant, torch.Generator().manual_seed(5))
    # the fast call takes element inputs of the prediction's shape (row inputs stay (rows,))
    tensors = [t if spec["per"] == "row" else t.expand_as(tensors[0]).contiguous()
               for t, spec in zip(tensors, loss.inputs)]
    differentiable = [k for k, s in enumerate(loss.inputs) if s["differentiable"]]
    ran = []
    fast_path = type(loss.fast_path)
    original = fast_path.run

    def recording(*arguments):
        result = original(*arguments)
        ran.append(result is not None and arguments[-1])  # True: a fast pass with gradients
        return result

    monkeypatch.setattr(fast_path, "run", recording)

    def call(*grads_inputs):
        args = list(tensors)
        for k, t in zip(differentiable, grads_inputs):
            args[k] = t
        return lt.get(name)(*args, reduction=reduction, loss_weight=1.5, **variant)

    leaves = tuple(tensors[k].clone().requires_grad_() for k in differentiable)
    assert torch.autograd.gradcheck(call, leaves, eps=1e-6, atol=1e-6)
    assert True in ran


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_opcheck_on_every_op(case):
    name, variant = case
    loss = lossc.get(name)
    gen = torch.Generator().manual_seed(4)
    tensors = inputs_for(name, variant, gen)
    for k, spec in enumerate(loss.pair_inputs or loss.inputs):
        if spec["differentiable"]:
            tensors[k].requires_grad_()
    params = [float(p["default"]) for p in loss.manifest["parameters"] if not p["variant"]]
    for reduction, with_grad in (("none", True), ("mean", True), ("sum", False)):
        torch.library.opcheck(op(loss, variant), (tensors, params, None, reduction, None, 1.0, -1, with_grad))


def test_ops_share_one_schema():
    loss = lossc.get("huber")
    assert str(op(loss, {})._opoverload._schema).endswith("-> Tensor[]") and "Tensor[] inputs" in SCHEMA


def _count_kernel_passes(monkeypatch):
    """A list that grows by one for each kernel pass: the reducing fast call (lossc.kernels.fastpath)
    or the general path's evaluation, tagged with whether it computed gradients."""
    from lossc.core.loss import Loss
    from lossc.kernels.fastpath import FastPath

    calls = []
    fast_run, evaluate = FastPath.run, Loss.evaluate

    def counting_run(self, args, kwargs, reduction, loss_weight, with_grad):
        result = fast_run(self, args, kwargs, reduction, loss_weight, with_grad)
        if result is not None:
            calls.append(with_grad)
        return result

    def counting_evaluate(self, call, pipeline, with_grad=False, grad_output=None):
        calls.append(with_grad)
        return evaluate(self, call, pipeline, with_grad, grad_output)

    monkeypatch.setattr(FastPath, "run", counting_run)
    monkeypatch.setattr(Loss, "evaluate", counting_evaluate)
    return calls


@pytest.mark.parametrize("shape, reduction", [((100,), "mean"), ((100,), "sum"), ((4, 25), "none"),
                                              ((100,), "none")])
def test_one_fused_pass_forward_and_no_kernel_in_backward(monkeypatch, shape, reduction):
    calls = _count_kernel_passes(monkeypatch)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(shape) > 0.5).double()
    out = lt.get("sigmoid_focal")(x, y, reduction=reduction)
    assert calls == [True]
    out.sum().backward()
    assert calls == [True]
    with torch.no_grad():
        lt.get("sigmoid_focal")(x, y, reduction=reduction)
    assert calls == [True, False]  # nothing requires grad: the forward-only kernel


def test_the_fast_eager_call_is_the_general_paths_bits(monkeypatch):
    """Same-shape CPU tensors with 'sum'/'mean' take the reducing fast call (lossc.kernels.fastpath);
    its loss and gradients are those of the op, bit for bit, a retain_graph second backward gives
    the same bits again, and an upstream gradient other than 1 scales them."""
    from lossc.torch import ops

    gen = torch.Generator().manual_seed(8)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(3000, generator=gen, dtype=dtype) * 4
        y = (torch.rand(3000, generator=gen) > 0.5).to(dtype)
        for reduction, loss_weight in (("sum", 1.0), ("mean", 2.5)):
            fast_x = x.clone().requires_grad_()
            value = lt.get("sigmoid_focal")(fast_x, y, gamma=1.5, reduction=reduction, loss_weight=loss_weight)
            assert value.grad_fn is not None and "_Fast" in type(value.grad_fn).__name__
            (value * 3).backward(retain_graph=True)
            first = fast_x.grad.clone()
            fast_x.grad = None
            (value * 3).backward()
            assert torch.equal(fast_x.grad, first)
            op_x = x.clone().requires_grad_()
            params = [0.25, 1.5]
            expected = op(lossc.get("sigmoid_focal"), {})([op_x, y], params, None, reduction, None, loss_weight,
                                                          -1, True)
            assert torch.equal(value.detach(), expected[0].to(dtype))
            assert torch.equal(first, expected[1] * 3)
    assert ops.fast_eager(lossc.get("sigmoid_focal").fast_path, (x.half(), y.half()), {}, "sum", 1.0) is None


def test_the_fast_eager_call_serves_unreduced_losses_of_one_value_per_row():
    """reduction='none' takes the fast call where each row has one loss (softmax CE): values and
    gradients under a per-row incoming gradient equal PyTorch's; a loss with one value per
    element over a class axis (KL) stays on the op, whose backward runs one more pass."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(7, 5, generator=gen, dtype=torch.float64) * 3
    labels = torch.randint(0, 5, (7,), generator=gen)
    upstream = torch.rand(7, generator=gen, dtype=torch.float64)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    loss = lt.cross_entropy(ours, labels, reduction="none", label_smoothing=0.2)
    assert "_Fast" in type(loss.grad_fn).__name__ and loss.shape == (7,)
    expected = F.cross_entropy(theirs, labels, reduction="none", label_smoothing=0.2)
    (loss * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(loss, expected, **DROP_IN_TOL)
    torch.testing.assert_close(ours.grad, theirs.grad, **DROP_IN_TOL)
    log_p = torch.log_softmax(x, 1).requires_grad_()
    target = torch.softmax(torch.randn(7, 5, generator=gen, dtype=torch.float64), 1)
    kl = lt.kl_div(log_p, target, reduction="none")
    assert "_Fast" not in type(kl.grad_fn).__name__
    (kl * upstream[:, None]).sum().backward()
    torch.testing.assert_close(log_p.grad, -target * upstream[:, None], **DROP_IN_TOL)


def _train_step(model, x, target, soft):
    out = model(x)
    return lt.cross_entropy(out, target) + lt.binary_cross_entropy_with_logits(out, soft) + \
        lt.smooth_l1_loss(out, soft, beta=0.5)


def test_torch_compile_fullgraph_gives_the_eager_gradients():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    x, target, soft = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,)), torch.rand(8, 3).double()
    eager = _train_step(model, x, target, soft)
    eager.backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(_train_step, fullgraph=True)(model, x, target, soft)
    compiled.backward()
    assert compiled.item() == pytest.approx(eager.item(), rel=1e-14)
    for got, expected in zip((p.grad for p in model.parameters()), want):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def _ddp_worker(rank, world, port, result_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, data = _ddp_setup()
        ddp = DistributedDataParallel(model)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
        x, target, soft = (d.chunk(world)[rank] for d in data)
        for _ in range(3):
            optimizer.zero_grad()
            _train_step(ddp, x, target, soft).backward()
            optimizer.step()
        if rank == 0:
            torch.save([p.detach() for p in model.parameters()], result_path)
    finally:
        dist.destroy_process_group()


def _ddp_setup():
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 3).double()
    data = (torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,)), torch.rand(16, 3).double())
    return model, data


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = tmp_path / "params.pt"
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(result)), nprocs=2, join=True)
    model, (x, target, soft) = _ddp_setup()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        _train_step(model, x, target, soft).backward()  # every loss is a mean: equal halves average to it
        optimizer.step()
    for got, want in zip(torch.load(result), model.parameters()):
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-13)


def _pair(fn_ours, fn_torch, *tensors, **kwargs):
    """(ours, theirs) values and gradients w.r.t. the first tensor."""
    results = []
    for fn in (fn_ours, fn_torch):
        first = tensors[0].detach().clone().requires_grad_()
        value = fn(first, *tensors[1:], **kwargs)
        value.sum().backward()
        results.append((value.detach(), first.grad))
    return results


DROP_IN_TOL = dict(rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_bce_with_logits_matches_torch(reduction):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 4
    y = torch.rand(6, 5, generator=gen, dtype=torch.float64)
    for kwargs in ({}, {"weight": torch.rand(6, 1, generator=gen, dtype=torch.float64)},
                   {"pos_weight": torch.rand(5, generator=gen, dtype=torch.float64) * 3}):
        (a, da), (b, db) = _pair(lt.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits, x, y,
                                 reduction=reduction, **kwargs)
        torch.testing.assert_close(a, b, **DROP_IN_TOL)
        torch.testing.assert_close(da, db, **DROP_IN_TOL)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("shape", [(7, 4), (3, 4, 5), (4,)])
def test_cross_entropy_matches_torch(reduction, shape):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    classes = shape[0] if len(shape) == 1 else shape[1]
    target_shape = () if len(shape) == 1 else shape[:1] + shape[2:]
    target = torch.randint(0, classes, target_shape, generator=gen)
    weight = torch.rand(classes, generator=gen, dtype=torch.float64) + 0.5
    cases = [{}, {"weight": weight}, {"label_smoothing": 0.2}, {"weight": weight, "label_smoothing": 0.1}]
    if target.dim():
        target.view(-1)[0] = 2
        cases += [{"ignore_index": 2}, {"ignore_index": 2, "weight": weight, "label_smoothing": 0.3}]
    for kwargs in cases:
        (a, da), (b, db) = _pair(lt.cross_entropy, F.cross_entropy, x, target, reduction=reduction, **kwargs)
        torch.testing.assert_close(a, b, **DROP_IN_TOL)
        torch.testing.assert_close(da, db, **DROP_IN_TOL)
    soft = torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float64), 0 if len(shape) == 1 else 1)
    for kwargs in ({}, {"label_smoothing": 0.25}, {"weight": weight}, {"weight": weight, "label_smoothing": 0.25}):
        (a, da), (b, db) = _pair(lt.cross_entropy, F.cross_entropy, x, soft, reduction=reduction, **kwargs)
        torch.testing.assert_close(a, b, **DROP_IN_TOL)
        torch.testing.assert_close(da, db, **DROP_IN_TOL)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_smooth_l1_huber_and_kl_div_match_torch(reduction):
    gen = torch.Generator().manual_seed(7)
    x, y = torch.randn(2, 5, 6, generator=gen, dtype=torch.float64) * 2
    for beta in (1.0, 0.3, 0.0):
        (a, da), (b, db) = _pair(lt.smooth_l1_loss, F.smooth_l1_loss, x, y, reduction=reduction, beta=beta)
        torch.testing.assert_close(a, b, **DROP_IN_TOL)
        torch.testing.assert_close(da, db, **DROP_IN_TOL)
    for delta in (1.0, 0.4, 2.5):
        (a, da), (b, db) = _pair(lt.huber_loss, F.huber_loss, x, y, reduction=reduction, delta=delta)
        torch.testing.assert_close(a, b, **DROP_IN_TOL)
        torch.testing.assert_close(da, db, **DROP_IN_TOL)
    logp = torch.log_softmax(x, -1)
    q = torch.softmax(y, -1)
    q[0, 0] = 0.0
    for red in (reduction, "batchmean"):
        for log_target, target in ((False, q), (True, torch.log_softmax(y, -1))):
            (a, da), (b, db) = _pair(lt.kl_div, F.kl_div, logp, target, reduction=red, log_target=log_target)
            torch.testing.assert_close(a, b, **DROP_IN_TOL)
            torch.testing.assert_close(da, db, **DROP_IN_TOL)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_a_weight_that_requires_grad_gets_torchs_gradient(reduction):
    gen = torch.Generator().manual_seed(14)
    x, y = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    weight = torch.rand(4, 3, generator=gen, dtype=torch.float64)
    grads = []
    for fn in (lt.huber_loss, F.huber_loss):
        w = weight.clone().requires_grad_()
        fn(x, y, weight=w, reduction=reduction, delta=0.5).sum().backward()
        grads.append(w.grad)
    torch.testing.assert_close(*grads, **DROP_IN_TOL)
    with pytest.raises(ValueError, match="weight requires grad"):  # PyTorch's BCE refuses it too
        lt.binary_cross_entropy_with_logits(x, y.sigmoid(), weight=weight.clone().requires_grad_())


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("shape", [(7, 5), (5,)])
def test_cosine_embedding_loss_matches_torch(reduction, shape):
    """PyTorch's ε inside the squared norms, both gradients, zero and (anti)parallel vectors."""
    gen = torch.Generator().manual_seed(13)
    x1, x2 = torch.randn((2,) + shape, generator=gen, dtype=torch.float64)
    target = torch.tensor([1.0, -1.0, 1.0, -1.0, 0.0, 1.0, -1.0]) if len(shape) == 2 else torch.tensor(-1.0)
    if len(shape) == 2:
        x1[4], x2[5], x2[6] = 0.0, 3 * x1[5], -2 * x1[6]  # a zero vector, a parallel and an antiparallel pair
    for margin in (0.0, -0.4, 0.5):
        results = []
        for fn in (lt.cosine_embedding_loss, F.cosine_embedding_loss):
            a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
            value = fn(a, b, target, margin=margin, reduction=reduction)
            value.sum().backward()
            results.append((value.detach(), a.grad, b.grad))
        for ours, theirs in zip(*results):
            torch.testing.assert_close(ours, theirs, **DROP_IN_TOL)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_poisson_nll_matches_torch(reduction):
    gen = torch.Generator().manual_seed(12)
    target = torch.poisson(torch.rand(5, 6, generator=gen, dtype=torch.float64) * 4)
    for log_input in (True, False):
        x = torch.randn(5, 6, generator=gen, dtype=torch.float64) if log_input else \
            torch.rand(5, 6, generator=gen, dtype=torch.float64) * 3 + 0.05
        for full in (False, True):
            (a, da), (b, db) = _pair(lt.poisson_nll_loss, F.poisson_nll_loss, x, target, log_input=log_input,
                                     full=full, reduction=reduction)
            torch.testing.assert_close(a, b, **DROP_IN_TOL)
            torch.testing.assert_close(da, db, **DROP_IN_TOL)


def _torchvision_focal(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss, as written in torchvision 0.2x."""
    p = torch.sigmoid(inputs)
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_sigmoid_focal_matches_torchvision_and_is_exact_at_extremes(reduction):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(5, 7, generator=gen, dtype=torch.float64) * 3
    y = (torch.rand(5, 7, generator=gen) > 0.6).double()
    for alpha, gamma in ((0.25, 2.0), (-1, 1.5), (0.6, 0.0)):
        (a, da), (b, db) = _pair(lt.sigmoid_focal_loss, _torchvision_focal, x, y, alpha=alpha, gamma=gamma,
                                 reduction=reduction)
        torch.testing.assert_close(a, b, **DROP_IN_TOL)
        torch.testing.assert_close(da, db, rtol=1e-11, atol=1e-14)
    extreme = torch.tensor([-1e4, -50.0, 50.0, 1e4], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    loss = lt.sigmoid_focal_loss(extreme, labels)
    loss.sum().backward()
    with mpmath.workdps(60):
        for k, (xk, yk) in enumerate(zip(extreme.tolist(), labels.tolist())):
            def f(v, yk=yk):  # log p = −log(1 + e^−v), log(1 − p) = −log(1 + e^v): exact at any v
                p, q = 1 / (1 + mpmath.exp(-v)), 1 / (1 + mpmath.exp(v))
                return yk * 0.25 * q ** 2 * mpmath.log1p(mpmath.exp(-v)) + \
                    (1 - yk) * 0.75 * p ** 2 * mpmath.log1p(mpmath.exp(v))
            assert loss[k].item() == pytest.approx(float(f(mpmath.mpf(xk))), rel=1e-13)
            assert extreme.grad[k].item() == pytest.approx(float(mpmath.diff(f, mpmath.mpf(xk))), rel=1e-10)


def test_dtypes_are_kept_and_inputs_never_modified():
    x = torch.randn(6, 4)
    y = torch.rand(6, 4)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        xd, yd = x.to(dtype).detach().clone().requires_grad_(), y.to(dtype)
        before = (xd.detach().clone(), yd.clone())
        out = lt.binary_cross_entropy_with_logits(xd, yd, reduction="none")
        out.sum().backward()
        assert out.dtype == dtype and xd.grad.dtype == dtype
        assert torch.equal(xd.detach(), before[0]) and torch.equal(yd, before[1])
        want = F.binary_cross_entropy_with_logits(x.to(dtype).float(), y.to(dtype).float(), reduction="none")
        torch.testing.assert_close(out.float(), want, rtol=1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-5,
                                   atol=1e-3)


def test_saved_gradient_is_not_a_user_tensor():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    out = lt.get("l2")(x, torch.zeros(5, dtype=torch.float64), reduction="sum")
    out.backward()
    first = x.grad.clone()
    x.grad.zero_()
    out2 = lt.get("l2")(x, torch.zeros(5, dtype=torch.float64), reduction="sum")
    out2.backward()
    assert torch.equal(x.grad, first)


def test_bad_inputs_are_named():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(TypeError, match="prediction must be a floating-point tensor"):
        lt.get("l2")(torch.ones(4, 3, dtype=torch.int64), torch.ones(4, 3))
    with pytest.raises(ValueError, match="input 'label' requires grad"):
        lt.get("l2")(x, torch.ones(4, 3, dtype=torch.float64, requires_grad=True))
    with pytest.raises(ValueError, match="input 'label' is on meta but the prediction is on cpu"):
        lt.get("l2")(x, torch.ones(4, 3, device="meta"))
    with pytest.raises(ValueError, match="label"):
        lt.get("l2")(x, torch.ones(5, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        lt.get("l2")(np.ones((4, 3)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="not a valid value for reduction"):
        lt.smooth_l1_loss(x, x.detach(), reduction="avg")


def test_module_attribute_access_and_user_losses(tmp_path):
    module = lt.Loss("huber", rho=0.5, reduction="sum")
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    y = torch.zeros(5, dtype=torch.float64)
    torch.testing.assert_close(module(x, y), F.smooth_l1_loss(x, y, beta=0.5, reduction="sum") * 1.0)
    assert "huber" in repr(module) and isinstance(module, torch.nn.Module)
    assert lt.kl_div is lt.functional.kl_div  # the drop-in, not the spec
    assert lt.sigmoid_bce.name == "sigmoid_bce" and lt.get("kl_div").name == "kl_div"
    with pytest.raises(AttributeError):
        lt.no_such_loss  # noqa: B018


MMDET_CASES = [
    (dict(type="FocalLoss", gamma=2.0, alpha=0.25), "labels"),
    (dict(type="FocalLoss", gamma=1.5, alpha=0.4, reduction="sum", loss_weight=2.0), "onehot"),
    (dict(type="CrossEntropyLoss", class_weight=[1.0, 2.0, 0.5, 1.5], loss_weight=2.0, avg_non_ignore=True), "labels"),
    (dict(type="CrossEntropyLoss", ignore_index=2), "labels"),
    (dict(type="CrossEntropyLoss", use_sigmoid=True, class_weight=[1.0, 2.0, 0.5, 1.5]), "labels"),
    (dict(type="CrossEntropyLoss", use_sigmoid=True, ignore_index=1, avg_non_ignore=True), "labels"),
    (dict(type="SmoothL1Loss", beta=0.5, loss_weight=3.0), "boxes"),
    (dict(type="L1Loss", reduction="sum"), "boxes"),
    (dict(type="MSELoss"), "boxes"),
]


@pytest.mark.parametrize("cfg, kind", MMDET_CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("call", [{}, {"weight": True}, {"avg_factor": 5.0}, {"reduction_override": "none"}])
def test_mmdet_modules_on_tensors_match_the_mmdet_layer(cfg, kind, call):
    """lossc.torch.mmdet on tensors with autograd equals lossc.mmdet (tested against
    MMDetection 3.3.0's formulas in test_layers) in values and gradients."""
    from lossc.torch.mmdet import build_loss

    gen = torch.Generator().manual_seed(11)
    pred = torch.randn(9, 4, generator=gen, dtype=torch.float64) * 2
    if kind == "labels":
        target = torch.randint(0, 5 if cfg["type"] == "FocalLoss" else 4, (9,), generator=gen)
        target[3] = 2
    elif kind == "onehot":
        target = (torch.rand(9, 4, generator=gen) > 0.7).double()
    else:
        target = torch.randn(9, 4, generator=gen, dtype=torch.float64)
    kwargs = dict(call)
    if kwargs.pop("weight", False):
        kwargs["weight"] = torch.rand(9 if kind == "labels" else (9, 4), generator=gen, dtype=torch.float64)
    if "avg_factor" in kwargs and cfg.get("reduction") == "sum":
        pytest.skip("avg_factor can not be used with reduction='sum'")
    module = build_loss(cfg)
    x = pred.clone().requires_grad_()
    value = module(x, target, **kwargs)
    value.sum().backward()
    reference = lossc.build_loss(cfg)
    numpy_kwargs = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    want, (dwant,) = reference.value_and_grad(pred.numpy(), target.numpy(), **numpy_kwargs)
    np.testing.assert_allclose(value.detach().numpy(), want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(x.grad.numpy(), dwant, rtol=1e-12, atol=1e-14)
    assert isinstance(module, torch.nn.Module) and value.dtype == torch.float64


def test_mmdet_config_builds_through_the_mmengine_registry():
    mmengine = pytest.importorskip("mmengine")
    from mmengine.registry import MODELS

    import lossc.torch.mmdet  # noqa: F401  (custom_imports=dict(imports=['lossc.torch.mmdet']))

    module = MODELS.build(dict(type="lossc.FocalLoss", gamma=2.0, alpha=0.25, loss_weight=1.0))
    assert type(module).__name__ == "FocalLoss" and type(module).__module__ == "lossc.torch.mmdet"
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    module(x, torch.tensor([0, 1, 2, 3, 1, 0])).backward()
    assert x.grad is not None and mmengine.__version__


def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    pytest.importorskip("cupy")
    return torch.device("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_every_op_on_cuda_tensors_matches_cpu(case):
    device = _cuda()
    name, variant = case
    tensors = inputs_for(name, variant, torch.Generator().manual_seed(21))
    loss = lossc.get(name)
    for reduction in ("none", "sum"):
        results = []
        for where in ("cpu", device):
            moved = [t.to(where).requires_grad_(s["differentiable"]) for t, s in zip(tensors, loss.pair_inputs or loss.inputs)]
            value = lt.get(name)(*moved, reduction=reduction, **variant)
            value.sum().backward()
            results.append([value.detach().cpu()] + [moved[k].grad.cpu() for k, s in enumerate(loss.pair_inputs or loss.inputs)
                                                      if s["differentiable"]])
        for got, want in zip(results[1], results[0]):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cuda_low_precision_and_a_non_default_stream(dtype):
    device = _cuda()
    x = torch.randn(4096, device=device).to(dtype).requires_grad_()
    y = (torch.rand(4096, device=device) > 0.5).to(dtype)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = lt.binary_cross_entropy_with_logits(x, y, reduction="sum")
        out.backward()
    stream.synchronize()
    want = F.binary_cross_entropy_with_logits(x.detach().float(), y.float(), reduction="sum")
    assert out.dtype == dtype and x.grad.dtype == dtype
    torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_ctc_loss_matches_torch(reduction):
    gen = torch.Generator().manual_seed(13)
    T, N, C, S = 14, 4, 6, 5
    log_probs = torch.randn(T, N, C, generator=gen, dtype=torch.float64).log_softmax(-1)
    lengths = torch.tensor([14, 11, 9, 3])
    target_lengths = torch.tensor([5, 3, 0, 4])  # the last needs 4 labels in 3 steps: impossible (inf)
    targets = torch.randint(1, C, (N, S), generator=gen)
    targets[1, 3:] = 0  # PyTorch ignores the padding values, whatever they are
    flat = torch.cat([targets[n, :target_lengths[n]] for n in range(N)])
    for tgt in (targets, flat):
        for zero_infinity in (False, True):
            if not zero_infinity and reduction != "none":
                continue  # inf loss: both inf, gradients NaN in PyTorch
            kwargs = dict(reduction=reduction, zero_infinity=zero_infinity)
            (a, da), (b, db) = _pair(lambda x, *r, **k: lt.ctc_loss(x, *r, **k),
                                     lambda x, *r, **k: F.ctc_loss(x, *r, **k), log_probs, tgt, lengths,
                                     target_lengths, **kwargs)
            torch.testing.assert_close(a, b, **DROP_IN_TOL)
            if zero_infinity:
                torch.testing.assert_close(da, db, rtol=1e-12, atol=1e-13)
    unbatched = lt.ctc_loss(log_probs[:, 0], targets[0], lengths[:1], target_lengths[:1], reduction="none")
    torch.testing.assert_close(unbatched, F.ctc_loss(log_probs[:, 0], targets[0], lengths[:1], target_lengths[:1],
                                                     reduction="none"), **DROP_IN_TOL)


def test_ctc_op_passes_opcheck_and_gradcheck():
    from lossc.torch.ops import ctc

    gen = torch.Generator().manual_seed(14)
    log_probs = torch.randn(8, 2, 4, generator=gen, dtype=torch.float64).log_softmax(-1).requires_grad_()
    targets = torch.tensor([[1, 2, 1], [3, -1, -1]])
    lengths, target_lengths = torch.tensor([8, 6]), torch.tensor([3, 1])
    for with_grad in (True, False):
        torch.library.opcheck(ctc, (log_probs, targets, lengths, target_lengths, 0, False, with_grad))
    assert torch.autograd.gradcheck(lambda x: lt.ctc_loss(x, targets, lengths, target_lengths, reduction="sum"),
                                    (log_probs.detach().clone().requires_grad_(),))


@pytest.mark.parametrize("kwargs", [{}, {"negative_mining_ratio": 2, "lambd": 0.5, "rho": 0.7},
                                    {"min_hard_negatives": 3}, {"ignore_label": -1}])
def test_ssd_multibox_on_tensors_matches_the_gluoncv_layer(kwargs):
    """lossc.torch.SSDMultiBoxLoss (mining on the tensors' device, autograd) equals lossc.ssd's
    values and gradients, for a batch given as two list elements."""
    from lossc.ssd import SSDMultiBoxLoss as Reference

    gen = torch.Generator().manual_seed(15)
    parts = []
    for _ in range(2):
        cls_pred = torch.randn(3, 10, 4, generator=gen, dtype=torch.float64) * 2
        box_pred, box_target = torch.randn(2, 3, 10, 4, generator=gen, dtype=torch.float64)
        cls_target = torch.randint(-1, 4, (3, 10), generator=gen)
        cls_target[cls_target > 0] *= (torch.rand((cls_target > 0).sum(), generator=gen) > 0.5).long()
        parts.append((cls_pred, box_pred, cls_target, box_target))
    leaves = [(cp.clone().requires_grad_(), bp.clone().requires_grad_()) for cp, bp, _, _ in parts]
    sums, clss, boxes = lt.SSDMultiBoxLoss(**kwargs)([l[0] for l in leaves], [l[1] for l in leaves],
                                                     [p[2] for p in parts], [p[3] for p in parts])
    sum(s.sum() for s in sums).backward()
    reference = Reference(**{k: v for k, v in kwargs.items() if k != "ignore_label"})
    if "ignore_label" in kwargs:
        from lossc.ssd import ssd_multibox

        *want, grads = ssd_multibox(*[[p[k].numpy() for p in parts] for k in range(4)], ignore_label=-1,
                                    with_grad=True)
    else:
        want, grads = reference.value_and_grad(*[[p[k].numpy() for p in parts] for k in range(4)])
    for got_list, want_list in zip((sums, clss, boxes), want):
        for got, expected in zip(got_list, want_list):
            np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-12, atol=1e-14)
    for (cp, bp), (d_cls, d_box) in zip(leaves, grads):
        np.testing.assert_allclose(cp.grad.numpy(), d_cls, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(bp.grad.numpy(), d_box, rtol=1e-12, atol=1e-14)


def test_eager_calls_skip_the_dispatch_and_compiled_ones_use_the_op(monkeypatch):
    """Eager calls run the op's autograd.Function twin or the fast call's (no torch.library
    dispatch), with the op's results and gradients bit for bit; torch.compile traces the
    custom op itself."""
    from lossc.torch import ops

    gen = torch.Generator().manual_seed(21)
    x, y = torch.randn(2, 6, 5, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 5, (6,), generator=gen)
    ignored = int(labels[0])  # a mean over the kept rows only
    calls = []
    for twin in (ops._Eager, ops._Fast):
        monkeypatch.setattr(twin, "apply", lambda *a, original=twin.apply: calls.append(1) or original(*a))
    for fn, args in ((lambda a, b: lt.huber_loss(a, b, reduction="none"), (y,)),
                     (lambda a, b: lt.huber_loss(a, b, reduction="sum"), (y,)),
                     (lambda a, b: lt.cross_entropy(a, b, label_smoothing=0.1), (labels,)),
                     (lambda a, b: lt.cross_entropy(a, b, ignore_index=ignored), (labels,))):
        eager_x = x.clone().requires_grad_()
        eager_value = fn(eager_x, *args)
        eager_value.sum().backward()
        assert calls, "the eager path was not taken"
        calls.clear()
        compiled_x = x.clone().requires_grad_()
        compiled_value = torch.compile(fn, fullgraph=True)(compiled_x, *args)
        compiled_value.sum().backward()
        assert not calls, "torch.compile ran the autograd.Function instead of the op"
        torch.testing.assert_close(compiled_value, eager_value, rtol=0, atol=0)
        torch.testing.assert_close(compiled_x.grad, eager_x.grad, rtol=0, atol=0)
