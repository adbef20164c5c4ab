"""The `npunet` command: segment, verify, evaluate, summary, explain, tune, export, parity, goldens. Each
subcommand lives in its own module, which gives `add_arguments(parser)` and `run(args) -> exit code`; this file
only dispatches and turns user errors into one-line messages with a non-zero exit code.

stderr belongs to npunet: a user error is one line "npunet CMD: error: ..." and exit code 2 (a bad option
too: no usage text around it); the libraries' own warnings and log lines are captured (npunet.third_party)
and shown one line each only when the run succeeds; Ctrl-C and SIGTERM end with one line and exit 130 /
143, temporary files removed (npunet.signals)."""

from __future__ import annotations

import argparse
import importlib
import sys

from npunet import signals
from npunet.errors import NpunetError, Terminated
from npunet.text import one_line

COMMANDS = {
    "segment": ("npunet.commands.segment", "segment a CT (NIfTI file, DICOM folder, or folder of cases) into 13 organs"),
    "verify": ("npunet.commands.verify", "run a case again from its --report and check every output, byte for byte"),
    "evaluate": ("npunet.commands.evaluate", "score label maps against ground truth with the FLARE DSC / NSD protocol"),
    "summary": ("npunet.commands.summary", "per-layer shapes, parameters and multiply-adds of a network"),
    "explain": ("npunet.commands.explain", "follow one CT slice through the network, as an HTML page with pictures"),
    "tune": ("npunet.commands.tune", "measure this machine's convolution work sizes again and store them"),
    "export": ("npunet.commands.export", "write the network as an ONNX model (no torch), named after npunet's layers"),
    "parity": ("npunet.commands.parity", "compare another engine (ONNX, torch, a port's activations) with npunet, "
                                         "layer by layer"),
    "goldens": ("npunet.commands.goldens", "write a pack of test vectors for a port, or check a runtime against one"),
}
SEGMENTING = ("segment", "verify")    # the commands that run the network on a CT


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a bad option reported as one line (and exit code 2) instead of usage text + error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message, limit=None)} (see {self.prog} --help)\n")



def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported for its options (None: all of them), so that
    `npunet segment` does not pay for importing evaluate's scipy.ndimage and surface tables (slow imports)."""
    parser = OneLineParser(
        prog="npunet",
        description="NumPy + Numba CPU engine for the depthwise-separable ECA U-Net (abdominal CT, 13 organs).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if command is None or name == command:
            importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None, **inject) -> int:
    """Run one `npunet` command line; its exit code. `inject` passes stand-ins to the command's run (e.g.
    model= and segment_volume= to `npunet segment`, for tests): arguments, never patched modules."""
    argv = sys.argv[1:] if argv is None else list(argv)
    from npunet.third_party import import_nibabel_without_pydicom, set_up_numba_without_blas
    import_nibabel_without_pydicom()       # before the command's module imports nibabel (third_party says why)
    command = next((a for a in argv if not a.startswith("-")), None)
    command = command if command in COMMANDS else None
    if command in SEGMENTING:
        set_up_numba_without_blas()        # 0.17 s less start-up (third_party says why)
    try:
        parser = build_parser(command)
        args = parser.parse_args(argv)     # SystemExit: --help (0) or a bad option (2, after its one line)
        if not args.command:
            parser.print_help()
            return 2
        from npunet.third_party import captured
        with captured(process=True) as notes:
            code = int(importlib.import_module(args._module).run(args, **inject) or 0)
        signals.raise_pending()            # a signal whose exception was swallowed on the way
        for note in notes.messages:        # the libraries' own words, one line each, after a run that ended
            print(f"npunet {args.command}: warning: {one_line(note, limit=None)}", file=sys.stderr)
        return code
    except NpunetError as exc:
        print(f"npunet {command}: error: {one_line(exc, limit=None)}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as exc:
        from npunet.signals import finish_interrupted
        return finish_interrupted(exc, command)


def console(argv: list[str] | None = None, **inject) -> int:
    """The `npunet` console script: signal handling first (npunet.signals), main(), then skip the
    interpreter's final garbage collection. Numba leaves many compiler objects behind and collecting them
    made exit a noticeable part of a short run (see the start-up figures in the README); gc.freeze() marks
    them permanent, so exit is immediate."""
    signals.install()
    try:
        code = main(argv, **inject)
        signals.ignore()                                # done and published: a late signal changes nothing
    except (KeyboardInterrupt, Terminated) as exc:      # one that came before main could handle it
        return signals.finish_interrupted(exc, None)
    except BrokenPipeError:                             # `npunet summary | head -1`: the reader has gone
        signals.silence_stdout()
        return 128 + 13
    import gc
    gc.freeze()
    return code
