"""Read the docs' LaTeX back into SymPy with SymPy's own LaTeX parser (``parse_latex``'s lark
backend), its grammar extended by the notation the formula pages use and nothing else:
upright names (\\mathrm{label\\_smoothing}), \\operatorname{softplus}(…), σ(…), cases, a sum broken over
aligned lines, the class axis (Σ_j, max_j, a value picked at j = y), Iverson brackets [j = y] and 𝟙[u > 0].

A formula that parses back to the expression it was printed from shows that the page says
what the kernels compute: a dropped parenthesis, names run together or a leaked internal
name would parse to something else, or not at all.
"""
import functools
import tempfile
from pathlib import Path

import sympy

from lossc.compiler.functions import expm1, log1p, relu, sigmoid, softplus, unit_clip
from lossc.compiler.reductions import CLASS_INDEX, rmax, rsum

EXTENSION = r"""
CMD_MATHRM: "\\mathrm"
CMD_SIGMA: "\\sigma"
CMD_PI: "\\pi"
CMD_OPERATORNAME: "\\operatorname"
CMD_MATHBB_ONE: "\\mathbb{1}"
CMD_TEXT_FOR: "\\text{for}"
CMD_TEXT_OTHERWISE: "\\text{otherwise}"
CMD_BEGIN_CASES: "\\begin{cases}"
CMD_BEGIN_ALIGNED: "\\begin{aligned}"
CMD_END_ALIGNED: "\\end{aligned}"
CMD_END_CASES: "\\end{cases}"
CMD_WEDGE: "\\wedge"
CMD_VEE: "\\vee"
UPRIGHT_NAME: /[A-Za-z][A-Za-z0-9]*(\\_[A-Za-z0-9]+)*/
OPERATOR_NAME: /[a-z][a-z0-9]*/
CLIP_RANGE: "_{[-1, 1]}"

upright_symbol: CMD_MATHRM L_BRACE UPRIGHT_NAME R_BRACE
pi_constant: CMD_PI
sigmoid_function: CMD_SIGMA group_round_parentheses
named_function: CMD_OPERATORNAME L_BRACE OPERATOR_NAME R_BRACE (group_round_parentheses | group_curly_parentheses)
clip: CMD_OPERATORNAME L_BRACE OPERATOR_NAME R_BRACE CLIP_RANGE group_round_parentheses
iverson: L_BRACKET _condition R_BRACKET
indicator: CMD_MATHBB_ONE L_BRACKET _condition R_BRACKET
class_sum: FUNC_SUM UNDERSCORE L_BRACE SYMBOL R_BRACE _expression_power
class_max: FUNC_MAX UNDERSCORE L_BRACE SYMBOL R_BRACE _expression_power
picked: group_round_parentheses UNDERSCORE L_BRACE SYMBOL EQUAL _expression R_BRACE
aligned: CMD_BEGIN_ALIGNED MATRIX_COL_DELIM _expression (MATRIX_ROW_DELIM MATRIX_COL_DELIM _expression)* CMD_END_ALIGNED
cases: CMD_BEGIN_CASES case_row (MATRIX_ROW_DELIM case_row)* CMD_END_CASES
case_row: _expression MATRIX_COL_DELIM CMD_TEXT_FOR _condition
    | _expression MATRIX_COL_DELIM CMD_TEXT_OTHERWISE
    | _expression MATRIX_COL_DELIM _condition
_condition: _relation | conjunction | disjunction
conjunction: _relation (CMD_WEDGE _relation)+
disjunction: _relation (CMD_VEE _relation)+
"""

NAMED_FUNCTIONS = {"softplus": softplus, "expm1": expm1, "log1p": log1p, "sign": sympy.sign}


# The rules of SymPy's grammar the pages' notation extends or narrows (old text → new text).
GRAMMAR_CHANGES = (
    ("_atomic_expr: _one_letter_symbol\n", "_atomic_expr: _one_letter_symbol\n    | upright_symbol | pi_constant | aligned\n"),
    ("_function: function_applied\n", "_function: function_applied\n    | named_function | sigmoid_function | clip"
     " | iverson | indicator | picked | cases\n"),
    # Σ_j and max_j take what follows as their operand, like SymPy's \sum: no superscript
    # applies to them (Σ_j e^x is never (Σ_j e)^x); a product may end in one
    ("    | summation | product\n", "    | summation | product | class_sum | class_max\n"),
    # a function's argument is what its braces hold, as the pages print it (\log{(a)} + b is
    # never log(a + b)); log Σ_j e^x is logsumexp's notation
    ("log: FUNC_LOG _expression\n", "log: FUNC_LOG group_curly_parentheses\n    | FUNC_LOG class_sum\n"),
    ("tanh: FUNC_TANH _expression\n", "tanh: FUNC_TANH group_curly_parentheses\n"),
    ("tan: FUNC_TAN _expression\n", "tan: FUNC_TAN group_curly_parentheses\n"),
    ("mul: _expression_mul MUL_SYMBOL _expression_power\n",
     "mul: _expression_mul MUL_SYMBOL _expression_power\n    | _expression_mul MUL_SYMBOL (class_sum | class_max)\n"),
)


