"""Restricted expression parser: spec text → SymPy, without ever executing the text.

Python's ``ast`` (eval mode) only *parses*; this module walks a whitelist of node types and
builds SymPy objects directly. ``eval``, ``sympify`` and ``parse_expr`` are never called on
spec text. Anything outside the whitelist is an :class:`ExprError` naming what was found.
"""
import ast
import difflib
import math
from dataclasses import dataclass, field

import sympy

from .primitives import REDUCING_FORMS, SPEC_FUNCTIONS
from .reductions import CLASSES

MAX_TEXT_LENGTH = 4000
MAX_NODES = 1500
MAX_DEPTH = 60
MAX_LITERAL = 1e30
MAX_NUMERIC_EXPONENT = 64


class ExprError(ValueError):
    """An expression that the spec language does not accept; the message says why."""


@dataclass
class Scope:
    """What names mean while parsing one expression.

    ``values`` maps numeric names (inputs, runtime parameters, definitions) to SymPy
    expressions; ``flags`` maps bool variant parameters to their build-time value;
    ``choices`` maps choice variant parameters to (value, allowed values).
    """

    values: dict = field(default_factory=dict)
    flags: dict = field(default_factory=dict)
    choices: dict = field(default_factory=dict)

    def known_names(self):
        """Every name an expression may refer to."""
        return sorted(set(self.values) | set(self.flags) | set(self.choices) | set(CONSTANTS))


CONSTANTS = {"pi": sympy.pi, "classes": CLASSES}


FUNCTIONS = SPEC_FUNCTIONS  # name → (number of arguments, builder)

_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}
_COMPARE = {
    ast.Lt: sympy.StrictLessThan,
    ast.LtE: sympy.LessThan,
    ast.Gt: sympy.StrictGreaterThan,
    ast.GtE: sympy.GreaterThan,
    ast.Eq: sympy.Eq,
    ast.NotEq: sympy.Ne,
}
_NODE_WORDS = {
    ast.Attribute: "attribute access",
    ast.Lambda: "a lambda",
    ast.ListComp: "a comprehension",
    ast.SetComp: "a comprehension",
    ast.DictComp: "a comprehension",
    ast.GeneratorExp: "a generator expression",
    ast.JoinedStr: "an f-string",
    ast.Subscript: "subscripting",
    ast.IfExp: "a conditional expression (use where(cond, a, b))",
    ast.NamedExpr: "an assignment expression",
    ast.Starred: "star-arguments",
    ast.Await: "await",
    ast.Yield: "yield",
}


def referenced_names(text):
    """The set of names an expression refers to (function names excluded); parses only."""
    tree = _parse_tree(text)
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in called}


def parse_expression(text, scope):
    """Parse ``text`` into a SymPy expression with names resolved through ``scope``."""
    return _Builder(scope).expr(_parse_tree(text).body)


def _parse_tree(text):
    if not isinstance(text, str):
        raise ExprError(f"expected an expression as a string, got {type(text).__name__}")
    if len(text) > MAX_TEXT_LENGTH:
        raise ExprError(f"expression is {len(text)} characters long; at most {MAX_TEXT_LENGTH} are accepted")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ExprError(f"not a valid expression: {err.msg} (column {err.offset})") from None
    except (RecursionError, MemoryError, ValueError):
        raise ExprError("expression is nested too deeply") from None
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES:
        raise ExprError(f"expression has {len(nodes)} syntax nodes; at most {MAX_NODES} are accepted")
    if _depth(tree) > MAX_DEPTH:
        raise ExprError(f"expression is nested more than {MAX_DEPTH} levels deep")
    for node in nodes:
        if isinstance(node, tuple(_NODE_WORDS)):
            raise ExprError(f"{_describe(node)} is not allowed in a loss expression")
    return tree


def _depth(node):
    children = list(ast.iter_child_nodes(node))
    return 1 + max((_depth(c) for c in children), default=0)


