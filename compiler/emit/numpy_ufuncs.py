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

from sympy.core.numbers import equal_valued

from .. import primitives
from ..reductions import CLASS_INDEX, Reduction, rmax, rsum
from . import code_name
from .numpy_printer import NumPyPrinter

COMPARE = {"<": "np.less", "<=": "np.less_equal", ">": "np.greater", ">=": "np.greater_equal",
           "==": "np.equal", "!=": "np.not_equal"}


class Mask(sympy.Basic):
    """All-ones integer bits where the condition holds, else 0 (shared by every where() on it)."""


class Blend(sympy.Expr):
    """Blend(mask, a, b): a where mask else b, bit-exact."""


class CompareMask(sympy.Basic):
    """CompareMask(op, a, b): the Mask of the comparison a op b, compared straight into ints."""


class Indicator(sympy.Expr):
    """Indicator(op, a, b): 1.0 where a op b else 0.0 (a one-hot), one comparison into floats."""


OPS = tuple(COMPARE)


def _mask(cond):
    if cond.is_Relational:
        return CompareMask(sympy.Integer(OPS.index(cond.rel_op)), cond.lhs, cond.rhs)
    return Mask(cond)


def _with_blends(expr, scalars):
    """Piecewise with array conditions → nested Blend(Mask(cond), value, rest) nodes."""
    if not expr.args:
        return expr
    pieces = expr.args if isinstance(expr, sympy.Piecewise) else ()
    if pieces and pieces[-1].cond == True and all(not p.cond.free_symbols <= scalars for p in pieces[:-1]):  # noqa: E712
        if len(pieces) == 2 and pieces[0].expr == 1 and pieces[1].expr == 0 and pieces[0].cond.is_Relational:
            cond = pieces[0].cond
            return Indicator(sympy.Integer(OPS.index(cond.rel_op)), _with_blends(cond.lhs, scalars),
                             _with_blends(cond.rhs, scalars))
        result = _with_blends(pieces[-1].expr, scalars)
        for value, cond in reversed(pieces[:-1]):
            result = Blend(_mask(_with_blends(cond, scalars)), _with_blends(value, scalars), result)
        return result
    args = tuple(_with_blends(a, scalars) for a in expr.args)
    return expr.func(*args) if args != expr.args else expr


POOLS = {("f", "e"): "_f", ("b", "e"): "_b", ("i", "e"): "_i", ("f", "r"): "_rf", ("b", "r"): "_rb", ("i", "r"): "_ri"}
LEVELS = {"s": 0, "r": 1, "e": 2}  # scalar < row < element


@dataclass
class Program:
    """Lines of kernel code, how many scratch buffers of each pool they use and the
    primitives they call (whose imports the module needs)."""

    lines: list = field(default_factory=list)
    counts: tuple = (0, 0, 0, 0, 0, 0)
    used: frozenset = frozenset()


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


# the scratch buffers a three-address form may name, and their pools' kinds
SCRATCH = (("root", "f"), ("mask", "i"), ("flag", "b"))
# x**exponent as ufunc lines, tried in order (exponents compared with equal_valued)
POWERS = ((2, "np.square({0}, out={out})"), (-1, "np.divide(1, {0}, out={out})"), (0.5, "np.sqrt({0}, out={out})"),
          (-0.5, "np.sqrt({0}, out={root})\nnp.divide(1, {root}, out={out})"))


