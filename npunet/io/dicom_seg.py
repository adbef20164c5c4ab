"""Writing a label map as a DICOM Segmentation (SEG) object over the CT series it was computed from, so that
OHIF, 3D Slicer, Horos or a PACS shows the organs on the original images.

What this file promises: `write_dicom_seg` writes one binary SEG, built by highdicom (nothing is assembled
by hand), with one segment per organ present in the labels. The frames lie on the source series' exact grid:
the frame for source image k holds labels[:, :, k].T, where k is the volume's slice order of
npunet.io.dicom.read_dicom_series, whose headers come with the image (img.extra[DICOM_HEADERS]). The object
references the source: its Frame of Reference UID, every source SOP Instance UID, the Patient and Study
modules copied from the source, a new Series and SOP Instance UID. Each segment is coded with SNOMED CT
(category, type and, for a paired organ, the side, from npunet.labels) and names the algorithm: npunet, its
version, the weights file's SHA-256.

Source identifiers: a DICOM file stores its SOP Instance/Class UID twice, in the dataset and in the Part 10
file meta (Media Storage SOP Instance/Class UID, equal by definition). Some anonymised exports blank the
dataset's copy (and the Study and Series Instance UIDs); the file meta's copy is then used. A blank Study or
Series Instance UID cannot be recovered: the SEG gets one derived from the images' SOP Instance UIDs (the same
every run), and the caller is told, since a viewer then files the SEG apart from the images' study.

highdicom is optional (the `dicom` extra): it is imported here only, and its absence is an NpunetError
saying what to install.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np

from npunet.errors import InputError, NpunetError
from npunet.io.paths import make_parent
from npunet.publish import atomic_write

HIGHDICOM_HINT = "pip install 'npunet[dicom]' (or: pip install highdicom)"
SEG_SUFFIX = ".dcm"
SEG_SERIES_NUMBER = 900      # viewers list series by number: the segmentation comes after the images
SEG_SERIES_DESCRIPTION = "npunet organ segmentation"


def import_highdicom():
    """The highdicom module, or an NpunetError saying what to install."""
    try:
        import highdicom
    except ImportError:
        raise NpunetError(f"writing a DICOM SEG needs highdicom, which is not installed: {HIGHDICOM_HINT}") from None
    return highdicom


def source_datasets(headers: list) -> tuple[list, list[str]]:
    """Copies of the source slices' headers with the identifiers a SEG references filled in, and the notes
    (one line each) on what had to be derived.

    Raises InputError when a slice has no SOP Instance UID anywhere (not even in its file meta), when the
    slices carry no Frame of Reference UID or several, and when they name several studies.
    """
    from pydicom.uid import generate_uid
    sources = [copy.deepcopy(ds) for ds in headers]
    for ds in sources:
        meta = getattr(ds, "file_meta", None)
        for key, meta_key in (("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
                              ("SOPClassUID", "MediaStorageSOPClassUID")):
            if not str(ds.get(key, "") or ""):
                value = str(meta.get(meta_key, "") or "") if meta is not None else ""
                if not value:
                    raise InputError(f"{_name(ds)}: no {key} (neither in the dataset nor in its file meta); "
                                     f"a DICOM SEG references each source image by it")
                setattr(ds, key, value)
    frames = {str(ds.get("FrameOfReferenceUID", "") or "") for ds in sources}
    if len(frames) != 1 or "" in frames:
        what = "no Frame of Reference UID" if frames == {""} else f"{len(frames)} Frame of Reference UIDs"
        raise InputError(f"{_name(sources[0])}: the series has {what}; a DICOM SEG must share the images' one "
                         f"frame of reference")
    notes = []
    instance_uids = [str(ds.SOPInstanceUID) for ds in sources]
    for key, what in (("StudyInstanceUID", "study"), ("SeriesInstanceUID", "series")):
        values = {str(ds.get(key, "") or "") for ds in sources} - {""}
        if len(values) > 1:
            raise InputError(f"{_name(sources[0])}: the slices name {len(values)} different {key}s; "
                             f"put each {what}'s images in their own folder")
        if not values:
            value = generate_uid(entropy_srcs=[f"npunet source {what}", *instance_uids])
            notes.append(key)
            for ds in sources:
                setattr(ds, key, value)
    if notes:
        notes = [f"the series has no {' and no '.join(notes)} (blanked by an anonymiser?); the DICOM SEG refers "
                 f"to {'them' if len(notes) > 1 else 'it'} by a UID derived from the images' SOP Instance UIDs, "
                 f"so a viewer files it apart from the images' study"]
    return sources, notes


def _name(ds) -> str:
    return str(getattr(ds, "filename", None) or f"the DICOM slice of InstanceNumber {ds.get('InstanceNumber')}")


def segment_description(hd, number: int, label: int, name: str, algorithm):
    """highdicom's description of segment `number` for organ `label`, SNOMED CT coded (npunet.labels)."""
    from npunet.labels import SNOMED_CATEGORY, SNOMED_LATERALITY, SNOMED_SCHEME, SNOMED_TYPE
    if label not in SNOMED_TYPE:
        raise NpunetError(f"label {label} ({name}) has no SNOMED CT code in npunet.labels.SNOMED_TYPE; "
                          f"a DICOM SEG segment needs one (use --output-type nifti)")
    code, meaning, side = SNOMED_TYPE[label]
    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=name,
        segmented_property_category=hd.sr.CodedConcept(SNOMED_CATEGORY[0], SNOMED_SCHEME, SNOMED_CATEGORY[1]),
        segmented_property_type=hd.sr.CodedConcept(code, SNOMED_SCHEME, meaning),
        algorithm_type="AUTOMATIC", algorithm_identification=algorithm)
    if side is not None:   # highdicom has no argument for it: the standard puts the modifier (PS3.3 Table
        # 10-33, Segment Description Macro) inside the Segmented Property Type Code Sequence's item
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept(SNOMED_LATERALITY[side][0], SNOMED_SCHEME, SNOMED_LATERALITY[side][1])]
    return description


