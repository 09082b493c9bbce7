"""lossc.jax: the generated jax.numpy kernels in a custom_vjp — values and gradients against
optax (and 50-digit mpmath where optax is not exact), jax.grad is lossc's own gradient, and
the losses work under jit, vmap and with a batch-sharded input on two CPU devices."""
import os
import subprocess
import sys

import mpmath
import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy

import lossc  # noqa: E402
from conftest import GENERATED  # noqa: E402
import lossc.jax as lj  # noqa: E402

pytestmark = pytest.mark.jax
TOL = dict(rtol=1e-12, atol=1e-14)


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def _value_and_grad(fn, x):
    value, grad = jax.value_and_grad(lambda a: jnp.sum(fn(a)))(jnp.asarray(x))
    return np.asarray(value), np.asarray(grad)


def assert_same(ours, theirs, x):
    (a, da), (b, db) = _value_and_grad(ours, x), _value_and_grad(theirs, x)
    np.testing.assert_allclose(a, b, **TOL)
    np.testing.assert_allclose(da, db, **TOL)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_elementwise_losses_match_optax(rng, reduction):
    x = rng.normal(0, 3, (6, 5))
    y = (rng.random((6, 5)) > 0.5) * 1.0
    soft = rng.random((6, 5))
    reduce = {"none": lambda v: v, "mean": jnp.mean, "sum": jnp.sum}[reduction]
    assert_same(lambda a: lj.sigmoid_bce(a, soft, reduction=reduction),
                lambda a: reduce(optax.sigmoid_binary_cross_entropy(a, soft)), x)
    assert_same(lambda a: lj.sigmoid_focal(a, y, alpha=0.3, gamma=1.5, reduction=reduction),
                lambda a: reduce(optax.sigmoid_focal_loss(a, y, alpha=0.3, gamma=1.5)), x)
    for delta in (1.0, 0.4):
        assert_same(lambda a: lj.huber(a, soft, rho=delta, loss_weight=delta, reduction=reduction),
                    lambda a: reduce(optax.huber_loss(a, soft, delta=delta)), x)


def test_class_axis_losses_match_optax(rng):
    x = rng.normal(0, 3, (7, 6))
    labels = rng.integers(0, 6, 7)
    assert_same(lambda a: lj.softmax_ce(a, labels, reduction="none"),
                lambda a: optax.softmax_cross_entropy_with_integer_labels(a, labels), x)
    smoothed = optax.smooth_labels(jax.nn.one_hot(labels, 6), 0.2)
    assert_same(lambda a: lj.softmax_ce(a, labels, label_smoothing=0.2, reduction="mean"),
                lambda a: optax.softmax_cross_entropy(a, smoothed).mean(), x)
    target = jax.nn.softmax(jnp.asarray(rng.normal(size=(7, 6))))
    assert_same(lambda a: lj.kl_div(a, target, reduction="none").sum(-1),
                lambda a: optax.kl_divergence(a, target), jax.nn.log_softmax(jnp.asarray(x)))
    scores = rng.normal(0, 2, (3, 6, 4))  # class axis 1, like an image's pixels
    pixels = rng.integers(0, 6, (3, 4))
    assert_same(lambda a: lj.softmax_ce(a, pixels, axis=1, reduction="none"),
                lambda a: optax.softmax_cross_entropy_with_integer_labels(a, pixels, axis=1), scores)


def test_poisson_nll_matches_its_formula(rng):
    """optax has no Poisson NLL: the formula exp(x) − y·x (log input) written here instead."""
    x, y = rng.normal(size=(5, 4)), rng.poisson(2.0, (5, 4)) * 1.0
    assert_same(lambda a: lj.poisson_nll(a, y, reduction="none"), lambda a: jnp.exp(a) - y * a, x)


def test_jax_grad_is_the_generated_gradient(rng):
    """The custom_vjp is used: jax.grad gives exactly the kernels' gradient (NumPy target)."""
    x, y = rng.normal(0, 4, (8, 3)), (rng.random((8, 3)) > 0.5) * 1.0
    for name, kwargs in (("sigmoid_focal", {}), ("sigmoid_bce", {}), ("huber", {"rho": 0.5})):
        value, grad = _value_and_grad(lambda a: getattr(lj, name)(a, y, reduction="sum", **kwargs), x)
        want_value, (want_grad,) = lossc.get(name).value_and_grad(x, y, reduction="sum", grad_output=np.ones(()),
                                                                  **kwargs)
        np.testing.assert_allclose(value, want_value, rtol=1e-14)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-14, atol=1e-300)


