"""`python -m npunet` is the `npunet` command."""
import sys

from npunet.cli import console

sys.exit(console())
