"""Stage 1: load a YAML spec and validate it into a :class:`Spec`.

YAML is composed with PyYAML's *safe* loader into a node tree; only plain scalars are ever
constructed (no tags, no anchors/aliases), and every value keeps the line it came from so
errors read ``file:line: field: what was expected``. Expressions are only checked for the
names they mention here; :mod:`ir` parses them.
"""
import contextlib
import keyword
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lossc.core import exposure
from lossc.core.targets import range_text

from .expr_parser import CONSTANTS, FUNCTIONS, ExprError, did_you_mean, referenced_names

MAX_SPEC_BYTES = 256 * 1024
MAX_VARIANTS = 64
MAX_MAGNITUDE = 1e300  # parameter defaults, ranges and input defaults
MAX_DEFINITIONS = 256
MAX_ITEMS = 64  # inputs, parameters, pair inputs, references, choices
IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*\Z")
SPEC_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\.ya?ml\Z")
CLASS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
CPP_KEYWORDS = frozenset(
    """alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t char16_t
    char32_t class compl concept const consteval constexpr constinit const_cast continue co_await
    co_return co_yield decltype default delete do double dynamic_cast else enum explicit export
    extern false float for friend goto if inline int long mutable namespace new noexcept not not_eq
    nullptr operator or or_eq private protected public register reinterpret_cast requires return
    short signed sizeof static static_assert static_cast struct switch template this thread_local
    throw true try typedef typeid typename union unsigned using virtual void volatile wchar_t while
    xor xor_eq half""".split()
)
# Names the generated code itself uses.
RESERVED = frozenset({"np", "cp", "math", "grad_output", "forward", "forward_backward", "loss", "out", "dtype",
                      "classes", "axis", "row_index", "i", "n"})
ROW_INDEX = "row_index"  # from_pairs of a row input: the row-side sample's index i
ROLES = ("prediction", "target", "extra")
ALLOWED_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map"))
PARAM_TYPES = ("float", "int", "bool", "choice")
TOP_FIELDS = ("name", "summary", "doc", "references", "inputs", "parameters", "definitions", "loss", "exposed_as",
              "class_axis", "pair_inputs")
PAIR_SIDES = ("row", "column")
CLASS_AXES = ("parameter", "last", "non_batch")
PER = ("element", "row")


class SpecError(ValueError):
    """A spec that does not validate: carries the file, the line and the field of the first
    problem, and in ``errors`` every problem found (one line each)."""

    def __init__(self, path, line, field_name, message, others=()):
        self.path, self.line, self.field, self.message = str(path), line, field_name, message
        self.errors = [f"{self.path}:{line}: {field_name}: {message}"] + [e for o in others for e in o.errors]
        super().__init__("\n".join(self.errors))


@dataclass
class InputSpec:
    """One array input of a loss."""

    name: str
    role: str
    differentiable: bool
    doc: str
    default: float | None
    accuracy_grid: list
    per: str = "element"
    class_index: bool = False
    from_pairs: str | None = None


@dataclass
class PairInputSpec:
    """A (batch, features) array whose pairs build the inputs: side 'row' gives the rows i of
    the (rows, classes) layout, side 'column' its classes j."""

    name: str
    side: str
    differentiable: bool
    doc: str


@dataclass
class ParamSpec:
    """One scalar parameter; bool and choice parameters select build-time variants."""

    name: str
    type: str
    default: object
    doc: str
    range: tuple = (None, None)
    choices: tuple = ()

    @property
    def is_variant(self):
        """True for bool/choice parameters: each value compiles to its own kernel."""
        return self.type in ("bool", "choice")

    @property
    def values(self):
        """The build-time values of a variant parameter, default first."""
        allowed = [False, True] if self.type == "bool" else list(self.choices)
        return [self.default] + [v for v in allowed if v != self.default]


@dataclass
class Definition:
    """A named intermediate expression."""

    name: str
    expr: str


