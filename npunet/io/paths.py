"""Where an output may go: the one check of an output path, before any work, for every command.

    check_output_file(path, inputs=(input,), overwrite=False, also=(sidecars...), suffixes=(".nii.gz", ".nii"))
    check_output_folder(folder, inputs=(input,), overwrite=False, may_replace=is_masks_folder)

A command names the suffixes it writes (segment: .nii.gz/.nii or .dcm; evaluate: .json; explain: .html), so
a slip such as `--json gt.nii.gz` can never replace an input. Refused, each with one InputError line naming
the path: another suffix; the output is one of the inputs (after resolving links), or lies inside an input
folder (a DICOM series: a file there would join the series); it, or one of the `also` files, exists and
overwrite is False; it is a folder; a name longer than file systems take; a folder that cannot be created
or written (npunet.publish.check_writable). The writing itself is npunet.publish's.
"""

from __future__ import annotations

import os
from pathlib import Path

from npunet.errors import InputError
from npunet.publish import check_writable, exists_message
from npunet.text import one_line


def check_output_file(path: str | os.PathLike, inputs=(), overwrite: bool = False, also: tuple = (),
                      suffixes: tuple = (".nii.gz", ".nii"), what: str = "the output") -> Path:
    """Refuse, before any work, a file output we could not or should not write (see the module doc);
    returns it as a Path. `inputs`: the paths read by the command (None entries ignored)."""
    path = Path(path)
    if not path.name.lower().endswith(tuple(suffixes)):
        raise InputError(f"{path}: {what} must be a {' or '.join(suffixes)} file name"
                         + (" (or a folder)" if ".nii" in suffixes else ""))
    for inp in inputs:
        if inp is not None:
            _check_not_input(path, Path(inp))
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name" + (" or a folder ending with '/'"
                                                                       if ".nii" in suffixes else ""))
    if not overwrite:
        for p in (path, *map(Path, also)):
            if p.exists() or p.is_symlink():
                raise InputError(exists_message(p))
    _check_name_lengths(path, *also)
    check_writable(path)
    return path


def check_output_folder(folder: str | os.PathLike, inputs=(), overwrite: bool = False, may_replace=None,
                        kind: str = "npunet masks", marker: str = "labels.json") -> Path:
    """check_output_file for an output that is a folder (--split's folder of masks); returns it as a Path.

    Refused: the folder is an input, holds one, or lies inside an input folder; it is a file or a link; it
    exists with files in it and overwrite is False, or overwrite is True but may_replace(folder) is false
    (it is replaced whole, so only a folder npunet wrote may be: one holding `marker`); a name too long; a
    parent that is not writable. An empty folder is fine: publishing replaces it."""
    folder = Path(folder)
    for inp in inputs:
        if inp is None:
            continue
        inp = Path(inp).resolve()
        if inp == folder.resolve() or folder.resolve() in inp.parents:
            raise InputError(f"{folder}: the output folder is or holds the input; choose another folder")
        _check_not_input(folder, inp)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise InputError(f"{folder}: is a file or a link; the masks go into a folder of their own")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise InputError(f"{folder}: exists already with files in it; pass --overwrite (overwrite=True) "
                             f"to replace it")
        if may_replace is not None and not may_replace(folder):
            raise InputError(f"{folder}: is not a folder of {kind} (it has no {marker}); not replacing it: "
                             f"choose a new or empty folder")
    _check_name_lengths(folder)
    check_writable(folder)
    return folder


def make_parent(path: str | os.PathLike) -> None:
    """Create the folder `path` goes into (and its parents), or InputError."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot create the output folder ({one_line(exc)})") from None


def _check_not_input(output: Path, inp: Path) -> None:
    same = output.resolve() == inp.resolve()
    if not same and output.exists() and inp.exists():
        same = os.path.samefile(output, inp)
    if same:
        raise InputError(f"{output}: the output is the input {inp.name}; choose another output name")
    if inp.is_dir() and inp.resolve() in output.resolve().parents:
        raise InputError(f"{output}: is inside the input series folder; write it elsewhere (a file there would "
                         f"join the series' files)")


def _check_name_lengths(*paths) -> None:
    for p in map(Path, paths):
        if len(p.name.encode("utf-8", "surrogateescape")) > 255:
            raise InputError(f"{p.name[:60]}...: the file name is {len(p.name)} characters, more than a file "
                             f"system takes (255 bytes)")
