"""Three-address NumPy code: one ufunc call per operation, each into a recycled buffer.

A fused kernel is a DAG of a few dozen operations. Written as NumPy expressions, every
operation allocates a fresh temporary; here every array operation is a ufunc call with
``out=`` into a scratch buffer that is reused as soon as its value is dead (liveness over
the straight-line code), so a chunk's whole working set stays in cache and nothing is
allocated per operation. Sub-expressions of parameters and constants only stay Python
scalars (NumPy treats those as "weak": they never widen float32 to float64).
"""
from dataclasses import dataclass, field

import sympy

from ..functions import expm1, log1p, one_if_nonneg, relu, step
from .numpy_printer import NumPyPrinter

UNARY = {
    sympy.exp: "np.exp",
    sympy.log: "np.log",
    log1p: "np.log1p",
    expm1: "np.expm1",
    sympy.Abs: "np.absolute",
    sympy.sign: "np.sign",
}
COMPARE = {"<": "np.less", "<=": "np.less_equal", ">": "np.greater", ">=": "np.greater_equal",
           "==": "np.equal", "!=": "np.not_equal"}


class Mask(sympy.Basic):
    """All-ones integer bits where the condition holds, else 0 (shared by every where() on it)."""


class Blend(sympy.Expr):
    """Blend(mask, a, b): a where mask else b, bit-exact."""


def _with_blends(expr, scalars):
    """Piecewise with array conditions → nested Blend(Mask(cond), value, rest) nodes."""
    if not expr.args:
        return expr
    pieces = expr.args if isinstance(expr, sympy.Piecewise) else ()
    if pieces and pieces[-1].cond == True and all(not p.cond.free_symbols <= scalars for p in pieces[:-1]):  # noqa: E712
        result = _with_blends(pieces[-1].expr, scalars)
        for value, cond in reversed(pieces[:-1]):
            result = Blend(Mask(_with_blends(cond, scalars)), _with_blends(value, scalars), result)
        return result
    args = tuple(_with_blends(a, scalars) for a in expr.args)
    return expr.func(*args) if args != expr.args else expr


@dataclass
class Program:
    """Lines of kernel code plus how many float/bool/int scratch buffers they use."""

    lines: list = field(default_factory=list)
    floats: int = 0
    bools: int = 0
    ints: int = 0


class _Pool:
    """Free-list allocator of one kind of scratch buffer."""

    def __init__(self, prefix):
        self.prefix, self.free, self.count = prefix, [], 0

    def take(self, avoid=()):
        for name in self.free:
            if name not in avoid:
                self.free.remove(name)
                return name
        self.count += 1
        return f"{self.prefix}{self.count - 1}"

    def give(self, name):
        if name.startswith(self.prefix) and name not in self.free:
            self.free.append(name)
            self.free.sort(key=lambda n: int(n[len(self.prefix):]))


