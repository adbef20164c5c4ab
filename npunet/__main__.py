"""`python -m npunet` is the `npunet` command."""
import sys

from npunet.cli import main

sys.exit(main())
