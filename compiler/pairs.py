"""Pair terms: inputs built from every pair (i, j) of two batches of feature vectors.

A spec with ``pair_inputs`` (e.g. x1 on the row side, x2 on the column side, each
(batch, features)) declares each of its inputs by ``from_pairs``:

    distance: sum((x1 - x2)**2)     element (i, j) = Σ_k f(x1[i, k], x2[j, k])
    position: row_index             row i's own index

Each ``sum(f)`` becomes a *pair term*: f is an element-wise loss of the pair inputs, so it
goes through the same pipeline as any element-wise spec (rewrites, SymPy gradients, CSE,
NumPy and CuPy emitters). At run time the pair term's forward gives the (rows, classes)
matrix, and its forward_backward with grad_output = G_ij (the gradient the loss passes
back to that matrix) gives G_ij·∂f/∂x1 and G_ij·∂f/∂x2 for every feature k, summed over
j for the row side and over i for the column side — the chain rule through the pairs.
"""
import ast
from dataclasses import dataclass, replace

from .expr_parser import FUNCTIONS
from .spec import InputSpec


@dataclass
class PairTerm:
    """One input built as Σ_k f over the features of each pair: its name, f's text, and
    where its from_pairs field is (for errors)."""

    input: str
    summand: str
    differentiable: bool
    at: tuple


def pair_terms(spec):
    """The pair terms of ``spec`` (empty without pair_inputs), validated."""
    terms = []
    for index, inp in enumerate(spec.inputs):
        if inp.per == "row" or not spec.pair_inputs:
            continue
        at = ("inputs", index, "from_pairs")
        terms.append(PairTerm(inp.name, _summand(spec, inp.from_pairs, at), inp.differentiable, at))
    return terms


def _summand(spec, text, at):
    """The f of a from_pairs text 'sum(f)', as source text."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise spec.error(at, "expected sum(<expression of the pair inputs>)") from None
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name) and tree.func.id == "sum"
            and len(tree.args) == 1 and not tree.keywords):
        raise spec.error(at, "expected sum(<expression of the pair inputs>): a sum over the feature axis")
    summand = ast.get_source_segment(text.strip(), tree.args[0])
    reductions = {"sum", "mean", "max", "min", "logsumexp", "softmax", "log_softmax", "norm", "dot", "pick", "one_hot"}
    used = {node.id for node in ast.walk(tree.args[0]) if isinstance(node, ast.Name)}
    nested = sorted(used & reductions & set(FUNCTIONS))
    if nested:
        raise spec.error(at, f"{nested[0]}() inside a pair term: the summand is element-wise in the features")
    allowed = {p.name for p in spec.pair_inputs} | {p.name for p in spec.runtime_params} | {"pi"}
    unknown = sorted(used - set(FUNCTIONS) - allowed)
    if unknown:
        raise spec.error(at, f"'{unknown[0]}' in a pair term: expected pair inputs "
                             f"({', '.join(p.name for p in spec.pair_inputs)}) and float/int parameters only")
    if not used & {p.name for p in spec.pair_inputs}:
        raise spec.error(at, "a pair term must use the pair inputs")
    return summand


def pair_term_spec(spec, term):
    """An element-wise spec whose loss is the pair term's summand f over the pair inputs."""
    inputs = [InputSpec(name=p.name, role="prediction" if k == 0 else "extra", differentiable=p.differentiable,
                        doc=p.doc, default=None, accuracy_grid=[0.0]) for k, p in enumerate(spec.pair_inputs)]
    lines = {**spec.lines, ("loss",): spec.lines.get(term.at, 0)}
    return replace(spec, name=pair_module_name(spec.name, term.input), inputs=inputs,
                   parameters=list(spec.runtime_params), definitions=[], loss=term.summand, class_axis=None,
                   pair_inputs=[], lines=lines,
                   summary=f"Pair term '{term.input}' of {spec.name}: the summand over the features.")


def pair_module_name(loss_name, input_name):
    """``sdml__pair_distance``: the generated module of one pair term."""
    return f"{loss_name}__pair_{input_name}"
