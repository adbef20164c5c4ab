"""Ctrl-C, SIGTERM and a closed pipe for the command line: one line on stderr, the conventional exit code,
and no temporary file left behind.

    install()        # first thing in the `npunet` command, before the slow imports

SIGINT raises KeyboardInterrupt and SIGTERM / SIGHUP raise npunet.errors.Terminated, wherever the main
thread is (reading, in the network, writing); both unwind through the `finally` and `except BaseException`
blocks that remove temporary and half-done outputs (npunet.publish), and the command then exits with
128 + the signal number (130 for Ctrl-C, 143 for SIGTERM) after one line such as "npunet segment:
interrupted". A second signal during that clean-up is ignored, so it cannot be cut short.

Python ignores an exception raised where it cannot propagate (a weakref callback of the import system, a
__del__): a signal that lands there would be lost and the run would go on to exit 0. So the handler also
keeps the exception as pending until finish_interrupted reports it, and raise_pending() raises it again at
the points that must not be passed after a signal: the end of start-up, the publication of an output and
the end of a command. Python's own report of such an ignored exception ("Exception ignored in ..."), and of
a destructor failing on an object the exception cut half-built, is dropped once a signal has come
(_quiet_after_signal): the one line stays the only one.

What must be undone after a signal registers itself with `at_interruption(callback)` (npunet.publish
registers the removal of its temporary files): this module sits below everything and imports none of them.
"""

from __future__ import annotations

import os
import signal
import sys

from npunet.errors import Terminated

HANDLED = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None),
                            getattr(signal, "SIGHUP", None)) if s is not None)


_pending: BaseException | None = None     # raised by the handler, not yet reported by finish_interrupted
_interrupted = False                      # finish_interrupted has run: the process is ending after a signal
_clean_ups: list = []                     # called by finish_interrupted, in the order registered


def at_interruption(callback) -> None:
    """Have finish_interrupted call `callback()` (once per registration) before it reports the signal."""
    if callback not in _clean_ups:
        _clean_ups.append(callback)


def _on_signal(signum, frame):
    global _pending
    ignore()                              # the clean-up that follows must not be cut short
    sys.unraisablehook = _quiet_after_signal
    _pending = KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)
    raise _pending


def _quiet_after_signal(unraisable) -> None:
    """sys.unraisablehook once a signal has come: the exception raised by the handler can cut a third-party
    object half-built (llvmlite's OutputString before its pointer is set, during a first run's compilation),
    and its destructor's error, which Python prints as "Exception ignored in ...", would follow the one line;
    the process is ending, so such errors are dropped."""


def raise_pending() -> None:
    """Raise again the exception of a signal that arrived and has not been reported yet (it may have been
    swallowed where Python ignores exceptions); nothing when there is none."""
    if _pending is not None:
        raise _pending


def ignore() -> None:
    """Ignore SIGINT, SIGTERM and SIGHUP from now on: during the clean-up after one, and once a command has
    finished (its outputs are published; a signal that comes as the process exits changes nothing)."""
    for s in HANDLED:
        signal.signal(s, signal.SIG_IGN)


def install() -> None:
    """Route SIGINT, SIGTERM and SIGHUP to exceptions (main thread only; elsewhere it does nothing)."""
    try:
        for s in HANDLED:
            signal.signal(s, _on_signal)
    except ValueError:                    # not the main thread
        pass


def exit_code(exc: BaseException) -> int:
    """128 + the signal number: 130 for KeyboardInterrupt (SIGINT), 143 for SIGTERM, 129 for SIGHUP."""
    if isinstance(exc, Terminated):
        return 128 + int(exc.signum)
    return 128 + int(signal.SIGINT)


def describe(exc: BaseException) -> str:
    if isinstance(exc, Terminated):
        return f"terminated ({signal.Signals(exc.signum).name})"
    return "interrupted"


def finish_interrupted(exc: BaseException, command: str | None) -> int:
    """After an interruption: run the registered clean-ups (npunet.publish's temporary files), say so in one
    line, return the code."""
    global _pending, _interrupted
    _pending, _interrupted = None, True
    for clean_up in _clean_ups:
        clean_up()
    prefix = f"npunet {command}" if command else "npunet"
    try:
        print(f"{prefix}: {describe(exc)}", file=sys.stderr, flush=True)
    except OSError:
        pass
    return exit_code(exc)


def exit_after_interruption(code: int) -> None:
    """End the process now with `code` if a signal interrupted it (finish_interrupted has run), skipping the
    interpreter's shutdown: a background thread may still be inside a Numba compilation, and LLVM aborts
    (exit -6) when the interpreter is torn down under it; an object the signal cut half-built would print its
    destructor's error after the one line. npunet's own clean-up (temporaries, a Dask cluster) is done by
    then. Nothing when there was no interruption. For the process's entry point only (npunet.__main__)."""
    if not _interrupted:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(code)


def silence_stdout() -> None:
    """After a closed pipe (`npunet summary | head -1`): point stdout at /dev/null, so that Python's final
    flush does not print a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
