"""Messages on one line: the one rule for turning a text or an exception into what npunet prints.

Every user-facing error is one line (npunet.errors). Library exceptions often span lines (nibabel, pydicom,
OSError with a file name), and a file name may itself hold a line break: `one_line` makes any of them a
single line, so that `npunet CMD: error: ...` is always exactly one line on stderr.
"""

from __future__ import annotations


def one_line(message, path=None, limit: int | None = 200) -> str:
    """`message` (a text or an exception) as one line.

    An exception gives its text (an OSError its strerror, without the file name that the caller names
    anyway), or its type's name when it has none. With `path` (a file the message already names), the
    library's own mentions of that file are shortened to "the file". Runs of whitespace, line breaks
    included, become one space; any other control character is shown escaped (\\x1b); at most `limit`
    characters (None: no limit), the cut marked with "...".
    """
    if isinstance(message, BaseException):
        text = str(getattr(message, "strerror", None) or message) or type(message).__name__
    else:
        text = str(message)
    if path is not None:
        text = text.replace(f"File {path} is ", "").replace(f'"{path}"', "it").replace(str(path), "the file")
    text = " ".join(text.split())
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    if limit is not None and len(text) > limit:
        text = text[:limit - 3] + "..."
    return text
