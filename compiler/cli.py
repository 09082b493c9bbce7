"""The ``lossc`` command: build, check, list, show, docs, accuracy, new."""
import argparse
import os
import sys
import warnings
from pathlib import Path

from lossc.core import targets

from .rewrites import RewriteLimitWarning
from .spec import SpecError
from .verify import AccuracyError, AccuracyWarning
from .workspace import SelectionError, manifests, package_folder, selection

GENERATED_DIR = Path(__file__).resolve().parent.parent / "generated"


def default_specs_dir():
    """``specs/`` beside ``generated/`` in a source checkout, else ``./specs``."""
    beside = GENERATED_DIR.parent / "specs"
    return beside if beside.is_dir() else Path.cwd() / "specs"


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
    except (SpecError, AccuracyError, SelectionError) as err:
        for line in getattr(err, "errors", [err]):
            print(f"error: {line}", file=sys.stderr)
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
    _built_folder_option(p)
    p.set_defaults(run=_list)

    p = sub.add_parser("show", help="formulas, variants and files of built losses or spec files")
    p.add_argument("names", nargs="+", metavar="NAME|SPEC", help="loss names or spec files (NAME.yaml)")
    _selection_options(p)
    p.set_defaults(run=_show)

    p = sub.add_parser("docs", help="export formula documentation (md, html or latex)")
    p.add_argument("names", nargs="*", metavar="NAME|SPEC",
                   help="loss names or spec files (default: every loss of the built folder)")
    p.add_argument("--format", choices=("md", "html", "latex"), default="html")
    p.add_argument("--out", default="lossc-docs", help="output folder (default: ./lossc-docs)")
    p.add_argument("--no-accuracy", action="store_true", help="skip measuring the accuracy figures")
    _built_folder_option(p)
    p.set_defaults(run=_docs)

    p = sub.add_parser("accuracy", help="max relative error vs 50-digit mpmath, float32 and float64")
    p.add_argument("names", nargs="*", metavar="NAME|SPEC",
                   help="loss names or spec files (default: every loss of the built folder)")
    _selection_options(p)
    p.set_defaults(run=_accuracy)

    p = sub.add_parser("new", help="write a commented spec skeleton NAME.yaml and its test stub test_NAME.py")
    p.add_argument("name", help="the new loss's name (an identifier)")
    p.add_argument("--class-axis", action="store_true", help="a loss over a class axis (softmax-style rows)")
    p.add_argument("--dir", default=".", help="folder to write into (default: the current folder)")
    p.set_defaults(run=_new)
    return parser


def _built_folder_option(p):
    p.add_argument("--generated", metavar="DIR",
                   help="a folder built with `lossc build --out DIR` (default: the lossc.generated package)")


def _selection_options(p):
    _built_folder_option(p)
    p.add_argument("--out", metavar="DIR", help="build spec files given here into DIR (default: a temporary folder)")
    p.add_argument("--no-measure", action="store_true",
                   help="build spec files without measuring (as `lossc build --no-measure`)")


def _build(args):
    from .build import build

    paths = [Path(s) for s in args.specs] or sorted(default_specs_dir().glob("*.yaml"))
    if not paths:
        print(f"error: no specs found in {default_specs_dir()}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else package_folder()
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


def _list(args):
    for name, data in manifests(args.generated or package_folder()).items():
        print(f"{name:24s} {data['summary']}")
    return 0


def _show(args):
    with selection(args.names, args.generated, args.out, measure=not args.no_measure) as selected:
        for chosen in selected:
            _show_one(chosen)
    return 0


def _show_one(chosen):
    """Print one selected loss: summary, and per variant its files and formulas."""
    data = chosen.manifest
    print(f"{data['name']}: {data['summary']}  (spec {chosen.folder / 'specs' / data['spec_file']})")
    for v in data["variants"]:
        label = ", ".join(f"{k}={val}" for k, val in v["values"].items()) or "(no variants)"
        files = [str(chosen.folder / t.folder / f"{v['modules'][name]}.py")
                 + (" (also the native CPU kernels' source)" if name == "cupy" else "")
                 for name, t in targets.TARGETS.items() if t.folder and v["modules"][name]]
        print(f"variant {label}: {', '.join(files)}")
        print(f"  loss        = {v['loss']}")
        print(f"  stable loss = {v['stable_loss']}")
        for name, grad in v["gradients"].items():
            print(f"  d/d{name:8s}  = {grad}")


def _docs(args):
    from .build import compile_spec
    from .docs import export

    with selection(args.names, args.generated, measure=not args.no_accuracy) as selected:
        compiled = [compile_spec(chosen.spec_path) for chosen in selected]
        export(compiled, args.format, args.out, with_accuracy=not args.no_accuracy,
               built={chosen.name: chosen.folder for chosen in selected})
    return 0


def _accuracy(args):
    from .accuracy import accuracy_report

    with selection(args.names, args.generated, args.out, measure=not args.no_measure) as selected:
        ok = accuracy_report(selected)
    return 0 if ok else 1


def _new(args):
    from .skeleton import write_skeleton

    for path in write_skeleton(args.name, Path(args.dir), class_axis=args.class_axis):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