class _Builder:
    """Walks a whitelisted AST and builds SymPy objects; one method per node kind."""

    def __init__(self, scope):
        self.scope = scope

    def expr(self, node):
        """A numeric expression."""
        if isinstance(node, ast.Constant):
            return self.number(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.BinOp):
            return self.binop(node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = self.expr(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, (ast.Compare, ast.BoolOp)) or (
            isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)
        ):
            raise ExprError("comparisons and and/or/not are only allowed as the condition of where(cond, a, b)")
        raise ExprError(f"{_describe(node)} is not allowed in a loss expression")

    def number(self, node):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                raise ExprError(f"string {value!r} is only allowed compared with a choice parameter inside where()")
            raise ExprError(f"literal {value!r} is not a number")
        if not math.isfinite(value) or abs(value) > MAX_LITERAL:
            raise ExprError(f"numeric literal {value!r} is outside ±{MAX_LITERAL:g}")
        return sympy.Integer(value) if isinstance(value, int) else sympy.Float(value)

    def name(self, node):
        ident = node.id
        if ident in self.scope.values:
            return self.scope.values[ident]
        if ident in CONSTANTS:
            return CONSTANTS[ident]
        if ident in self.scope.flags or ident in self.scope.choices:
            raise ExprError(f"build-time parameter '{ident}' can only be used in the condition of where()")
        if ident in FUNCTIONS:
            raise ExprError(f"'{ident}' is a function; call it as {ident}(...)")
        raise ExprError(f"undefined symbol '{ident}'{did_you_mean(ident, self.scope.known_names())}")

    def binop(self, node):
        left, right = self.expr(node.left), self.expr(node.right)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        build = _BINARY.get(type(node.op))
        if build is None:
            raise ExprError(f"operator {type(node.op).__name__} is not allowed (use + - * / **)")
        if isinstance(node.op, ast.Div) and right.is_Number and right.is_zero:
            raise ExprError("division by zero")
        return build(left, right)

    def call(self, node):
        if not isinstance(node.func, ast.Name):
            raise ExprError(f"only named functions can be called, not {_describe(node.func)}")
        fname = node.func.id
        if fname not in FUNCTIONS:
            raise ExprError(
                f"unknown function '{fname}'{did_you_mean(fname, FUNCTIONS)}; allowed: {', '.join(sorted(FUNCTIONS))}"
            )
        if node.keywords:
            raise ExprError(f"{fname}() takes no keyword arguments")
        arity, build = FUNCTIONS[fname]
        if fname in REDUCING_FORMS and len(node.args) == 1:
            return REDUCING_FORMS[fname](self.expr(node.args[0]))
        if len(node.args) != arity:
            raise ExprError(f"{fname}() takes {arity} argument(s), got {len(node.args)}")
        if fname == "where":
            return build(self.condition(node.args[0]), *(self.expr(a) for a in node.args[1:]))
        return build(*(self.expr(a) for a in node.args))

    def condition(self, node):
        """A boolean: comparisons, and/or/not, bool flags, choice == 'value'."""
        if isinstance(node, ast.Name) and node.id in self.scope.flags:
            return sympy.true if self.scope.flags[node.id] else sympy.false
        if isinstance(node, ast.Constant) and isinstance(node.value, bool):
            return sympy.true if node.value else sympy.false
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return sympy.Not(self.condition(node.operand))
        if isinstance(node, ast.BoolOp):
            parts = [self.condition(v) for v in node.values]
            return sympy.And(*parts) if isinstance(node.op, ast.And) else sympy.Or(*parts)
        if isinstance(node, ast.Compare):
            return self.compare(node)
        raise ExprError(f"the condition of where() must be a comparison or a bool parameter, not {_describe(node)}")

    def compare(self, node):
        operands = [node.left, *node.comparators]
        parts = [self.compare_pair(op, a, b) for op, a, b in zip(node.ops, operands, operands[1:])]
        return sympy.And(*parts)

    def compare_pair(self, op, left, right):
        choice = self.choice_comparison(op, left, right)
        if choice is not None:
            return choice
        build = _COMPARE.get(type(op))
        if build is None:
            raise ExprError(f"comparison {type(op).__name__} is not allowed (use < <= > >= == !=)")
        return build(self.expr(left), self.expr(right))

    def choice_comparison(self, op, left, right):
        """`param == 'value'` for a choice parameter, decided at build time; else None."""
        names = [n for n in (left, right) if isinstance(n, ast.Name) and n.id in self.scope.choices]
        if not names:
            return None
        other = right if names[0] is left else left
        value, allowed = self.scope.choices[names[0].id]
        if not (isinstance(other, ast.Constant) and isinstance(other.value, str)):
            raise ExprError(f"choice parameter '{names[0].id}' can only be compared with a string literal")
        if other.value not in allowed:
            raise ExprError(
                f"'{other.value}' is not a choice of '{names[0].id}' (choices: {', '.join(allowed)})"
            )
        if not isinstance(op, (ast.Eq, ast.NotEq)):
            raise ExprError(f"choice parameter '{names[0].id}' can only be compared with == or !=")
        equal = value == other.value
        return sympy.true if equal == isinstance(op, ast.Eq) else sympy.false


def _power(base, exponent):
    if exponent.is_Number:
        if abs(exponent) > MAX_NUMERIC_EXPONENT:
            raise ExprError(f"numeric exponent {exponent} is larger than {MAX_NUMERIC_EXPONENT} in magnitude")
        if base.is_Number and abs(base) > MAX_LITERAL:
            raise ExprError(f"constant {_short(base)} is too large to raise to a power")
        if base.is_Number and base.is_zero and exponent.is_negative:
            raise ExprError("division by zero (0 raised to a negative power)")
        if base.is_Number and abs(base) > 1 and abs(exponent) * math.log10(abs(float(base))) > MAX_CONSTANT_DIGITS:
            raise ExprError(f"{_short(base)}**{exponent} is not finite in float64")
    return base**exponent


MAX_CONSTANT_DIGITS = 300  # |constant| < 1e300: every constant is a finite float64


def check_constants(expr):
    """Raise ExprError when ``expr`` holds a constant that is not a finite real float64:
    division by zero (zoo), nan, infinity, a complex value (I) or a number past 1e300."""
    for atom in expr.atoms(sympy.Number, sympy.NumberSymbol, type(sympy.I), type(sympy.zoo)):
        if atom is sympy.zoo:
            raise ExprError("a constant is infinite (division by zero, log(0), …)")
        if atom is sympy.nan:
            raise ExprError("a constant is not a number (nan)")
        if atom in (sympy.oo, -sympy.oo):
            raise ExprError("a constant is not finite")
        if atom is sympy.I:
            raise ExprError("complex value: a constant has no real value (e.g. sqrt(-1), log(-1))")
        if atom.is_Number and abs(atom) > sympy.Float(10) ** MAX_CONSTANT_DIGITS:
            raise ExprError(f"constant {_short(atom)} is not finite in float64")


def _short(number):
    """A number as text short enough for a message (never Python's 4300-digit conversion)."""
    return sympy.Float(number, 6).__str__() if number.is_Number else str(number)


def _describe(node):
    words = _NODE_WORDS.get(type(node))
    return words if words else f"syntax '{type(node).__name__}'"


def did_you_mean(word, candidates):
    """' (did you mean \'x\'?)' for the closest candidate, or an empty string."""
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
