"""`python -m npunet` is the `npunet` command; `run` is also the console script's entry point, so that the
signal handling (npunet.signals) is in place before anything slow is imported: Ctrl-C or SIGTERM during
start-up ends with one line and exit code 130 / 143 like at any other moment."""
import sys

from npunet import signals  # light: the standard library and npunet.errors only
from npunet.resources import small_pages_for_large_arrays  # light too


def run() -> int:
    signals.install()
    small_pages_for_large_arrays()        # before NumPy is imported (npunet.resources says why)
    try:
        from npunet.cli import console
        signals.raise_pending()           # a signal whose exception an import swallowed
    except (KeyboardInterrupt, signals.Terminated) as exc:
        code = signals.finish_interrupted(exc, None)
    else:
        code = console()
    signals.exit_after_interruption(code)
    return code


if __name__ == "__main__":
    sys.exit(run())
