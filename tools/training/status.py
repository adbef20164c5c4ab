"""status.json beside a run's checkpoint.pt: how far that checkpoint got, {"step", "total_steps",
"complete"}, in plain JSON, so tools/cv.py can tell a trained fold from a partial one without importing torch.

tools/training/run.py writes it after every checkpoint.pt, atomically. A status.json older than its
checkpoint.pt (a run stopped between the two writes, or a checkpoint written by a train.py that kept no
status.json) is not trusted: read_status returns None, and the caller opens the checkpoint itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

STATUS_NAME = "status.json"
CHECKPOINT_NAME = "checkpoint.pt"


def write_status(run_dir, step: int, total_steps: int, complete: bool) -> Path:
    path = Path(run_dir) / STATUS_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"step": int(step), "total_steps": int(total_steps), "complete": bool(complete)})
                   + "\n")
    os.replace(tmp, path)
    return path


def read_status(run_dir) -> dict | None:
    """The status of run_dir/checkpoint.pt, or None when there is no status.json at least as new as it."""
    path, checkpoint = Path(run_dir) / STATUS_NAME, Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file() or not checkpoint.is_file():
        return None
    if path.stat().st_mtime_ns < checkpoint.stat().st_mtime_ns:
        return None
    try:
        status = json.loads(path.read_text())
    except ValueError:
        return None
    return status if isinstance(status, dict) and isinstance(status.get("complete"), bool) else None
