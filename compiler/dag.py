"""Walks over SymPy expressions as the DAGs they are: each distinct subexpression visited once,
without recursion, so neither a shared subexpression (definitions, lowered softplus) nor a
deep expression costs more than its size."""


def fold(expr, visit):
    """``visit(node, results of its args)`` bottom-up over ``expr``, each distinct node once;
    returns the result for ``expr``."""
    done, stack = {}, [(expr, False)]
    while stack:
        node, ready = stack.pop()
        if node in done:
            continue
        if not ready and node.args:
            stack.append((node, True))
            stack.extend((a, False) for a in node.args if a not in done)
            continue
        done[node] = visit(node, [done[a] for a in node.args])
    return done[expr]