class _Linearizer:
    def __init__(self, scalar_symbols):
        self.scalars = set(scalar_symbols)
        self.printer = NumPyPrinter({"order": "lex"})
        self.pools = {"f": _Pool("_f"), "b": _Pool("_b"), "i": _Pool("_i")}
        self.lines, self.names, self.uses = [], {}, {}

    # -- analysis ----------------------------------------------------------------------
    def is_scalar(self, expr):
        """True when expr depends on parameters and constants only (no array input)."""
        return all(s in self.scalars for s in expr.free_symbols)

    def count_uses(self, exprs):
        for expr in exprs:
            self._count(expr)

    def _count(self, expr):
        self.uses[expr] = self.uses.get(expr, 0) + 1
        if self.uses[expr] == 1 and not self.is_leaf(expr):
            for arg in self.operands(expr):
                self._count(arg)

    def is_leaf(self, expr):
        return expr.is_Symbol or expr.is_Number or self.is_scalar(expr)

    def operands(self, expr):
        if isinstance(expr, sympy.Piecewise):
            return [part for pair in expr.args for part in pair]
        return list(expr.args)

    # -- emission ----------------------------------------------------------------------
    def value(self, expr):
        """Code naming expr's value, emitting the ufunc calls that compute it once."""
        if expr in self.names:
            return self.names[expr]
        if self.is_leaf(expr):
            return self.scalar(expr) if not expr.is_Symbol or expr in self.scalars else expr.name
        name = self.compute(expr)
        self.names[expr] = name
        return name

    def scalar(self, expr):
        code = self.printer.doprint(expr)
        plain = expr.is_Symbol or expr.is_Number or isinstance(expr, sympy.logic.boolalg.Boolean)
        return code if plain else f"float({code})"

    def release(self, expr):
        self.uses[expr] -= 1
        if self.uses[expr] == 0:
            if expr in self.names:
                name = self.names[expr]
                for pool in self.pools.values():
                    pool.give(name)
            elif _is_negation(expr) and not self.is_leaf(expr):
                self.release(-expr)  # −t was used as a subtraction of t, never materialized

    def compute(self, expr, out=None):
        if expr.is_Add or expr.is_Mul:
            return self.arithmetic(expr, out)
        args = self.operands(expr)
        codes = [self.value(a) for a in args]
        kind = "b" if expr.is_Relational or isinstance(expr, (sympy.And, sympy.Or, sympy.Not)) or isinstance(expr, step) else "f"
        kind = "i" if isinstance(expr, Mask) else kind
        target = out or self.pools[kind].take(avoid=codes)
        self.emit(expr, codes, target)
        for a in args:
            self.release(a)
        return target

    def arithmetic(self, expr, out):
        """n-ary + or ×: scalar parts folded into one Python scalar, −t as subtraction."""
        scalars = [a for a in expr.args if self.is_scalar(a)]
        arrays = [a for a in expr.args if not self.is_scalar(a)]
        scalar = self.scalar(expr.func(*scalars)) if scalars else None
        if expr.is_Add:
            negated = [a for a in arrays if _is_negation(a)]
            plus = [self.value(a) for a in arrays if a not in negated]
            minus = [self.value(-a) for a in negated]
            codes = plus + minus
            steps = [("np.add", c) for c in plus[1:]] + [("np.subtract", c) for c in minus]
            if scalar is not None:
                steps.append(("np.add", scalar))
            if plus:
                first = plus[0]
            elif scalar is not None:
                first, steps = scalar, [("np.subtract", c) for c in minus]
            else:
                first, steps = None, [("np.negative", minus[0])] + steps[1:]
        else:
            codes = [self.value(a) for a in arrays]
            first, steps = codes[0], [("np.multiply", c) for c in codes[1:]]
            if scalar == "-1":
                steps.append(("np.negative", None))
            elif scalar is not None:
                steps.append(("np.multiply", scalar))
        target = out or self.pools["f"].take(avoid=codes)
        self.chain(first, steps, target, avoid=codes)
        for a in arrays:
            self.release(a)
        return target

    def chain(self, first, steps, out, avoid):
        """Emit ``first (op) s1 (op) s2 ...`` with only the last step writing ``out``.

        Intermediate steps go to a scratch buffer when ``out`` is a kernel output, so a
        float16 output is rounded once, not after every step.
        """
        acc = self.pools["f"].take(avoid=avoid) if out.startswith("_out") and len(steps) > 1 else out
        current = first
        for index, (fname, operand) in enumerate(steps):
            dest = out if index == len(steps) - 1 else acc
            if fname == "np.negative":
                source = operand if current is None else current
                self.lines.append(f"np.negative({source}, out={dest})")
            else:
                self.lines.append(f"{fname}({current}, {operand}, out={dest})")
            current = dest
        if acc != out:
            self.pools["f"].give(acc)

    def emit(self, expr, codes, out):
        line = self.lines.append
        if expr.is_Pow:
            base, exponent = codes
            if expr.exp == 2:
                line(f"np.square({base}, out={out})")
            elif expr.exp == -1:
                line(f"np.divide(1, {base}, out={out})")
            elif expr.exp == sympy.S.Half:
                line(f"np.sqrt({base}, out={out})")
            elif expr.exp == -sympy.S.Half:
                root = self.pools["f"].take(avoid=codes)
                line(f"np.sqrt({base}, out={root})")
                line(f"np.divide(1, {root}, out={out})")
                self.pools["f"].give(root)
            else:
                line(f"np.power({base}, {exponent}, out={out})")
        elif expr.func in UNARY:
            line(f"{UNARY[expr.func]}({codes[0]}, out={out})")
        elif isinstance(expr, relu):
            line(f"np.maximum({codes[0]}, 0, out={out})")
        elif isinstance(expr, step):
            line(f"np.greater({codes[0]}, 0, out={out})")
        elif isinstance(expr, one_if_nonneg):
            flag = self.pools["b"].take()
            line(f"np.greater_equal({codes[0]}, 0, out={flag})")
            line(f"np.maximum({codes[1]}, {flag}, out={out})")
            self.pools["b"].give(flag)
        elif expr.is_Relational:
            line(f"{COMPARE[expr.rel_op]}({codes[0]}, {codes[1]}, out={out})")
        elif isinstance(expr, (sympy.And, sympy.Or)):
            fname = "np.logical_and" if isinstance(expr, sympy.And) else "np.logical_or"
            line(f"{fname}({codes[0]}, {codes[1]}, out={out})")
            for code in codes[2:]:
                line(f"{fname}({out}, {code}, out={out})")
        elif isinstance(expr, sympy.Not):
            line(f"np.logical_not({codes[0]}, out={out})")
        elif isinstance(expr, Mask):
            if expr.args[0].is_Relational:  # compare straight into the int buffer: 0/1
                line(f"{COMPARE[expr.args[0].rel_op]}({self.value(expr.args[0].lhs)}, {self.value(expr.args[0].rhs)}, out={out})")
                line(f"np.negative({out}, out={out})")
            else:
                line(f"mask_into({out}, {codes[0]})")
        elif isinstance(expr, Blend):
            blend = self.pools["i"].take(avoid=codes)
            line(f"blend_into({out}, {codes[0]}, {codes[1]}, {codes[2]}, {blend})")
            self.pools["i"].give(blend)
        elif isinstance(expr, sympy.Piecewise):
            self.piecewise(expr, codes, out)
        else:
            raise NotImplementedError(f"no NumPy ufunc for {expr.func.__name__}")

    def piecewise(self, expr, codes, out):
        """Nested where() as allocation-free bitwise blends, from the last piece back."""
        pairs = list(zip(codes[0::2], codes[1::2]))
        *pieces, (last_value, last_cond) = pairs
        if last_cond != "True":
            raise NotImplementedError("where() without a final default branch")
        mask, blend = self.pools["i"].take(), self.pools["i"].take()
        current = last_value
        for value, cond in reversed(pieces):
            self.lines.append(f"select_into({out}, {cond}, {value}, {current}, {mask}, {blend})")
            current = out
        self.pools["i"].give(mask)
        self.pools["i"].give(blend)


