"""Writing a label map as a DICOM RT Structure Set (RTSTRUCT) over the CT series it was computed from, for
radiotherapy planning systems that read contours where a DICOM SEG is not understood; and reading one back.

What this file promises: `write_rtstruct` writes one RTSTRUCT with one ROI per organ present in the labels, its
contours traced per slice on the source images' own planes (a closed planar polygon through the centres of
the organ's boundary pixels, one per connected region and one per hole, nested), referencing the source: the
Frame of Reference UID, the series, every image's SOP Instance UID (each contour names its image), the
Patient and Study copied from the source, a new Series and SOP Instance UID. Each ROI is named after the
organ, generated AUTOMATIC, interpreted as ORGAN, coded with SNOMED CT (npunet.labels), and names npunet, its
version and the weights file's SHA-256. `rasterise` reads an RTSTRUCT back onto the series grid with npunet's
own geometry (the image's affine, not rt-utils'), so the round trip checks the contours' positions too.

The structure set is built by rt-utils (https://github.com/qurit/rt-utils, MIT licence, compatible with
npunet's Apache-2.0), not by hand: the contour tracing (OpenCV's findContours), the pixel-to-patient
mapping, the Structure Set, ROI Contour and RT ROI Observations modules and the referenced frame of
reference, study, series and images are its. It is the library TotalSegmentator uses for its RTSTRUCT output,
small (five modules, readable in an afternoon), and needs only pydicom, numpy and OpenCV. What npunet adds
on top, as attributes of the dataset rt-utils returns: the Type 1 and 2 attributes dciodvfy asks for that
rt-utils 1.2.7 leaves out (Frame of Reference module, Referring Physician, Accession Number, Operators'
Name), the series' description and number, the algorithm's identification and the organ codes. Two limits of
rt-utils are refused before the network runs (check_geometry): pixels that are not square (it takes
PixelSpacing[0] for both in-plane steps) and a tilted gantry (it places slices along the normal only).

Source identifiers follow the DICOM SEG's rules (npunet.io.dicom_seg.source_datasets): the file meta's SOP
Instance UID where an anonymiser blanked the dataset's, and a Study/Series Instance UID derived from the
images' when blanked, with a note.

rt-utils is optional (the `rtstruct` extra): it is imported here only, and its absence is an NpunetError
saying what to install.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from npunet.errors import InputError, NpunetError
from npunet.io.dicom import DICOM_HEADERS
from npunet.io.dicom_seg import source_datasets
from npunet.io.paths import make_parent
from npunet.publish import atomic_write
from npunet.text import one_line

RT_UTILS_HINT = "pip install 'npunet[rtstruct]' (or: pip install rt-utils)"
RTSTRUCT_SERIES_NUMBER = 901
RTSTRUCT_SERIES_DESCRIPTION = "npunet organ contours"


def import_rt_utils():
    """The rt_utils module, or an NpunetError saying what to install."""
    try:
        import rt_utils
    except ImportError as exc:
        why = "" if getattr(exc, "name", None) == "rt_utils" else f" ({one_line(str(exc), limit=None)})"
        raise NpunetError(f"writing an RTSTRUCT needs rt-utils (and OpenCV), which is not installed{why}: "
                          f"{RT_UTILS_HINT}") from None
    return rt_utils


def check_geometry(image, where) -> None:
    """InputError for a series an RTSTRUCT from rt-utils would misplace: pixels that are not square, or slices
    not stacked along their normal (a gantry tilt). Called before the network runs."""
    headers = image.extra.get(DICOM_HEADERS) if hasattr(image, "extra") else None
    if not headers:
        raise InputError(f"{where}: an RTSTRUCT needs a DICOM series as input")
    spacing = [float(v) for v in headers[0].PixelSpacing]
    if abs(spacing[0] - spacing[1]) > 1e-6 * max(spacing):
        raise InputError(f"{where}: the pixels are not square (PixelSpacing {spacing[0]:g} x {spacing[1]:g} mm); "
                         f"rt-utils, which writes the RTSTRUCT, takes one spacing for both axes: use "
                         f"--output-type dicom-seg")
    if len(headers) > 1:
        iop = np.asarray([float(v) for v in headers[0].ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        first, last = (np.asarray([float(v) for v in h.ImagePositionPatient]) for h in (headers[0], headers[-1]))
        step = (last - first) / (len(headers) - 1)
        if np.linalg.norm(step - (step @ normal) * normal) > 1e-3:
            raise InputError(f"{where}: the slices are not stacked along their normal (a gantry tilt); rt-utils, "
                             f"which writes the RTSTRUCT, would misplace the contours: use --output-type dicom-seg")


def build_rtstruct(labels: np.ndarray, headers: list, label_names: dict[int, str], *, version: str,
                   weights_sha256: str | None = None, model_name: str | None = None):
    """(pydicom Dataset of the RTSTRUCT, notes) of labels (X, Y, Z) uint8 over the source headers, header k
    being the image of slice k (npunet.io.dicom.read_dicom_series' order, which is rt-utils' too: ascending
    along the normal). One ROI per organ present, numbered 1.. in label order. NpunetError when no organ is
    present (a structure set of no ROI says nothing) or an organ has no name."""
    import_rt_utils()
    from pydicom.dataset import Dataset
    from rt_utils import RTStruct, ds_helper
    from npunet.labels import SNOMED_SCHEME, SNOMED_TYPE
    labels = np.asarray(labels)
    nx, ny, nz = labels.shape
    if len(headers) != nz or any((int(ds.Rows), int(ds.Columns)) != (ny, nx) for ds in headers):
        raise ValueError(f"labels of shape {labels.shape} do not lie on the {len(headers)} source images")
    counts = np.zeros(256, np.int64)
    for k in range(nz):
        counts += np.bincount(labels[:, :, k].ravel(), minlength=256)
    present = [k for k in range(1, 256) if counts[k]]
    if [k for k in present if k not in label_names]:
        raise NpunetError(f"labels {[k for k in present if k not in label_names]} have no name in the model's "
                          f"label table; cannot write an RTSTRUCT")
    if not present:
        raise NpunetError("no organ found, and an RTSTRUCT of no ROI says nothing; nothing written "
                          "(--output-type nifti writes the empty label map)")
    sources, notes = source_datasets(headers)
    notes = [n.replace("the DICOM SEG", "the RTSTRUCT") for n in notes]
    for ds in sources:                     # rt-utils reads these three without a default
        for key in ("StudyDate", "StudyTime", "StudyID"):
            if key not in ds:
                setattr(ds, key, "")
    with _quiet_deprecations():            # rt-utils 1.2.7 sets FileDataset.is_little_endian and
        ds = ds_helper.create_rtstruct_dataset(sources)       # .is_implicit_VR, which pydicom 3 deprecates
        rt = RTStruct(sources, ds)
        for label in present:
            name = str(label_names[label])
            rt.add_roi(mask=np.ascontiguousarray((labels == label).transpose(1, 0, 2)), name=name,
                       description=f"npunet {version}", roi_generation_algorithm=0)
    ds = rt.ds
    source = sources[0]
    now = time.localtime()
    description = f"npunet {version}, model {model_name or 'unknown'}, weights SHA-256 {weights_sha256 or 'unknown'}"
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = "npunet", model_name or "npunet", version
    if "InstitutionName" in ds:
        del ds.InstitutionName                         # rt-utils writes its own lab's name there
    ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = RTSTRUCT_SERIES_DESCRIPTION, RTSTRUCT_SERIES_NUMBER, 1
    ds.SeriesDate, ds.SeriesTime = time.strftime("%Y%m%d", now), time.strftime("%H%M%S", now)
    ds.StructureSetLabel, ds.StructureSetName = "NPUNET", "npunet organs"
    ds.StructureSetDescription = description[:1024]
    for key in ("ReferringPhysicianName", "AccessionNumber", "PositionReferenceIndicator"):
        setattr(ds, key, source.get(key, "") or "")
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = str(source.FrameOfReferenceUID)
    for observation, label in zip(ds.RTROIObservationsSequence, present):
        observation.RTROIInterpretedType, observation.ROIInterpreter = "ORGAN", ""
        observation.ROIObservationDescription = f"automatic, {description}"[:1024]
        code, meaning, side = SNOMED_TYPE.get(label, (None, None, None))
        if code is not None:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator = code, SNOMED_SCHEME
            item.CodeMeaning = meaning if side is None else f"{side.capitalize()} {meaning.lower()}"
            observation.RTROIIdentificationCodeSequence = [item]
    for roi in ds.StructureSetROISequence:
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
    for roi in ds.ROIContourSequence:                 # rt-utils writes the point count as a float
        for contour in roi.ContourSequence:
            contour.NumberOfContourPoints = len(contour.ContourData) // 3
    return ds, notes


def write_rtstruct(labels: np.ndarray, headers: list, path: str | os.PathLike, label_names: dict[int, str], *,
                   version: str, weights_sha256: str | None = None, model_name: str | None = None,
                   overwrite: bool = False) -> list[str]:
    """Build the RTSTRUCT (build_rtstruct) and publish it at `path` by npunet.publish.atomic_write (without
    overwrite exclusively); returns the notes on derived identifiers."""
    ds, notes = build_rtstruct(labels, headers, label_names, version=version, weights_sha256=weights_sha256,
                               model_name=model_name)
    path = Path(path)
    make_parent(path)
    from pydicom.uid import ImplicitVRLittleEndian

    def save(tmp):
        with _quiet_deprecations():
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            ds.save_as(tmp, enforce_file_format=True)
    atomic_write(path, save, overwrite=overwrite)
    return notes


@contextmanager
def _quiet_deprecations():
    """pydicom 3's deprecation notes about the two FileDataset attributes rt-utils 1.2.7 sets (a warning and a
    log record each, which npunet.third_party would show) are dropped; any other note is passed on."""
    from npunet.third_party import captured
    with captured() as notes:
        yield
    for note in notes.messages:
        if "is_little_endian" not in note and "is_implicit_VR" not in note:
            warnings.warn(note, stacklevel=3)


# ------------------------------------------------------------------------------------- reading back --

def read_contours(path: str | os.PathLike) -> dict[str, list[tuple[str, np.ndarray]]]:
    """{ROI name: [(referenced SOP Instance UID, (n, 3) points in DICOM patient mm)]} of an RTSTRUCT."""
    import pydicom
    ds = pydicom.dcmread(path)
    names = {int(roi.ROINumber): str(roi.ROIName) for roi in ds.StructureSetROISequence}
    out: dict[str, list] = {}
    for roi in ds.ROIContourSequence:
        name = names[int(roi.ReferencedROINumber)]
        for contour in roi.get("ContourSequence", []):
            uid = str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)
            points = np.asarray([float(v) for v in contour.ContourData], dtype=np.float64).reshape(-1, 3)
            out.setdefault(name, []).append((uid, points))
    return out


def rasterise_masks(path: str | os.PathLike, image) -> dict[str, np.ndarray]:
    """{ROI name: bool mask (X, Y, Z)} of an RTSTRUCT on the grid of `image` (read_dicom_series' image of the
    series it references), by npunet's geometry: each contour's points go through the inverse of the image's
    affine (LPS millimetres -> RAS -> voxel indices), must lie on the plane of the image it references, and are
    filled with OpenCV's fillPoly, boundary pixels included (the contour runs through their centres).
    Contours nested inside another of the same ROI on the same image alternate: a hole (its inside cleared,
    its boundary pixels kept, as they belong to the organ), an island inside the hole, and so on."""
    import cv2
    headers = image.extra[DICOM_HEADERS]
    uid_slice = {_sop_uid(ds): k for k, ds in enumerate(headers)}
    inverse = np.linalg.inv(np.asarray(image.affine, dtype=np.float64))
    nx, ny, nz = image.shape[:3]
    masks = {}
    for name, contours in read_contours(path).items():
        by_slice: dict[int, list[np.ndarray]] = {}
        for uid, points in contours:
            if uid not in uid_slice:
                raise InputError(f"{path}: ROI {name!r} has a contour on an image not in the series ({uid})")
            k = uid_slice[uid]
            ras = np.c_[-points[:, 0], -points[:, 1], points[:, 2], np.ones(len(points))]
            ijk = (inverse @ ras.T).T[:, :3]
            if np.abs(ijk[:, 2] - k).max() > 1e-2:
                raise InputError(f"{path}: ROI {name!r}: a contour is not on the plane of the image it references "
                                 f"(slice {k}, off by {np.abs(ijk[:, 2] - k).max():.3f} slices)")
            by_slice.setdefault(k, []).append(np.round(ijk[:, :2]).astype(np.int32))
        mask = np.zeros((nx, ny, nz), bool)
        for k, polygons in by_slice.items():
            plane = np.zeros((ny, nx), np.uint8)            # (rows, columns): points are (column, row)
            depth = [_depth(p, polygons) for p in polygons]
            for level in sorted(set(depth)):
                for p, d in zip(polygons, depth):
                    if d != level:
                        continue
                    if d % 2 == 0:
                        cv2.fillPoly(plane, [p], 1)
                    else:                                  # a hole: clear inside, keep the boundary pixels
                        cv2.fillPoly(plane, [p], 0)
                        cv2.polylines(plane, [p], True, 1)
            mask[:, :, k] = plane.T.astype(bool)
        masks[name] = mask
    return masks


def rasterise(path: str | os.PathLike, image, label_names: dict[int, str] | None = None) -> np.ndarray:
    """The RTSTRUCT as a uint8 label map on the series grid (rasterise_masks; ROIs named after organs, in
    label order, a later one over an earlier one where they overlap)."""
    from npunet.labels import LABELS
    by_name = {str(v): int(k) for k, v in (label_names or LABELS).items()}
    out = np.zeros(image.shape[:3], np.uint8)
    masks = rasterise_masks(path, image)
    for name in sorted(masks, key=lambda n: by_name.get(n, 255)):
        out[masks[name]] = by_name.get(name, 255)
    return out


def _depth(polygon: np.ndarray, polygons: list[np.ndarray]) -> int:
    """How many of the other polygons (larger ones) hold `polygon`'s first point, on their edge included."""
    import cv2
    point = (float(polygon[0][0]), float(polygon[0][1]))
    area = abs(cv2.contourArea(polygon))
    return sum(1 for q in polygons if q is not polygon and abs(cv2.contourArea(q)) > area
               and cv2.pointPolygonTest(q, point, False) >= 0)


