"""Class names, palettes and label-id tables (METHOD.md §4.3-4.4)."""

# The 19 Cityscapes evaluation classes in trainId order.
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

# SYNTHIA's 16-class evaluation subset: all but terrain (9), truck (14) and train (16).
SYNTHIA16_TRAIN_IDS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
SYNTHIA16_CLASSES: tuple[str, ...] = tuple(CITYSCAPES_CLASSES[i] for i in SYNTHIA16_TRAIN_IDS)
