"""The FLARE abdominal labels, the single source of truth for label ids, organ names, NSD tolerances and the
organs' SNOMED CT codes.

Names are those of the dataset's dataset.json (snake_case). NSD_TOLERANCE_MM is the per-organ tolerance
of the FLARE challenge's normalized surface Dice, keyed by label id. SNOMED_TYPE codes each organ the way a
DICOM Segmentation does (npunet.io.dicom_seg); parse_organs reads an `--organs` list and keep_organs applies
it to a label map.
"""

import numpy as np

from npunet.errors import NpunetError

LABELS = {
    0: "background",
    1: "liver",
    2: "right_kidney",
    3: "spleen",
    4: "pancreas",
    5: "aorta",
    6: "inferior_vena_cava",
    7: "right_adrenal_gland",
    8: "left_adrenal_gland",
    9: "gallbladder",
    10: "esophagus",
    11: "stomach",
    12: "duodenum",
    13: "left_kidney",
}

ORGANS = tuple(k for k in LABELS if k != 0)  # 1..13, the labels FLARE scores


def mirror_labels(names: dict[int, str] | None = None) -> tuple[int, ...]:
    """For each label id 0..max, the id it becomes in a left-right mirror image: right_X <-> left_X (the
    kidneys and the adrenal glands of LABELS), every unpaired label itself. Used to flip training slices
    (tools/train.py) and to average a slice with its mirror at test time (npunet segment --tta).

    >>> mirror_labels()
    (0, 1, 13, 3, 4, 5, 6, 8, 7, 9, 10, 11, 12, 2)
    """
    names = LABELS if names is None else names
    by_name = {str(v): int(k) for k, v in names.items()}
    order = []
    for k in range(max(by_name.values()) + 1):
        name = str(names.get(k, ""))
        side, _, rest = name.partition("_")
        other = {"right": "left", "left": "right"}.get(side)
        order.append(by_name.get(f"{other}_{rest}", k) if other else k)
    return tuple(order)


NSD_TOLERANCE_MM = {
    1: 5.0,   # liver
    2: 3.0,   # right kidney
    3: 3.0,   # spleen
    4: 5.0,   # pancreas
    5: 2.0,   # aorta
    6: 2.0,   # inferior vena cava
    7: 2.0,   # right adrenal gland
    8: 2.0,   # left adrenal gland
    9: 2.0,   # gallbladder
    10: 3.0,  # esophagus
    11: 5.0,  # stomach
    12: 7.0,  # duodenum
    13: 3.0,  # left kidney
}

# DICOM Segmentation coding of each organ: a segment's category (DICOM PS3.16 CID 7150 "Segmentation
# Property Categories"), its type (CID 7151 "Segmentation Property Types") and, for a paired organ, a
# laterality modifier (CID 244 "Laterality"), all SNOMED CT (coding scheme designator "SCT"). CID 7151 codes
# the paired organs without a side (Kidney, Adrenal gland); DICOM gives the side in the segment's Segmented
# Property Type Modifier Code Sequence. Every code and meaning below is the one listed in those context
# groups of the DICOM standard, as tabulated in pydicom 3.0's pydicom/sr/_cid_dict.py (cid_concepts[7150],
# [7151], [244]) with the codes of pydicom/sr/_concepts_dict.py (codes.SCT.Liver, ...); tests/test_dicom_seg.py
# checks them against that table.
SNOMED_SCHEME = "SCT"
SNOMED_CATEGORY = ("91723000", "Anatomical Structure")      # CID 7150, codes.SCT.AnatomicalStructure
SNOMED_LATERALITY = {"right": ("24028007", "Right"),         # CID 244, codes.SCT.Right
                     "left": ("7771000", "Left")}            # CID 244, codes.SCT.Left
SNOMED_TYPE = {                 # label id: (SNOMED CT code, code meaning, laterality or None); all CID 7151
    1: ("10200004", "Liver", None),                  # codes.SCT.Liver
    2: ("64033007", "Kidney", "right"),              # codes.SCT.Kidney + Right
    3: ("78961009", "Spleen", None),                 # codes.SCT.Spleen
    4: ("15776009", "Pancreas", None),               # codes.SCT.Pancreas
    5: ("15825003", "Aorta", None),                  # codes.SCT.Aorta
    6: ("64131007", "Inferior vena cava", None),     # codes.SCT.InferiorVenaCava
    7: ("23451007", "Adrenal gland", "right"),       # codes.SCT.AdrenalGland + Right
    8: ("23451007", "Adrenal gland", "left"),        # codes.SCT.AdrenalGland + Left
    9: ("28231008", "Gallbladder", None),            # codes.SCT.Gallbladder
    10: ("32849002", "Esophagus", None),             # codes.SCT.Esophagus
    11: ("69695003", "Stomach", None),               # codes.SCT.Stomach
    12: ("38848004", "Duodenum", None),              # codes.SCT.Duodenum
    13: ("64033007", "Kidney", "left"),              # codes.SCT.Kidney + Left
}


def parse_organs(organs, names: dict[int, str] | None = None) -> tuple[int, ...]:
    """The label ids of an organ list, sorted: "liver,spleen,2" or ["liver", 3, "right kidney"] -> (1, 2, 3).

    An item is a label id or an organ name of `names` (default LABELS; case, spaces and hyphens do not
    matter: "Right kidney" is right_kidney). Background is not an organ. Raises NpunetError, one line listing
    the valid names, for an unknown item or an empty list.
    """
    names = LABELS if names is None else names
    by_name = {_name_key(str(v)): int(k) for k, v in names.items() if int(k) != 0}
    items = organs.split(",") if isinstance(organs, str) else list(organs)
    ids = set()
    for item in items:
        text = str(item).strip()
        if not text and isinstance(organs, str):
            continue
        if isinstance(item, int) or text.isdigit():
            if int(text) in by_name.values():
                ids.add(int(text))
                continue
        elif _name_key(text) in by_name:
            ids.add(by_name[_name_key(text)])
            continue
        valid = ", ".join(str(v) for k, v in sorted(names.items()) if int(k) != 0)
        raise NpunetError(f"--organs: unknown organ {text!r}; valid organs are {valid} "
                          f"(or their label ids {min(by_name.values())}-{max(by_name.values())})")
    if not ids:
        raise NpunetError(f"--organs: no organ given (got {organs!r})")
    return tuple(sorted(ids))


def _name_key(name: str) -> str:
    return "_".join(name.strip().lower().replace("-", " ").replace("_", " ").split())


def keep_organs(labels: np.ndarray, organs) -> np.ndarray:
    """A copy of the uint8 label map with only the label ids in `organs` kept, every other label 0."""
    keep = np.zeros(256, np.uint8)
    ids = np.asarray(list(organs), dtype=np.int64)
    keep[ids] = ids
    out = np.empty_like(labels)
    for k in range(labels.shape[-1]):       # per slice: a lookup indexes with a temporary intp array
        out[..., k] = keep[labels[..., k]]
    return out
