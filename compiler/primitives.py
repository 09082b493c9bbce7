"""The one table of primitive functions: what each means and how every target writes it.

A *primitive* is a SymPy function node that can reach a kernel: its spec-language name (or
None for the nodes only the compiler makes), its SymPy class (which carries the derivative,
see :mod:`functions`), its 50-digit evaluation, and its code in every target. The parser,
``mp_eval``, the NumPy, C/CUDA and JAX printers and the docs' LaTeX and MathML all read this
table; ``tests/test_primitives.py`` checks that every primitive reaches every one of them.

Target columns are format strings over the printed arguments ``{0}``, ``{1}``:

- ``numpy``: one NumPy call (or two lines) writing ``{out}``, for the three-address array
  code; ``{flag}`` is a boolean scratch buffer; ``"{0}"`` means the argument's own buffer.
- ``python``: a Python expression on floats, for parameter-only sub-expressions.
- ``c``: C/CUDA for one precision: ``{f}`` is the math-library suffix (``f`` in float32),
  ``{T}`` the C type, ``{zero}``/``{one}`` literals of that precision.
- ``jax``: jax.numpy code (``_jnp``).
- ``latex``: %-format (LaTeX is full of braces); None: SymPy's own rendering.
- ``mathml``: the identifier written before ``(x)``; None: SymPy's own rendering.

``sigmoid`` and ``softplus`` are ``lowered``: lowering expands them before any target prints
(their target columns are empty). Spec-language functions that are not nodes of their own
(sqrt, min, max, clip, where, log_sigmoid and the class-axis reductions) are
:data:`SPEC_FUNCTIONS` built from primitives.
"""
from dataclasses import dataclass

import mpmath
import sympy

from .functions import digamma, expm1, grouped, lgamma, log1p, one_if_nonneg, relu, sigmoid, softplus, step, unit_clip
from .reductions import CLASSES, one_hot, rlogsumexp, rmax, rsum


@dataclass(frozen=True)
class Primitive:
    """One primitive function; see the module docstring for the target columns."""

    function: type
    name: str | None
    mpmath: object
    numpy: str | None
    python: str | None
    c: str | None
    jax: str | None
    latex: str | None
    mathml: str | None
    domain: str
    imports: tuple = ()  # (target, line) a generated module of that target needs for it
    bool_result: bool = False  # the NumPy array result is boolean
    libm: bool = False  # a math-library call: C code computes it outside ternaries (SIMD)
    lowered: bool = False

    @property
    def arity(self):
        """Number of arguments."""
        return next(iter(self.function.nargs))

    def code(self, target, *args, **fields):
        """This primitive's ``target`` code for printed ``args`` (see the module docstring)."""
        form = getattr(self, target)
        if form is None:
            raise NotImplementedError(f"{self.function.__name__} has no {target} form")
        return form.format(*args, **fields)


def _unit_clip(x):
    return x if x != x else min(max(x, mpmath.mpf(-1)), mpmath.mpf(1))


def _c_math(name):
    return name + "{f}({0})"