def algorithm_identification(hd, version: str, weights_sha256: str | None, model_name: str | None):
    """The Algorithm Identification Sequence: npunet, its version, the model and the weights' SHA-256."""
    from pydicom.sr.codedict import codes
    parameters = {"model": model_name or "unknown", "weights_sha256": weights_sha256 or "unknown"}
    return hd.AlgorithmIdentificationSequence(name="npunet", family=codes.cid7162.ArtificialIntelligence,
                                              version=version, parameters=parameters)


def build_segmentation(labels: np.ndarray, headers: list, label_names: dict[int, str], *, version: str,
                       weights_sha256: str | None = None, model_name: str | None = None):
    """(highdicom Segmentation, notes) of labels (X, Y, Z) uint8 over the source headers, header k being the
    image of slice k (so len(headers) == Z, and each header has Rows == Y, Columns == X).

    One segment per organ present (segment numbers 1.. in label order; the SEG's own numbering, the label id
    stays in npunet's names). Raises NpunetError when no organ is present (a SEG needs one segment) or an
    organ has no SNOMED CT code; InputError for source identifiers that cannot be referenced.
    """
    hd = import_highdicom()
    labels = np.asarray(labels)
    nx, ny, nz = labels.shape
    if len(headers) != nz or any((int(ds.Rows), int(ds.Columns)) != (ny, nx) for ds in headers):
        sizes = sorted({(int(ds.Rows), int(ds.Columns)) for ds in headers})
        raise ValueError(f"labels of shape {labels.shape} do not lie on {len(headers)} source images of "
                         f"(rows, columns) {sizes}")
    counts = np.zeros(256, np.int64)
    for k in range(nz):
        counts += np.bincount(labels[:, :, k].ravel(), minlength=256)
    present = [k for k in range(1, 256) if counts[k]]
    unnamed = [k for k in present if k not in label_names]
    if unnamed:
        raise NpunetError(f"labels {unnamed} have no name in the model's label table; cannot write a DICOM SEG")
    if not present:
        raise NpunetError("no organ found, and a DICOM SEG needs at least one segment; nothing written "
                          "(--output-type nifti writes the empty label map)")
    sources, notes = source_datasets(headers)
    algorithm = algorithm_identification(hd, version, weights_sha256, model_name)
    descriptions = [segment_description(hd, number, label, str(label_names[label]), algorithm)
                    for number, label in enumerate(present, start=1)]
    to_segment = np.zeros(256, np.uint8)
    to_segment[present] = np.arange(1, len(present) + 1)
    frames = to_segment[labels.transpose(2, 1, 0)]      # (Z, rows, columns): frame k over source image k
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="npunet",
        manufacturer_model_name=model_name or "npunet", software_versions=version, device_serial_number="none",
        content_label="NPUNET", content_description="npunet organ segmentation",
        series_description=SEG_SERIES_DESCRIPTION)
    return seg, notes


