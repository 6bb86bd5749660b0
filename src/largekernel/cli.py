"""The `largekernel` command line: one function per subcommand, registered with `@command`.

To add a subcommand, write `@command("name", help=..., args=[arg(...), ...])` over a function
`(args: argparse.Namespace) -> int` that writes its result to stdout and logs diagnostics.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Callable, Sequence

from . import __version__
from .models.checkpoint import CheckpointError
from .models.hub import PretrainedNotAvailable

log = logging.getLogger("largekernel.cli")

# Errors caused by the user's input: one line on stderr, exit code 2 (a traceback only with -v).
USER_ERRORS = (ValueError, CheckpointError, FileNotFoundError, PretrainedNotAvailable)

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: list[tuple[str, str, list[tuple[tuple, dict]], Handler]] = []


def arg(*names: str, **kwargs: Any) -> tuple[tuple, dict]:
    """One `add_argument` call, recorded for `@command`."""
    return names, kwargs


def command(name: str, help: str, args: Sequence[tuple[tuple, dict]] = ()) -> Callable[[Handler], Handler]:
    """Register the decorated function as subcommand `name` with the given arguments."""
    def register(fn: Handler) -> Handler:
        _COMMANDS.append((name, help, list(args), fn))
        return fn
    return register


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


# ---- subcommands ---------------------------------------------------------------------------------

@command("info", help="parameters, MACs and feature strides/channels of models", args=[
    arg("models", nargs="*", metavar="MODEL",
        help="model names or fnmatch patterns such as 'unireplknet_*' (default: all variants)"),
    arg("--input-size", type=positive_int, default=224, metavar="N",
        help="square input size for the MACs (default: 224)"),
    arg("--num-classes", type=non_negative_int, default=None, metavar="N",
        help="classifier classes (default: the model's, usually 1000; 0 = no head)"),
    arg("--in-chans", type=positive_int, default=None, metavar="N",
        help="input channels (default: 3)"),
    arg("--json", action="store_true", help="print a JSON list of objects instead of a table"),
])
def cmd_info(args: argparse.Namespace) -> int:
    """Table (or JSON) of params in train/deploy form, deploy-form GMACs and feature info."""
    from .tools.info import model_info, resolve_model_names

    names = resolve_model_names(args.models)
    log.debug("models: %s", ", ".join(names))
    infos = [model_info(n, input_size=args.input_size, num_classes=args.num_classes,
                        in_chans=args.in_chans) for n in names]
    if args.json:
        sys.stdout.write(json.dumps([i.to_dict() for i in infos], indent=2) + "\n")
        return 0
    header = ["model", "params (train)", "params (deploy)", f"GMACs@{args.input_size}",
              "strides", "channels"]
    rows = [[i.model, f"{i.params_train:,}", f"{i.params_deploy:,}", f"{i.gmacs:.3f}",
             "/".join(map(str, i.feature_strides)), "/".join(map(str, i.feature_channels))]
            for i in infos]
    sys.stdout.write(format_table(header, rows, right=(1, 2, 3)))
    return 0


@command("demo", help="embedded demo: build, re-parameterize, check, time, save and reload", args=[
    arg("--model", default="unireplknet_a", help="variant to build (default: unireplknet_a)"),
    arg("--input-size", type=positive_int, default=224, metavar="N", help="input size (default: 224)"),
    arg("--json", action="store_true", help="print the numbers as JSON"),
])
def cmd_demo(args: argparse.Namespace) -> int:
    """Build a model with non-trivial BN/GRN/layer-scale values, fold a copy, and show that the
    folded form is equivalent, faster and round-trips through safetensors. Needs no downloads."""
    from .tools.demo import format_demo, run_demo

    result = run_demo(args.model, input_size=args.input_size)
    sys.stdout.write(json.dumps(result, indent=2) + "\n" if args.json else format_demo(result) + "\n")
    return 0 if result["reload_equal"] and result["rel_err"] <= 1e-5 else 1


# ---- plumbing ------------------------------------------------------------------------------------

def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell, two spaces apart; columns in `right` right-aligned."""
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(x).rjust(w) if c in right else str(x).ljust(w)
                         for c, (x, w) in enumerate(zip(cells, widths))).rstrip() + "\n"

    return "".join(line(r) for r in [header, *rows])


def _verbosity_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="debug logging, and tracebacks for errors")
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="log errors only")


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="largekernel", description="UniRepLKNet large-kernel ConvNets: tools.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _verbosity_flags(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text, arguments, fn in _COMMANDS:
        p = sub.add_parser(name, help=help_text, description=(fn.__doc__ or help_text).strip())
        # SUPPRESS: -v/-q given before the subcommand are not overwritten by the subparser
        _verbosity_flags(p, default=argparse.SUPPRESS)
        for names, kwargs in arguments:
            p.add_argument(*names, **kwargs)
        p.set_defaults(func=fn)
    return parser


def _install_log_handler(level: int) -> Callable[[], None]:
    """Send `largekernel.*` logs to stderr at `level`; returns a function restoring the old state."""
    logger = logging.getLogger("largekernel")
    old = logger.level, logger.propagate
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(old[0])
        logger.propagate = old[1]

    return restore


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on `argv` (default: sys.argv[1:]) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    level = logging.DEBUG if args.verbose else logging.ERROR if args.quiet else logging.INFO
    restore = _install_log_handler(level)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        if args.verbose:
            log.exception("%s failed", args.command)
        sys.stderr.write(f"error: {' '.join(str(e).split()) or type(e).__name__}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