PRIMITIVES = (
    Primitive(sympy.exp, "exp", mpmath.exp, "np.exp({0}, out={out})", "np.exp({0})", _c_math("exp"),
              "_jnp.exp({0})", None, None, "all x; overflows above ≈ 88.7 (float32) / 709.8 (float64)", libm=True),
    Primitive(sympy.log, "log", mpmath.log, "np.log({0}, out={out})", "np.log({0})", _c_math("log"),
              "_jnp.log({0})", None, None, "x ≥ 0 (−inf at 0, NaN below)", libm=True),
    Primitive(log1p, "log1p", mpmath.log1p, "np.log1p({0}, out={out})", "np.log1p({0})", _c_math("log1p"),
              "_jnp.log1p({0})", r"\operatorname{log1p}\left(%s\right)", "log1p", "x ≥ −1; exact for tiny x",
              libm=True),
    Primitive(expm1, "expm1", mpmath.expm1, "np.expm1({0}, out={out})", "np.expm1({0})", _c_math("expm1"),
              "_jnp.expm1({0})", r"\operatorname{expm1}\left(%s\right)", "expm1", "all x; exact for tiny x",
              libm=True),
    Primitive(sympy.Abs, "abs", abs, "np.absolute({0}, out={out})", "np.abs({0})", _c_math("fabs"),
              "_jnp.abs({0})", None, None, "all x; derivative sign(x), 0 at 0"),
    Primitive(sympy.sign, "sign", mpmath.sign, "np.sign({0}, out={out})", "np.sign({0})",
              "(({T})(({0}) > 0) - ({T})(({0}) < 0))", "_jnp.sign({0})", None, None, "all x; derivative 0"),
    Primitive(relu, "relu", lambda x: max(x, 0), "np.maximum({0}, 0, out={out})", "max({0}, 0.0)",
              "(({0}) < 0 ? {zero} : ({0}))", "_jnp.where({0} < 0, 0.0, {0})", r"\max\left(%s, 0\right)", None,
              "all x; derivative step(x), 0 at the kink (PyTorch's convention)"),
    Primitive(sigmoid, "sigmoid", lambda x: 1 / (1 + mpmath.exp(-x)), None, None, None, None,
              r"\sigma\left(%s\right)", None, "all x; lowered around exp(−|x|), never overflows", lowered=True),
    Primitive(softplus, "softplus", lambda x: mpmath.log1p(mpmath.exp(x)), None, None, None, None,
              r"\operatorname{softplus}\left(%s\right)", None, "all x; lowered to max(x, 0) + log1p(exp(−|x|))",
              lowered=True),
    Primitive(lgamma, "lgamma", lambda x: mpmath.loggamma(x).real, "lgamma({0}, out={out})", "lgamma({0})",
              "lossc_lgamma{f}({0})", "_gammaln({0})", r"\ln\Gamma\left(%s\right)", "lnΓ",
              "x not a non-positive integer (+inf there); log |Γ(x)|",
              imports=(("numpy", "from lossc.kernels.special import lgamma"),
                       ("jax", "from jax.scipy.special import gammaln as _gammaln")), libm=True),
    Primitive(digamma, None, mpmath.digamma, "digamma({0}, out={out})", "digamma({0})", "lossc_digamma{f}({0})",
              "_digamma({0})", r"\psi\left(%s\right)", "ψ",
              "x not a non-positive integer; the derivative of lgamma; relative error grows near its root 1.4616",
              imports=(("numpy", "from lossc.kernels.special import digamma"),
                       ("jax", "from jax.scipy.special import digamma as _digamma")), libm=True),
    Primitive(step, None, lambda x: mpmath.mpf(1) if x > 0 else mpmath.mpf(0), "np.greater({0}, 0, out={out})",
              "(1.0 if {0} > 0 else 0.0)", "(({0}) > 0 ? {one} : {zero})", "_jnp.where({0} > 0, 1.0, 0.0)",
              r"\mathbb{1}\left[%s > 0\right]", None, "all x; the derivative of relu", bool_result=True),
    Primitive(one_if_nonneg, None, lambda u, e: mpmath.mpf(1) if u >= 0 else e,
              "np.greater_equal({0}, 0, out={flag})\nnp.maximum({1}, {flag}, out={out})", "(1.0 if {0} >= 0 else {1})",
              "(({0}) >= 0 ? {one} : ({1}))", "_jnp.where({0} >= 0, 1.0, {1})",
              r"\begin{cases} 1 & %s \geq 0 \\ %s & \text{otherwise} \end{cases}", None,
              "0 ≤ e ≤ 1; the numerator of the lowered sigmoid"),
    Primitive(grouped, None, lambda x: x, "{0}", "({0})", "({0})", "({0})", r"\left(%s\right)", None,
              "its argument, computed before the sum around it"),
    Primitive(unit_clip, None, _unit_clip, "np.clip({0}, -1, 1, out={out})", "min(max({0}, -1.0), 1.0)",
              "(({0}) < -{one} ? -{one} : (({0}) > {one} ? {one} : ({0})))", "_jnp.clip({0}, -1.0, 1.0)",
              r"\operatorname{clip}_{[-1, 1]}\left(%s\right)", None, "all x; NaN stays NaN"),
    Primitive(sympy.floor, None, mpmath.floor, "np.floor({0}, out={out})", "np.floor({0})", _c_math("floor"),
              "_jnp.floor({0})", None, None, "all x; the ones counted by the lowered Σexp"),
)
BY_FUNCTION = {p.function: p for p in PRIMITIVES}


def of(expr):
    """The primitive of the function node ``expr``, or None for any other node."""
    return BY_FUNCTION.get(expr.func)


def imports(target, primitives):
    """The sorted import lines a ``target`` module printing ``primitives`` needs."""
    return sorted({line for p in primitives for t, line in p.imports if t == target})


def _where(cond, if_true, if_false):
    if cond is sympy.true:
        return if_true
    if cond is sympy.false:
        return if_false
    return sympy.Piecewise((if_true, cond), (if_false, True))


def _max(a, b):
    """max(a, b); at a tie it follows its first argument (so d max(0, z)/dz = 0 at z = 0)."""
    return _where(sympy.StrictGreaterThan(b, a), b, a)


def _min(a, b):
    """min(a, b); at a tie it follows its first argument."""
    return _where(sympy.StrictLessThan(b, a), b, a)


def _clip(x, lo, hi):
    """min(max(x, lo), hi) as one where() (a comparison with a nested where() would become a
    SymPy ITE no target prints): hi above hi (and wherever lo > hi, as torch.clamp), lo below
    lo, else x, whose derivative 1 holds at both bounds (torch.clamp's convention)."""
    return sympy.Piecewise((hi, sympy.Or(sympy.StrictGreaterThan(x, hi), sympy.StrictGreaterThan(lo, hi))),
                           (lo, sympy.StrictLessThan(x, lo)), (x, True))


# Spec-language name → (number of arguments, builder): the primitives under their names, then
# the functions written with them; the first argument of `where` is a condition.
SPEC_FUNCTIONS = {
    **{p.name: (p.arity, p.function) for p in PRIMITIVES if p.name},
    "sqrt": (1, sympy.sqrt),
    "log_sigmoid": (1, lambda x: -softplus(-x)),
    "min": (2, _min),
    "max": (2, _max),
    "clip": (3, _clip),
    "where": (3, _where),
    # reductions along the class axis (see reductions.py)
    "sum": (1, rsum),
    "mean": (1, lambda e: rsum(e) / CLASSES),
    "logsumexp": (1, rlogsumexp),
    "softmax": (1, lambda e: sympy.exp(e - rlogsumexp(e))),
    "log_softmax": (1, lambda e: e - rlogsumexp(e)),
    "norm": (1, lambda e: sympy.sqrt(rsum(e**2))),
    "dot": (2, lambda a, b: rsum(a * b)),
    "pick": (2, lambda e, label: rsum(e * one_hot(label))),
    "one_hot": (1, one_hot),
}
# one argument: the reduction over the class axis; two: the element-wise max/min
REDUCING_FORMS = {"max": rmax, "min": lambda e: -rmax(-e)}
