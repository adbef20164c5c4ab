"""The `npunet` command: segment, evaluate, summary, explain. Each subcommand lives in its own module, which gives
`add_arguments(parser)` and `run(args) -> exit code`; this file only dispatches and turns user errors into
one-line messages with a non-zero exit code."""

from __future__ import annotations

import argparse
import importlib
import sys

from npunet.errors import NpunetError

COMMANDS = {
    "segment": ("npunet.segment_cli", "segment a CT (NIfTI file, DICOM folder, or folder of cases) into 13 organs"),
    "evaluate": ("npunet.evaluate", "score label maps against ground truth with the FLARE DSC / NSD protocol"),
    "summary": ("npunet.summary", "per-layer shapes, parameters and multiply-adds of a network"),
    "explain": ("npunet.explain_cli", "follow one CT slice through the network, as an HTML page with pictures"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported for its options (None: all of them), so that
    `npunet segment` does not pay for importing evaluate's scipy.ndimage and surface tables (slow imports)."""
    parser = argparse.ArgumentParser(
        prog="npunet",
        description="NumPy + Numba CPU engine for the depthwise-separable ECA U-Net (abdominal CT, 13 organs).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if command is None or name == command:
            importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except NpunetError as exc:
        print(f"npunet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"npunet {args.command}: interrupted", file=sys.stderr)
        return 130


def console(argv: list[str] | None = None) -> int:
    """The `npunet` console script: main(), then skip the interpreter's final garbage collection. Numba
    leaves many compiler objects behind and collecting them made exit a noticeable part of a short run (see
    the start-up figures in the README); gc.freeze() marks them permanent, so exit is immediate."""
    code = main(argv)
    import gc
    gc.freeze()
    return code