def _grammar():
    """SymPy's LaTeX grammar with GRAMMAR_CHANGES made and the EXTENSION rules added."""
    import sympy.parsing.latex.lark as lark_parser

    grammar = (Path(lark_parser.__file__).parent / "grammar" / "latex.lark").read_text(encoding="utf-8")
    for old, new in GRAMMAR_CHANGES:
        assert old in grammar, old
        grammar = grammar.replace(old, new)
    return grammar + EXTENSION


def _transformer():
    from sympy.parsing.latex.lark.transformer import TransformToSymPyExpr

    class DocsToSymPy(TransformToSymPyExpr):
        """SymPy's transformer plus the docs' notation, mapped to lossc's nodes."""

        def upright_symbol(self, tokens):
            return sympy.Symbol(str(tokens[2]).replace("\\_", "_"))

        def max(self, tokens):
            """max(u, 0) is how the pages print relu(u)."""
            arguments = list(tokens[2])
            if len(arguments) == 2 and arguments[1] == 0:
                return relu(arguments[0])
            return sympy.Max(*arguments)

        def pi_constant(self, tokens):
            return sympy.pi

        def sigmoid_function(self, tokens):
            return sigmoid(tokens[1])

        def named_function(self, tokens):
            return NAMED_FUNCTIONS[str(tokens[2])](tokens[4])

        def clip(self, tokens):
            assert str(tokens[2]) == "clip", tokens
            return unit_clip(tokens[5])

        def iverson(self, tokens):
            return sympy.Piecewise((1, tokens[1]), (0, True))

        def indicator(self, tokens):
            return sympy.Piecewise((1, tokens[2]), (0, True))

        def class_sum(self, tokens):
            return rsum(tokens[5])

        def class_max(self, tokens):
            return rmax(tokens[5])

        def picked(self, tokens):
            return rsum(tokens[0] * sympy.Piecewise((1, sympy.Eq(sympy.Symbol(str(tokens[3])), tokens[5])), (0, True)))

        def aligned(self, tokens):
            """A sum written one term per line."""
            return sympy.Add(*[t for t in tokens if isinstance(t, sympy.Basic)])

        def cases(self, tokens):
            return sympy.Piecewise(*[t for t in tokens if isinstance(t, tuple)])

        def case_row(self, tokens):
            if str(tokens[2]) == r"\text{otherwise}":
                return (tokens[0], True)
            return (tokens[0], tokens[-1])

        def conjunction(self, tokens):
            return sympy.And(*tokens[::2])

        def disjunction(self, tokens):
            return sympy.Or(*tokens[::2])

        def _ambig(self, options):
            """Where SymPy's grammar allows several readings, the one a reader takes: a
            superscript binds to what stands just before it (log Σ_j e^x is log(Σ_j e^x), not
            (log Σ_j e)^x), and a function applies to the least that follows it (log{(a)} + b
            is log(a) + b). Readings that still differ are an error."""
            def reading(option):
                wide_powers = sum(1 for n in sympy.preorder_traversal(option)
                                  if isinstance(n, sympy.Pow) and isinstance(n.base, (sympy.log, rsum, rmax)))
                swallowed = sum(sympy.count_ops(n.args[0]) for n in sympy.preorder_traversal(option)
                                if isinstance(n, (sympy.log, rsum, rmax)))
                return wide_powers, swallowed

            options = [o for o in options if not o.has(sympy.zoo, sympy.nan)] or options  # 1/0 is no reading
            best = min(reading(o) for o in options)
            chosen = [o for o in options if reading(o) == best]
            if any(o != chosen[0] for o in chosen):
                raise ValueError(f"ambiguous LaTeX: {chosen}")
            return chosen[0]

    return DocsToSymPy


@functools.cache
def _parser():
    """The lark parser of the extended grammar, built once."""
    from sympy.parsing.latex.lark import LarkLaTeXParser

    grammar_file = Path(tempfile.mkdtemp(prefix="lossc-latex-")) / "docs_latex.lark"
    grammar_file.write_text(_grammar(), encoding="utf-8")
    return LarkLaTeXParser(grammar_file=str(grammar_file), transformer=_transformer())


def parse_docs_latex(tex, like):
    """``tex`` (a formula as the docs print it) as a SymPy expression, its names the symbols of
    ``like`` (the expression it was printed from); j is the class index, e is Euler's number."""
    parsed = _parser().doparse(tex)
    names = {s.name: s for s in like.free_symbols}
    names["j"] = CLASS_INDEX
    return parsed.xreplace({s: names.get(s.name, sympy.E if s.name == "e" else s) for s in parsed.free_symbols
                            if isinstance(s, sympy.Symbol)})