def write_dicom_seg(labels: np.ndarray, headers: list, path: str | os.PathLike, label_names: dict[int, str], *,
                    version: str, weights_sha256: str | None = None, model_name: str | None = None,
                    overwrite: bool = False) -> list[str]:
    """Build the SEG (build_segmentation) and write it to `path` by npunet.publish.atomic_write (a temporary
    name in the same folder, then published; without overwrite exclusively: InputError "exists already" if
    another run wrote `path` first); returns the notes on derived identifiers. The caller has checked the
    path (npunet.io.nifti.check_output_path)."""
    seg, notes = build_segmentation(labels, headers, label_names, version=version, weights_sha256=weights_sha256,
                                    model_name=model_name)
    path = Path(path)
    make_parent(path)
    atomic_write(path, lambda tmp: seg.save_as(tmp), overwrite=overwrite)
    return notes


def content_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of what a SEG says, without what is new in every run (its own Series and SOP Instance
    UIDs, dates and times): the frame of reference, the referenced series, each segment's number, label and
    codes, and each frame's source image, segment and pixels. Two SEGs of the same labels over the same
    series have the same content digest (a report records it; `npunet verify` compares it)."""
    import hashlib
    import json
    import pydicom
    ds = pydicom.dcmread(path)
    h = hashlib.sha256()
    segments = []
    for item in ds.SegmentSequence:
        kind = item.SegmentedPropertyTypeCodeSequence[0]
        modifiers = [m.CodeValue for m in kind.get("SegmentedPropertyTypeModifierCodeSequence", [])]
        segments.append([int(item.SegmentNumber), str(item.SegmentLabel), str(kind.CodeValue), modifiers])
    referenced = [str(s.SeriesInstanceUID) for s in ds.get("ReferencedSeriesSequence", [])]
    h.update(json.dumps({"frame_of_reference": str(ds.FrameOfReferenceUID), "series": referenced,
                         "segments": segments, "rows": int(ds.Rows), "columns": int(ds.Columns)}).encode())
    pixels = ds.pixel_array.reshape(int(ds.get("NumberOfFrames", 1)), int(ds.Rows), int(ds.Columns))
    frames = []
    for i, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        segment = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        frames.append((str(source), segment, i))
    for source, segment, i in sorted(frames):
        h.update(f"{source} {segment}\n".encode())
        h.update(np.ascontiguousarray(pixels[i], dtype=np.uint8).tobytes())
    return h.hexdigest()


def decoded_labels(path: str | os.PathLike, source_uids: list[str], label_names: dict[int, str]) -> np.ndarray:
    """The SEG decoded back into npunet labels, (len(source_uids), rows, columns), one plane per source image
    in the order given; a segment whose label is not in label_names counts as 255."""
    hd = import_highdicom()
    seg = hd.seg.segread(path)
    numbers = seg.get_pixels_by_source_instance(source_uids, combine_segments=True, relabel=False,
                                                assert_missing_frames_are_empty=True)
    by_name = {str(v): int(k) for k, v in label_names.items()}
    to_label = np.zeros(max([int(i.SegmentNumber) for i in seg.SegmentSequence] + [0]) + 1, np.uint8)
    for item in seg.SegmentSequence:
        to_label[int(item.SegmentNumber)] = by_name.get(str(item.SegmentLabel), 255)
    return to_label[numbers]
