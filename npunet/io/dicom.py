"""Reading one DICOM CT series (a folder of single-frame slices) into a NIfTI image in Hounsfield units.

What this file promises: the returned image has data in (column, row, slice) = (x, y, z) order like
nibabel, float32 HU (RescaleSlope / RescaleIntercept applied per slice), slices sorted along the slice
normal, and an affine in NIfTI RAS+ world coordinates built from ImageOrientationPatient, PixelSpacing and
the slice positions. Anything that would make that volume wrong (several series, a missing slice, mixed
orientations or sizes, duplicate positions, multi-frame files) is an InputError with one line.

DICOM world coordinates are LPS+ (x to the patient's left, y to posterior); NIfTI's are RAS+, so the
first two rows of the LPS affine change sign.

pydicom is optional: it is imported here only, and its absence is an InputError saying what to install.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from npunet.errors import InputError
from npunet.io.nifti import one_line

INSTALL_HINT = "pip install 'npunet[dicom]' (or: pip install pydicom pylibjpeg pylibjpeg-openjpeg)"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def has_dicom_magic(path: str | os.PathLike) -> bool:
    """True when the file carries the DICOM Part 10 preamble: 128 bytes then b'DICM'."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def dicom_files(folder: str | os.PathLike) -> list[Path]:
    """The files directly inside `folder` that carry the DICM magic, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and has_dicom_magic(p))


def _import_pydicom():
    try:
        import pydicom
    except ImportError:
        return None
    return pydicom


def read_dicom_series(folder: str | os.PathLike) -> nib.Nifti1Image:
    """Read the single CT series in `folder` (non-recursive) -> Nifti1Image, float32 HU, RAS+ affine.

    The affine maps voxel (i, j, k) = (column, row, slice) to RAS+ millimetres:
      LPS = IPP_0 + i * PixelSpacing[1] * IOP[0:3] + j * PixelSpacing[0] * IOP[3:6] + k * step,
    where step = (IPP_last - IPP_0) / (n - 1) after sorting by IPP . normal, normal = IOP[0:3] x IOP[3:6]
    (a gantry tilt shows up as a shear in `step`, which the sform keeps); RAS = diag(-1, -1, 1) LPS.
    qform and sform codes are 1 (scanner).
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

    headers = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as exc:
            raise InputError(f"{f}: unreadable DICOM file ({one_line(exc)})") from None
        headers.append((f, ds))

    series: dict[str, list] = {}
    for f, ds in headers:
        series.setdefault(str(ds.get("SeriesInstanceUID", "") or ""), []).append((f, ds))
    if len(series) > 1:
        listing = ", ".join(f"{uid or '(no SeriesInstanceUID)'} ({len(v)} files{_describe(v[0][1])})"
                            for uid, v in sorted(series.items(), key=lambda kv: -len(kv[1])))
        raise InputError(f"{folder}: {len(series)} DICOM series found: {listing}; "
                         f"put each series in its own folder")
    (uid, slices), = series.items()

    slices = [(f, ds) for f, ds in slices if "PixelData" in ds or "Rows" in ds]
    for f, ds in slices:
        missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows",
                               "Columns") if k not in ds]
        if missing:
            raise InputError(f"{f}: not an image slice with geometry (missing {', '.join(missing)})")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(f"{f}: a multi-frame DICOM ({ds.NumberOfFrames} frames) is not supported; "
                             f"convert the series to NIfTI first (e.g. dcm2niix)")
    if len(slices) < 2:
        raise InputError(f"{folder}: the series has {len(slices)} image slice(s); need a 3D volume")

    f0, ds0 = slices[0]
    iop = np.asarray(ds0.ImageOrientationPatient, dtype=np.float64)
    spacing = np.asarray(ds0.PixelSpacing, dtype=np.float64)  # [between rows, between columns]
    rows, cols = int(ds0.Rows), int(ds0.Columns)
    for f, ds in slices[1:]:
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=np.float64), iop, atol=1e-4):
            raise InputError(f"{folder}: slices with different orientations ({f0.name}: {list(iop)}, "
                             f"{f.name}: {list(ds.ImageOrientationPatient)})")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise InputError(f"{folder}: slices of different sizes ({f0.name}: {rows}x{cols}, "
                             f"{f.name}: {ds.Rows}x{ds.Columns})")
        if not np.allclose(np.asarray(ds.PixelSpacing, dtype=np.float64), spacing, rtol=1e-4):
            raise InputError(f"{folder}: slices with different pixel spacings")

    col_dir, row_dir = iop[:3], iop[3:]
    normal = np.cross(col_dir, row_dir)
    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=np.float64) for _, ds in slices])
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

    volume = np.empty((cols, rows, n), dtype=np.float32)
    for k, (f, _) in enumerate(slices):
        volume[:, :, k] = _read_slice_hu(pydicom, f, rows, cols).T
    img = nib.Nifti1Image(volume, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


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


def _read_slice_hu(pydicom, path: Path, rows: int, cols: int) -> np.ndarray:
    ds = pydicom.dcmread(path)
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise InputError(f"{path}: cannot decode the pixel data ({name}: {one_line(exc)}); "
                         f"{INSTALL_HINT}") from None
    if pixels.shape != (rows, cols):
        raise InputError(f"{path}: pixel data of shape {pixels.shape}, expected {(rows, cols)}")
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")) != "MONOCHROME2":
        raise InputError(f"{path}: PhotometricInterpretation {ds.PhotometricInterpretation} is not supported "
                         f"(need MONOCHROME2)")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _describe(ds) -> str:
    desc = str(ds.get("SeriesDescription", "")).strip()
    modality = str(ds.get("Modality", "")).strip()
    parts = [p for p in (modality, desc) if p]
    return (", " + " ".join(parts)) if parts else ""