class _Analysis:
    """What the program's nodes are: each one's level (scalar, row, element), its operands,
    the CSE temporaries' definitions, and how many times the program uses each."""

    def __init__(self, scalar_symbols, row_symbols):
        self.scalars = set(scalar_symbols)
        self.rows = set(row_symbols)
        self.uses, self.levels = {}, {}
        self.definitions = {}  # CSE temporaries → their expressions

    def level(self, expr):
        """'s' (scalar), 'r' (one value per row) or 'e' (one value per element)."""
        if expr not in self.levels:
            if isinstance(expr, Reduction):
                found = "r"
            elif expr.is_Symbol:
                found = "s" if expr in self.scalars else "r" if expr in self.rows else "e"
            elif not expr.args:
                found = "s"
            else:
                found = max((self.level(a) for a in self.operands(expr)), key=LEVELS.get, default="s")
            self.levels[expr] = found
        return self.levels[expr]

    def is_scalar(self, expr):
        """True when expr depends on parameters and constants only (no array input)."""
        return self.level(expr) == "s"

    def distribute_rows(self, expr):
        """g·(r + s·E) → g·r + (g·s)·E, bottom-up, where g is row-level (not just scalars), r and
        s row-level or scalar and E the one element-level term: the row factor joins the row
        coefficients instead of costing one more pass over the elements."""
        if expr.args:
            args = tuple(self.distribute_rows(a) for a in expr.args)
            if args != expr.args:
                expr = expr.func(*args)
        if not expr.is_Mul:
            return expr
        elements = [a for a in expr.args if self.level(a) == "e"]
        others = [a for a in expr.args if self.level(a) != "e"]
        if len(elements) != 1 or not elements[0].is_Add or not any(self.level(a) == "r" for a in others):
            return expr
        terms = elements[0].args
        if sum(self.level(t) == "e" for t in terms) != 1:
            return expr
        return sympy.Add(*[sympy.Mul(*others, t) for t in terms])

    def count_uses(self, exprs):
        """Count every node's uses by ``exprs`` (its operands once, however often it is used)."""
        for expr in exprs:
            self._count(expr)

    def _count(self, expr):
        self.uses[expr] = self.uses.get(expr, 0) + 1
        if self.uses[expr] == 1 and not self.is_leaf(expr):
            for arg in self.operands(expr):
                self._count(arg)

    def is_leaf(self, expr):
        """True for a value never computed into a buffer: a symbol, a number or a scalar."""
        return expr.is_Symbol or expr.is_Number or self.is_scalar(expr)

    def operands(self, expr):
        """expr's operands (a Piecewise's values and conditions alike)."""
        if isinstance(expr, sympy.Piecewise):
            return [part for pair in expr.args for part in pair]
        return list(expr.args)


class _BufferAllocation(_Analysis):
    """Which buffer holds each value: computed once into a scratch buffer of its kind and
    level, the buffer back in its pool after the value's last use."""

    def __init__(self, scalar_symbols, row_symbols):
        super().__init__(scalar_symbols, row_symbols)
        self.printer = NumPyPrinter({"order": "lex"})
        self.pools = {key: _Pool(prefix) for key, prefix in POOLS.items()}
        self.lines, self.names = [], {}  # the code; computed values → the code naming them
        self.pending = {}  # comparison temporaries not computed yet

    def pool(self, kind, expr):
        """The scratch pool for a value of ``kind`` ('f', 'b', 'i') at expr's level."""
        return self.pools[(kind, "r" if self.level(expr) == "r" else "e")]

    def value(self, expr):
        """Code naming expr's value, emitting the ufunc calls that compute it once."""
        if expr in self.names:
            return self.names[expr]
        if expr in self.pending:
            self.names[expr] = self.value(self.pending.pop(expr))
            return self.names[expr]
        if self.is_transparent(expr):
            return self.value(expr.args[0])
        if self.is_leaf(expr):
            return self.scalar(expr) if not expr.is_Symbol or expr in self.scalars else code_name(expr.name)
        name = self.compute(expr)
        self.names[expr] = name
        return name

    def scalar(self, expr):
        """Python code of a scalar value (a float() of anything but a symbol or number)."""
        code = self.printer.doprint(expr)
        plain = expr.is_Symbol or expr.is_Number or isinstance(expr, sympy.logic.boolalg.Boolean)
        return code if plain else f"float({code})"

    def release(self, expr):
        """One use of expr is done; after its last, its buffer goes back to its pool."""
        self.uses[expr] -= 1
        if self.uses[expr] == 0:
            if expr in self.names:
                name = self.names[expr]
                if any(n == name and self.uses.get(other, 0) > 0 for other, n in self.names.items()):
                    return  # a temporary and its defining expression share the buffer: both must be done
                for pool in self.pools.values():
                    if name.startswith(pool.prefix) and name[len(pool.prefix):].isdigit():
                        pool.give(name)
            elif _is_negation(expr) and not self.is_leaf(expr):
                self.release(-expr)  # −t was used as a subtraction of t, never materialized

    def is_transparent(self, expr):
        """Whether expr's NumPy code is its argument's buffer (grouped: that buffer already
        keeps it apart from the sum around it)."""
        primitive = primitives.of(expr)
        return primitive is not None and primitive.numpy == "{0}"


