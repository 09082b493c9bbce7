"""The ``lossc`` command: build, check, list, show, accuracy."""
import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from .rewrites import RewriteLimitWarning
from .spec import SpecError
from .verify import AccuracyError, AccuracyWarning

GENERATED_DIR = Path(__file__).resolve().parent.parent / "generated"


def default_specs_dir():
    """``specs/`` beside ``generated/`` in a source checkout, else ``./specs``."""
    beside = GENERATED_DIR.parent / "specs"
    return beside if beside.is_dir() else Path.cwd() / "specs"


def generated_dir():
    """The folder of the ``lossc.generated`` package."""
    import lossc.generated

    return Path(lossc.generated.__file__).resolve().parent


def main(argv=None):
    """Entry point of the ``lossc`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            status = args.run(args)
        _print_warnings(caught)
        return status
    except (SpecError, AccuracyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _print_warnings(caught):
    """The compiler's warnings (accuracy findings, rewrite limits) as ``warning:`` lines."""
    for item in caught:
        if issubclass(item.category, (AccuracyWarning, RewriteLimitWarning)):
            print(f"warning: {item.message}", file=sys.stderr)
        else:
            warnings.showwarning(item.message, item.category, item.filename, item.lineno)


def _parser():
    parser = argparse.ArgumentParser(prog="lossc", description="Symbolic loss compiler.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("build", help="compile specs into generated/ (all by default)")
    p.add_argument("specs", nargs="*", help="spec files (default: every specs/*.yaml)")
    p.add_argument("--out", help="output folder (default: the lossc.generated package)")
    p.add_argument("--check", action="store_true", help="fail, listing files, if the output is not up to date")
    p.add_argument("--no-measure", action="store_true",
                   help="skip measuring the kernels against 50-digit truth (faster; keeps the first stable form)")
    p.add_argument("--measure", action="store_true", help="with --check: measure too (a check skips it by default)")
    p.add_argument("--strict", action="store_true", help="a kernel that misses its accuracy bound is an error")
    p.set_defaults(run=_build)

    p = sub.add_parser("check", help="validate one spec, print its loss and gradients and measure its kernels")
    p.add_argument("spec")
    p.add_argument("--strict", action="store_true", help="a kernel that misses its accuracy bound is an error")
    p.set_defaults(run=_check)

    p = sub.add_parser("list", help="list the built losses")
    p.set_defaults(run=_list)

    p = sub.add_parser("show", help="formulas, variants and files of one built loss")
    p.add_argument("name")
    p.set_defaults(run=_show)

    p = sub.add_parser("docs", help="export formula documentation (md, html or latex)")
    p.add_argument("names", nargs="*", help="losses to document (default: all)")
    p.add_argument("--format", choices=("md", "html", "latex"), default="html")
    p.add_argument("--out", default="lossc-docs", help="output folder (default: ./lossc-docs)")
    p.add_argument("--no-accuracy", action="store_true", help="skip measuring the accuracy figures")
    p.set_defaults(run=_docs)

    p = sub.add_parser("accuracy", help="max relative error vs 50-digit mpmath, float32 and float64")
    p.add_argument("names", nargs="*")
    p.set_defaults(run=_accuracy)
    return parser


def _build(args):
    from .build import build

    paths = [Path(s) for s in args.specs] or sorted(default_specs_dir().glob("*.yaml"))
    if not paths:
        print(f"error: no specs found in {default_specs_dir()}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else generated_dir()
    measure = not args.no_measure and (args.measure or not args.check)
    problems = build(paths, out, check=args.check, full=not args.specs, measure=measure, strict=args.strict)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    if problems:
        print("generated/ is not what the specs produce: run `lossc build`", file=sys.stderr)
    return 1 if problems else 0


def _check(args):
    from .build import compile_spec

    compiled = compile_spec(args.spec, measure=True)
    spec = compiled.spec
    print(f"{spec.name}: {spec.summary}")
    for verdict in compiled.verdicts:
        derived = verdict.derived
        label = ", ".join(f"{k}={v}" for k, v in derived.ir.variant.items()) or "(no variants)"
        print(f"variant {label}")
        print(f"  loss            = {derived.ir.loss}")
        print(f"  stable loss     = {derived.loss}")
        for name, grad in derived.gradients.items():
            print(f"  d loss / d {name} = {grad}")
        print(f"  rules applied   = {', '.join(derived.rules_applied) or 'none'}"
              + (f" (the form {verdict.alternative} measured better)" if verdict.alternative else ""))
        for row in verdict.rows:
            print(f"  measured {row.output:16s} {row.dtype:8s} max relative error {row.max_error:.2e} "
                  f"over {row.points} points  {'ok' if row.ok else 'MISSES THE BOUND'}")
    _check_pair_terms(spec)
    if args.strict and compiled.findings:
        raise AccuracyError("the compiled kernels miss their accuracy bounds (--strict):\n  "
                            + "\n  ".join(compiled.findings))
    for finding in compiled.findings:
        warnings.warn(AccuracyWarning(finding))
    return 0


def _check_pair_terms(spec):
    """Print each pair term (an input built from pairs of the pair inputs) and its derivatives."""
    from .derive import derive
    from .ir import build_ir
    from .pairs import pair_term_spec, pair_terms

    for term in pair_terms(spec):
        derived = derive(build_ir(pair_term_spec(spec, term), {}))
        print(f"pair term {term.input}[i, j] = sum over features of {derived.ir.loss}")
        for name, grad in derived.gradients.items():
            print(f"  d summand / d {name} = {grad}")


def _manifests():
    folder = generated_dir() / "losses"
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))}


def _list(args):
    for name, data in _manifests().items():
        print(f"{name:24s} {data['summary']}")
    return 0


def _show(args):
    manifests = _manifests()
    if args.name not in manifests:
        print(f"error: unknown loss '{args.name}' (known: {', '.join(manifests)})", file=sys.stderr)
        return 1
    data = manifests[args.name]
    print(f"{data['name']}: {data['summary']}  (spec {data['spec_file']})")
    for v in data["variants"]:
        label = ", ".join(f"{k}={val}" for k, val in v["values"].items()) or "(no variants)"
        files = [f"generated/numpy/{v['numpy_module']}.py"]
        if v.get("cupy_module"):
            files.append(f"generated/cupy/{v['cupy_module']}.py"
                         + ("" if data.get("class_axis") else " (also the native CPU kernels' source)"))
        print(f"variant {label}: {', '.join(files)}")
        print(f"  loss        = {v['loss']}")
        print(f"  stable loss = {v['stable_loss']}")
        for name, grad in v["gradients"].items():
            print(f"  d/d{name:8s}  = {grad}")
    return 0


def _docs(args):
    from .build import compile_spec
    from .docs import export

    paths = sorted(default_specs_dir().glob("*.yaml"))
    if args.names:
        unknown = sorted(set(args.names) - {p.stem for p in paths})
        if unknown:
            print(f"error: no spec named {', '.join(unknown)} in {default_specs_dir()}", file=sys.stderr)
            return 1
        paths = [p for p in paths if p.stem in args.names]
    export([compile_spec(p) for p in paths], args.format, args.out, with_accuracy=not args.no_accuracy)
    return 0


def _accuracy(args):
    from .accuracy import accuracy_report

    ok = accuracy_report(args.names or None, default_specs_dir())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
