"""Reading one DICOM CT series (a folder of single-frame slices) into a NIfTI image in Hounsfield units.

What this file promises: the returned image has data in (column, row, slice) = (x, y, z) order like
nibabel, float32 HU (RescaleSlope / RescaleIntercept applied per slice), slices sorted along the slice
normal, and an affine in NIfTI RAS+ world coordinates built from ImageOrientationPatient, PixelSpacing and
the slice positions. Anything that would make that volume wrong (several series, a missing slice, a damaged
or unreadable file, a file of the folder that is not DICOM, mixed orientations or sizes, duplicate
positions, multi-frame files, bad geometry values) is an InputError with one line naming the file. The
slices' headers (without pixel data) ride along in the image's `extra[DICOM_HEADERS]`, in the volume's slice
order, so that a DICOM Segmentation can reference the very images it was computed from (npunet.io.dicom_seg).

DICOM world coordinates are LPS+ (x to the patient's left, y to posterior); NIfTI's are RAS+, so the
first two rows of the LPS affine change sign.

pydicom is optional: it is imported here only, and its absence is an InputError saying what to install.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from npunet.errors import InputError
from npunet.io.digests import INPUT_FILES, bytes_digest
from npunet.text import one_line
from npunet.io.validate import check_affine, check_voxels
from npunet.resources import check_memory
from npunet.third_party import captured

INSTALL_HINT = "pip install 'npunet[dicom]' (or: pip install pydicom pylibjpeg pylibjpeg-openjpeg)"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
DICOM_HEADERS = "dicom_headers"   # key of img.extra: the slices' pydicom headers, slice k of the volume first


NOT_DICOM_SUFFIXES = (".txt", ".md", ".json", ".xml", ".csv", ".tsv", ".html", ".htm", ".pdf", ".jpg", ".jpeg",
                      ".png", ".gif", ".bmp", ".ini", ".log", ".nfo", ".xls", ".xlsx", ".doc", ".docx", ".zip",
                      ".db", ".nii", ".gz", ".py", ".sh", ".bat", ".exe")
NOT_DICOM_NAMES = ("readme", "license", "licence", "version", "autorun.inf")
# Objects that are not slices of an image series and may sit beside one: the directory file, structured
# reports, presentation states, key objects, RT structures, segmentations, raw data, encapsulated documents.
NON_IMAGE_SOP_CLASSES = ("1.2.840.10008.1.3.10", "1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.11.",
                         "1.2.840.10008.5.1.4.1.1.481.3", "1.2.840.10008.5.1.4.1.1.66", "1.2.840.10008.5.1.4.1.1.104.")
NON_IMAGE_MODALITIES = ("SR", "PR", "KO", "RTSTRUCT", "SEG", "REG", "DOC", "RAW", "PLAN")
GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")


def has_dicom_magic(path: str | os.PathLike) -> bool:
    """True when the file carries the DICOM Part 10 preamble: 128 bytes then b'DICM'."""
    try:
        if not Path(path).is_file():        # a FIFO would block the read below
            return False
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def dicom_files(folder: str | os.PathLike) -> list[Path]:
    """The DICOM files directly inside `folder`, sorted by name. Hidden files (names starting with '.'),
    subfolders, pipes and devices are passed over, and so are files that are clearly something else by
    their name (README, *.txt, *.json, *.jpg, ...). Any other file without the DICM marker is refused
    (InputError): it may be a damaged slice, and leaving it out would lose part of the volume silently."""
    folder = Path(folder)
    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_symlink() and not p.exists():
            raise InputError(f"{p}: a broken link in the DICOM folder (its target is missing)")
        if not p.is_file():
            continue
        if has_dicom_magic(p):
            out.append(p)
        elif not (p.name.lower().endswith(NOT_DICOM_SUFFIXES) or p.name.lower() in NOT_DICOM_NAMES):
            size = p.stat().st_size
            raise InputError(f"{p}: not a DICOM file ({size} bytes, no DICM marker at byte 128) in the DICOM "
                             f"series folder {folder}: a damaged slice? remove it or move it out of the folder")
    return out


def _import_pydicom():
    try:
        import pydicom
    except ImportError:
        return None
    return pydicom


def _is_non_image(ds) -> bool:
    """True for a DICOMDIR, report, presentation state, RT structure, SEG, ... (see NON_IMAGE_SOP_CLASSES)."""
    meta = getattr(ds, "file_meta", None)
    uids = [str(ds.get("SOPClassUID", "") or ""), str(getattr(meta, "MediaStorageSOPClassUID", "") or "")]
    if any(u == c or (c.endswith(".") and u.startswith(c)) for u in uids if u for c in NON_IMAGE_SOP_CLASSES):
        return True
    return str(ds.get("Modality", "") or "").upper() in NON_IMAGE_MODALITIES and "Rows" not in ds


def _numbers(ds, keyword: str, count: int, path: Path) -> np.ndarray:
    """The `count` numbers of a DICOM attribute as float64, or InputError naming the file and the value."""
    value = ds.get(keyword)
    items = list(value) if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else [value]
    try:
        values = [float(v) for v in items]
    except (TypeError, ValueError):
        values = []
    if len(values) != count or not all(np.isfinite(values)):
        raise InputError(f"{path}: {keyword} is {str(value)[:80]!r}, expected {count} finite numbers")
    return np.asarray(values, dtype=np.float64)


def _integer(ds, keyword: str, path: Path, lo: int, hi: int) -> int:
    value = ds.get(keyword)
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not lo <= number <= hi:
        raise InputError(f"{path}: {keyword} is {str(value)[:40]!r}, expected an integer in {lo}..{hi}")
    return number


def read_dicom_series(folder: str | os.PathLike) -> nib.Nifti1Image:
    """Read the single CT series in `folder` (non-recursive) -> Nifti1Image, float32 HU, RAS+ affine.

    The affine maps voxel (i, j, k) = (column, row, slice) to RAS+ millimetres:
      LPS = IPP_0 + i * PixelSpacing[1] * IOP[0:3] + j * PixelSpacing[0] * IOP[3:6] + k * step,
    where step = (IPP_last - IPP_0) / (n - 1) after sorting by IPP . normal, normal = IOP[0:3] x IOP[3:6]
    (a gantry tilt shows up as a shear in `step`, which the sform keeps); RAS = diag(-1, -1, 1) LPS.
    qform and sform codes are 1 (scanner). img.extra[DICOM_HEADERS] lists the slices' headers (pydicom
    Datasets read without pixel data), the header of volume slice k at index k.

    Every file of the folder is accounted for (see dicom_files): a DICOM file that cannot be read, or that
    is an image slice with damaged or missing geometry, is an InputError naming it, never a slice left out.
    Geometry values are checked (orientation vectors of unit length and orthogonal, positive spacings,
    finite rescale slope and intercept), the volume's size against the free memory before it is allocated,
    and the result by npunet.io.validate (an invertible affine, finite values). pydicom's own warnings are
    captured and folded into the error they explain.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder of DICOM files")
    pydicom = _import_pydicom()
    if pydicom is None:
        raise InputError(f"{folder}: reading DICOM needs pydicom: {INSTALL_HINT}")
    files = dicom_files(folder)
    if not files:
        raise InputError(f"{folder}: no DICOM files (none starts with the DICM magic)")

    slices = []
    for f in files:
        with captured() as notes:
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except Exception as exc:
                raise InputError(notes.fold(f"{f}: unreadable DICOM file ({one_line(exc)})")) from None
        if _is_non_image(ds):
            continue                      # a DICOMDIR, a report, a SEG ...: not a slice of the series
        missing = [k for k in GEOMETRY if k not in ds]
        if missing:
            raise InputError(notes.fold(f"{f}: a damaged or incomplete image slice (no {', '.join(missing)}; "
                                        f"a truncated file?); re-export the series or remove the file"))
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(f"{f}: a multi-frame DICOM ({ds.NumberOfFrames} frames) is not supported; "
                             f"convert the series to NIfTI first (e.g. dcm2niix)")
        slices.append((f, ds))

    series: dict[str, list] = {}
    for f, ds in slices:
        series.setdefault(str(ds.get("SeriesInstanceUID", "") or ""), []).append((f, ds))
    if len(series) > 1:
        listing = ", ".join(f"{uid or '(no SeriesInstanceUID)'} ({len(v)} files{_describe(v[0][1])})"
                            for uid, v in sorted(series.items(), key=lambda kv: -len(kv[1])))
        raise InputError(f"{folder}: {len(series)} DICOM series found: {listing}; "
                         f"put each series in its own folder")
    if len(slices) < 2:
        raise InputError(f"{folder}: the series has {len(slices)} image slice(s); need a 3D volume")

    f0, ds0 = slices[0]
    iop = _orientation(ds0, f0)
    spacing = _spacing(ds0, f0)  # [between rows, between columns]
    rows, cols = _integer(ds0, "Rows", f0, 1, 65535), _integer(ds0, "Columns", f0, 1, 65535)
    for f, ds in slices[1:]:
        if not np.allclose(_orientation(ds, f), iop, atol=1e-4):
            raise InputError(f"{folder}: slices with different orientations ({f0.name}: {list(iop)}, "
                             f"{f.name}: {list(ds.ImageOrientationPatient)})")
        if (_integer(ds, "Rows", f, 1, 65535), _integer(ds, "Columns", f, 1, 65535)) != (rows, cols):
            raise InputError(f"{folder}: slices of different sizes ({f0.name}: {rows}x{cols}, "
                             f"{f.name}: {ds.Rows}x{ds.Columns})")
        if not np.allclose(_spacing(ds, f), spacing, rtol=1e-4):
            raise InputError(f"{folder}: slices with different pixel spacings ({f0.name}: {list(spacing)}, "
                             f"{f.name}: {list(ds.PixelSpacing)})")

    col_dir, row_dir = iop[:3], iop[3:]
    normal = np.cross(col_dir, row_dir)
    positions = np.array([_numbers(ds, "ImagePositionPatient", 3, f) for f, ds in slices])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    slices = [slices[i] for i in order]
    positions, along = positions[order], along[order]
    _check_spacing(folder, along, slices)

    n = len(slices)
    step = (positions[-1] - positions[0]) / (n - 1)
    lps = np.eye(4)
    lps[:3, 0] = col_dir * spacing[1]
    lps[:3, 1] = row_dir * spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    affine = LPS_TO_RAS @ lps
    check_affine(affine, str(folder))

    check_memory(4 * cols * rows * n + 16 * cols * rows, f"{folder} ({cols}x{rows}x{n} voxels)",
                 "the series is too large for this machine")
    volume = np.empty((cols, rows, n), dtype=np.float32)
    digests = []
    for k, (f, ds) in enumerate(slices):
        volume[:, :, k], digest = _read_slice_hu(pydicom, f, rows, cols)
        digests.append(digest)
    check_voxels(volume, str(folder))
    img = nib.Nifti1Image(volume, affine, extra={DICOM_HEADERS: [ds for _, ds in slices], INPUT_FILES: digests})
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def _orientation(ds, path: Path) -> np.ndarray:
    """ImageOrientationPatient: two direction cosines, each of unit length, at right angles."""
    iop = _numbers(ds, "ImageOrientationPatient", 6, path)
    norms = np.linalg.norm(iop[:3]), np.linalg.norm(iop[3:])
    if abs(norms[0] - 1) > 1e-2 or abs(norms[1] - 1) > 1e-2 or abs(float(iop[:3] @ iop[3:])) > 1e-2:
        raise InputError(f"{path}: ImageOrientationPatient {list(iop)} is not two orthogonal unit vectors")
    return iop


