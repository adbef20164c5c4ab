"""`python -m npunet` is the `npunet` command."""
import sys

from npunet import signals  # light: Ctrl-C and SIGTERM exit cleanly from here on, even during the imports

signals.install()
try:
    from npunet.cli import console
except (KeyboardInterrupt, signals.Terminated) as exc:
    sys.exit(signals.finish_interrupted(exc, None))
sys.exit(console())