def _mp_focal(x, y, alpha=0.25, gamma=2):
    p, q = 1 / (1 + mpmath.exp(-x)), 1 / (1 + mpmath.exp(x))
    return y * alpha * q ** gamma * mpmath.log1p(mpmath.exp(-x)) + \
        (1 - y) * (1 - alpha) * p ** gamma * mpmath.log1p(mpmath.exp(x))


def test_extreme_logits_are_exact_against_mpmath():
    """optax's focal loss overflows to NaN gradients near ±1e3; lossc matches 50-digit mpmath."""
    x = np.array([-1e4, -1000.0, -50.0, -1.0, 0.0, 30.0, 700.0, 1e4])
    y = np.array([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    value, grad = jax.vmap(jax.value_and_grad(lambda a, b: lj.sigmoid_focal(a, b, reduction="sum")))(
        jnp.asarray(x), jnp.asarray(y))
    with mpmath.workdps(50):
        for k in range(x.size):
            def f(v, yk=mpmath.mpf(y[k])):
                return _mp_focal(v, yk)
            assert float(value[k]) == pytest.approx(float(f(mpmath.mpf(x[k]))), rel=1e-13, abs=1e-300)
            assert float(grad[k]) == pytest.approx(float(mpmath.diff(f, mpmath.mpf(x[k]))), rel=1e-10, abs=1e-300)
    confident = jnp.asarray([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4 - 20]])
    value, grad = jax.value_and_grad(lambda a: lj.softmax_ce(a, jnp.asarray([2, 2]), reduction="sum"))(confident)
    assert np.isfinite(np.asarray(grad)).all()
    assert float(value) == pytest.approx(2e4 + 20 + float(mpmath.log1p(mpmath.exp(-20))), rel=1e-15)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_label_entry_is_gathered_as_the_other_targets_sum_it(rng, smoothing):
    """The JAX target reads Σ_j x_j·[j = label] as a gather of the label's entry; a label that
    is no class index in range (ignore_index, negative, the class count) picks nothing, as the
    sum the NumPy kernels compute — values and gradients equal theirs."""
    import lossc.generated.numpy.softmax_ce__from_logits_false__class_weighted_false as numpy_kernels

    x = rng.normal(0, 3, (6, 6))
    labels = np.array([-100.0, -1.0, 6.0, 5.0, 3.0, 0.0])
    value, grad = jax.value_and_grad(lambda a: jnp.sum(lj.softmax_ce(a, labels, label_smoothing=smoothing,
                                                                     reduction="none")))(jnp.asarray(x))
    want, (want_grad,) = numpy_kernels.forward_backward(x, labels, 1.0, label_smoothing=smoothing,
                                                        ignore_index=-100, grad_output=1.0)
    np.testing.assert_allclose(float(value), np.sum(want), **TOL)
    np.testing.assert_allclose(np.asarray(grad), want_grad, **TOL)
    assert np.all(np.asarray(grad)[0] == 0) and np.isfinite(np.asarray(grad)).all()


def test_reduction_none_takes_the_cotangent_for_every_loss_level(rng):
    """'none' with a cotangent g: the gradient of Σ g·loss, for an element loss (saved
    gradient times g), a row loss, and an element loss over a class axis (a second pass)."""
    x = rng.normal(size=(4, 5))
    labels = rng.integers(0, 5, 4)
    target = jax.nn.softmax(jnp.asarray(rng.normal(size=(4, 5))))
    for name, args, shape in (("huber", (rng.normal(size=(4, 5)),), (4, 5)), ("softmax_ce", (labels,), (4,)),
                              ("kl_div", (target,), (4, 5))):
        g = rng.random(shape) + 0.5
        grad = jax.grad(lambda a: jnp.sum(getattr(lj, name)(a, *args, reduction="none") * g))(jnp.asarray(x))
        _, (want,) = lossc.get(name).value_and_grad(x, *[np.asarray(a) for a in args], reduction="none",
                                                    grad_output=g)
        np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-13, atol=1e-15)


