"""An exclusive claim on one case of a cohort run, so that two runs (or two attempts of one run) never write
the same case at the same time: a lock file, `OUTPUT/.npunet/CASE.lock`, that holds its owner.

The lock appears atomically with its content: the owner record is written under a temporary name, then
hard-linked to the lock's name, which fails when that name exists (the file-system-safe way, NFS included).
While the claim is held a heartbeat thread refreshes the lock's mtime. A lock left behind by a holder that is
gone is taken over, when one of these says it is gone:
  - the same run claims it again: a run hands a case out a second time only after it lost the first holder
    (a Dask worker that died; the scheduler then retries the task elsewhere);
  - the holder ran on this host and its process no longer exists (or is a zombie);
  - the heartbeat stopped `stale_after` seconds ago (a holder on another machine that died; the machines'
    clocks are assumed to agree within that margin).
A takeover first renames the old lock to a name of its own (of two contenders, only one rename succeeds),
checks that it moved the lock it judged, then links a new one.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 600.0


class CaseBusy(Exception):
    """The case is claimed by a holder that is not known to be gone; `holder` is its owner record."""

    def __init__(self, lock: Path, holder: dict | None):
        self.lock, self.holder = lock, holder or {}
        super().__init__(f"{lock.name}: held by {describe_holder(self.holder)}")


def describe_holder(holder: dict) -> str:
    """`run 1a2b3c4d on host h, pid 123 (worker tcp://...) since 2026-...` from an owner record."""
    if not holder:
        return "an unreadable lock"
    worker = f" (worker {holder['worker']})" if holder.get("worker") else ""
    return (f"run {str(holder.get('run', '?'))[:8]} on host {holder.get('host', '?')}, pid {holder.get('pid', '?')}"
            f"{worker} since {holder.get('since', '?')}")


@dataclass
class Claim:
    """A held lock. `attempt` counts the holders of this case in this run (2 after a takeover from a dead
    attempt of the same run); `previous` is the owner record of the lock taken over, if any."""
    path: Path
    owner: dict
    previous: dict | None = None
    reason: str | None = None             # why the previous lock was judged gone
    heartbeat: float = HEARTBEAT_SECONDS
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def attempt(self) -> int:
        return int(self.owner.get("attempt", 1))

    def start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(self.heartbeat):
                if self.held():
                    try:
                        os.utime(self.path)
                    except OSError:
                        pass
        threading.Thread(target=beat, name=f"npunet-claim-{self.path.stem}", daemon=True).start()

    def held(self) -> bool:
        """True while the lock file still carries this claim's token (no one took it over)."""
        holder = _read_owner(self.path)
        return bool(holder) and holder.get("token") == self.owner["token"]

    def release(self) -> None:
        self._stop.set()
        if self.held():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def owner_record(run: str, worker: str = "") -> dict:
    """Who claims: the run's id, this host and process, the Dask worker's address (if any), a unique token."""
    return {"run": run, "host": socket.gethostname(), "pid": os.getpid(), "worker": worker,
            "token": uuid.uuid4().hex, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "attempt": 1}


def acquire(lock: str | os.PathLike, owner: dict, *, stale_after: float = STALE_AFTER_SECONDS,
            heartbeat: float = HEARTBEAT_SECONDS) -> Claim:
    """Claim `lock` for `owner` (see owner_record) and start its heartbeat; raises CaseBusy when a live
    holder has it. The lock's folder is created if needed."""
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    previous, reason, holder = None, None, None
    for _ in range(5):   # each pass either claims, finds a live holder, or lost a race and looks again
        retry = bool(previous) and previous.get("run") == owner.get("run")
        mine = dict(owner, attempt=int(previous.get("attempt", 1)) + 1 if retry else 1)
        if _create_exclusive(lock, mine):
            claim = Claim(lock, mine, previous, reason, heartbeat)
            claim.start_heartbeat()
            return claim
        holder = _read_owner(lock)
        if holder is None and not lock.exists():
            continue                                   # released meanwhile
        why = gone_reason(holder, lock, owner, stale_after)
        if why is None:
            raise CaseBusy(lock, holder)
        if _remove_if_unchanged(lock, holder, owner["token"]):
            previous, reason = holder or {}, why
    raise CaseBusy(lock, holder)


def gone_reason(holder: dict | None, lock: Path, claimant: dict, stale_after: float) -> str | None:
    """Why `holder` of `lock` is gone (the lock may be taken over), or None while it may be alive."""
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return "released"
    if holder:
        if holder.get("run") == claimant.get("run") and holder.get("token") != claimant.get("token"):
            return "an earlier attempt of this run"
        if holder.get("host") == claimant.get("host") and not _process_alive(holder.get("pid")):
            return f"its process {holder.get('pid')} on this host is gone"
    if age > stale_after:
        return f"no heartbeat for {age:.0f} s"
    return None


def _create_exclusive(lock: Path, owner: dict) -> bool:
    """Write the owner record under a temporary name, then link it to `lock`; False if `lock` exists."""
    tmp = lock.with_name(f".{lock.name}.{owner['token']}.tmp")
    tmp.write_text(json.dumps(owner) + "\n", encoding="utf-8")
    try:
        os.link(tmp, lock)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _remove_if_unchanged(lock: Path, holder: dict | None, token: str) -> bool:
    """Move the lock judged stale out of the way; put it back (and say False) if someone replaced it first."""
    aside = lock.with_name(f".{lock.name}.{token}.stale")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return False
    moved = _read_owner(aside)
    if (moved or {}).get("token") != (holder or {}).get("token"):
        try:
            os.link(aside, lock)               # a fresh lock of another contender: restore it
        except FileExistsError:
            pass
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True


def _read_owner(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _process_alive(pid) -> bool:
    """Whether process `pid` exists on this host and is not a zombie (a killed child not yet reaped)."""
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
