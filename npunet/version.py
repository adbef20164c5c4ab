"""npunet's version: the one place it is written (pyproject.toml reads it from here; outputs and reports
that name the code that made them import it from here, never from the package root)."""

__version__ = "0.1.0"
