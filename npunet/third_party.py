"""stderr belongs to npunet: what the libraries it calls would print there (Python warnings, and the log
records of nibabel, pydicom, highdicom and numba) is captured here instead, one line per message.

    with captured() as notes:                  # this thread's warnings and log records inside the block
        img = nib.Nifti1Image.from_bytes(raw)
    raise InputError(notes.fold(f"{path}: cannot decode the pixel data"))   # "... (pydicom: <its reason>)"

A reader folds the note that explains a failure into its own one-line error. The command line
(npunet.cli) captures the whole run with `captured(process=True)`: notes raised outside any reader's block,
on any thread, land there, and are printed one line each when the run succeeds (when it fails, the error
line says what matters and the libraries' text is left out). Nothing is installed until a block is entered,
and everything is restored when the last one exits.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from contextlib import contextmanager

LOGGERS = ("nibabel", "nibabel.global", "pydicom", "highdicom", "numba")
MAX_NOTES = 20

_local = threading.local()
_lock = threading.Lock()
_users = 0
_saved: dict = {}
_process_notes: list = []


class Notes:
    """The messages captured in one block, each one line of at most 300 characters, without repeats."""

    def __init__(self):
        self.messages: list[str] = []

    def add(self, source: str, text: str) -> None:
        line = " ".join(str(text).split())
        line = f"{source}: {line}" if source and not line.startswith(source) else line
        line = line if len(line) <= 300 else line[:297] + "..."
        if line and line not in self.messages and len(self.messages) < MAX_NOTES:
            self.messages.append(line)

    def fold(self, message: str) -> str:
        """`message` with the first captured note in brackets, if there is one."""
        return f"{message} ({self.messages[0]})" if self.messages else message

    def __bool__(self) -> bool:
        return bool(self.messages)


def _route(source: str, text: str) -> bool:
    stack = getattr(_local, "stack", None)
    if stack:
        stack[-1].add(source, text)
        return True
    if _process_notes:
        _process_notes[-1].add(source, text)
        return True
    return False


def _source_of(filename: str, category) -> str:
    for name in ("nibabel", "pydicom", "numba", "numpy", "scipy"):
        if f"/{name}/" in str(filename).replace("\\", "/"):
            return name
    return category.__name__


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if not _route(_source_of(filename, category), f"{category.__name__}: {message}"):
        print(f"warning: {' '.join(str(message).split())} ({category.__name__})", file=sys.stderr)


class _Handler(logging.Handler):
    def emit(self, record):
        try:
            text = record.getMessage()
        except Exception:      # a library's malformed log call must not break the run
            text = str(record.msg)
        if not _route(record.name.split(".")[0], text):
            print(f"{record.name.split('.')[0]}: {' '.join(text.split())}", file=sys.stderr)


def _install() -> None:
    global _users
    with _lock:
        _users += 1
        if _users > 1:
            return
        _saved["showwarning"] = warnings.showwarning
        warnings.showwarning = _show_warning
        handler = _Handler()
        for name in LOGGERS:
            logger = logging.getLogger(name)
            _saved[name] = (logger.handlers[:], logger.propagate)
            logger.handlers[:] = [handler]
            logger.propagate = False


def _uninstall() -> None:
    global _users
    with _lock:
        _users -= 1
        if _users > 0:
            return
        if warnings.showwarning is _show_warning:
            warnings.showwarning = _saved["showwarning"]
        for name in LOGGERS:
            handlers, propagate = _saved[name]
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.propagate = propagate
        _saved.clear()


@contextmanager
def captured(process: bool = False):
    """Capture warnings and library log records raised in the block (on this thread; with process=True, on
    every thread that has no block of its own: for the main thread of a command, around the whole run)
    into the Notes it yields."""
    notes = Notes()
    _install()
    if process:
        _process_notes.append(notes)
    else:
        _local.stack = getattr(_local, "stack", [])
        _local.stack.append(notes)
    try:
        if process:      # the warning filters are process-wide: only the command's own block touches them
            with warnings.catch_warnings():
                warnings.simplefilter("default")     # each distinct warning once, whatever the filters said
                warnings.showwarning = _show_warning
                yield notes
        else:
            yield notes
    finally:
        if process:
            _process_notes.remove(notes)
        else:
            _local.stack.remove(notes)
        _uninstall()


def import_nibabel_without_pydicom() -> bool:
    """Import nibabel without letting it import pydicom, when neither is imported yet (the `npunet` command,
    before its command module loads). nibabel.nifti1 imports pydicom, when installed (the `dicom` extra), only
    to decode DICOM extensions of NIfTI headers into datasets; without it nibabel keeps them as raw bytes,
    which npunet never reads (its outputs drop the input's extensions: npunet.io.nifti.labels_image). That
    import took 0.14 s of every command's start-up (Intel Xeon family 6 model 167, `python -X importtime`).
    pydicom itself stays importable: a DICOM input imports it as usual. Returns whether nibabel was imported
    this way."""
    if "nibabel" in sys.modules or "pydicom" in sys.modules:
        return False
    sys.modules["pydicom"] = None              # `import pydicom` raises ImportError meanwhile
    try:
        import nibabel  # noqa: F401
    finally:
        del sys.modules["pydicom"]
    return True


def set_up_numba_without_blas() -> bool:
    """Let Numba set itself up without importing scipy.linalg, when neither is imported yet (the `npunet`
    commands that segment, and the helper process that compiles kernels on a first run). Numba's first
    compilation or cache load imports numba.np.arraymath, which checks for a BLAS by importing
    scipy.linalg.cython_blas: scipy.linalg and its array-API layer, which imports numpy.f2py, 0.17 s of every
    start-up (Intel Xeon family 6 model 167, `python -X importtime`). What that check decides (numba.np.arraymath
    _HAVE_BLAS) only picks how np.correlate and np.convolve compute their inner products, which no npunet
    kernel calls; np.dot and np.linalg in jitted code still import scipy.linalg themselves when they compile.
    scipy.linalg stays importable. Returns whether Numba was set up this way."""
    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules:
        return False
    sys.modules["scipy.linalg.cython_blas"] = None     # Numba's check then fails at once, importing nothing
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        del sys.modules["scipy.linalg.cython_blas"]
    return True
