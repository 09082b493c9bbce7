"""The rewrite rules' registry: every rule registered by phase and name.

A rule is a function of one SymPy node that returns its replacement, or None where it does
not apply; its docstring states it as ``naive → stable``. Phases run in this order:

    canonicalize   recognise a function however the author spelled it
                   (1/(1 + exp(−x)) → sigmoid(x), Σ exp(x) → exp(logsumexp(x)), …)
    stabilize      replace forms that cancel, overflow or absorb by equivalent ones that do not
    lower          after differentiation: the stable special functions → primitive operations

Canonicalize and stabilize rules run together, bottom-up, to a fixed point
(:func:`lossc.compiler.rewrites.stabilize`; at a node the canonicalize rules are tried
first); the lower rules run once each, in registration order (:func:`lossc.compiler.lowering.lower`).
:func:`disabled` switches rules off by name (for tests and for trying alternative forms),
and :func:`recording` lists the rules that fired.
"""
import contextlib
import contextvars
from dataclasses import dataclass

PHASES = ("canonicalize", "stabilize", "lower")


@dataclass(frozen=True)
class Rule:
    """One named rewrite: ``apply(node)`` is the replacement or None."""

    phase: str
    name: str
    apply: object

    @property
    def doc(self):
        """The rule's ``naive → stable`` statement."""
        return self.apply.__doc__


_REGISTRY = {phase: {} for phase in PHASES}
_DISABLED = contextvars.ContextVar("lossc_disabled_rules", default=frozenset())
_FIRED = contextvars.ContextVar("lossc_fired_rules", default=None)


def register(phase):
    """Decorator: register the function as a rule of ``phase`` under its own name."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r} (expected one of {', '.join(PHASES)})")

    def add(function):
        if any(function.__name__ in rules for rules in _REGISTRY.values()):
            raise ValueError(f"a rule named {function.__name__!r} is already registered")
        _REGISTRY[phase][function.__name__] = Rule(phase, function.__name__, function)
        return function

    return add


register_canonicalize = register("canonicalize")
register_stabilize = register("stabilize")
register_lower = register("lower")


def _load():
    """Import the modules that register rules (they import this one)."""
    from . import lowering, rewrites  # noqa: F401


def all_rules(phase=None):
    """Every registered rule (of ``phase``), enabled or not, in registration order."""
    _load()
    phases = PHASES if phase is None else (phase,)
    return [rule for p in phases for rule in _REGISTRY[p].values()]


def enabled(*phases):
    """The rules of ``phases`` not switched off by :func:`disabled`, in order."""
    off = _DISABLED.get()
    return tuple(rule for p in phases for rule in _REGISTRY[p].values() if rule.name not in off)


def disabled_names():
    """The names of the rules switched off now (a frozenset)."""
    return _DISABLED.get()


@contextlib.contextmanager
def disabled(*names):
    """Within the block, the named rules do not apply (an unknown name is a ValueError)."""
    known = {rule.name for rule in all_rules()}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"no rule named {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    token = _DISABLED.set(_DISABLED.get() | frozenset(names))
    try:
        yield
    finally:
        _DISABLED.reset(token)


@contextlib.contextmanager
def recording():
    """Within the block, collect the names of the rules that fire; yields that (ordered) list."""
    fired = []
    token = _FIRED.set(fired)
    try:
        yield fired
    finally:
        _FIRED.reset(token)


def note_fired(rule):
    """Record that ``rule`` replaced a node (when a :func:`recording` block is active)."""
    fired = _FIRED.get()
    if fired is not None and rule.name not in fired:
        fired.append(rule.name)