def _spacing(ds, path: Path) -> np.ndarray:
    spacing = _numbers(ds, "PixelSpacing", 2, path)
    if np.any(spacing <= 0):
        raise InputError(f"{path}: PixelSpacing {list(spacing)} must be positive")
    return spacing


def _check_spacing(folder: Path, along: np.ndarray, slices) -> None:
    gaps = np.diff(along)
    if np.any(gaps < 1e-3):
        i = int(np.argmax(gaps < 1e-3))
        raise InputError(f"{folder}: two slices at the same position {along[i]:.2f} mm "
                         f"({slices[i][0].name}, {slices[i + 1][0].name}); several acquisitions in one series?")
    usual = float(np.median(gaps))
    bad = np.abs(gaps - usual) > max(0.01 * usual, 0.01)
    if np.any(bad):
        i = int(np.argmax(bad))
        missing = gaps[i] / usual - 1
        hint = (f"about {missing:.0f} slice(s) missing" if missing > 0.5
                else "the slices are not evenly spaced")
        raise InputError(f"{folder}: uneven slice spacing: {gaps[i]:.3f} mm between the slices at "
                         f"{along[i]:.2f} and {along[i + 1]:.2f} mm along the normal, usually {usual:.3f} mm "
                         f"({hint})")


def _read_slice_hu(pydicom, path: Path, rows: int, cols: int) -> tuple[np.ndarray, dict]:
    """(the slice's (columns, rows) HU pixels, the digest of the file's bytes that were decoded)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({one_line(exc)})") from None
    with captured() as notes:
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except Exception as exc:
            raise InputError(notes.fold(f"{path}: unreadable DICOM file ({one_line(exc)})")) from None
        if "PixelData" not in ds:
            raise InputError(notes.fold(f"{path}: no pixel data (a truncated file?)"))
        try:
            pixels = ds.pixel_array
        except Exception as exc:
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(syntax, "name", syntax)
            compressed = bool(getattr(syntax, "is_compressed", False))
            raise InputError(notes.fold(f"{path}: cannot decode the pixel data ({name}: {one_line(exc)})"
                                        + (f"; {INSTALL_HINT}" if compressed else ""))) from None
    if pixels.shape != (rows, cols):
        raise InputError(f"{path}: pixel data of shape {pixels.shape}, expected {(rows, cols)}")
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")) != "MONOCHROME2":
        raise InputError(f"{path}: PhotometricInterpretation {ds.PhotometricInterpretation} is not supported "
                         f"(need MONOCHROME2)")
    slope = _numbers(ds, "RescaleSlope", 1, path)[0] if "RescaleSlope" in ds else 1.0
    intercept = _numbers(ds, "RescaleIntercept", 1, path)[0] if "RescaleIntercept" in ds else 0.0
    if slope == 0:
        raise InputError(f"{path}: RescaleSlope is 0 (every pixel would be {intercept:g} HU)")
    with np.errstate(all="ignore"):
        return (pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)).T, bytes_digest(path.name, data)


def _describe(ds) -> str:
    desc = str(ds.get("SeriesDescription", "")).strip()
    modality = str(ds.get("Modality", "")).strip()
    parts = [p for p in (modality, desc) if p]
    return (", " + " ".join(parts)) if parts else ""