def test_pipeline_arguments_follow_lossc_get(rng):
    x, y = rng.normal(size=(6, 3)), rng.random((6, 3))
    weight = rng.random((6, 1))
    for kwargs in ({"weight": weight}, {"avg_factor": 4.0}, {"loss_weight": 2.5, "reduction": "sum"},
                   {"weight": weight, "reduction": "none"}):
        value, grad = jax.value_and_grad(lambda a: jnp.sum(lj.sigmoid_bce(a, y, **kwargs)))(jnp.asarray(x))
        want_value, (want_grad,) = lossc.get("sigmoid_bce").value_and_grad(x, y, **kwargs)
        np.testing.assert_allclose(float(value), np.sum(want_value), rtol=1e-13)
        np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-13)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_dtypes_are_kept_and_low_precision_computes_in_float32(rng, dtype):
    x = jnp.asarray(rng.normal(size=(4, 6)), dtype=dtype)
    labels = jnp.asarray(rng.integers(0, 6, 4))
    value, grad = jax.value_and_grad(lambda a: lj.softmax_ce(a, labels))(x)
    assert value.dtype == dtype and grad.dtype == dtype
    reference = lj.softmax_ce(x.astype(jnp.float32), labels)
    assert float(value) == float(reference.astype(dtype))


def test_jit_and_vmap(rng):
    x, y = jnp.asarray(rng.normal(size=(3, 8, 4))), jnp.asarray((rng.random((3, 8, 4)) > 0.5) * 1.0)
    step = jax.jit(jax.value_and_grad(lambda a, b: lj.sigmoid_focal(a, b, reduction="mean")))
    batched = jax.vmap(step)(x, y)
    for k in range(3):
        value, grad = step(x[k], y[k])
        np.testing.assert_allclose(np.asarray(batched[0][k]), np.asarray(value), rtol=1e-15)
        np.testing.assert_allclose(np.asarray(batched[1][k]), np.asarray(grad), rtol=1e-15)


SHARDED = r"""
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import lossc.jax as lj
assert len(jax.devices()) == 2
rng = np.random.default_rng(0)
x, labels = rng.normal(size=(8, 10)), rng.integers(0, 10, 8)
step = jax.jit(jax.value_and_grad(lambda a, b: lj.softmax_ce(a, b, label_smoothing=0.1)))
mesh = Mesh(np.array(jax.devices()), ("batch",))
shard = NamedSharding(mesh, PartitionSpec("batch"))
value, grad = step(jax.device_put(x, shard), jax.device_put(labels, shard))
plain_value, plain_grad = step(x, labels)
assert len(grad.sharding.device_set) == 2, grad.sharding
np.testing.assert_allclose(float(value), float(plain_value), rtol=1e-14)
np.testing.assert_allclose(np.asarray(grad), np.asarray(plain_grad), rtol=1e-14)
print("sharded ok")
"""


def test_a_batch_sharded_input_on_two_devices_gives_the_unsharded_result():
    result = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert "sharded ok" in result.stdout, result.stderr[-2000:]


def test_losses_over_pairs_are_not_in_the_jax_target_and_import_lossc_needs_no_jax():
    with pytest.raises(NotImplementedError, match="pair inputs"):
        lj.get("sdml")
    code = "import sys; sys.modules['jax'] = None; import lossc; print(lossc.get('huber').name)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "huber"


def test_parameters_are_python_numbers_so_a_traced_one_is_refused_by_name():
    """The generated code branches on parameters in Python (label smoothing's row sum is not
    computed at 0), which is sound only because a parameter is never a tracer."""
    x, labels = jnp.asarray(np.linspace(-3, 3, 12).reshape(4, 3)), jnp.asarray([0, 1, 2, 1])
    with pytest.raises(TypeError, match="parameter 'label_smoothing' must be a real number"):
        jax.jit(lambda smoothing: lj.softmax_ce(x, labels, label_smoothing=smoothing))(0.1)
    source = (GENERATED / "jax" / "softmax_ce__from_logits_false__class_weighted_false.py").read_text()
    assert "if (s_label_smoothing > 0.0) else" in source
