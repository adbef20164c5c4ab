"""The one progress printer: what a long command says on stderr while it works.

    log = Log(quiet=False, prefix="npunet explain")
    log.say("choosing the slice")               # one line (nothing when quiet)
    report = log.progress("ct: segmenting")       # report(done, total) after each batch of slices
    log.end_progress()

On a terminal the slice progress rewrites one line; into a file or a pipe it prints at each quarter, so logs
stay short. `say` ends an open progress line first.
"""

from __future__ import annotations

import sys


class Log:
    def __init__(self, quiet: bool = False, prefix: str = "", stream=None):
        self.quiet = quiet
        self.prefix = f"{prefix}: " if prefix else ""
        self.stream = stream
        self._open = False

    @property
    def _out(self):
        return self.stream or sys.stderr            # looked up at each line: tests swap sys.stderr

    def say(self, text: str) -> None:
        if not self.quiet:
            self.end_progress()
            print(self.prefix + text, file=self._out, flush=True)

    def progress(self, label: str):
        """A report(done, total) callback that shows "label: slice done/total" (None when quiet)."""
        if self.quiet:
            return None
        last = [-1]

        def report(done: int, total: int) -> None:
            out = self._out
            if getattr(out, "isatty", lambda: False)():
                print(f"\r{self.prefix}{label}: slice {done}/{total}", end="", file=out, flush=True)
                self._open = True
            else:
                quarter = (4 * done) // max(total, 1)
                if quarter != last[0] and (quarter > 0 or done == total):
                    last[0] = quarter
                    print(f"{self.prefix}{label}: slice {done}/{total}", file=out, flush=True)
        return report

    def end_progress(self) -> None:
        if self._open:
            print(file=self._out, flush=True)
            self._open = False
