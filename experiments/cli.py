"""Command line: `python -m experiments` / `paretolab` — list experiments, run one.

    paretolab list
    paretolab run NAME [--quick] [--out DIR] [--hardware PROFILE.json] [--seed N] [key=value ...]

`key=value` overrides set fields of the experiment's Config, parsed into the field's type
(`tuple` fields take comma-separated values, `X | None` fields take `none`); `--key value` and
`--key=value` are accepted too (dashes in the key read as underscores), e.g. `--corpus PATH`. `--hardware` passes the
path of a fitted hardware profile (perfmodel's calibration output) to experiments that take one.
The CLI only parses and dispatches; see `experiments.registry` for the experiment contract.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

from . import registry


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paretolab", description="Run paretolab experiments.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{list,run}")
    sub.add_parser("list", help="list the experiments and their config keys")
    run = sub.add_parser("run", help="run one experiment", description=(
        "Run experiment NAME; results go to results/NAME/<timestamp>/ or --out DIR "
        "(an existing DIR with the same config resumes)."))
    run.add_argument("name", metavar="NAME", help=f"one of: {', '.join(registry.names())}")
    run.add_argument("--quick", action="store_true", help="the experiment's small, fast mode")
    run.add_argument("--out", metavar="DIR", help="output folder (default results/NAME/<timestamp>)")
    run.add_argument("--hardware", metavar="PROFILE.json", help="fitted hardware profile (JSON)")
    run.add_argument("--seed", type=int, metavar="N", help="random seed")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="config field overrides")
    parser.run_parser = run  # for `run NAME --help`, which adds the experiment's config keys
    return parser


_OPTIONS = {"--quick": 0, "--out": 1, "--hardware": 1, "--seed": 1, "-h": 0, "--help": 0}


def _take_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split `run` arguments into (the rest, overrides as `key=value`).

    `key=value` tokens and `--key value` / `--key=value` for keys the CLI does not know are
    overrides. They are taken out before argparse runs, because argparse cannot interleave
    optionals with a variable-length positional list.
    """
    out, overrides, i = [], [], 0
    while i < len(argv):
        tok = argv[i]
        name = tok.split("=", 1)[0]
        if tok == "--":
            out += argv[i:]
            break
        if tok.startswith("--") and name not in _OPTIONS:
            key = name[2:].replace("-", "_")
            if "=" in tok:
                overrides.append(f"{key}={tok.split('=', 1)[1]}")
            elif i + 1 < len(argv):
                overrides.append(f"{key}={argv[i + 1]}")
                i += 1
            else:
                out.append(tok)  # argparse reports the dangling option
        elif "=" in tok and not tok.startswith("-"):
            overrides.append(tok)
        else:
            out.append(tok)
            if name in _OPTIONS and "=" not in tok:
                out += argv[i + 1:i + 1 + _OPTIONS[name]]
                i += _OPTIONS[name]
        i += 1
    return out, overrides


def _split_overrides(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"override {item!r} is not of the form key=value")
        if key in overrides:
            parser.error(f"override {key!r} given twice")
        overrides[key] = value
    return overrides


def _config_help(name: str) -> str:
    """The config keys of experiment `name` with their types and full-mode defaults."""
    module = registry.load(name)
    hints = typing.get_type_hints(module.Config)
    lines = [f"\nconfig keys of {name} (defaults are full mode):"]
    for f in dataclasses.fields(module.Config):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        tp = hints[f.name].__name__ if isinstance(hints[f.name], type) else str(hints[f.name])
        lines.append(f"  {f.name}={default!r}  [{tp}]")
    lines.append(f"--quick sets: {', '.join(f'{k}={v!r}' for k, v in module.QUICK.items())}")
    return "\n".join(lines)


def _list() -> int:
    """Print every experiment with its description and config keys; 1 if one fails to import."""
    status = 0
    for name in registry.names():
        try:
            module = registry.load(name)
        except Exception as e:  # one broken module must not hide the others
            print(f"{name:<16} (cannot load: {type(e).__name__}: {e})")
            status = 1
            continue
        keys = ", ".join(f.name for f in dataclasses.fields(module.Config))
        print(f"{name:<16} {registry.describe(name)}")
        print(f"{'':<16} keys: {keys}")
    return status


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m experiments` and the `paretolab` console script.

    Returns:
      The exit status (argparse exits with 2 on usage errors, including unknown names and keys).
    """
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if argv and argv[0] == "run":
        rest, overrides = _take_overrides(argv[1:])
        argv = ["run", *rest]
    if argv[:1] == ["run"] and {"-h", "--help"} & set(argv) and len(argv) > 1 and argv[1] in registry.EXPERIMENTS:
        parser.run_parser.print_help()
        print(_config_help(argv[1]))
        return 0
    args = parser.parse_args(argv)
    if args.command == "list":
        return _list()
    import jax  # before any backend starts: Helix experiments (quickstart, helix-mx) need 8 CPU devices
    if jax.config.jax_num_cpu_devices < 0:  # unset (JAX_NUM_CPU_DEVICES or a caller may have chosen)
        jax.config.update("jax_num_cpu_devices", 8)
    overrides = _split_overrides(parser, [*args.overrides, *overrides])
    try:
        config = registry.make_config(args.name, quick=args.quick, seed=args.seed,
                                      hardware=args.hardware, overrides=overrides)
    except ValueError as e:
        parser.error(str(e))
    try:
        out, headline = registry.run_experiment(args.name, config, out=args.out)
    except registry.ConfigMismatchError as e:
        print(f"paretolab: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(headline, indent=2))
    print(f"results: {out.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