@dataclass
class Spec:
    """A validated loss spec; ``lines`` maps field paths to source lines for later errors."""

    name: str
    summary: str
    doc: str
    references: list
    inputs: list
    parameters: list
    definitions: list
    loss: str
    exposed_as: dict
    path: str
    lines: dict = field(default_factory=dict, repr=False)
    class_axis: str | None = None
    pair_inputs: list = field(default_factory=list)
    text: str = field(default="", repr=False)  # the YAML it was read from

    @property
    def variant_params(self):
        """Parameters fixed at build time (bool, choice)."""
        return [p for p in self.parameters if p.is_variant]

    @property
    def runtime_params(self):
        """Scalar parameters passed to the kernels at call time (float, int)."""
        return [p for p in self.parameters if not p.is_variant]

    @property
    def differentiable_inputs(self):
        """Inputs the kernels differentiate with respect to, in spec order."""
        return [i for i in self.inputs if i.differentiable]

    def error(self, field_path, message):
        """A SpecError located at ``field_path`` (a tuple such as ('definitions', 2, 'expr'))."""
        return SpecError(self.path, _line_of(self.lines, field_path), _field_text(field_path), message)


FLOW_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # what a field name in a {...} mapping looks like
FLOW_HINT = ("; inside a {...} or [...] value, text with commas, brackets or colons must be quoted, "
             "e.g. doc: \"see [1], eq. 3\"")


