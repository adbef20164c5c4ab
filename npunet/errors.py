"""User-facing errors: each carries a one-line message that the command line prints without a traceback."""


class NpunetError(Exception):
    """A problem the user can fix (bad input, bad weights, unwritable output). One line, names what is wrong."""


class InputError(NpunetError):
    """An input image or folder that cannot be segmented."""


class WeightsError(NpunetError):
    """A weights file that is missing, corrupted, or does not match its architecture."""