def content_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of what an RTSTRUCT says, without what is new in every run (its own UIDs, dates and times):
    the frame of reference, the referenced series and images, each ROI's number, name and code, and each
    contour's image and points as written. Two RTSTRUCTs of the same labels over the same series have the same
    content digest (a report records it; `npunet verify` compares it)."""
    import pydicom
    ds = pydicom.dcmread(path)
    h = hashlib.sha256()
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    images = [str(i.ReferencedSOPInstanceUID) for study in frame.get("RTReferencedStudySequence", [])
              for series in study.RTReferencedSeriesSequence for i in series.ContourImageSequence]
    rois = [[int(r.ROINumber), str(r.ROIName)] for r in ds.StructureSetROISequence]
    codes = [[str(c.CodeValue), str(c.CodeMeaning)] for o in ds.RTROIObservationsSequence
             for c in o.get("RTROIIdentificationCodeSequence", [])]
    h.update(json.dumps({"frame_of_reference": str(frame.FrameOfReferenceUID), "images": images, "rois": rois,
                         "codes": codes}).encode())
    for roi in ds.ROIContourSequence:
        h.update(f"roi {roi.ReferencedROINumber}\n".encode())
        for contour in roi.get("ContourSequence", []):
            uid = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
            h.update(f"{uid} {contour.ContourGeometricType} {list(map(str, contour.ContourData))}\n".encode())
    return h.hexdigest()


def _sop_uid(ds) -> str:
    uid = str(ds.get("SOPInstanceUID", "") or "")
    return uid or str(ds.file_meta.MediaStorageSOPInstanceUID)