def load_spec(path):
    """Read and validate the spec file at ``path``; its file name must be plain
    (letters, digits, '_', '.', '-', ending .yaml or .yml): it is recorded in generated files."""
    path = Path(path)
    if not SPEC_FILE_NAME.match(path.name):
        raise SpecError(path, 0, "file", f"file name {path.name!r} is not a plain spec file name: expected letters, "
                                         "digits, '_', '.' and '-' ending in .yaml or .yml")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SpecError(path, 0, "file", f"cannot read: {err.strerror}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(path, 0, "file", f"spec is {len(data)} bytes; at most {MAX_SPEC_BYTES} are accepted")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(path, 0, "file", f"not UTF-8 text ({err.reason})") from None
    return parse_spec_text(text, str(path))


def parse_spec_text(text, path="<spec>"):
    """Validate spec YAML given as text; ``path`` only labels errors."""
    data, lines = _compose_yaml(text, path)
    spec = _Validator(path, lines).spec(data)
    spec.text = text
    return spec


def _compose_yaml(text, path):
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        hint = FLOW_HINT if "expected ',' or '}'" in str(err.problem) or "expected ',' or ']'" in str(err.problem) else ""
        raise SpecError(path, mark.line + 1 if mark else 0, "yaml", f"not valid YAML: {err.problem}{hint}") from None
    finally:
        loader.dispose()
    if node is None:
        raise SpecError(path, 1, "file", "spec is empty; expected a mapping of spec fields")
    lines = {}
    return _NodeReader(path, lines, loader).read(node, ()), lines


class _NodeReader:
    """Turns composed YAML nodes into dicts/lists/scalars, recording each value's line."""

    def __init__(self, path, lines, loader):
        self.path, self.lines, self.loader = path, lines, loader
        self.seen = set()

    def read(self, node, at):
        if node.tag not in ALLOWED_TAGS:
            raise SpecError(self.path, node.start_mark.line + 1, _field_text(at), f"unsupported YAML tag {node.tag}")
        if id(node) in self.seen:
            raise SpecError(self.path, node.start_mark.line + 1, _field_text(at), "YAML anchors/aliases are not allowed")
        self.seen.add(id(node))
        self.lines[at] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, at)
        if isinstance(node, yaml.SequenceNode):
            return [self.read(item, at + (i,)) for i, item in enumerate(node.value)]
        return self.scalar(node, at)

    def mapping(self, node, at):
        out = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, at)
            if node.flow_style and isinstance(key, str) and not FLOW_KEY.match(key):
                raise SpecError(self.path, key_node.start_mark.line + 1, _field_text(at),
                                f"{key!r} is not a field name: the {{...}} mapping split a value at a comma. "
                                "Quote values that contain commas, brackets or colons, e.g. "
                                "{name: log_py, expr: \"pick(log_softmax(pred), label)\"}")
            if not isinstance(key, str):
                raise SpecError(self.path, key_node.start_mark.line + 1, _field_text(at), f"key {key!r} is not a string")
            if key in out:
                raise SpecError(self.path, key_node.start_mark.line + 1, _field_text(at + (key,)), "duplicate key")
            out[key] = self.read(value_node, at + (key,))
        return out

    def scalar(self, node, at):
        if not isinstance(node, yaml.ScalarNode) or node.tag not in ALLOWED_TAGS:
            raise SpecError(self.path, node.start_mark.line + 1, _field_text(at), f"unsupported YAML tag {node.tag}")
        try:
            value = self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as err:
            raise SpecError(self.path, node.start_mark.line + 1, _field_text(at), str(err.problem)) from None
        except ValueError as err:  # e.g. an integer of more digits than Python converts
            raise SpecError(self.path, node.start_mark.line + 1, _field_text(at), f"not a usable value: {err}") from None
        if isinstance(value, str):
            bad = next((c for c in value if c not in "\n\t" and unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co")),
                       None)
            if bad is not None:
                raise SpecError(self.path, node.start_mark.line + 1, _field_text(at),
                                f"control or invisible character U+{ord(bad):04X} is not allowed in spec text")
        return value


def _field_text(at):
    text = ""
    for part in at:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "spec"


def _line_of(lines, at):
    at = tuple(at)
    while at and at not in lines:
        at = at[:-1]
    return lines.get(at, 0)


class _FieldReader:
    """Reading fields: their kinds, identifiers and lists of entries; a problem fails its :meth:`section`."""

    def __init__(self, path, lines):
        self.path, self.lines = path, lines
        self.errors = []  # what sections found (see section)
        self.declared = set()  # every name an entry declares, valid or not (no follow-on 'undefined')

    def fail(self, at, message):
        raise SpecError(self.path, _line_of(self.lines, at), _field_text(at), message)

    def get(self, obj, key, kind, at, required=True, default=None):
        if key not in obj:
            if required:
                self.fail(at, f"missing required field '{key}'")
            return default
        value = obj[key]
        if not _is_kind(value, kind):
            self.fail(at + (key,), f"expected {_KIND_WORDS[kind]}, got {_show(value)}")
        limit = MAX_DEFINITIONS if key == "definitions" else MAX_ITEMS
        if kind == "list" and len(value) > limit:
            self.fail(at + (key,), f"{len(value)} entries; at most {limit} are accepted")
        return value

    @contextlib.contextmanager
    def section(self):
        """Check one independent part of the spec: its problem is recorded and checking goes on."""
        try:
            yield
        except SpecError as err:
            self.errors.append(err)

    def checked(self, check, *args, fallback=None):
        """``check(*args)`` in its own :meth:`section`; ``fallback`` where it fails."""
        with self.section():
            return check(*args)
        return fallback

    def only(self, item, allowed, at):
        for key in item:
            if key not in allowed:
                self.fail(at + (key,), f"unknown field (allowed: {', '.join(allowed)})")

    def identifier(self, name, at):
        if not IDENTIFIER.match(name):
            self.fail(at, f"'{name}' is not an identifier: expected [a-z_][a-z0-9_]*")
        if len(name) > 64:
            self.fail(at, f"'{name}' is longer than 64 characters")
        if name.startswith("_"):
            self.fail(at, f"'{name}': names starting with '_' are reserved for generated code")
        if "__" in name:
            self.fail(at, f"'{name}': '__' is reserved (it separates a loss from its variant in module names)")
        if keyword.iskeyword(name) or keyword.issoftkeyword(name):
            self.fail(at, f"'{name}' is a Python keyword")
        if name in CPP_KEYWORDS:
            self.fail(at, f"'{name}' is a C++ keyword")
        if name in FUNCTIONS or name in CONSTANTS or name in RESERVED:
            self.fail(at, f"'{name}' is reserved (a function, constant or name the generated code uses)")
        return name

    def entries(self, items, group, read):
        """``read(item, at)`` of every entry of a list field, each in its own section (an entry
        that fails is left out); every name an entry declares is noted in ``declared``."""
        read_entries = []
        for i, item in enumerate(items):
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                self.declared.add(item["name"])
            entry = self.checked(read, item, (group, i))
            if entry is not None:
                read_entries.append(entry)
        return read_entries


class _HeaderSection:
    """The fields about the loss as a whole: summary, references, class_axis, exposed_as."""

    def summary(self, data):
        summary = self.get(data, "summary", "str", ()).strip()
        if not summary or "\n" in summary:
            self.fail(("summary",), "expected a one-line summary")
        return summary

    def references(self, data):
        refs = self.get(data, "references", "list", (), required=False, default=[])
        for i, ref in enumerate(refs):
            if not isinstance(ref, str):
                self.fail(("references", i), f"expected a string, got {_show(ref)}")
        return list(refs)

    def class_axis(self, data):
        value = self.get(data, "class_axis", "str", (), required=False)
        if value is not None and value not in CLASS_AXES:
            self.fail(("class_axis",), f"expected one of {', '.join(CLASS_AXES)}, got '{value}'")
        return value

    def exposed_as(self, data, spec_name):
        names = self.get(data, "exposed_as", "dict", (), required=False, default={})
        for layer, cls in names.items():
            if layer not in exposure.LAYERS:
                self.fail(("exposed_as", layer), f"unknown layer (known: {', '.join(exposure.LAYERS)})")
            if not isinstance(cls, str) or not CLASS_NAME.match(cls):
                self.fail(("exposed_as", layer), f"expected a class or function name, got {_show(cls)}")
            problem = exposure.conflict(layer, cls, spec_name)
            if problem:
                self.fail(("exposed_as", layer), problem)
        return dict(names)


class _InputSection:
    """The ``inputs`` and ``pair_inputs`` entries."""

    def inputs(self, data):
        items = self.get(data, "inputs", "list", ())
        if not items:
            self.fail(("inputs",), "expected at least one input")
        inputs = self.entries(items, "inputs", self.input)
        if len(inputs) < len(items):
            return inputs  # whether a prediction is declared is unknown: say nothing of it
        if not any(i.role == "prediction" for i in inputs):
            self.fail(("inputs",), "expected an input with role 'prediction'")
        if not any(i.differentiable for i in inputs):
            self.fail(("inputs",), "expected at least one differentiable input")
        return inputs

    def input(self, item, at):
        if not isinstance(item, dict):
            self.fail(at, f"expected a mapping with name, role, differentiable, got {_show(item)}")
        self.only(item, ("name", "role", "differentiable", "doc", "default", "accuracy_grid", "per", "class_index",
                         "from_pairs"), at)
        per = self.get(item, "per", "str", at, required=False, default="element")
        if per not in PER:
            self.fail(at + ("per",), f"expected one of {', '.join(PER)}, got '{per}'")
        role = self.get(item, "role", "str", at)
        if role not in ROLES:
            self.fail(at + ("role",), f"expected one of {', '.join(ROLES)}, got '{role}'")
        default = self.get(item, "default", "number", at, required=False)
        if default is not None and not _is_magnitude(default):
            self.fail(at + ("default",), f"expected a finite number, got {_show(default)}")
        if default is not None and role != "extra":
            self.fail(at + ("default",), "only inputs with role 'extra' may have a default")
        grid = self.get(item, "accuracy_grid", "list", at, required=False, default=_DEFAULT_GRID[role])
        for i, value in enumerate(grid):
            if not _is_kind(value, "number") or not math.isfinite(value):
                self.fail(at + ("accuracy_grid", i), f"expected a finite number, got {_show(value)}")
        if not grid or len(grid) > 64:
            self.fail(at + ("accuracy_grid",), "expected 1 to 64 values")
        return InputSpec(
            name=self.identifier(self.get(item, "name", "str", at), at + ("name",)),
            role=role,
            differentiable=self.get(item, "differentiable", "bool", at),
            doc=self.get(item, "doc", "str", at, required=False, default=""),
            default=None if default is None else float(default),
            accuracy_grid=[float(v) for v in grid],
            per=per,
            class_index=self.get(item, "class_index", "bool", at, required=False, default=False),
            from_pairs=self.get(item, "from_pairs", "str", at, required=False),
        )

    def pair_inputs(self, data):
        items = self.get(data, "pair_inputs", "list", (), required=False, default=[])
        return self.entries(items, "pair_inputs", self.pair_input)

    def pair_input(self, item, at):
        if not isinstance(item, dict):
            self.fail(at, f"expected a mapping with name, side, differentiable, got {_show(item)}")
        self.only(item, ("name", "side", "differentiable", "doc"), at)
        side = self.get(item, "side", "str", at)
        if side not in PAIR_SIDES:
            self.fail(at + ("side",), f"expected one of {', '.join(PAIR_SIDES)}, got '{side}'")
        return PairInputSpec(self.identifier(self.get(item, "name", "str", at), at + ("name",)), side,
                             self.get(item, "differentiable", "bool", at),
                             self.get(item, "doc", "str", at, required=False, default=""))


class _ParameterSection:
    """The ``parameters`` entries: type, range, choices, default."""

    def parameters(self, data):
        items = self.get(data, "parameters", "list", (), required=False, default=[])
        return self.entries(items, "parameters", self.parameter)

    def parameter(self, item, at):
        if not isinstance(item, dict):
            self.fail(at, f"expected a mapping with name, type, default, got {_show(item)}")
        self.only(item, ("name", "type", "default", "range", "choices", "doc"), at)
        name = self.identifier(self.get(item, "name", "str", at), at + ("name",))
        ptype = self.get(item, "type", "str", at)
        if ptype not in PARAM_TYPES:
            self.fail(at + ("type",), f"expected one of {', '.join(PARAM_TYPES)}, got '{ptype}'")
        if "default" not in item:
            self.fail(at, "missing required field 'default'")
        param = ParamSpec(name=name, type=ptype, default=item["default"], doc=self.get(item, "doc", "str", at, False, ""))
        if ptype in ("float", "int"):
            param.range = self.value_range(item, ptype, at)
        elif "range" in item:
            self.fail(at + ("range",), f"{_article(ptype)} {ptype} parameter has no range")
        if ptype == "choice":
            param.choices = self.choices(item, at)
        elif "choices" in item:
            self.fail(at + ("choices",), "only choice parameters have choices")
        self.check_default(param, at + ("default",))
        return param

    def value_range(self, item, ptype, at):
        bounds = self.get(item, "range", "list", at, required=False, default=[None, None])
        if len(bounds) != 2:
            self.fail(at + ("range",), "expected [low, high] (null for unbounded)")
        for i, bound in enumerate(bounds):
            if bound is not None and (not _is_kind(bound, ptype if ptype == "int" else "number")
                                      or not _is_magnitude(bound)):
                self.fail(at + ("range", i), f"expected a finite {'integer' if ptype == 'int' else 'number'} "
                                             f"of magnitude at most {MAX_MAGNITUDE:g}, or null (no limit), got "
                                             f"{_show(bound)}")
        low, high = bounds
        if low is not None and high is not None and low > high:
            self.fail(at + ("range",), f"low {low} is above high {high}")
        return (low, high)

    def choices(self, item, at):
        choices = self.get(item, "choices", "list", at)
        if len(choices) < 2:
            self.fail(at + ("choices",), "expected at least two choices")
        for i, choice in enumerate(choices):
            if not isinstance(choice, str) or not IDENTIFIER.match(choice) or "__" in choice or len(choice) > 64:
                self.fail(at + ("choices", i), f"expected an identifier string (at most 64 characters, no '__'), "
                                               f"got {_show(choice)}")
        if len(set(choices)) != len(choices):
            self.fail(at + ("choices",), "duplicate choice")
        return tuple(choices)

    def check_default(self, param, at):
        value, ptype = param.default, param.type
        kind = {"float": "number", "int": "int", "bool": "bool", "choice": "str"}[ptype]
        if not _is_kind(value, kind) or (ptype in ("float", "int") and not _is_magnitude(value)):
            self.fail(at, f"expected {_KIND_WORDS[kind]} for {_article(ptype)} {ptype} parameter, got {_show(value)}")
        if ptype == "choice" and value not in param.choices:
            self.fail(at, f"'{value}' is not one of the choices {', '.join(param.choices)}")
        low, high = param.range
        if (low is not None and value < low) or (high is not None and value > high):
            self.fail(at, f"default {value} is outside the range: it must be {range_text(low, high)}")
        if ptype == "float":
            param.default = float(value)


class _DefinitionSection:
    """The ``definitions`` entries."""

    def definitions(self, data):
        items = self.get(data, "definitions", "list", (), required=False, default=[])
        return self.entries(items, "definitions", self.definition)

    def definition(self, item, at):
        if not isinstance(item, dict):
            self.fail(at, f"expected a mapping with name and expr, got {_show(item)}")
        self.only(item, ("name", "expr", "doc"), at)
        name = self.identifier(self.get(item, "name", "str", at), at + ("name",))
        return Definition(name, self.get(item, "expr", "str", at))


class _CrossChecks:
    """Checks across sections, run on the read :class:`Spec`."""

    def unique_names(self, spec):
        seen = {}
        groups = [("inputs", spec.inputs), ("parameters", spec.parameters), ("definitions", spec.definitions),
                  ("pair_inputs", spec.pair_inputs)]
        for group, items in groups:
            for i, item in enumerate(items):
                if item.name in seen:
                    self.fail((group, i, "name"), f"duplicate name '{item.name}' (already used in {seen[item.name]})")
                seen[item.name] = group

    def check_variant_count(self, spec):
        """Every combination of bool/choice values is compiled: at most MAX_VARIANTS of them."""
        count = math.prod(len(p.values) for p in spec.variant_params)
        if count > MAX_VARIANTS:
            self.fail(("parameters",), f"the bool and choice parameters make {count} build-time variants; at most "
                                       f"{MAX_VARIANTS} are compiled (make some of them float or int parameters)")

    def check_levels(self, spec):
        for i, inp in enumerate(spec.inputs):
            if inp.per == "row" and spec.class_axis is None:
                self.fail(("inputs", i, "per"), "row inputs need a class_axis (parameter, last or non_batch)")
            if inp.per == "row" and inp.differentiable:
                self.fail(("inputs", i, "differentiable"), "row-level inputs cannot be differentiable")
            if inp.class_index and inp.per != "row":
                self.fail(("inputs", i, "class_index"), "class indices are row-level: set per: row")

    def check_pairs(self, spec):
        """With pair_inputs, every input is built from them (from_pairs) over class_axis 'last'."""
        if not spec.pair_inputs:
            for i, inp in enumerate(spec.inputs):
                if inp.from_pairs is not None:
                    self.fail(("inputs", i, "from_pairs"), "from_pairs needs pair_inputs")
            return
        if spec.class_axis != "last":
            self.fail(("class_axis",), "a loss over pair_inputs needs class_axis: last (the column side's batch)")
        sides = {p.side for p in spec.pair_inputs}
        if sides != set(PAIR_SIDES):
            self.fail(("pair_inputs",), "expected at least one pair input on each side (row and column)")
        for i, inp in enumerate(spec.inputs):
            at = ("inputs", i)
            if inp.from_pairs is None:
                self.fail(at, "every input of a loss over pair_inputs needs from_pairs")
            if inp.per == "row" and inp.from_pairs.strip() != ROW_INDEX:
                self.fail(at + ("from_pairs",), f"a row input is built as '{ROW_INDEX}' (the row's index i)")
            if inp.per == "element" and inp.from_pairs.strip() == ROW_INDEX:
                self.fail(at + ("from_pairs",), f"'{ROW_INDEX}' builds a row input: set per: row")

    def check_references(self, spec):
        """Every expression parses and names only known symbols (each expression its own
        section, every unknown name reported); definitions are acyclic."""
        defined = {d.name for d in spec.definitions}
        known = self.declared | {i.name for i in spec.inputs} | {p.name for p in spec.parameters} | set(CONSTANTS)
        graph = {}
        texts = [(("definitions", i, "expr"), d.name, d.expr) for i, d in enumerate(spec.definitions)]
        for at, owner, text in texts + ([(("loss",), None, spec.loss)] if spec.loss else []):
            with self.section():
                try:
                    names = referenced_names(text)
                except ExprError as err:
                    self.fail(at, str(err))
                if owner is not None:
                    graph[owner] = sorted(names & defined)
                unknown = sorted(names - known - defined)
                if unknown:
                    self.fail(at, "; ".join(_undefined(name, sorted(known | defined)) for name in unknown))
        cycle = _find_cycle(graph)
        if cycle:
            index = [d.name for d in spec.definitions].index(cycle[0])
            self.fail(("definitions", index, "expr"), "cyclic definitions: " + " -> ".join(cycle))


class _Validator(_HeaderSection, _InputSection, _ParameterSection, _DefinitionSection, _CrossChecks,
                 _FieldReader):
    """Checks each field's type and value; a SpecError lists every problem, section by section."""

    def spec(self, data):
        """The validated :class:`Spec`, or a SpecError listing every problem found."""
        if not isinstance(data, dict):
            self.fail((), f"expected a mapping of spec fields, got {_show(data)}")
        for key in data:
            with self.section():
                if key not in TOP_FIELDS:
                    self.fail((key,), f"unknown field (known fields: {', '.join(TOP_FIELDS)})")
        name = self.checked(lambda: self.identifier(self.get(data, "name", "str", ()), ("name",)))
        spec = Spec(
            name=name,
            summary=self.checked(self.summary, data, fallback=""),
            doc=self.checked(lambda: self.get(data, "doc", "str", (), required=False, default="").strip(), fallback=""),
            references=self.checked(self.references, data, fallback=[]),
            inputs=self.checked(self.inputs, data, fallback=[]),
            parameters=self.checked(self.parameters, data, fallback=[]),
            definitions=self.checked(self.definitions, data, fallback=[]),
            loss=self.checked(self.get, data, "loss", "str", (), fallback=""),
            exposed_as=self.checked(self.exposed_as, data, name, fallback={}),
            path=self.path,
            lines=self.lines,
            class_axis=self.checked(self.class_axis, data),
            pair_inputs=self.checked(self.pair_inputs, data, fallback=[]),
        )
        for check in (self.unique_names, self.check_variant_count, self.check_references, self.check_levels,
                      self.check_pairs):
            self.checked(check, spec)
        if self.errors:
            first, *others = sorted(self.errors, key=lambda err: err.line)
            raise SpecError(first.path, first.line, first.field, first.message, others)
        return spec


def _undefined(name, known):
    """The message for an undefined symbol: a near miss, or where to declare it."""
    near = did_you_mean(name, known)
    if near:
        return f"undefined symbol '{name}'{near}"
    return (f"undefined symbol '{name}': declare it under parameters: (a constant of the loss, e.g. "
            f"- {{name: {name}, type: float, default: 1.0}}) or under inputs: (an array the loss is called with)")


def _find_cycle(graph):
    """A cycle of ``graph`` (name → names it uses) as a path [a, b, …, a], or None; iterative
    depth-first search, so no spec reaches a recursion limit."""
    state = {}
    for start in graph:
        if start in state:
            continue
        state[start], trail, stack = "open", [start], [iter(graph.get(start, ()))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[trail.pop()] = "done"
                stack.pop()
            elif state.get(nxt) == "open":
                return trail[trail.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = "open"
                trail.append(nxt)
                stack.append(iter(graph.get(nxt, ())))
    return None


_DEFAULT_GRID = {
    "prediction": [-1e4, -30.0, -3.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 3.0, 30.0, 1e4],
    "target": [0.0, 1.0],
    "extra": [1.0],
}
_KIND_WORDS = {
    "str": "a string",
    "bool": "true or false",
    "int": "an integer",
    "float": "a number",
    "number": "a number",
    "list": "a list",
    "dict": "a mapping",
}


def _is_magnitude(value):
    """A finite number no larger than MAX_MAGNITUDE in magnitude (int parameters reach the
    kernels as floats)."""
    return (isinstance(value, int) or math.isfinite(value)) and abs(value) <= MAX_MAGNITUDE


def _is_kind(value, kind):
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "bool": bool, "list": list, "dict": dict, "float": float}[kind])


def _show(value):
    """A value as an error shows it: its type and (shortened) repr, and for text that reads as
    a number in exponent form the YAML rule that made it text."""
    text = repr(value)
    shown = f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
    if isinstance(value, str) and _EXPONENT_TEXT.match(value.strip()):
        shown += f" (YAML reads an exponent without a decimal point as text: write {_with_point(value.strip())})"
    return shown


_EXPONENT_TEXT = re.compile(r"[-+]?[0-9]+[eE][-+]?[0-9]+\Z")


def _with_point(text):
    """'1e20' as YAML reads it as a number: '1.0e+20'."""
    mantissa, exponent = re.split("[eE]", text)
    sign = "-" if exponent.startswith("-") else "+"
    return f"{mantissa}.0e{sign}{exponent.lstrip('+-')}"


def _article(word):
    """'an' before a vowel ('an int parameter'), else 'a'."""
    return "an" if word[:1] in "aeiou" else "a"
