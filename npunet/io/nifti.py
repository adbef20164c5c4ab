"""Reading a CT volume from NIfTI and writing a label map back onto the input's exact grid.

What this file promises:
- `read_ct` either returns a 3D image whose data is already in memory as float32 (so a truncated file fails
  here, not halfway through the network), or raises InputError with one line naming the file and the problem.
- `write_labels` writes a uint8 label map with the input's shape, affine, qform/sform (matrices and codes),
  zooms and units; it writes to a temporary name in the output folder and renames it into place, so a crash
  never leaves a half-written file under the final name. A `CASE.labels.json` sidecar ({"0": "background",
  ...}) is written beside `CASE.nii.gz` the same way.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from npunet.errors import InputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
NIFTI_INTENT_LABEL = "label"  # NIfTI intent code 1002: voxel values are label indices


# --------------------------------------------------------------------------------------------- names --

def is_nifti_name(path: str | os.PathLike) -> bool:
    """True for names ending in .nii or .nii.gz (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    """`case_0000.nii.gz` -> `case_0000`; names without a NIfTI suffix come back unchanged."""
    low = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def sidecar_path(output: str | os.PathLike, suffix: str) -> Path:
    """A file beside a label map: (`out/CASE.nii.gz`, `.labels.json`) -> `out/CASE.labels.json`."""
    output = Path(output)
    return output.with_name(strip_nifti_suffix(output.name) + suffix)


def labels_json_path(output: str | os.PathLike) -> Path:
    """`CASE.nii.gz` -> `CASE.labels.json`, the label-name sidecar."""
    return sidecar_path(output, ".labels.json")


# ------------------------------------------------------------------------------------------- reading --

def open_image(path: Path):
    """nib.load(path), with a one-line InputError for a missing file, a folder, or unreadable bytes.
    A gzipped NIfTI is decompressed in memory in one zlib call (_gunzip) instead of through gzip.GzipFile's
    many small reads: faster, and zlib lets other threads run meanwhile (the kernels load during the read)."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a NIfTI file")
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
        if magic == b"\x1f\x8b" and is_nifti_name(path):
            try:
                raw = _gunzip(path.read_bytes())
            except (EOFError, zlib.error) as exc:
                raise InputError(f"{path}: truncated or corrupt image data ({one_line(exc, path)})") from None
            nifti2 = len(raw) >= 4 and raw[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c")   # sizeof_hdr 540
            img = (nib.Nifti2Image if nifti2 else nib.Nifti1Image).from_bytes(raw)
            img.set_filename(str(path))       # the voxels stay in memory; the name is kept for messages and
            return img                        # for refusing to write over the input
        return nib.load(str(path))
    except InputError:
        raise
    except Exception as exc:  # nibabel raises ImageFileError, OSError, ValueError, ... for foreign bytes
        raise InputError(f"{path}: not a readable NIfTI image ({one_line(exc, path)})") from None


def _gunzip(data: bytes) -> bytes:
    """The decompressed bytes of a gzip file, every member of it (bgzip writes many), trailing zeros ignored."""
    parts = []
    while data.strip(b"\0"):
        stream = zlib.decompressobj(wbits=31)
        parts.append(stream.decompress(data))
        if not stream.eof:
            raise EOFError("compressed file ended before the end-of-stream marker was reached")
        data = stream.unused_data
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_ct(path: str | os.PathLike) -> nib.Nifti1Image:
    """Load a NIfTI CT and validate it; the returned image holds its voxels in memory as float32 (HU).

    Raises InputError (one line, naming the file) for: a missing file, a folder, bytes that are not NIfTI,
    truncated or corrupt (gzip) data, a 2D image, a 4D image with more than one volume (a trailing axis of
    size 1 is accepted and squeezed), an axis of size 0, a non-invertible affine, and NaN/Inf voxels.
    """
    path = Path(path)
    img = open_image(path)
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{path}: not a NIfTI image (nibabel reads it as {type(img).__name__}); "
                         f"convert it to .nii.gz first")
    img = _check_geometry(img, str(path))
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except (EOFError, zlib.error, ValueError, OSError) as exc:
        raise InputError(f"{path}: truncated or corrupt image data ({one_line(exc, path)})") from None
    except TypeError as exc:
        raise InputError(f"{path}: unsupported voxel type {img.get_data_dtype()} ({one_line(exc)})") from None
    return _in_memory(img, data, str(path))


def validate_image(img: nib.spatialimages.SpatialImage, name: str = "image") -> nib.Nifti1Image:
    """The checks of `read_ct` for an image already in memory (the Python API); returns a float32 image."""
    if not hasattr(img, "affine") or not hasattr(img, "dataobj"):
        raise InputError(f"{name}: not a nibabel image (got {type(img).__name__})")
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine)
    img = _check_geometry(img, name)
    data = np.asarray(img.get_fdata(dtype=np.float32))
    return _in_memory(img, data, name)


def _check_geometry(img, name: str):
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 3:
        raise InputError(f"{name}: a {len(shape)}D image of shape {shape}; need a 3D CT volume")
    if any(s == 0 for s in shape):
        raise InputError(f"{name}: empty image, shape {shape} has an axis of size 0")
    if len(shape) > 3:
        if any(s != 1 for s in shape[3:]):
            raise InputError(f"{name}: a {len(shape)}D image of shape {shape} holds several volumes; "
                             f"need one 3D CT volume (split it first)")
        img = img.slicer[(slice(None),) * 3 + (0,) * (len(shape) - 3)]
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{name}: the affine is not invertible or not finite: "
                         f"{np.array2string(affine[:3], precision=3, separator=',').replace(chr(10), '')}")
    return img


def _in_memory(img, data: np.ndarray, name: str) -> nib.Nifti1Image:
    finite = np.isfinite(data)
    if not finite.all():
        n_nan = int(np.count_nonzero(np.isnan(data)))
        n_inf = int(data.size - np.count_nonzero(finite) - n_nan)
        raise InputError(f"{name}: {n_nan} NaN and {n_inf} Inf voxels (of {data.size}); "
                         f"replace them (e.g. with -1024) before segmenting")
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(np.nan, np.nan)
    out = type(img)(data, img.affine, header)
    if img.get_filename():
        out.set_filename(img.get_filename())  # remembered so that writing over the input can be refused
    return out


def hu_range_warning(data: np.ndarray) -> str | None:
    """A one-line warning when the intensities do not look like Hounsfield units, else None.

    A CT of the abdomen in HU contains air (about -1000, outside the body or in the bowel), fat (-100) and
    bone or contrast (+200 and up); stored values are bounded by the scanner range (-1024 .. 3071, up to
    about 30000 for extended-range metal). The rules, checked in order:
      - max - min < 1 or (min >= -1 and max <= 1): intensities normalised to [0, 1] or [-1, 1], or constant;
      - max < 100: no bone or contrast at all, so not HU (or a window already applied);
      - min >= 0: nothing below water, no fat or air: likely raw stored values without the rescale
        intercept (typically -1024);
      - min < -10000 or max > 40000: outside any scanner's HU range.
    """
    data = np.asarray(data)
    lo, hi = float(np.min(data)), float(np.max(data))
    seen = f"intensities range from {lo:.4g} to {hi:.4g}"
    why = None
    if hi - lo < 1 or (lo >= -1 and hi <= 1):
        why = "they look normalised or constant"
    elif hi < 100:
        why = "nothing above 100 HU (no bone or contrast)"
    elif lo >= 0:
        why = "nothing below 0 HU (no fat or air): a missing rescale intercept of -1024?"
    elif lo < -10000 or hi > 40000:
        why = "beyond any CT scanner's HU range"
    if why is None:
        return None
    return f"{seen}: {why}; the network expects Hounsfield units (it clips to [-160, 300])"


# ------------------------------------------------------------------------------------------- writing --

def labels_image(labels: np.ndarray, like: nib.Nifti1Image) -> nib.Nifti1Image:
    """A uint8 label image on `like`'s grid: same shape, affine, qform/sform (and codes), zooms, units.

    The header is `like`'s header with dtype uint8, scaling reset (scl_slope/scl_inter = NaN, i.e. none),
    intent "label", cal_min/cal_max the label range, description set, and header extensions dropped (an
    input's extension may carry, e.g., a Caret label table for another model, which would mislabel ours).
    """
    labels = np.asarray(labels)
    if labels.shape != tuple(like.shape[:3]):
        raise ValueError(f"labels of shape {labels.shape} do not match the image shape {like.shape}")
    if labels.dtype != np.uint8:
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError(f"label values {labels.min()}..{labels.max()} do not fit uint8")
        labels = labels.astype(np.uint8)
    header = like.header.copy()
    header.extensions.clear()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(np.nan, np.nan)
    header.set_intent(NIFTI_INTENT_LABEL)
    header["cal_min"] = 0
    header["cal_max"] = int(labels.max()) if labels.size else 0
    header["descrip"] = b"npunet organ labels"
    img_class = nib.Nifti2Image if isinstance(like, nib.Nifti2Image) else nib.Nifti1Image
    out = img_class(labels, like.affine, header)
    # The constructor leaves the header alone when the affine already matches it; make sure it did.
    q_like, q_out = like.header.get_qform(coded=True), out.header.get_qform(coded=True)
    s_like, s_out = like.header.get_sform(coded=True), out.header.get_sform(coded=True)
    if q_like[1] != q_out[1] or s_like[1] != s_out[1]:
        raise AssertionError("labels_image changed the qform/sform codes")
    return out


def check_output_path(output: str | os.PathLike, input_path: str | os.PathLike | None = None,
                      overwrite: bool = False, also: tuple = ()) -> Path:
    """Refuse, before any work is done, an output we could not or should not write; returns it as a Path.

    Raises InputError when: the name does not end in .nii/.nii.gz; it is the input itself (after
    resolving links); it or one of the `also` files (sidecars) exists and overwrite is False; it is a
    folder; or the folder it goes into (or its nearest existing parent, which we would create below) is
    not writable (tested by creating and removing a probe file there).
    """
    output = Path(output)
    if not is_nifti_name(output):
        raise InputError(f"{output}: the output must be a .nii.gz or .nii file name (or a folder)")
    if input_path is not None:
        inp = Path(input_path)
        same = output.resolve() == inp.resolve()
        if not same and output.exists() and inp.exists():
            same = os.path.samefile(output, inp)
        if same:
            raise InputError(f"{output}: the output is the input file; choose another output name")
    if output.is_dir():
        raise InputError(f"{output}: is a folder; give a file name or a folder ending with '/'")
    if not overwrite:
        for p in (output, *map(Path, also)):
            if p.exists():
                raise InputError(f"{p}: exists already; pass --overwrite (overwrite=True) to replace it")
    parent = output.resolve().parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{output}: cannot create the output folder, {existing} is a file")
    try:  # os.access says yes to root even where writes fail (read-only mounts, /proc): really try
        fd, probe = tempfile.mkstemp(prefix=".npunet-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{output}: the output folder {existing} is not writable ({one_line(exc)})") from None
    return output


def write_labels(labels: np.ndarray, like: nib.Nifti1Image, path: str | os.PathLike, overwrite: bool = False,
                 label_names: dict[int, str] | None = None) -> Path:
    """Write `labels` (X, Y, Z) uint8 on `like`'s grid to `path`, plus the `.labels.json` name sidecar.

    label_names: {int: name}; defaults to npunet.labels.LABELS. Both files are written to temporary names in
    the output folder and renamed into place (os.replace); on any failure no temporary file is left behind.
    Refuses output == input, an existing output (or sidecar) without overwrite, and an unwritable folder.
    """
    path = Path(path)
    sidecar = labels_json_path(path)
    check_output_path(path, like.get_filename(), overwrite, also=(sidecar,))
    img = labels_image(labels, like)
    if label_names is None:
        label_names = _default_label_names()
    _make_parent(path)
    atomic_write(path, lambda tmp: nib.save(img, str(tmp)))
    names_json = json.dumps({str(int(k)): str(v) for k, v in sorted(label_names.items())}, indent=1) + "\n"
    try:
        atomic_write(sidecar, lambda tmp: Path(tmp).write_text(names_json, encoding="utf-8"))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _default_label_names() -> dict[int, str]:
    from npunet.labels import LABELS  # written alongside; imported late so io has no hard dependency
    return dict(LABELS)


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot create the output folder ({one_line(exc)})") from None


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call write(tmp_path) on a temporary name beside `path` (same suffix), then os.replace it into place.

    The temporary file keeps the final suffix (nibabel picks gzip from `.gz`) and is removed on failure.
    OSError (no space, no permission) becomes InputError naming the file.
    """
    path = Path(path)
    name = path.name
    suffix = ".nii.gz" if name.lower().endswith(".nii.gz") else path.suffix
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as exc:
        raise InputError(f"{path}: cannot write in {path.parent} ({one_line(exc)})") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise InputError(f"{path}: cannot write ({one_line(exc)})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def one_line(exc: BaseException, path=None) -> str:
    """The exception's text on one line, at most 200 characters, with `path` (already named) shortened."""
    text = str(exc)
    if path is not None:
        text = text.replace(f"File {path} is ", "").replace(f'"{path}"', "it").replace(str(path), "the file")
    text = " ".join(text.split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