class _Peepholes(_BufferAllocation):
    """The patterns of a class axis written as one operation instead of a pass over every
    element, listed in :attr:`PEEPHOLES` (matcher → writer): a pick (Σ_j values·[j = index] →
    a gather) and a label select (where(j = index, a, b) → b, one value set per row); inside a
    sum, the scatter of factors·[j = index] (one add per row, :meth:`_Linearizer.scatter_term`)."""

    def pick_parts(self, expr):
        """(product, values, index) when expr is Σ_j values·[j = index] used only here, else None."""
        if not isinstance(expr, rsum) or not expr.args[0].is_Mul or len(expr.args[0].args) != 2:
            return None
        product = expr.args[0]
        if self.uses.get(product) != 1 or product in self.names:
            return None
        values, hot = product.args if self.equality_sides(product.args[1]) else product.args[::-1]
        sides = self.equality_sides(hot)
        if not sides or self.level(values) != "e":
            return None
        index = sides[1] if sides[0] == CLASS_INDEX else sides[0] if sides[1] == CLASS_INDEX else None
        if index is None or self.level(index) == "e":
            return None
        return product, values, index

    def equality_sides(self, expr):
        """(a, b) when expr is the 0/1 indicator of a == b — an Indicator, or a Blend of 1 and 0
        on the mask of that comparison (when CSE shared it) — else None."""
        definition = self.definitions.get(expr, expr)
        if isinstance(definition, Indicator):
            return definition.args[1:] if OPS[int(definition.args[0])] == "==" else None
        if isinstance(definition, Blend) and definition.args[1:] == (1, 0) and isinstance(definition.args[0], Mask):
            cond = definition.args[0].args[0]
            cond = self.definitions.get(cond, cond)
            return (cond.lhs, cond.rhs) if isinstance(cond, sympy.Eq) else None
        return None

    def pick(self, expr, product, values, index, out):
        """Σ_j values·[j = index] as a gather (see lossc.kernels.numpy_runtime.pick_into)."""
        codes = [self.value(values), self.value(index)]
        target = out or self.pool("f", expr).take(avoid=codes)
        self.lines.append(f"pick_into({target}, {codes[0]}, {codes[1]})")
        for node in (*product.args, product):  # as if the product had been computed and summed
            self.release(node)
        return target

    def label_select_parts(self, expr):
        """(index, at_label, elsewhere) when expr is where(j == index, at_label, elsewhere) with
        row-level index and at_label, else None."""
        if not isinstance(expr, Blend):
            return None
        mask, at_label, elsewhere = expr.args
        if isinstance(mask, CompareMask):
            sides = mask.args[1:] if OPS[int(mask.args[0])] == "==" else None
        else:
            cond = self.definitions.get(mask.args[0], mask.args[0]) if isinstance(mask, Mask) else None
            sides = (cond.lhs, cond.rhs) if isinstance(cond, sympy.Eq) else None
        if not sides or CLASS_INDEX not in sides:
            return None
        index = sides[1] if sides[0] == CLASS_INDEX else sides[0]
        if self.level(index) == "e" or self.level(at_label) == "e":
            return None
        return index, at_label, elsewhere

    def label_select(self, expr, index, at_label, elsewhere, out):
        """where(j == index, at_label, elsewhere) as elsewhere (computed straight into the result
        when nothing else uses it, else copied) and one value set per row (see
        lossc.kernels.numpy_runtime.set_at_into), not a blend over every element."""
        if elsewhere not in self.names and self.uses.get(elsewhere) == 1 and not self.is_leaf(elsewhere):
            target = out or self.pool("f", expr).take()
            self.compute(elsewhere, out=target)  # used only here: computed straight into the result
        else:
            code = self.value(elsewhere)
            target = out or self.pool("f", expr).take(avoid=[code])
            self.lines.append(f"np.copyto({target}, {code})")
        codes = [self.value(at_label), self.value(index)]
        self.lines.append(f"set_at_into({target}, {codes[1]}, {codes[0]})")
        for node in expr.args:  # the mask is never computed: its users elsewhere compute it
            self.release(node)
        return target

    PEEPHOLES = ((pick_parts, pick), (label_select_parts, label_select))


