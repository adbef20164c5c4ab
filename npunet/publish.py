"""Putting a finished file in place: the one way npunet writes a file (label maps and their sidecars,
statistics, previews, DICOM SEG objects, evaluation reports, weights) or a folder of files (--split).

    atomic_write(path, write, overwrite=False)     # write(tmp) fills a temporary file, then it is published
                                                   # (overwrite defaults to True: replace in place)
    with staged_folder(path, overwrite=False) as tmp_folder:   # fill tmp_folder; at the end of the block
        ...                                                    # it is published as `path`, whole

`write(tmp)` writes a temporary file beside `path` (same folder, a hidden name ending in the same suffix,
so nibabel still picks gzip from `.gz`). Only once it has returned is the file published under `path`:
- overwrite=True: os.replace, atomic, replacing whatever is there;
- overwrite=False: os.link(tmp, path), atomic and exclusive: when `path` exists (another run finished first,
  even a moment ago) the link fails and the caller gets InputError "exists already", so of two runs writing
  the same output exactly one wins. Where the file system has no hard links, an O_CREAT | O_EXCL
  placeholder claims the name first and os.replace fills it.
A folder (`staged_folder`) follows the same rules: it is filled under a hidden temporary name beside
`path` (`.NAME.*.tmp`) and published by one rename, which is exclusive by itself: it succeeds onto a free
name (or an empty folder) and fails onto a folder with files in it, and a published folder is never empty,
so of two runs exactly one wins. With overwrite, a folder in the way (if `may_replace(path)` allows it) is
first renamed aside to a temporary name and deleted after the new one is in place.
`unpublish(path)` takes back a file (or folder) this process published (a failed job's clean-up) and leaves
alone one that another process put there. Nothing is ever half-written under `path`, and a temporary file
or folder never outlives a failure, an exception, Ctrl-C or SIGTERM: it is removed on the way out. Creating
a temporary file or folder and listing it, and publishing one and recording it as ours, each happen with
the signals held back for those few system calls, so `remove_temporaries()` (called by npunet.signals as
the process exits on a signal; it removes temporary folders whole) and `unpublish` always know every file.
Stdlib only: any layer may use it.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from npunet.errors import InputError
from npunet.signals import at_interruption, raise_pending
from npunet.text import one_line

_LIVE: set[str] = set()                          # temporary files and folders to remove on the way out
_PUBLISHED: dict[str, tuple[int, int]] = {}     # path -> (st_dev, st_ino) of the file this process put there
_LOCK = threading.Lock()


def exists_message(path) -> str:
    return f"{path}: exists already; pass --overwrite (overwrite=True) to replace it"


def _suffix(name: str) -> str:
    low = name.lower()
    for double in (".nii.gz", ".tar.gz"):
        if low.endswith(double):
            return name[-len(double):]
    return Path(name).suffix




def atomic_write(path: str | os.PathLike, write, overwrite: bool = True) -> Path:
    """Call write(tmp_path) on a temporary file beside `path`, then publish it as `path` (see the module doc).

    overwrite=False makes the publication exclusive (InputError when `path` exists). OSError (no space, no
    permission, read-only file system) becomes InputError naming the file. The default, True, keeps the
    replace-in-place behaviour of callers that checked for existing files themselves.
    """
    path = Path(path)
    suffix = _suffix(path.name)
    try:
        with _signals_deferred():         # no Ctrl-C between creating the file and listing it
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:40]}.", suffix=f".tmp{suffix}", dir=path.parent)
            with _LOCK:
                _LIVE.add(tmp)
    except OSError as exc:
        raise InputError(f"{path}: cannot write in {path.parent} ({one_line(exc)})") from None
    try:
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o644 & ~_umask())     # mkstemp made it 0600; give it the usual permissions
        raise_pending()                   # never publish after a signal, even one whose exception was lost
        with _signals_deferred():         # published and recorded as ours in one step
            with _LOCK:
                _PUBLISHED[os.path.abspath(path)] = _identity(tmp)
            if overwrite:
                os.replace(tmp, path)
            else:
                _publish_exclusive(tmp, path)
    except FileExistsError:
        raise InputError(exists_message(path)) from None
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({one_line(exc)})") from None
    finally:
        _discard(tmp)
    return path


@contextmanager
def staged_folder(path: str | os.PathLike, overwrite: bool = False, may_replace=None):
    """Yield a new empty folder beside `path` (hidden temporary name, same parent) to fill; when the block
    ends without an exception it is published as `path` whole (see the module doc), else removed with all
    it holds. Missing parent folders are created (and stay).

    overwrite=False: InputError "exists already" when `path` is a folder with files in it (or a file) by
    then; an empty folder is replaced. overwrite=True: a folder in the way is replaced, provided
    `may_replace(path)` (default: any folder) is true; otherwise InputError. OSError becomes InputError.
    Files written inside the yielded folder need no publishing of their own: the folder is the unit. Put
    at least one file in it: an empty folder, once published, would not keep a second run out.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot create the output folder ({one_line(exc)})") from None
    try:
        with _signals_deferred():         # no Ctrl-C between creating the folder and listing it
            staging = tempfile.mkdtemp(prefix=f".{path.name[:40]}.", suffix=".tmp", dir=path.parent)
            with _LOCK:
                _LIVE.add(staging)
    except OSError as exc:
        raise InputError(f"{path}: cannot write in {path.parent} ({one_line(exc)})") from None
    try:
        yield Path(staging)
        try:
            os.chmod(staging, 0o777 & ~_umask())     # mkdtemp made it 0700
            raise_pending()
            _publish_folder(staging, path, overwrite, may_replace)
        except FileExistsError:
            raise InputError(exists_message(path)) from None
        except OSError as exc:
            raise InputError(f"{path}: cannot write ({one_line(exc)})") from None
    finally:
        _discard(staging)                 # gone already once published
        _forget_inside(staging)


