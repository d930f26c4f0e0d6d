"""Class names, palettes and label-id tables (docs/method.md §5.2-5.3).

Every dataset's label PNGs hold dataset-specific ids. Training and evaluation use the 19
Cityscapes trainIds (0..18) with 255 = ignore. The tables below are plain dicts
`dataset id -> trainId`; `lookup_table` turns one into a dense array for `lut[ids]`, sending
every id that is not listed to 255.
"""

import numpy as np

IGNORE_INDEX = 255
NUM_CLASSES = 19

# The 19 Cityscapes evaluation classes in trainId order.
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

# RGB colour of each trainId (Cityscapes convention), same order as CITYSCAPES_CLASSES.
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

# Cityscapes labelIds 0..33: (name, trainId). The license plate (id -1) is never drawn
# into label images, so it has no entry.
CITYSCAPES_LABEL_IDS: dict[int, tuple[str, int]] = {
    0: ("unlabeled", 255), 1: ("ego vehicle", 255), 2: ("rectification border", 255),
    3: ("out of roi", 255), 4: ("static", 255), 5: ("dynamic", 255), 6: ("ground", 255),
    7: ("road", 0), 8: ("sidewalk", 1), 9: ("parking", 255), 10: ("rail track", 255),
    11: ("building", 2), 12: ("wall", 3), 13: ("fence", 4), 14: ("guard rail", 255),
    15: ("bridge", 255), 16: ("tunnel", 255), 17: ("pole", 5), 18: ("polegroup", 255),
    19: ("traffic light", 6), 20: ("traffic sign", 7), 21: ("vegetation", 8),
    22: ("terrain", 9), 23: ("sky", 10), 24: ("person", 11), 25: ("rider", 12), 26: ("car", 13),
    27: ("truck", 14), 28: ("bus", 15), 29: ("caravan", 255), 30: ("trailer", 255),
    31: ("train", 16), 32: ("motorcycle", 17), 33: ("bicycle", 18),
}  # fmt: skip
CITYSCAPES_ID_TO_TRAIN_ID: dict[int, int] = {i: t for i, (_, t) in CITYSCAPES_LABEL_IDS.items()}

# GTA5 label PNGs are palettised with index = Cityscapes labelId; ids >= 34 are ignored.
GTA5_ID_TO_TRAIN_ID: dict[int, int] = dict(CITYSCAPES_ID_TO_TRAIN_ID)

# ACDC (`*_gt_labelIds.png`) and Dark Zurich (`*_gt_labelIds.png`) use Cityscapes labelIds.
ACDC_ID_TO_TRAIN_ID: dict[int, int] = dict(CITYSCAPES_ID_TO_TRAIN_ID)
DARK_ZURICH_ID_TO_TRAIN_ID: dict[int, int] = dict(CITYSCAPES_ID_TO_TRAIN_ID)

# Files that already hold trainIds (`*_labelTrainIds.png`): identity on 0..18 and 255.
TRAIN_ID_TO_TRAIN_ID: dict[int, int] = {**{c: c for c in range(NUM_CLASSES)}, 255: 255}

# SYNTHIA-RAND-CITYSCAPES ids 0..22 (first channel of GT/LABELS/*.png): (name, trainId).
# terrain, truck and train never occur in the images but are mapped all the same.
SYNTHIA_LABEL_IDS: dict[int, tuple[str, int]] = {
    0: ("void", 255), 1: ("sky", 10), 2: ("building", 2), 3: ("road", 0), 4: ("sidewalk", 1),
    5: ("fence", 4), 6: ("vegetation", 8), 7: ("pole", 5), 8: ("car", 13),
    9: ("traffic sign", 7), 10: ("pedestrian", 11), 11: ("bicycle", 18), 12: ("motorcycle", 17),
    13: ("parking-slot", 255), 14: ("road-work", 255), 15: ("traffic light", 6),
    16: ("terrain", 9), 17: ("rider", 12), 18: ("truck", 14), 19: ("bus", 15), 20: ("train", 16),
    21: ("wall", 3), 22: ("lanemarking", 255),
}  # fmt: skip
SYNTHIA_ID_TO_TRAIN_ID: dict[int, int] = {i: t for i, (_, t) in SYNTHIA_LABEL_IDS.items()}

# SYNTHIA's 16-class evaluation subset: all but terrain (9), truck (14) and train (16).
SYNTHIA16_TRAIN_IDS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
SYNTHIA16_CLASSES: tuple[str, ...] = tuple(CITYSCAPES_CLASSES[i] for i in SYNTHIA16_TRAIN_IDS)
# The 13-class subset additionally drops wall (3), fence (4) and pole (5).
SYNTHIA13_TRAIN_IDS: tuple[int, ...] = tuple(c for c in SYNTHIA16_TRAIN_IDS if c not in (3, 4, 5))
SYNTHIA13_CLASSES: tuple[str, ...] = tuple(CITYSCAPES_CLASSES[i] for i in SYNTHIA13_TRAIN_IDS)


def lookup_table(mapping: dict[int, int], size: int = 256) -> np.ndarray:
    """Dense `[size]` uint8 array with `lut[id] = mapping[id]` and 255 for unlisted ids."""
    lut = np.full((size,), IGNORE_INDEX, np.uint8)
    for dataset_id, train_id in mapping.items():
        lut[dataset_id] = train_id
    return lut


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """Paint trainIds `[..., H, W]` with the Cityscapes palette -> uint8 `[..., H, W, 3]`.

    Ignored (255) and out-of-range pixels are black.
    """
    palette = np.zeros((256, 3), np.uint8)
    palette[:NUM_CLASSES] = np.asarray(CITYSCAPES_PALETTE, np.uint8)
    return palette[np.asarray(train_ids).astype(np.uint8)]
