"""User-facing errors: each carries a one-line message that the command line prints without a traceback."""


class NpunetError(Exception):
    """A problem the user can fix (bad input, bad weights, unwritable output). One line, names what is wrong."""


class InputError(NpunetError):
    """An input image or folder that cannot be segmented."""


class WeightsError(NpunetError):
    """A weights file that is missing, corrupted, or does not match its architecture."""


class ResourceError(NpunetError):
    """What was asked needs more memory than there is; the message gives both numbers and what to change."""


class Terminated(BaseException):
    """SIGTERM (or SIGHUP) arrived: unwinds like KeyboardInterrupt, so temporary files are removed on the way
    out (npunet.signals turns the signal into this exception)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