def _publish_folder(staging: str, path: Path, overwrite: bool, may_replace) -> None:
    """Rename the filled `staging` folder to `path` (exclusive unless overwrite) and record it as ours."""
    for _ in range(8):                    # overwrite: another run may move folders at the same moment
        with _signals_deferred():         # published and recorded as ours in one step
            identity = _identity(staging)
            try:
                os.rename(staging, path)  # onto a free name or an empty folder only (POSIX)
            except OSError as exc:
                if exc.errno == errno.ENOTDIR:
                    raise InputError(f"{path}: is a file, not a folder; a folder cannot take its name") from None
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            else:
                with _LOCK:
                    _PUBLISHED[os.path.abspath(path)] = identity
                return
        if not overwrite:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST))
        if may_replace is not None and not may_replace(path):
            raise InputError(f"{path}: not replacing this folder, which npunet did not write; choose a new or "
                             f"empty folder")
        _set_aside(path)
    raise InputError(f"{path}: other runs keep replacing this folder; try again")


def _set_aside(path: Path) -> None:
    """Rename the folder `path` to a temporary name beside it and remove it (a signal meanwhile leaves it
    to remove_temporaries); nothing happens when it is gone already."""
    with _signals_deferred():
        aside = tempfile.mkdtemp(prefix=f".{path.name[:40]}.", suffix=".old", dir=path.parent)
        with _LOCK:
            _LIVE.add(aside)
        try:
            os.rename(path, aside)        # onto the empty folder just made
        except FileNotFoundError:
            pass
        except BaseException:
            _discard(aside)
            raise
    _discard(aside)


def _forget_inside(folder: str) -> None:
    """Drop the records of files published inside a temporary folder (they moved with it, or are gone)."""
    prefix = os.path.abspath(folder) + os.sep
    with _LOCK:
        for key in [k for k in _PUBLISHED if k.startswith(prefix)]:
            del _PUBLISHED[key]


@contextmanager
def _signals_deferred():
    """SIGINT / SIGTERM / SIGHUP held back (on this thread) for the block, delivered right after it."""
    held = {getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)}
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def check_writable(path: str | os.PathLike) -> None:
    """InputError unless a file can be created where `path` goes: its folder, or the nearest existing
    parent (the folders in between would be created), is a folder in which a probe file can really be
    made (os.access says yes to root even on read-only mounts and /proc)."""
    path = Path(path)
    existing = path.resolve().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{path}: cannot create the output folder, {existing} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".npunet-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{path}: the output folder {existing} is not writable ({one_line(exc)})") from None


def _publish_exclusive(tmp: str, path: Path) -> None:
    try:
        os.link(tmp, path)                # FileExistsError when the name is taken
        return
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)   # no hard links here: claim the name
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(path)
        raise


def _identity(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def unpublish(path: str | os.PathLike) -> bool:
    """Remove `path` if it is still the file (or folder) this process published there (a failed or
    interrupted job's clean-up); one that another process put under that name is left alone. A folder
    leaves its name at once (renamed aside) and is then removed whole. True if removed."""
    key = os.path.abspath(path)
    with _LOCK:
        identity = _PUBLISHED.pop(key, None)
    try:
        if identity is None or _identity(key) != identity:
            return False
        if os.path.isdir(key) and not os.path.islink(key):
            _set_aside(Path(key))
        else:
            os.unlink(key)
    except OSError:
        return False
    return True


def _remove(name: str) -> None:
    """Remove a temporary file, or a temporary folder with everything in it; OSError if that fails."""
    if os.path.isdir(name) and not os.path.islink(name):
        shutil.rmtree(name)
    else:
        os.unlink(name)


def _discard(tmp: str) -> None:
    try:
        _remove(tmp)
    except FileNotFoundError:
        pass
    except OSError:
        return
    with _LOCK:
        _LIVE.discard(tmp)


def remove_temporaries() -> list[str]:
    """Remove every temporary file and folder atomic_write and staged_folder still hold (for the signal
    handler); returns their names."""
    with _LOCK:
        names = sorted(_LIVE)
        _LIVE.clear()
    for name in names:
        try:
            _remove(name)
        except OSError:
            pass
    return names


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


at_interruption(remove_temporaries)      # npunet.signals removes them when a signal ends the process