class _Linearizer(_Peepholes):
    """Straight-line ufunc code for a kernel: arithmetic chains and the table-driven emission
    of every other node."""

    def compute(self, expr, out=None):
        """Emit the code computing expr into ``out`` (a scratch buffer when None); its name."""
        if expr.is_Add or expr.is_Mul:
            return self.arithmetic(expr, out)
        for match, write in self.PEEPHOLES:
            parts = match(self, expr)
            if parts:
                return write(self, expr, *parts, out)
        args = self.operands(expr)
        codes = [self.value(a) for a in args]
        primitive = primitives.of(expr)
        boolean = expr.is_Relational or isinstance(expr, (sympy.And, sympy.Or, sympy.Not))
        kind = "b" if boolean or (primitive is not None and primitive.bool_result) else "f"
        kind = "i" if isinstance(expr, (Mask, CompareMask)) else kind
        target = out or self.pool(kind, expr).take(avoid=codes)
        self.emit(expr, codes, target)
        for a in args:
            self.release(a)
        return target

    def arithmetic(self, expr, out):
        """n-ary + or ×: scalar parts folded into one Python scalar, −t as subtraction, and
        with element-level operands, the row-level (and scalar) ones combined first."""
        scalars = [a for a in expr.args if self.is_scalar(a)]
        arrays = [a for a in expr.args if not self.is_scalar(a)]
        rows = [a for a in arrays if self.level(a) == "r"]
        if self.level(expr) == "e" and rows and len(rows) + len(scalars) > 1:
            combined = expr.func(*rows, *scalars, evaluate=False)
            self.uses[combined] = self.uses.get(combined, 0) + 1
            self.levels[combined] = "r"
            self.value(combined)
            return self._arithmetic(expr.func(*[a for a in arrays if a not in rows], combined, evaluate=False),
                                    out, expr, released=[a for a in arrays if a not in rows] + [combined])
        return self._arithmetic(expr, out, expr, released=arrays)

    def _arithmetic(self, expr, out, original, released):
        scalars = [a for a in expr.args if self.is_scalar(a)]
        arrays = [a for a in expr.args if not self.is_scalar(a)]
        scalar = self.scalar(expr.func(*scalars)) if scalars else None
        scatter = self.scatter_term(expr, arrays, out) if expr.is_Add else None
        if scatter:
            arrays = [a for a in arrays if a is not scatter[0]]
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
        target = out or self.pool("f", original).take(avoid=codes)
        if scatter and not steps:  # the accumulator must be a computed buffer before scattering into it
            steps = [("np.add", "0")]
        self.chain(first, steps, target, avoid=codes, level_of=original)
        if scatter:
            self.scatter(target, *scatter)
        for a in released:
            self.release(a)
        return target

    def scatter_term(self, expr, arrays, out):
        """(term, one-hot, row factors, index) for a term factors·[j = index] of an element-level
        sum that nothing else uses, when the sum goes to a scratch buffer; else None."""
        if out is not None or self.level(expr) != "e":
            return None
        for term in arrays:
            factors = list(term.args) if term.is_Mul else [term]
            hot = [f for f in factors if isinstance(self.definitions.get(f, f), Indicator)]
            if len(hot) != 1 or self.uses.get(term) != 1 or term in self.names:
                continue
            definition = self.definitions.get(hot[0], hot[0])
            sides = definition.args[1:]
            if OPS[int(definition.args[0])] != "==" or CLASS_INDEX not in sides:
                continue
            index = sides[1] if sides[0] == CLASS_INDEX else sides[0]
            rest = [f for f in factors if f is not hot[0]]
            if self.level(index) == "e" or any(self.level(f) == "e" for f in rest):
                continue
            return term, hot[0], rest, index
        return None

    def scatter(self, target, term, hot, rest, index):
        """Emit the scatter-add of a consumed term, releasing what computing it would have."""
        if len(rest) > 1:
            factor = sympy.Mul(*rest, evaluate=False)
            self.uses[factor] = self.uses.get(factor, 0) + 1
            code = self.value(factor)  # computing the product releases each of rest once
        else:
            factor = rest[0] if rest else None
            code = self.value(factor) if factor is not None else "1"
        self.lines.append(f"scatter_add_into({target}, {self.value(index)}, {code})")
        if factor is not None:
            self.release(factor)
        if hot is not term:
            self.release(hot)

    def chain(self, first, steps, out, avoid, level_of):
        """Emit ``first (op) s1 (op) s2 ...`` with only the last step writing ``out``.

        Intermediate steps go to a scratch buffer when ``out`` is a kernel output, so a
        float16 output is rounded once, not after every step.
        """
        pool = self.pool("f", level_of)
        acc = pool.take(avoid=avoid) if out.startswith("_out") and len(steps) > 1 else out
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
            pool.give(acc)

    def emit(self, expr, codes, out):
        """The ufunc lines of one node: a power by its exponent (:data:`POWERS`), a primitive
        by its row of the table, anything else by its class (:attr:`EMITTERS`)."""
        if expr.is_Pow:
            form = next((f for exponent, f in POWERS if equal_valued(expr.exp, exponent)), "np.power({0}, {1}, out={out})")
            self.write(form, expr, codes, out)
        elif primitives.of(expr) is not None:
            self.primitive(primitives.of(expr), expr, codes, out)
        else:
            emitter = next((e for kinds, e in self.EMITTERS if isinstance(expr, kinds)), None)
            if emitter is None:
                raise NotImplementedError(f"no NumPy ufunc for {expr.func.__name__}")
            emitter(self, expr, codes, out)

    def write(self, form, expr, codes, out):
        """The lines of a three-address ``form`` ({0}, {1}…: the operands; {out}; {root},
        {mask} and {flag}: a float, an int and a boolean scratch buffer, see :data:`SCRATCH`)."""
        scratch = {name: self.pool(kind, expr).take(avoid=codes) if f"{{{name}}}" in form else None
                   for name, kind in SCRATCH}
        self.lines.extend(form.format(*codes, out=out, **scratch).split("\n"))
        for name, kind in SCRATCH:
            if scratch[name] is not None:
                self.pool(kind, expr).give(scratch[name])

    def reduction(self, expr, codes, out):
        """rsum / rmax along the class axis, kept as a column."""
        fname = "np.sum" if isinstance(expr, rsum) else "np.max"
        self.lines.append(f"{fname}({codes[0]}, axis=-1, keepdims=True, out={out})")

    def relational(self, expr, codes, out):
        """A comparison into a boolean buffer."""
        self.lines.append(f"{COMPARE[expr.rel_op]}({codes[0]}, {codes[1]}, out={out})")

    def logical(self, expr, codes, out):
        """And / Or of any number of operands, Not of one."""
        if isinstance(expr, sympy.Not):
            self.lines.append(f"np.logical_not({codes[0]}, out={out})")
            return
        fname = "np.logical_and" if isinstance(expr, sympy.And) else "np.logical_or"
        self.lines.append(f"{fname}({codes[0]}, {codes[1]}, out={out})")
        for code in codes[2:]:
            self.lines.append(f"{fname}({out}, {code}, out={out})")

    def compare_mask(self, expr, codes, out):
        """Compare straight into the int buffer (0/1), then negate: 0/~0."""
        self.lines.append(f"{COMPARE[OPS[int(expr.args[0])]]}({codes[1]}, {codes[2]}, out={out})")
        self.lines.append(f"np.negative({out}, out={out})")

    def indicator(self, expr, codes, out):
        """The 0/1 floats of a comparison."""
        self.lines.append(f"{COMPARE[OPS[int(expr.args[0])]]}({codes[1]}, {codes[2]}, out={out})")

    def mask(self, expr, codes, out):
        """The all-ones bits of a boolean condition."""
        self.lines.append(f"mask_into({out}, {codes[0]})")

    def blend(self, expr, codes, out):
        """a where mask else b, bit-exact."""
        self.write("blend_into({out}, {0}, {1}, {2}, {mask})", expr, codes, out)

    def primitive(self, primitive, expr, codes, out):
        """The ``numpy`` lines of a primitive (its table row's three-address form)."""
        if primitive.numpy is None:
            raise NotImplementedError(f"no NumPy code for {expr.func.__name__}")
        self.printer.used.add(primitive)
        self.write(primitive.numpy, expr, codes, out)

    def piecewise(self, expr, codes, out):
        """Nested where() as allocation-free bitwise blends, from the last piece back."""
        pairs = list(zip(codes[0::2], codes[1::2]))
        *pieces, (last_value, last_cond) = pairs
        if last_cond != "True":
            raise NotImplementedError("where() without a final default branch")
        pool = self.pool("i", expr)
        mask, blend = pool.take(), pool.take()
        current = last_value
        for value, cond in reversed(pieces):
            self.lines.append(f"select_into({out}, {cond}, {value}, {current}, {mask}, {blend})")
            current = out
        pool.give(mask)
        pool.give(blend)

    EMITTERS = (((rsum, rmax), reduction), (sympy.core.relational.Relational, relational),
                ((sympy.And, sympy.Or, sympy.Not), logical), (CompareMask, compare_mask), (Indicator, indicator),
                (Mask, mask), (Blend, blend), (sympy.Piecewise, piecewise))


