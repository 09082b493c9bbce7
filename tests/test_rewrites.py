"""Each stability rule on its own, and the derived forms the compiler must produce."""
import pytest
import sympy

from conftest import spec_paths
from lossc.compiler import rewrites, rules
from lossc.compiler.derive import derive
from lossc.compiler.functions import expm1, log1p, sigmoid, softplus
from lossc.compiler.ir import build_ir, variants
from lossc.compiler.spec import load_spec

x, u, g = sympy.symbols("x u g", real=True)

CASES = [
    (sympy.log(sigmoid(x)), -softplus(-x)),
    (sympy.log(1 - sigmoid(x)), -softplus(x)),
    (sigmoid(x) ** g, sympy.exp(-g * softplus(-x))),
    ((1 - sigmoid(x)) ** g, sympy.exp(-g * softplus(x))),
    (sympy.log(1 + u), log1p(u)),
    (sympy.exp(u) - 1, expm1(u)),
    (sympy.log(1 + sympy.exp(u)), softplus(u)),
    (1 / (1 + sympy.exp(-x)), sigmoid(x)),
    (sympy.log(1 - sigmoid(x)) + sympy.log(sigmoid(x)), -softplus(x) - softplus(-x)),
]


@pytest.mark.parametrize("naive, stable", CASES, ids=[str(c[0]) for c in CASES])
def test_rule_rewrites_naive_form(naive, stable):
    assert rewrites.stabilize(naive) == stable


def test_rules_leave_stable_forms_alone():
    for expr in (softplus(x) * sigmoid(-x), log1p(u) + expm1(x), sympy.log(x + 2), x**2):
        assert rewrites.stabilize(expr) == expr


def test_every_rule_is_named_and_documented():
    for rule in rules.all_rules():
        assert rule.doc and "→" in rule.doc, rule.name


def _naive_nodes(expr):
    found = []
    for node in sympy.preorder_traversal(expr):
        if isinstance(node, sympy.log) and (isinstance(node.args[0], sigmoid) or rewrites.one_minus_sigmoid(node.args[0])):
            found.append(node)
        if node.is_Pow and isinstance(node.base, sigmoid):
            found.append(node)
        if isinstance(node, sympy.log) and node.args[0].is_Add and sympy.S.One in node.args[0].args:
            found.append(node)
    return found


@pytest.mark.parametrize("path", spec_paths(), ids=lambda p: p.stem)
def test_no_naive_form_survives_in_any_loss_or_gradient(path):
    spec = load_spec(path)
    for variant in variants(spec):
        derived = derive(build_ir(spec, variant))
        for expr in [derived.loss, *derived.gradients.values()]:
            assert not _naive_nodes(expr), (variant, expr)


def test_bce_gradient_is_not_simplified_into_a_cancelling_form():
    spec = load_spec(next(p for p in spec_paths() if p.stem == "sigmoid_bce"))
    derived = derive(build_ir(spec, {"from_sigmoid": False}))
    pred, label, pw = (derived.ir.symbols[n] for n in ("pred", "label", "pos_weight"))
    assert derived.gradients["pred"] == (1 - label) * sigmoid(pred) - label * pw * sigmoid(-pred)
    assert sympy.simplify(derived.gradients["pred"].subs(pw, 1) - (sigmoid(pred) - label)).rewrite(sympy.exp).simplify() == 0


def test_gradients_agree_with_sympy_on_the_declared_form():
    for path in spec_paths():
        spec = load_spec(path)
        if spec.class_axis:  # reductions are differentiated by lossc's rules: see test_reductions.py
            continue
        for variant in variants(spec):
            ir = build_ir(spec, variant)
            derived = derive(ir)
            for name, grad in derived.gradients.items():
                declared = sympy.diff(ir.loss, ir.symbols[name])
                point = {s: sympy.Rational(3, 7) + sympy.Rational(i, 5) for i, s in enumerate(sorted(ir.symbols.values(), key=str))}
                difference = (grad - declared).subs(point).rewrite(sympy.exp).evalf(30)
                assert abs(difference) < 1e-25, (path.stem, variant, name)


def test_huber_gradient_lowers_to_a_clip_only_for_a_positive_threshold():
    """where(|u| < ρ, −u/ρ, −sign(u)) is clip(−u/ρ, −1, 1) when ρ > 0 (the spec's range says so);
    with a threshold that may be 0 or negative the where() stays."""
    from lossc.compiler.functions import unit_clip
    from lossc.compiler.lowering import lower

    spec = load_spec(next(p for p in spec_paths() if p.stem == "huber"))
    derived = derive(build_ir(spec, {}))
    lowered = lower(derived.gradients["pred"])
    assert lowered.has(unit_clip) and not lowered.has(sympy.sign)
    u, rho = sympy.Symbol("u", real=True), sympy.Symbol("rho", real=True)  # sign of rho unknown
    where = sympy.Piecewise((-u / rho, sympy.Abs(u) < rho), (-sympy.sign(u), True))
    assert lower(where) == where
    positive = sympy.Symbol("rho", positive=True)
    for value in (-3.0, -1.0, -0.25, 0.0, 0.5, 1.0, 7.0):  # same values on both sides of the kink
        clipped = lower(where.subs(rho, positive)).subs({u: value, positive: 1.0})
        assert float(clipped) == float(where.subs({u: value, rho: 1.0}))