def _is_negation(expr):
    return expr.is_Mul and len(expr.args) == 2 and expr.args[0] == -1


def linearize(kernel, scalar_symbols, output_targets, scale_gradients):
    """Program computing ``kernel`` into ``output_targets`` (code names of output arrays).

    With ``scale_gradients``, every output after the first is multiplied by grad_output.
    """
    lin = _Linearizer(scalar_symbols)
    scalars = frozenset(scalar_symbols)
    kernel = type(kernel)(
        [(s, _with_blends(e, scalars)) for s, e in kernel.assignments], [_with_blends(e, scalars) for e in kernel.outputs]
    )
    lin.count_uses([expr for _, expr in kernel.assignments] + list(kernel.outputs))
    for symbol, expr in kernel.assignments:
        if lin.is_scalar(expr):
            lin.lines.append(f"{symbol.name} = {lin.scalar(expr)}")
            lin.scalars.add(symbol)
        else:
            lin.names[symbol] = lin.value(expr)  # the temporary now owns the buffer
    for index, (expr, target) in enumerate(zip(kernel.outputs, output_targets)):
        scaled = scale_gradients and index > 0
        fresh = expr not in lin.names and not lin.is_leaf(expr) and not scaled
        code = lin.compute(expr, out=target) if fresh else lin.value(expr)
        if fresh:
            lin.names[expr] = target
        if scaled:
            lin.lines.append(f"np.multiply({code}, grad_output, out={target})")
        elif code != target:
            lin.lines.append(f"np.copyto({target}, {code}, casting='unsafe')")
        lin.release(expr)
    return Program(lin.lines, lin.pools["f"].count, lin.pools["b"].count, lin.pools["i"].count)
