"""The FLARE abdominal labels, the single source of truth for label ids, organ names and NSD tolerances.

Names are those of the dataset's dataset.json (snake_case). NSD_TOLERANCE_MM is the per-organ tolerance
of the FLARE challenge's normalized surface Dice, keyed by label id.
"""

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