def _is_negation(expr):
    return expr.is_Mul and len(expr.args) == 2 and expr.args[0] == -1


def linearize(kernel, scalar_symbols, output_targets, scale_gradients, row_symbols=()):
    """Program computing ``kernel`` into ``output_targets`` (code names of output arrays).

    With ``scale_gradients``, every output after the first is multiplied by grad_output.
    ``row_symbols`` are the one-value-per-row inputs of a loss with reductions.
    """
    lin = _Linearizer(scalar_symbols, row_symbols)
    scalars = set(scalar_symbols)
    for symbol, expr in kernel.assignments:  # temporaries of parameters only are scalars too
        if expr.free_symbols <= scalars:
            scalars.add(symbol)
    kernel = type(kernel)(
        [(s, _with_blends(e, scalars)) for s, e in kernel.assignments], [_with_blends(e, scalars) for e in kernel.outputs]
    )
    for symbol, expr in kernel.assignments:  # levels of the temporaries first: later nodes use them
        lin.definitions[symbol] = expr
        lin.levels[symbol] = lin.level(expr)
        if lin.levels[symbol] == "s":
            lin.scalars.add(symbol)
    assignments = [(symbol, lin.distribute_rows(expr)) for symbol, expr in kernel.assignments]
    outputs = [lin.distribute_rows(expr) for expr in kernel.outputs]
    lin.definitions.update(dict(assignments))
    lin.count_uses([expr for _, expr in assignments] + outputs)
    for symbol, expr in assignments:
        if lin.is_scalar(expr):
            lin.lines.append(f"{code_name(symbol.name)} = {lin.scalar(expr)}")
            lin.scalars.add(symbol)
        elif expr.is_Relational:
            lin.pending[symbol] = expr  # a comparison is computed where first needed (maybe never)
        else:
            lin.names[symbol] = lin.value(expr)  # the temporary now owns the buffer
    for index, (expr, target) in enumerate(zip(outputs, output_targets)):
        scaled = scale_gradients and index > 0
        fresh = expr not in lin.names and not lin.is_leaf(expr) and not scaled
        code = lin.compute(expr, out=target) if fresh else lin.value(expr)
        if fresh:
            lin.names[expr] = target
        if scaled:
            lin.lines.append(f"np.multiply({code}, {code_name('grad_output')}, out={target})")
        elif code != target:
            lin.lines.append(f"np.copyto({target}, {code}, casting='unsafe')")
        lin.release(expr)
    return Program(lin.lines, tuple(lin.pools[key].count for key in POOLS), frozenset(lin.printer.used))
