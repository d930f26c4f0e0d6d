"""Label tables: bijections onto the evaluated classes, everything else to 255."""

import numpy as np
import pytest

from lcmsm_jax.data import labels as L

TABLES = {
    "cityscapes": (L.CITYSCAPES_ID_TO_TRAIN_ID, range(34)),
    "gta5": (L.GTA5_ID_TO_TRAIN_ID, range(34)),
    "acdc": (L.ACDC_ID_TO_TRAIN_ID, range(34)),
    "darkzurich": (L.DARK_ZURICH_ID_TO_TRAIN_ID, range(34)),
    "synthia": (L.SYNTHIA_ID_TO_TRAIN_ID, range(23)),
    "trainids": (L.TRAIN_ID_TO_TRAIN_ID, [*range(19), 255]),
}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_table_is_a_bijection_on_the_19_classes_and_ignores_the_rest(name):
    table, domain = TABLES[name]
    assert sorted(table) == sorted(domain)
    evaluated = {i: t for i, t in table.items() if t != 255}
    # Injective and onto 0..18: every class has exactly one id.
    assert sorted(evaluated.values()) == list(range(19))
    lut = L.lookup_table(table)
    for i in range(256):
        assert lut[i] == evaluated.get(i, 255)


def test_cityscapes_ids_named_as_in_cityscapes_scripts():
    names = {i: n for i, (n, _) in L.CITYSCAPES_LABEL_IDS.items()}
    for i, t in L.CITYSCAPES_ID_TO_TRAIN_ID.items():
        if t != 255:
            assert names[i] == L.CITYSCAPES_CLASSES[t]
    assert {names[i] for i in (0, 9, 10, 14, 15, 16, 18, 29, 30)} == {
        "unlabeled", "parking", "rail track", "guard rail", "bridge", "tunnel", "polegroup",
        "caravan", "trailer",
    }  # fmt: skip


def test_synthia_ids_match_the_method_table():
    expected = {0: 255, 1: 10, 2: 2, 3: 0, 4: 1, 5: 4, 6: 8, 7: 5, 8: 13, 9: 7, 10: 11, 11: 18,
                12: 17, 13: 255, 14: 255, 15: 6, 16: 9, 17: 12, 18: 14, 19: 15, 20: 16, 21: 3,
                22: 255}  # fmt: skip
    assert L.SYNTHIA_ID_TO_TRAIN_ID == expected
    same_name = {"pedestrian": "person", "lanemarking": None}
    for name, t in L.SYNTHIA_LABEL_IDS.values():
        if t != 255:
            assert same_name.get(name, name) == L.CITYSCAPES_CLASSES[t]


def test_synthia_subsets():
    assert len(L.SYNTHIA16_TRAIN_IDS) == 16 and len(L.SYNTHIA13_TRAIN_IDS) == 13
    assert set(range(19)) - set(L.SYNTHIA16_TRAIN_IDS) == {9, 14, 16}
    assert set(L.SYNTHIA16_TRAIN_IDS) - set(L.SYNTHIA13_TRAIN_IDS) == {3, 4, 5}
    assert L.SYNTHIA13_CLASSES[:3] == ("road", "sidewalk", "building")


def test_palette_and_colorize():
    assert len(L.CITYSCAPES_PALETTE) == len(L.CITYSCAPES_CLASSES) == L.NUM_CLASSES
    assert L.CITYSCAPES_PALETTE[0] == (128, 64, 128) and L.CITYSCAPES_PALETTE[18] == (119, 11, 32)
    rgb = L.colorize(np.array([[0, 13], [255, 18]]))
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 1]) == (0, 0, 142) and tuple(rgb[1, 0]) == (0, 0, 0)
