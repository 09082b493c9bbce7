"""Presentation MathML for the docs: SymPy's printer with cases for where() and escaped relations."""
import re

import sympy
from sympy.printing.mathml import MathMLPresentationPrinter

from .. import primitives
from ..reductions import CLASS_INDEX

# SymPy's MathML writer does not escape text (so its entities survive): escape here.
_RELATIONS = {"<": "&lt;", "<=": "&#x2264;", ">": "&gt;", ">=": "&#x2265;", "==": "=", "!=": "&#x2260;"}


class DocMathMLPrinter(MathMLPresentationPrinter):
    """Prints Piecewise as a brace with a table of cases; relations as escaped operators;
    reductions along the class axis as Σ_j, max_j, log Σ_j e^…, log softmax(…)_y."""

    def _element(self, tag, *children, text=None, **attributes):
        element = self.dom.createElement(tag)
        for key, value in attributes.items():
            element.setAttribute(key, value)
        if text is not None:
            element.appendChild(self.dom.createTextNode(text))
        for child in children:
            element.appendChild(child)
        return element

    def _print_Piecewise(self, expr):
        rows = []
        for value, cond in expr.args:
            if cond == True:  # noqa: E712
                condition = self._element("mtext", text="otherwise")
            else:
                condition = self._element("mrow", self._element("mtext", text="if\u00a0"), self._print(cond))
            shown = self.broken(value) or self._print(value)  # a long branch breaks inside its cell
            rows.append(self._element("mtr", self._element("mtd", shown), self._element("mtd", condition)))
        return self._element("mrow", self._element("mo", text="{"), self._element("mtable", *rows, columnalign="left"))

    def _under(self, operator, index="j"):
        return self._element("munder", self._element("mo", text=operator), self._element("mi", text=index))

    def _parenthesized(self, expr):
        return self._element("mrow", self._element("mo", text="("), self._print(expr), self._element("mo", text=")"))

    def _print_rsum(self, expr):
        return self._element("mrow", self._under("\u2211"), self._parenthesized(expr.args[0]))

    def _print_rmax(self, expr):
        return self._element("mrow", self._under("max"), self._parenthesized(expr.args[0]))

    def _print_rlogsumexp(self, expr):
        power = self._element("msup", self._element("mi", text="e"), self._print(expr.args[0]))
        return self._element("mrow", self._element("mi", text="log"), self._under("\u2211"), power)

    _print_rlogsumexp_labelled = _print_rlogsumexp  # SymPy skips a parent's printer for a renamed subclass

    def _softmax(self, logits, index):
        name = self._element("mi", text="softmax")
        return self._element("msub", self._element("mrow", name, self._parenthesized(logits)), index)

    def _print_rlog_softmax_at(self, expr):
        logits, label = expr.args
        return self._element("mrow", self._element("mi", text="log"), self._softmax(logits, self._print(label)))

    def _print_onehot_minus_softmax(self, expr):
        logits, label = expr.args
        bracket = self._element("mrow", self._element("mo", text="["), self._element("mi", text="j"),
                                self._element("mo", text="="), self._print(label), self._element("mo", text="]"))
        difference = self._element("mrow", bracket, self._element("mo", text="\u2212"),
                                   self._softmax(logits, self._element("mi", text="j")))
        return self._element("mrow", self._element("mo", text="("), difference, self._element("mo", text=")"))

    def _print_Relational(self, expr):
        return self._element("mrow", self._print(expr.lhs), self._element("mo", text=_RELATIONS[expr.rel_op]),
                             self._print(expr.rhs))


    def _print_Symbol(self, sym, style="plain"):
        """A name as one identifier (SymPy would make ``log_py`` log with subscript py); the
        class index as j."""
        return self._element("mi", text="j" if sym == CLASS_INDEX else sym.name)

    def _print_Function(self, expr):
        """A primitive written ``name(x)`` with its ``mathml`` name of :mod:`..primitives`
        (SymPy's own rendering where it has none)."""
        primitive = primitives.of(expr)
        if primitive is None or primitive.mathml is None:
            return super()._print_Function(expr)
        return self._named_function(primitive.mathml, expr.args[0])

    def _named_function(self, name, argument):
        return self._element("mrow", self._element("mi", text=name), self._parenthesized(argument))


    def broken(self, expr):
        """``expr`` written over several lines where it is long, or None: a long sum one
        top-level term per line (each after its sign, each term broken the same way), a
        product with a long sum as factor with that sum so broken inside its parentheses."""
        if not self._is_long(expr):
            return None
        if isinstance(expr, sympy.Piecewise):
            return self._print(expr)  # its branches break inside their cells
        if isinstance(expr, sympy.Add):
            rows = []
            for k, term in enumerate(self._as_ordered_terms(expr)):
                negative = term.could_extract_minus_sign()
                shown = self.broken(-term if negative else term) or self._print(-term if negative else term)
                if k or negative:
                    shown = self._element("mrow", self._element("mo", text="\u2212" if negative else "+"), shown)
                rows.append(self._element("mtr", self._element("mtd", shown)))
            return self._element("mtable", *rows, columnalign="left")
        if isinstance(expr, sympy.Mul):
            sums = [f for f in expr.args if isinstance(f, sympy.Add) and self._is_long(f)]
            if sums:
                parts = [self._print(expr.func(*[f for f in expr.args if f not in sums]))]
                for factor in sums:
                    parts += [self._element("mo", text="\u00b7"), self._element("mo", text="("), self.broken(factor),
                              self._element("mo", text=")")]
                return self._element("mrow", *parts)
        argument = self.broken(expr.args[0]) if isinstance(expr, sympy.log) else None
        if argument is not None:
            return self._element("mrow", self._element("mi", text="log"), self._element("mo", text="("), argument,
                                 self._element("mo", text=")"))
        return None

    def _is_long(self, expr):
        """Whether ``expr`` printed has more than BREAK_AT characters of text (each
        subexpression printed once for this, however often a layout asks)."""
        long = self.__dict__.setdefault("_long", {})
        if expr not in long:
            long[expr] = len(re.sub("<[^>]*>", "", self._print(expr).toxml())) > BREAK_AT
        return long[expr]


BREAK_AT = 90  # characters of text: a longer top-level sum is written one term per line


def mathml(expr):
    """A complete ``<math display="block">`` element for ``expr``; products are written with a
    dot, so that names never run together, and a long sum breaks after each top-level term
    (a page never scrolls sideways to show a formula)."""
    printer = DocMathMLPrinter({"mat_delim": "(", "mul_symbol": "dot"})
    broken = printer.broken(expr)
    body = printer.doprint(expr) if broken is None else broken.toxml()
    return f'<math xmlns="http://www.w3.org/1998/Math/MathML" display="block">{body}</math>'
