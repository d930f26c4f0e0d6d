"""Procedural two-domain street scenes: the embedded synthetic UDA benchmark.

Each image is a street seen from a car: sky, a skyline, facades and parks along both sides, a
road in perspective with sidewalks, verges, walls and fences, poles carrying signs and
traffic lights, and vehicles, pedestrians and cyclists, labelled with the 19 Cityscapes
trainIds (255 = ignore, only on the ego-vehicle hood of some target images).

Two domains share the scene grammar but not the look:
  "source"  GTA-like: saturated game colours, warm sun with cast shadows, crisp edges,
            regular stripe textures, little sensor noise; higher camera, more cars.
  "target"  Cityscapes-like: muted, cool and overcast, other per-class colours, blotchy
            textures, sensor noise, vignetting and lens blur; lower camera, more people
            and greenery, sometimes the ego hood.
Shape and context carry over between the domains, colour does not, which is the gap domain
adaptation has to close.

Rendering is pure numpy: scenes are painted back to front as convex polygons and ellipses
(scanline spans) into a part-id map; the label is a lookup of the part map and the image
is part colours times texture fields plus noise. `render(domain, index, seed=...)` is a pure
function of its arguments; `SyntheticSource` exposes a finite prefix of that infinite
sequence as a grain random-access source, and `export` writes it in the GTA5 or Cityscapes
on-disk layout:

  python -m lcmsm_jax.data.synthetic --export --domain source --layout gta5 \
      --out data/synthetic_gta5 --num-images 2000
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from lcmsm_jax.data import labels as label_tables

DOMAINS = ("source", "target")
DEFAULT_SIZE = (256, 512)
IGNORE = label_tables.IGNORE_INDEX
(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON,
 RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(19)  # fmt: skip
HOOD = 19  # appearance row of the ego-vehicle hood (labelled IGNORE)
# How a part's colour follows from its instance's colours.
BODY, SECOND, DARK, LAMP, SKIN, PAINT = range(6)
FAR = 400.0  # depth (m) where ground strips end


# ----------------------------------------------------------------------------------------
# Domain tables. Layout numbers are (low, high) ranges or Poisson means per image.
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DomainLayout:
    horizon: tuple[float, float]  # horizon row as a fraction of the height
    cam_height: tuple[float, float]  # metres above the road
    road_width: tuple[float, float]
    p_building: float  # a roadside segment is a building (else park / open ground)
    p_verge: float  # grass between sidewalk and buildings
    counts: dict[str, float]
    p_truck: float
    p_bus: float
    p_train: float
    p_hood: float


LAYOUTS: dict[str, DomainLayout] = {
    "source": DomainLayout(
        horizon=(0.36, 0.46), cam_height=(1.6, 2.2), road_width=(7.0, 13.0), p_building=0.72,
        p_verge=0.35, p_truck=0.45, p_bus=0.4, p_train=0.25, p_hood=0.0,
        counts=dict(cars=4.5, parked=1.5, persons=3.0, riders=1.2, poles=3.0, trees=1.2,
                    bikes=0.4),
    ),
    "target": DomainLayout(
        horizon=(0.42, 0.50), cam_height=(1.2, 1.6), road_width=(6.0, 11.0), p_building=0.58,
        p_verge=0.55, p_truck=0.5, p_bus=0.5, p_train=0.25, p_hood=0.5,
        counts=dict(cars=3.0, parked=2.5, persons=5.0, riders=1.8, poles=3.8, trees=2.2,
                    bikes=0.8),
    ),
}  # fmt: skip

# Base RGB colours per class (0..18, then the hood); an instance picks one and jitters it.
_SOURCE_PALETTE = (
    [(112, 100, 92), (124, 112, 100), (96, 92, 90)],  # road: warm asphalt
    [(180, 132, 116), (192, 170, 140), (164, 150, 138)],  # sidewalk: red/beige pavers
    [(192, 150, 104), (172, 118, 88), (202, 186, 160), (150, 138, 128), (124, 92, 72)],
    [(204, 196, 174), (176, 164, 140)],  # wall: light concrete
    [(146, 100, 60), (124, 124, 130)],  # fence: wood / steel
    [(142, 142, 142), (96, 100, 106)],  # pole
    [(64, 64, 44), (204, 172, 44)],  # traffic light housing
    [(34, 84, 212), (204, 44, 44), (232, 232, 232)],  # traffic sign
    [(92, 152, 40), (72, 132, 30), (112, 164, 62)],  # vegetation: vivid green
    [(178, 156, 96), (152, 162, 80)],  # terrain: sand / dry grass
    [(60, 140, 250), (88, 160, 252)],  # sky: deep blue
    [(204, 44, 44), (40, 62, 184), (232, 202, 62), (52, 52, 52), (240, 240, 240), (62, 152, 82)],
    [(204, 44, 44), (40, 62, 184), (232, 202, 62), (52, 52, 52), (240, 240, 240), (62, 152, 82)],
    [(212, 32, 32), (242, 202, 42), (32, 82, 204), (236, 236, 236), (42, 42, 42), (32, 152, 82)],
    [(232, 232, 232), (202, 62, 42), (62, 122, 204), (242, 182, 32)],  # truck
    [(242, 192, 32), (42, 142, 222), (222, 62, 52)],  # bus
    [(222, 222, 228), (202, 42, 42), (82, 82, 92)],  # train
    [(232, 42, 32), (32, 32, 32), (42, 92, 222)],  # motorcycle
    [(42, 122, 222), (222, 32, 32), (32, 32, 32)],  # bicycle
    [(40, 40, 44)],  # hood
)
_TARGET_PALETTE = (
    [(76, 72, 84), (86, 80, 92), (70, 70, 74)],  # road: cool purple-grey
    [(130, 126, 126), (146, 140, 130)],  # sidewalk: grey slabs
    [(112, 106, 100), (132, 116, 100), (92, 92, 98), (152, 142, 126)],
    [(126, 126, 110), (102, 102, 96)],  # wall: weathered
    [(86, 92, 96), (112, 100, 86)],  # fence
    [(72, 74, 76), (102, 102, 102)],  # pole
    [(34, 34, 36)],  # traffic light housing
    [(182, 182, 176), (150, 150, 150), (42, 72, 142)],  # traffic sign (backs mostly)
    [(46, 72, 42), (62, 86, 52), (72, 92, 56)],  # vegetation: dark
    [(102, 116, 72), (116, 110, 82)],  # terrain: lawn
    [(208, 212, 216), (192, 200, 210)],  # sky: overcast
    [(40, 40, 46), (72, 62, 56), (92, 96, 112), (132, 122, 112), (32, 32, 62)],
    [(40, 40, 46), (72, 62, 56), (92, 96, 112), (132, 122, 112), (32, 32, 62)],
    [(32, 32, 36), (122, 122, 126), (162, 162, 166), (52, 56, 76), (92, 32, 32), (202, 202, 202)],
    [(172, 172, 172), (112, 116, 122)],  # truck
    [(202, 202, 192), (122, 62, 52)],  # bus
    [(162, 162, 152), (172, 62, 62)],  # train
    [(36, 36, 36), (92, 92, 102)],  # motorcycle
    [(32, 32, 32), (62, 62, 72)],  # bicycle
    [(30, 30, 32)],  # hood
)


@dataclasses.dataclass(frozen=True)
class DomainLook:
    palette: tuple[list[tuple[int, int, int]], ...]
    jitter: float  # per-instance colour noise (std, 0..255 scale)
    dark: tuple[int, int, int]  # what windows and tyres tend to
    lamps: tuple[tuple[int, int, int], ...]
    skins: tuple[tuple[int, int, int], ...]
    paint: tuple[tuple[int, int, int], ...]  # road markings
    tint: tuple[float, float, float]  # per-channel gain of the light
    gamma: tuple[float, float]
    contrast: tuple[float, float]
    lift: tuple[float, float]  # added to every channel (haze, lifted blacks)
    shadow: float  # brightness inside cast shadows
    noise: tuple[float, float]  # sensor noise std range
    vignette: float
    blur: bool
    periods: tuple[float, float, float, float]  # blotch, lines, grid, stripes (px at 256 rows)


LOOKS: dict[str, DomainLook] = {
    "source": DomainLook(
        palette=_SOURCE_PALETTE, jitter=14.0, dark=(22, 30, 46),
        lamps=((255, 40, 30), (255, 190, 20), (40, 255, 90), (255, 250, 230)),
        skins=((232, 186, 150), (190, 140, 100), (120, 80, 56)),
        paint=((245, 245, 240), (250, 210, 40)),
        tint=(1.08, 1.0, 0.86), gamma=(0.8, 0.95), contrast=(1.05, 1.2), lift=(-12.0, 0.0),
        shadow=0.5, noise=(0.5, 2.5), vignette=0.0, blur=False, periods=(14.0, 8.0, 11.0, 6.0),
    ),
    "target": DomainLook(
        palette=_TARGET_PALETTE, jitter=16.0, dark=(16, 18, 20),
        lamps=((190, 60, 50), (190, 150, 60), (80, 180, 120), (210, 210, 200)),
        skins=((210, 176, 160), (150, 116, 96)),
        paint=((196, 196, 188), (188, 170, 96)),
        tint=(0.94, 1.0, 1.04), gamma=(1.05, 1.3), contrast=(0.75, 0.9), lift=(12.0, 28.0),
        shadow=0.85, noise=(4.0, 8.0), vignette=0.25, blur=True, periods=(6.0, 5.0, 7.0, 10.0),
    ),
}  # fmt: skip

# Texture amplitude per class and field (fine noise, blotches, horizontal lines, window grid,
# vertical stripes, vertical ramp) for each domain; rows are trainIds 0..18 (two per line,
# road and sidewalk first) and the hood.
_SOURCE_TEXTURE = np.array([
    [0.10, 0.06, 0.00, 0.00, 0.00, 0.25], [0.08, 0.05, 0.18, 0.00, 0.12, 0.15],
    [0.04, 0.05, 0.10, 0.40, 0.00, 0.00], [0.05, 0.08, 0.20, 0.00, 0.00, 0.00],
    [0.04, 0.04, 0.00, 0.00, 0.50, 0.00], [0.03, 0.00, 0.00, 0.00, 0.00, 0.00],
    [0.03, 0.00, 0.00, 0.00, 0.00, 0.00], [0.02, 0.00, 0.00, 0.00, 0.00, 0.00],
    [0.25, 0.20, 0.00, 0.00, 0.00, 0.00], [0.18, 0.14, 0.00, 0.00, 0.00, 0.20],
    [0.01, 0.06, 0.00, 0.00, 0.00, 0.60], [0.06, 0.00, 0.00, 0.00, 0.00, 0.00],
    [0.06, 0.00, 0.00, 0.00, 0.00, 0.00], [0.03, 0.02, 0.00, 0.00, 0.00, 0.00],
    [0.03, 0.02, 0.00, 0.00, 0.25, 0.00], [0.03, 0.02, 0.00, 0.00, 0.00, 0.00],
    [0.03, 0.02, 0.00, 0.00, 0.15, 0.00], [0.04, 0.00, 0.00, 0.00, 0.00, 0.00],
    [0.04, 0.00, 0.00, 0.00, 0.00, 0.00], [0.02, 0.00, 0.00, 0.00, 0.00, 0.00],
], np.float32)  # fmt: skip
_TARGET_TEXTURE = np.array([
    [0.06, 0.22, 0.00, 0.00, 0.00, 0.10], [0.05, 0.18, 0.10, 0.00, 0.06, 0.05],
    [0.04, 0.16, 0.05, 0.30, 0.00, 0.00], [0.05, 0.25, 0.06, 0.00, 0.00, 0.00],
    [0.04, 0.10, 0.00, 0.00, 0.35, 0.00], [0.03, 0.06, 0.00, 0.00, 0.00, 0.00],
    [0.03, 0.00, 0.00, 0.00, 0.00, 0.00], [0.03, 0.05, 0.00, 0.00, 0.00, 0.00],
    [0.12, 0.40, 0.00, 0.00, 0.00, 0.00], [0.10, 0.30, 0.00, 0.00, 0.00, 0.10],
    [0.01, 0.10, 0.00, 0.00, 0.00, 0.25], [0.04, 0.06, 0.00, 0.00, 0.00, 0.00],
    [0.04, 0.06, 0.00, 0.00, 0.00, 0.00], [0.03, 0.08, 0.00, 0.00, 0.00, 0.00],
    [0.03, 0.10, 0.00, 0.00, 0.12, 0.00], [0.03, 0.08, 0.00, 0.00, 0.00, 0.00],
    [0.03, 0.10, 0.00, 0.00, 0.10, 0.00], [0.03, 0.05, 0.00, 0.00, 0.00, 0.00],
    [0.03, 0.05, 0.00, 0.00, 0.00, 0.00], [0.02, 0.04, 0.00, 0.00, 0.00, 0.00],
], np.float32)  # fmt: skip
TEXTURES = {"source": _SOURCE_TEXTURE, "target": _TARGET_TEXTURE}


def _check_domain(domain: str) -> int:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    return DOMAINS.index(domain)


# ----------------------------------------------------------------------------------------
# Rasterisation. Shapes are collected in painting order and rasterised together into row
# spans: per covered row of each shape, (shape, row, first column, end column).
# ----------------------------------------------------------------------------------------
Spans = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _expand_rows(r0: np.ndarray, r1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shape index and row `[S]` for rows [r0[k], r1[k]) of every shape k."""
    n = np.maximum(r1 - r0, 0)
    shape = np.repeat(np.arange(len(n)), n)
    start = np.cumsum(n) - n
    return shape, r0[shape] + np.arange(len(shape)) - start[shape]


def _rows(top: np.ndarray, bottom: np.ndarray, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose pixel centre lies in [top, bottom), clipped to the image."""
    r0 = np.clip(np.ceil(top - 0.5), 0, height).astype(np.int64)
    r1 = np.clip(np.ceil(bottom - 0.5), 0, height).astype(np.int64)
    return _expand_rows(r0, r1)


def _columns(x: np.ndarray, width: int) -> np.ndarray:
    """First pixel column whose centre is at or right of x, clipped to [0, width]; a span
    [left, right) covers the pixels whose centres are in it."""
    return np.clip(np.ceil(x - 0.5), 0, width).astype(np.int64)


def polygon_spans(xs: np.ndarray, ys: np.ndarray, height: int, width: int) -> Spans:
    """Spans of convex polygons with vertices `xs`, `ys` `[K, V]` in pixels.

    A pixel is covered when its centre is inside. Triangles repeat a vertex (edges that do
    not cross a row centre are ignored).
    """
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    shape, row = _rows(ys.min(axis=1), ys.max(axis=1), height)
    # Edge-major [V, K] tables, so that per-span work reduces across rows of arrays.
    x0, y0 = xs.T, ys.T
    x1, y1 = np.roll(x0, -1, axis=0), np.roll(y0, -1, axis=0)
    dy = y1 - y0
    flat = dy == 0
    slope = (x1 - x0) / np.where(flat, 1.0, dy)
    lo = np.where(flat, np.inf, np.minimum(y0, y1))  # horizontal edges never match a row
    hi = np.maximum(y0, y1)
    yc = row + 0.5
    per_span = (np.take(a, shape, axis=1) for a in (lo, hi, x0, y0, slope))
    lo, hi, x0, y0, slope = per_span
    inside = (yc >= lo) & (yc <= hi)
    xi = x0 + (yc - y0) * slope
    left = np.where(inside, xi, np.inf).min(axis=0)
    right = np.where(inside, xi, -np.inf).max(axis=0)
    return shape, row, _columns(left, width), _columns(right, width)


def ellipse_spans(cx, cy, rx, ry, height: int, width: int) -> Spans:
    """Spans of axis-aligned ellipses, centres and radii `[K]` in pixels."""
    cx, cy, rx, ry = (np.asarray(a, np.float64) for a in (cx, cy, rx, ry))
    shape, row = _rows(cy - ry, cy + ry, height)
    dy = (row + 0.5 - cy[shape]) / ry[shape]
    half = rx[shape] * np.sqrt(np.maximum(0.0, 1.0 - dy * dy))
    return shape, row, _columns(cx[shape] - half, width), _columns(cx[shape] + half, width)


def fill_spans(target: np.ndarray, spans: Spans, values, *, scale: bool = False) -> None:
    """Paint `values[shape]` into `target` `[H, W]` span by span, shapes in ascending order
    (later shapes cover earlier ones); with `scale`, multiply instead.

    Spans must be grouped by shape with consecutive rows, as the `*_spans` functions give.
    """
    shape, row, left, right = spans
    if len(shape) == 0:
        return
    starts = np.flatnonzero(np.diff(shape, prepend=-1))
    ends = np.append(starts[1:], len(shape))
    c0, c1 = np.minimum.reduceat(left, starts), np.maximum.reduceat(right, starts)
    # Shapes whose rows all span the same columns (upright rectangles) fill as one block.
    block = (np.maximum.reduceat(left, starts) == c0) & (np.minimum.reduceat(right, starts) == c1)
    cols = np.arange(target.shape[1])
    per_shape = (starts, ends, c0, c1, shape[starts], row[starts], block)
    for s0, s1, a, b, k, r0, is_block in zip(*(x.tolist() for x in per_shape), strict=True):
        if b <= a:
            continue
        window = target[r0 : r0 + s1 - s0, a:b]
        if is_block:
            mask = ...
        else:
            mask = (cols[a:b] >= left[s0:s1, None]) & (cols[a:b] < right[s0:s1, None])
        if scale:
            window[mask] *= values[k]
        else:
            window[mask] = values[k]


def _merge(a: Spans, b: Spans, order_a: np.ndarray, order_b: np.ndarray) -> Spans:
    """Spans of two shape lists as one, shapes renumbered by their painting order."""
    shape = np.concatenate([order_a[a[0]], order_b[b[0]]])
    idx = np.argsort(shape, kind="stable")  # keeps each shape's rows consecutive
    row, left, right = (np.concatenate([x, y])[idx] for x, y in zip(a[1:], b[1:], strict=True))
    return shape[idx], row, left, right


@dataclasses.dataclass(frozen=True)
class Camera:
    """Pinhole camera looking along +Z, level, `cam_h` metres above a flat road."""

    height: int
    width: int
    horizon: float  # image row of the horizon
    vp_x: float  # image column of the vanishing point
    focal: float  # pixels
    cam_h: float

    def project(self, x: float, y: float, z: float) -> tuple[float, float]:
        """World (lateral m, height m, depth m) -> image (column, row)."""
        s = self.focal / max(z, 0.2)
        return self.vp_x + x * s, self.horizon + (self.cam_h - y) * s


class Canvas:
    """Shapes in painting order, each the colour of one part; per part its class, colour
    kind, instance and shade. `rasterise` paints the part-id map `part` `[H, W]` (intp)."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self.part = np.zeros((height, width), np.uint16)  # part 0 = the sky
        self.part_cls: list[int] = []
        self.part_kind: list[int] = []
        self.part_inst: list[int] = []
        self.part_shade: list[float] = []
        self.inst_cls: list[int] = []
        self.polygons: list[tuple[int, list[float], list[float], int]] = []  # order, xs, ys, part
        self.ellipses: list[tuple[int, float, float, float, float, int]] = []
        self.shadows: list[tuple[list[float], list[float]]] = []  # polygons darkened later
        self.count = 0

    def instance(self, cls: int) -> int:
        self.inst_cls.append(cls)
        return len(self.inst_cls) - 1

    def new_part(self, inst: int, kind: int = BODY, shade: float = 1.0) -> int:
        self.part_cls.append(self.inst_cls[inst])
        self.part_kind.append(kind)
        self.part_inst.append(inst)
        self.part_shade.append(shade)
        return len(self.part_cls) - 1

    def _visible(self, left: float, right: float, top: float, bottom: float) -> bool:
        return right > 0 and left < self.width and bottom > 0 and top < self.height

    def polygon(self, xs: list[float], ys: list[float], pid: int) -> None:
        """A convex polygon of at most 4 vertices (pixels)."""
        if self._visible(min(xs), max(xs), min(ys), max(ys)):
            pad = 4 - len(xs)
            self.polygons.append((self.count, xs + xs[-1:] * pad, ys + ys[-1:] * pad, pid))
            self.count += 1

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, pid: int) -> None:
        if self._visible(cx - rx, cx + rx, cy - ry, cy + ry):
            self.ellipses.append((self.count, cx, cy, rx, ry, pid))
            self.count += 1

    def rasterise(self) -> None:
        h, w = self.height, self.width
        po = np.array([p[0] for p in self.polygons] or np.zeros(0), np.int64)
        eo = np.array([e[0] for e in self.ellipses] or np.zeros(0), np.int64)
        xs = np.array([p[1] for p in self.polygons]).reshape(-1, 4)
        ys = np.array([p[2] for p in self.polygons]).reshape(-1, 4)
        ell = np.array([e[1:5] for e in self.ellipses]).reshape(-1, 4).T
        spans = _merge(polygon_spans(xs, ys, h, w), ellipse_spans(*ell, h, w), po, eo)
        pids = np.zeros(self.count, np.uint16)
        pids[po] = [p[3] for p in self.polygons]
        pids[eo] = [e[5] for e in self.ellipses]
        fill_spans(self.part, spans, pids)
        self.part = self.part.astype(np.intp)  # `np.take` is fastest with native indices

    def labels(self) -> np.ndarray:
        """trainIds `[H, W]` int32 (the hood's class row is read as IGNORE)."""
        cls = np.asarray(self.part_cls, np.int32)
        return np.take(np.where(cls == HOOD, IGNORE, cls), self.part)


# ----------------------------------------------------------------------------------------
# Scene grammar. Lengths are metres; X < 0 is the left of the camera, Z the depth.
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Street:
    road: tuple[float, float]  # lateral extent of the road (left < 0 < right)
    lawn: tuple[float, float]  # grass strip between kerb and sidewalk (0 = none)
    curb: tuple[float, float]  # outer edges of the sidewalks
    front: tuple[float, float]  # building lines
    lanes: tuple[float, ...]  # lane centres


class Scene:
    """Drawing helpers in world coordinates over one canvas, with the scene's random stream."""

    def __init__(self, rng: np.random.Generator, cam: Camera, layout: DomainLayout, street):
        self.rng, self.cam, self.layout, self.street = rng, cam, layout, street
        self.canvas = Canvas(cam.height, cam.width)
        self.deferred: list[tuple[float, int, object]] = []  # (depth, order, draw) for later
        self._uniform: list[float] = []

    def rand(self) -> float:
        """A uniform number in [0, 1)."""
        # Uniforms drawn in blocks: one generator call per draw would dominate scene time.
        if not self._uniform:
            self._uniform = self.rng.random(256).tolist()
        return self._uniform.pop()

    def u(self, low: float, high: float) -> float:
        return low + (high - low) * self.rand()

    def near(self, low: float, high: float) -> float:
        """A depth in [low, high], denser near the camera (so small classes are not only
        a few pixels big)."""
        return low + (high - low) * self.rand() ** 1.6

    def chance(self, p: float) -> bool:
        return self.rand() < p

    def pick(self, n: int) -> int:
        """An integer in [0, n)."""
        return min(int(self.rand() * n), n - 1)

    def part(self, cls: int, kind: int = BODY, shade: float = 1.0) -> int:
        """A one-part instance of `cls`."""
        return self.canvas.new_part(self.canvas.instance(cls), kind, shade)

    def defer(self, depth: float, draw) -> None:
        """Draw later, far to near, so that nearer objects cover farther ones."""
        self.deferred.append((depth, len(self.deferred), draw))

    def poly(self, pid: int, x, y, z) -> None:
        """A convex polygon (at most 4 vertices); x, y, z are lists or scalars."""
        n = len(x) if isinstance(x, list) else len(y) if isinstance(y, list) else len(z)
        x, y, z = ((v if isinstance(v, list) else [v] * n) for v in (x, y, z))
        cam = self.cam
        focal, vp_x, horizon, cam_h = cam.focal, cam.vp_x, cam.horizon, cam.cam_h
        cols, rows = [], []
        for xi, yi, zi in zip(x, y, z, strict=True):  # plain floats: faster than numpy here
            s = focal / max(zi, 0.2)
            cols.append(vp_x + xi * s)
            rows.append(horizon + (cam_h - yi) * s)
        self.canvas.polygon(cols, rows, pid)

    def ellipse(self, pid: int, x: float, y: float, z: float, rx: float, ry: float) -> None:
        col, row = self.cam.project(x, y, z)
        s = self.cam.focal / z
        self.canvas.ellipse(col, row, max(rx * s, 0.6), ry * s, pid)

    def rect(self, pid: int, x0: float, x1: float, y0: float, y1: float, z: float) -> None:
        """An upright rectangle facing the camera at depth z, at least one pixel wide."""
        s = self.cam.focal / z
        grow = max(0.0, 1.0 / s - (x1 - x0)) / 2
        self.poly(pid, [x0 - grow, x1 + grow, x1 + grow, x0 - grow], [y0, y0, y1, y1], z)

    def bar(self, pid: int, p0, p1, z: float, width: float) -> None:
        """A thick segment from p0 = (x, y) to p1 at depth z (frames, arms, limbs)."""
        (x0, y0), (x1, y1) = p0, p1
        length = max(np.hypot(x1 - x0, y1 - y0), 1e-6)
        half = max(width, 1.0 * z / self.cam.focal) / 2
        nx, ny = -(y1 - y0) / length * half, (x1 - x0) / length * half
        self.poly(
            pid, [x0 + nx, x1 + nx, x1 - nx, x0 - nx], [y0 + ny, y1 + ny, y1 - ny, y0 - ny], z
        )

    def ground(self, pid: int, x0: float, x1: float, z0: float, z1: float) -> None:
        self.poly(pid, [x0, x1, x1, x0], 0.0, [z0, z0, z1, z1])

    def side(self, pid: int, x: float, y0: float, y1: float, z0: float, z1: float) -> None:
        """A vertical plane along the street at lateral x (facades, walls, vehicle sides)."""
        self.poly(pid, x, [y0, y1, y1, y0], [z0, z0, z1, z1])

    def box(self, pids, x0, x1, y0, y1, z0, z1) -> None:
        """A box aligned with the street: visible side, top (if below the eye), then front.

        pids = (front, side, top); a None part is not drawn.
        """
        front, side, top = pids
        face_x = x0 if x0 > 0 else (x1 if x1 < 0 else None)
        if side is not None and face_x is not None:
            self.side(side, face_x, y0, y1, z0, z1)
        if top is not None and y1 < self.cam.cam_h:
            self.poly(top, [x0, x1, x1, x0], y1, [z0, z0, z1, z1])
        if front is not None:
            self.rect(front, x0, x1, y0, y1, z0)

    def side_wheel(self, pid: int, x: float, z: float, r: float) -> None:
        """A wheel on a vehicle side at lateral x, foreshortened by the viewing angle."""
        ca, _ = self.cam.project(x, r, z - r)
        cb, _ = self.cam.project(x, r, z + r)
        _, row = self.cam.project(x, r, z)
        rx = max(abs(ca - cb) / 2, 0.6)
        self.canvas.ellipse((ca + cb) / 2, row, rx, r * self.cam.focal / z, pid)


def _make_street(rng: np.random.Generator, layout: DomainLayout) -> Street:
    """Road, sidewalks (with an optional lawn strip at the kerb) and building lines."""
    width = rng.uniform(*layout.road_width)
    left = -width * rng.uniform(0.3, 0.75)
    road = (left, left + width)
    lawn, curb, front = [], [], []
    for sign, edge in ((-1, road[0]), (1, road[1])):
        lawn.append(rng.uniform(0.8, 2.0) if rng.random() < 0.25 else 0.0)
        walk = lawn[-1] + rng.uniform(1.8, 4.5)
        verge = rng.uniform(1.0, 4.0) if rng.random() < layout.p_verge else 0.0
        curb.append(edge + sign * walk)
        front.append(edge + sign * (walk + verge))
    n_lanes = max(1, int(round(width / 3.3)))
    lanes = tuple(left + (k + 0.5) * width / n_lanes for k in range(n_lanes))
    return Street(road, tuple(lawn), tuple(curb), tuple(front), lanes)


def _draw_background(sc: Scene) -> None:
    """Sky (part 0, which the canvas starts as), a distant skyline and the ground plane."""
    cam, h, w = sc.cam, sc.cam.height, sc.cam.width
    sc.part(SKY)
    terrain = sc.part(TERRAIN, shade=0.95)
    sc.canvas.polygon([-1, w + 1, w + 1, -1], [cam.horizon] * 2 + [h + 1] * 2, terrain)
    z = sc.u(120.0, 250.0)
    x, x_end = -z * (cam.vp_x + 2) / cam.focal, z * (w - cam.vp_x + 2) / cam.focal
    while x < x_end:
        width = sc.u(10.0, 40.0)
        if sc.chance(0.65):
            sc.rect(sc.part(BUILDING, shade=0.9), x, x + width, 0.0, sc.u(5.0, 45.0), z)
        elif sc.chance(0.8):
            tall = sc.u(4.0, 12.0)
            sc.ellipse(sc.part(VEGETATION, shade=0.85), x + width / 2, tall / 2, z, width / 2, tall)
        x += width


def _draw_ground(sc: Scene, track: float | None) -> None:
    """Sidewalks with kerbs and lawns, the road, its markings and (for a train) a track."""
    st = sc.street
    for side, sign in ((0, -1), (1, 1)):
        edge = st.road[side]
        sc.ground(sc.part(SIDEWALK), edge, st.curb[side], 0.5, FAR)
        if st.lawn[side] > 0:
            sc.ground(sc.part(TERRAIN), edge + sign * 0.3, edge + sign * st.lawn[side], 0.5, FAR)
        sc.ground(sc.part(SIDEWALK, SECOND), edge, edge + sign * 0.3, 0.5, FAR)  # kerb stones
    road = sc.canvas.instance(ROAD)
    sc.ground(sc.canvas.new_part(road), *st.road, 0.5, FAR)
    _draw_markings(sc, sc.canvas.new_part(road, PAINT))
    if track is not None:
        sc.ground(sc.canvas.new_part(road, SECOND, 0.9), track - 1.3, track + 1.3, 0.5, FAR)
        rail = sc.canvas.new_part(road, DARK)
        for offset in (-0.75, 0.75):
            sc.ground(rail, track + offset - 0.05, track + offset + 0.05, 0.5, FAR)
    if sc.chance(0.7):  # sun from one side: the facades there shade part of the street
        side = sc.pick(2)
        x0 = st.front[side]
        x1 = x0 - (1 if side else -1) * sc.u(2.0, 9.0)
        corners = [
            sc.cam.project(x, 0.0, z) for x, z in ((x0, 0.5), (x1, 0.5), (x1, FAR), (x0, FAR))
        ]
        sc.canvas.shadows.append(tuple(map(list, zip(*corners, strict=True))))


def _draw_markings(sc: Scene, paint: int) -> None:
    """Dashed lane lines, optional edge lines and an optional zebra crossing."""
    st = sc.street
    for a, b in zip(st.lanes[:-1], st.lanes[1:], strict=True):
        x = (a + b) / 2
        z = sc.u(0.0, 9.0)
        while z < 70.0:
            sc.ground(paint, x - 0.08, x + 0.08, z, z + 3.0)
            z += 9.0
    if sc.chance(0.6):
        for edge, sign in ((st.road[0], 1), (st.road[1], -1)):
            sc.ground(paint, edge + sign * 0.35, edge + sign * 0.5, 0.5, FAR)
    if sc.chance(0.25):
        z, x = sc.u(7.0, 30.0), st.road[0] + 0.3
        while x < st.road[1] - 0.5:
            sc.ground(paint, x, x + 0.5, z, z + 3.0)
            x += 1.0


def _draw_side(sc: Scene, side: int, z_end: float) -> None:
    """Facades, parks and open plots along one side up to z_end, far to near, with walls
    and fences in front of some."""
    sign, front = (-1, 1)[side], sc.street.front[side]
    segments, z = [], sc.u(0.5, 3.0)
    while z < z_end:
        length = sc.u(8.0, 30.0)
        segments.append((z, min(z + length, z_end)))
        z += length
    for z0, z1 in reversed(segments):
        roll = sc.rand()
        if roll < sc.layout.p_building:
            setback = sign * sc.u(0.0, 3.0) if sc.chance(0.3) else 0.0
            _facade(sc, front + setback, z0, z1, shade=(0.85, 1.05)[side])
        elif roll < sc.layout.p_building + 0.75 * (1 - sc.layout.p_building):
            _park(sc, front, sign, z0, z1)
        if sc.chance(0.35):
            cls = WALL if sc.chance(0.5) else FENCE
            top = sc.u(0.8, 2.5) if cls == WALL else sc.u(1.0, 2.2)
            a = z0 + sc.u(0.0, 0.4) * (z1 - z0)
            sc.side(sc.part(cls), front - sign * 0.3, 0.0, top, a, z1 - sc.u(0.0, 0.3) * (z1 - a))


def _facade(sc: Scene, x: float, z0: float, z1: float, shade: float) -> None:
    c = sc.canvas
    inst = c.instance(BUILDING)
    sc.side(c.new_part(inst, BODY, shade), x, 0.0, sc.u(6.0, 28.0), z0, z1)
    if sc.chance(0.5):  # shop fronts on the ground floor
        sc.side(c.new_part(inst, SECOND, shade), x, 0.0, sc.u(2.8, 4.2), z0, z1)


def _park(sc: Scene, front: float, sign: int, z0: float, z1: float) -> None:
    """Trees behind an optional hedge; the ground between stays terrain."""
    zs = np.sort(sc.rng.uniform(z0, z1, 1 + int((z1 - z0) / 7)))[::-1]
    for z in zs:
        _tree(sc, front + sign * sc.u(0.5, 5.0), float(z), big=True)
    if sc.chance(0.5):
        sc.side(sc.part(VEGETATION, shade=0.9), front, 0.0, sc.u(0.8, 1.6), z0, z1)


def _tree(sc: Scene, x: float, z: float, big: bool = False) -> None:
    c = sc.canvas
    inst = c.instance(VEGETATION)
    trunk = sc.u(2.0, 4.0) if big else sc.u(1.8, 3.0)
    radius = sc.u(2.0, 4.5) if big else sc.u(1.2, 2.6)
    sc.rect(c.new_part(inst, DARK), x - 0.15, x + 0.15, 0.0, trunk + radius * 0.5, z)
    for k in range(2):
        dx, dy = sc.u(-0.5, 0.5) * radius, sc.u(0.6, 1.1) * radius
        crown = c.new_part(inst, BODY, (0.85, 1.1)[k])
        sc.ellipse(crown, x + dx, trunk + dy, z, radius, radius * sc.u(0.8, 1.2))


def _pole(sc: Scene, x: float, z: float, toward: int) -> None:
    """A pole with, at random, signs and a traffic light (on top or on an arm over the road).

    toward: +1 / -1, the direction of the road from the pole.
    """
    c = sc.canvas
    pid = sc.part(POLE)
    top = sc.u(3.5, 8.0)
    sc.rect(pid, x - 0.11, x + 0.11, 0.0, top, z)
    if sc.chance(0.55):
        _sign(sc, x + toward * sc.u(0.0, 0.4), sc.u(2.2, max(2.3, top - 0.5)), z, sc.u(0.6, 1.0))
    if sc.chance(0.5):
        inst = c.instance(LIGHT)
        lx = x
        if sc.chance(0.4):  # on an arm over the road
            lx = x + toward * sc.u(2.0, 5.0)
            sc.bar(pid, (x, top - 0.1), (lx, top - 0.1), z, 0.12)
        housing = c.new_part(inst, BODY)
        sc.rect(housing, lx - 0.2, lx + 0.2, top - 1.15, top - 0.05, z)
        lamp = c.new_part(inst, LAMP)
        for k in range(3):
            sc.ellipse(lamp, lx, top - 0.28 - 0.32 * k, z, 0.12, 0.12)
    elif sc.chance(0.4):  # a street lamp head
        sc.bar(pid, (x, top), (x + toward * 1.2, top + 0.2), z, 0.1)


def _sign(sc: Scene, x: float, y: float, z: float, size: float) -> None:
    c = sc.canvas
    inst = c.instance(SIGN)
    rim, face = c.new_part(inst, SECOND), c.new_part(inst, BODY)
    shape = sc.pick(3)
    for pid, r in ((rim, size / 2), (face, size * 0.4)):
        if shape == 0:
            sc.ellipse(pid, x, y, z, r, r)
        elif shape == 1:
            sc.rect(pid, x - r, x + r, y - r, y + r, z)
        else:
            sc.poly(pid, [x - r, x + r, x], [y + r * 0.6, y + r * 0.6, y - r], z)


def _person(sc: Scene, x: float, z: float) -> None:
    """A walking pedestrian, feet at (x, 0, z)."""
    c = sc.canvas
    inst = c.instance(PERSON)
    torso, legs, skin = c.new_part(inst, BODY), c.new_part(inst, SECOND), c.new_part(inst, SKIN)
    h = sc.u(1.5, 1.95)
    stride, half = sc.u(-0.16, 0.16) * h, h * sc.u(0.11, 0.14)
    hip, shoulder = 0.52 * h, 0.82 * h
    for sgn in (-1, 1):
        sc.bar(legs, (x + sgn * 0.05 * h, hip), (x + sgn * (0.05 * h + stride), 0.0), z, 0.09 * h)
        hand = (x + sgn * (half - stride * 0.5), 0.5 * h)
        sc.bar(torso, (x + sgn * half, shoulder), hand, z, 0.06 * h)  # arms in sleeves
    waist = hip - 0.04 * h
    xs = [x - half, x + half, x + 0.8 * half, x - 0.8 * half]
    sc.poly(torso, xs, [shoulder, shoulder, waist, waist], z)
    sc.ellipse(skin, x, 0.91 * h, z, 0.05 * h, 0.065 * h)
    if sc.chance(0.6):
        sc.ellipse(c.new_part(inst, DARK), x, 0.95 * h, z, 0.052 * h, 0.035 * h)


def _cyclist(sc: Scene, x: float, z: float, *, motor: bool, side_view: bool, rider: bool):
    """A bicycle or motorcycle seen from the side or from behind, with or without its rider."""
    c = sc.canvas
    inst = c.instance(MOTORCYCLE if motor else BICYCLE)
    body, tyre, hub = c.new_part(inst, BODY), c.new_part(inst, DARK), c.new_part(inst, SECOND)
    r = 0.31 if motor else 0.34
    seat = 0.85 if motor else 0.95
    d = 1 if sc.chance(0.5) else -1
    if side_view:
        base = 0.7 if motor else 0.53
        for wx in (x - d * base, x + d * base):
            sc.ellipse(tyre, wx, r, z, r, r)
            sc.ellipse(hub, wx, r, z, r * (0.35 if motor else 0.75), r * (0.35 if motor else 0.75))
        if motor:
            sc.ellipse(body, x, 0.6, z, 0.55, 0.22)
        else:
            for p0, p1 in (
                ((x - d * base, r), (x - d * 0.15, seat)),
                ((x - d * 0.15, seat), (x + d * 0.35, seat)),
                ((x + d * 0.35, seat + 0.1), (x + d * base, r)),
                ((x, 0.3), (x - d * 0.15, seat)),
                ((x, 0.3), (x + d * 0.35, seat)),
            ):
                sc.bar(body, p0, p1, z, 0.05)
        handle = (x + d * 0.4, seat + 0.15)
    else:
        sc.rect(tyre, x - 0.05, x + 0.05, 0.0, 2 * r, z)
        if motor:
            sc.rect(body, x - 0.33, x + 0.33, 0.35, 0.95, z)
            sc.rect(c.new_part(inst, LAMP), x - 0.08, x + 0.08, 0.75, 0.85, z)
        sc.bar(body, (x - 0.3, seat + 0.1), (x + 0.3, seat + 0.1), z, 0.05)
        handle = (x + 0.28, seat + 0.1)
    if rider:
        _rider(sc, x, z, seat, handle, side_view, d, helmet=motor or sc.chance(0.3))


def _rider(sc: Scene, x, z, seat, handle, side_view: bool, d: int, helmet: bool) -> None:
    c = sc.canvas
    inst = c.instance(RIDER)
    torso, legs, skin = c.new_part(inst, BODY), c.new_part(inst, SECOND), c.new_part(inst, SKIN)
    hip = (x - d * 0.15, seat + 0.05) if side_view else (x, seat + 0.05)
    shoulder = (hip[0] + d * 0.15, hip[1] + 0.55) if side_view else (x, hip[1] + 0.58)
    if side_view:
        sc.bar(legs, hip, (x + d * 0.1, 0.55), z, 0.14)
        sc.bar(legs, (x + d * 0.1, 0.55), (x, 0.3), z, 0.11)
        sc.bar(torso, hip, shoulder, z, 0.32)
    else:
        for sgn in (-1, 1):
            sc.bar(legs, (x + sgn * 0.12, hip[1]), (x + sgn * 0.14, 0.3), z, 0.13)
        ys = [shoulder[1], shoulder[1], hip[1], hip[1]]
        sc.poly(torso, [x - 0.2, x + 0.2, x + 0.16, x - 0.16], ys, z)
    sc.bar(torso, shoulder, handle, z, 0.09)
    head = (shoulder[0] + (d * 0.06 if side_view else 0.0), shoulder[1] + 0.15)
    sc.ellipse(skin, *head, z, 0.1, 0.12)
    if helmet:
        sc.ellipse(c.new_part(inst, DARK), head[0], head[1] + 0.05, z, 0.12, 0.09)


def _wheels(sc: Scene, tyre: int, x0: float, x1: float, z: float, length: float, r: float):
    """Rear tyres under the body and, on the visible side, two side wheels."""
    for a in (x0 + 0.05, x1 - 0.05 - 2 * r * 0.8):
        sc.rect(tyre, a, a + 2 * r * 0.8, 0.0, r * 1.3, z + 0.6)
    face = x0 if x0 > 0 else (x1 if x1 < 0 else None)
    if face is not None:
        for zw in (z + 0.5 + r * 2, z + length - 0.5 - r * 2):
            sc.side_wheel(tyre, face, zw, r)


def _car(sc: Scene, x: float, z: float) -> None:
    c = sc.canvas
    inst = c.instance(CAR)
    half, length = sc.u(0.82, 0.98), sc.u(3.8, 4.8)
    belt, roof = sc.u(0.9, 1.1), sc.u(1.35, 1.6)
    body, glass = c.new_part(inst, BODY), c.new_part(inst, DARK)
    side, top = c.new_part(inst, BODY, 0.75), c.new_part(inst, BODY, 1.15)
    _wheels(sc, c.new_part(inst, DARK, 0.5), x - half, x + half, z, length, 0.33)
    sc.box((None, side, top), x - half, x + half, 0.25, belt, z, z + length)
    cabin = (glass, c.new_part(inst, DARK, 0.8), top)
    sc.box(cabin, x - half + 0.12, x + half - 0.12, belt, roof, z + 0.9, z + length - 1.2)
    sc.rect(body, x - half, x + half, 0.25, belt, z)
    lamp = c.new_part(inst, LAMP)
    for a in (x - half + 0.05, x + half - 0.35):
        sc.rect(lamp, a, a + 0.3, belt - 0.25, belt - 0.08, z)


def _long_vehicle(sc: Scene, cls: int, x: float, z: float, length: float) -> None:
    """Bus, train or truck: a tall box with windows, wheels and lamps."""
    c = sc.canvas
    inst = c.instance(cls)
    half = {TRUCK: 1.25, BUS: 1.27, TRAIN: 1.4}[cls]
    y0, y1 = {TRUCK: (0.6, sc.u(3.2, 3.8)), BUS: (0.3, 3.1), TRAIN: (0.5, 3.9)}[cls]
    body, side, dark = c.new_part(inst, BODY), c.new_part(inst, BODY, 0.78), c.new_part(inst, DARK)
    if cls == TRUCK:  # the cab in front of the cargo box
        cab = (None, c.new_part(inst, SECOND, 0.78), None)
        sc.box(cab, x - 1.15, x + 1.15, 0.5, 3.0, z + length, z + length + 2.3)
    if cls == TRAIN:
        sc.bar(dark, (x - 0.3, y1), (x + 0.3, y1 + 0.8), z + 3.0, 0.06)  # pantograph
    sc.box((None, side, None), x - half, x + half, y0, y1, z, z + length)
    face = x - half if x - half > 0 else (x + half if x + half < 0 else None)
    if cls != TRUCK and face is not None:
        sc.side(c.new_part(inst, DARK, 0.8), face, y0 + 1.4, y0 + 2.4, z + 0.5, z + length - 0.5)
    _wheels(sc, c.new_part(inst, DARK, 0.5), x - half, x + half, z, length, 0.5)
    sc.rect(body, x - half, x + half, y0, y1, z)
    lamp = c.new_part(inst, LAMP)
    if cls == TRUCK:
        sc.rect(dark, x - half, x + half, 0.35, 0.6, z)
    else:
        sc.rect(dark, x - half + 0.15, x + half - 0.15, y0 + 1.2, y1 - 0.35, z)
        sc.rect(lamp, x - 0.8, x + 0.8, y1 - 0.3, y1 - 0.12, z)
    for a in (x - half + 0.1, x + half - 0.4):
        sc.rect(lamp, a, a + 0.3, y0 + 0.2, y0 + 0.45, z)


class _Lanes:
    """Which depth intervals of each lane are taken, so vehicles do not overlap."""

    def __init__(self, sc: Scene):
        self.sc, self.taken = sc, {k: [] for k in range(len(sc.street.lanes))}
        self.ego = int(np.argmin(np.abs(sc.street.lanes)))

    def slot(self, lane: int, length: float, z_max: float = 70.0) -> float | None:
        """A free start depth for a vehicle of `length` in `lane`, or None after a few tries."""
        z_min = 9.0 if lane == self.ego else 4.0
        for _ in range(4):
            z = self.sc.near(z_min, z_max)
            if all(z + length + 1.5 < a or z > b + 1.5 for a, b in self.taken[lane]):
                self.taken[lane].append((z, z + length))
                return z
        return None


def _place_vehicles(sc: Scene, lanes: _Lanes, track: int | None) -> None:
    st, lay, n = sc.street, sc.layout, len(sc.street.lanes)
    if track is not None:
        length = sc.u(25.0, 60.0)
        z = lanes.slot(track, length, 40.0)
        if z is not None:
            sc.defer(z, functools.partial(_long_vehicle, sc, TRAIN, st.lanes[track], z, length))
    free = [k for k in range(n) if k != track]  # the train has its lane to itself
    if not free:
        return
    for cls, p, length in ((TRUCK, lay.p_truck, 8.0), (BUS, lay.p_bus, 12.0)):
        lane = free[sc.pick(len(free))]
        z = lanes.slot(lane, length + (2.3 if cls == TRUCK else 0.0)) if sc.chance(p) else None
        if z is not None:
            x = st.lanes[lane] + sc.u(-0.2, 0.2)
            sc.defer(z, functools.partial(_long_vehicle, sc, cls, x, z, length))
    for _ in range(int(sc.rng.poisson(lay.counts["cars"]))):
        lane = free[sc.pick(len(free))]
        z = lanes.slot(lane, 4.8)
        if z is not None:
            sc.defer(z, functools.partial(_car, sc, st.lanes[lane] + sc.u(-0.3, 0.3), z))
    for _ in range(int(sc.rng.poisson(lay.counts["parked"]))):
        side = sc.pick(2)
        lane = (0, n - 1)[side]  # parked cars share the outer lane's depth slots
        z = lanes.slot(lane, 4.8, 50.0) if lane != track else None
        if z is not None:
            x = st.road[side] - (-1, 1)[side] * sc.u(0.9, 1.1)
            sc.defer(z, functools.partial(_car, sc, x, z))


def _place_people(sc: Scene) -> None:
    """Pedestrians, cyclists, parked bikes, poles and street trees."""
    st, counts = sc.street, sc.layout.counts

    def on_sidewalk(side: int, margin: float = 0.4) -> float:
        sign, edge = (-1, 1)[side], st.road[side]
        return edge + sign * sc.u(st.lawn[side] + margin, abs(st.curb[side] - edge) - margin)

    for _ in range(int(sc.rng.poisson(counts["persons"]))):
        side = sc.pick(2)
        if sc.chance(0.15):
            x, z = sc.u(*st.road), sc.near(6.0, 30.0)
        else:
            x, z = on_sidewalk(side), sc.near(3.0, 45.0)
        sc.defer(z, functools.partial(_person, sc, x, z))
    for _ in range(int(sc.rng.poisson(counts["riders"]))):
        side, motor, side_view = sc.pick(2), sc.chance(0.4), sc.chance(0.3)
        if side_view:
            x, z = sc.u(*st.road), sc.near(6.0, 35.0)
        else:
            x, z = st.road[side] - (-1, 1)[side] * sc.u(0.6, 1.4), sc.near(5.0, 50.0)
        draw = functools.partial(_cyclist, sc, x, z, motor=motor, side_view=side_view, rider=True)
        sc.defer(z, draw)
    for _ in range(int(sc.rng.poisson(counts["bikes"]))):
        x, z = on_sidewalk(sc.pick(2)), sc.near(3.0, 30.0)
        motor = sc.chance(0.3)
        sc.defer(z, functools.partial(_cyclist, sc, x, z, motor=motor, side_view=True, rider=False))
    for _ in range(1 + int(sc.rng.poisson(counts["poles"]))):
        side = sc.pick(2)
        x, z = st.road[side] + (-1, 1)[side] * sc.u(0.3, 0.9), sc.near(3.0, 70.0)
        sc.defer(z, functools.partial(_pole, sc, x, z, (1, -1)[side]))
    for _ in range(int(sc.rng.poisson(counts["trees"]))):
        side = sc.pick(2)
        x, z = on_sidewalk(side, 0.0), sc.near(4.0, 60.0)
        sc.defer(z + 0.5, functools.partial(_tree, sc, x, z))


def build_scene(domain: str, index: int, seed: int = 0, size=DEFAULT_SIZE) -> Scene:
    """Lay out and rasterise scene `index` of `domain`: labels only, no colours yet."""
    rng = np.random.default_rng([seed, _check_domain(domain), index, 0])
    lay, (h, w) = LAYOUTS[domain], size
    horizon, vp_x = h * rng.uniform(*lay.horizon), w * rng.uniform(0.4, 0.6)
    cam = Camera(h, w, horizon, vp_x, focal=0.8 * w, cam_h=rng.uniform(*lay.cam_height))
    sc = Scene(rng, cam, lay, _make_street(rng, lay))
    lanes = _Lanes(sc)
    track = int(rng.integers(len(sc.street.lanes))) if sc.chance(lay.p_train) else None
    _draw_background(sc)
    _draw_ground(sc, None if track is None else sc.street.lanes[track])
    z_end = sc.u(90.0, 130.0)
    if sc.chance(0.6):  # a building closing the far end of the street
        sc.rect(sc.part(BUILDING, shade=0.95), *sc.street.front, 0.0, sc.u(8.0, 30.0), z_end)
    _draw_side(sc, 0, z_end)
    _draw_side(sc, 1, z_end)
    _place_vehicles(sc, lanes, track)
    _place_people(sc)
    for _, _, draw in sorted(sc.deferred, key=lambda d: (-d[0], d[1])):
        draw()
    if sc.chance(lay.p_hood):
        depth = h * sc.u(0.06, 0.11)
        sc.canvas.ellipse(w / 2, h + depth * 0.3, w * 0.75, depth * 1.3, sc.part(HOOD))
    sc.canvas.rasterise()
    return sc


# ----------------------------------------------------------------------------------------
# Appearance: part colours under the image's light, times texture fields, plus noise.
# ----------------------------------------------------------------------------------------
def _value_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Smooth noise `[height, width]` in [-1, 1]: random values on a grid of `cell` pixels,
    interpolated with a smoothstep."""
    grid = rng.uniform(-1.0, 1.0, (int(height / cell) + 2, int(width / cell) + 2))
    y, x = np.arange(height) / cell, np.arange(width) / cell
    iy, ix = y.astype(np.int64), x.astype(np.int64)
    fy, fx = y - iy, x - ix
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    rows = grid[iy] + (grid[iy + 1] - grid[iy]) * fy[:, None]
    out = rows[:, ix] + (rows[:, ix + 1] - rows[:, ix]) * fx
    return out / np.abs(out).max()


@functools.lru_cache(maxsize=8)
def texture_fields(domain: str, height: int, width: int) -> np.ndarray:
    """The domain's texture fields `[5, 2 * height, 2 * width]` float32, about [-1, 1].

    Fields: fine noise, blotches, horizontal lines (bricks, slabs), a window grid and
    vertical stripes (fences, panels). Images read them at their own random offsets. They
    come from a fixed seed, so every process computes the same ones.
    """
    look = LOOKS[domain]
    rng = np.random.default_rng([_check_domain(domain), 7919])
    h2, w2 = 2 * height, 2 * width
    blotch, lines, grid, stripes = (max(2.0, p * height / 256) for p in look.periods)
    fine = rng.uniform(-1.0, 1.0, (h2, w2))
    noise = _value_noise(rng, h2, w2, blotch)
    if look.blur:  # the real-like domain: blotches at two scales
        noise = 0.6 * noise + 0.4 * _value_noise(rng, h2, w2, blotch * 4)
    rows, cols = np.arange(h2)[:, None], np.arange(w2)[None, :]
    line_f = np.where(rows % lines < max(1.0, 0.25 * lines), -1.0, 0.3) + 0 * cols
    window = (rows % grid < 0.55 * grid) & (cols % (1.3 * grid) < 0.65 * grid)
    grid_f = np.where(window, -1.0, 0.4)
    stripe_f = np.where(cols % stripes < 0.4 * stripes, -1.0, 0.5) + 0 * rows
    return np.stack([fine, noise, line_f, grid_f, stripe_f]).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _palette_array(domain: str) -> tuple[np.ndarray, np.ndarray]:
    """Palette as `[20, K, 3]` float32 (rows padded by repetition) and colours per row `[20]`."""
    rows = LOOKS[domain].palette
    k = max(len(r) for r in rows)
    table = np.array([[r[i % len(r)] for i in range(k)] for r in rows], np.float32)
    return table, np.array([len(r) for r in rows])


def _part_colours(sc: Scene, domain: str, rng: np.random.Generator) -> np.ndarray:
    """RGB per part `[P, 3]` float32 (0..255 scale, before the light)."""
    look, c = LOOKS[domain], sc.canvas
    table, counts = _palette_array(domain)
    inst_cls = np.asarray(c.inst_cls)
    n_inst, n_parts = len(inst_cls), len(c.part_cls)
    pick = (rng.random((2, n_inst)) * counts[inst_cls]).astype(np.int64)
    # Mostly brightness changes, a little hue: instances vary but stay in their class's range.
    grey = rng.normal(0, look.jitter, (2, n_inst, 1))
    hue = rng.normal(0, look.jitter / 3, (2, n_inst, 3))
    bright = rng.uniform(0.85, 1.15, (n_inst, 1))
    primary = (table[inst_cls, pick[0]] + grey[0] + hue[0]) * bright
    secondary = table[inst_cls, pick[1]] + grey[1] + hue[1]
    skins = np.asarray(look.skins, np.float32)[rng.integers(len(look.skins), size=n_inst)]
    inst = np.asarray(c.part_inst)
    lamps = np.asarray(look.lamps, np.float32)[rng.integers(len(look.lamps), size=n_parts)]
    paint = np.asarray(look.paint, np.float32)[rng.integers(len(look.paint), size=n_parts)]
    dark = 0.3 * primary[inst] + 0.7 * np.asarray(look.dark)
    # Indexed by BODY, SECOND, DARK, LAMP, SKIN, PAINT.
    per_kind = np.stack([primary[inst], secondary[inst], dark, lamps, skins[inst], paint])
    colours = per_kind[np.asarray(c.part_kind), np.arange(n_parts)]
    return colours * np.asarray(c.part_shade, np.float32)[:, None]


def _light(colours: np.ndarray, look: DomainLook, rng: np.random.Generator) -> np.ndarray:
    """The image's light on part colours `[P, 3]`: gain and tint, gamma, contrast, lift."""
    tint = np.asarray(look.tint) * rng.uniform(0.96, 1.04, 3) * rng.uniform(0.85, 1.15)
    x = np.clip(colours * tint / 255.0, 0.0, 1.0) ** rng.uniform(*look.gamma)
    x = (x - 0.5) * rng.uniform(*look.contrast) + 0.5
    return (255.0 * x + rng.uniform(*look.lift)).astype(np.float32)


def _texture(sc: Scene, domain: str, rng: np.random.Generator, part: np.ndarray) -> np.ndarray:
    """Brightness factor `[H, W]` float32: per-class texture fields, shadows, vignetting.

    part: the part-id map `[H, W]` (intp).
    """
    c, look, (h, w) = sc.canvas, LOOKS[domain], part.shape
    fields = texture_fields(domain, h, w)
    amp = rng.uniform(0.7, 1.3, len(c.inst_cls))[np.asarray(c.part_inst)]
    weights = TEXTURES[domain][np.asarray(c.part_cls)] * amp[:, None].astype(np.float32)
    tex = np.ones((h, w), np.float32)
    buf = np.empty((h, w), np.float32)  # preallocated: fresh temporaries cost page faults
    ramp = ((np.arange(h, dtype=np.float32) + 0.5 - sc.cam.horizon) / h)[:, None]
    for k in range(weights.shape[1]):
        oy, ox = rng.integers(0, h), rng.integers(0, w)
        if not weights[:, k].any():
            continue
        np.take(np.ascontiguousarray(weights[:, k]), part, out=buf)
        buf *= ramp if k == len(fields) else fields[k, oy : oy + h, ox : ox + w]
        tex += buf
    if c.shadows:
        xs, ys = (np.array([s[i] for s in c.shadows]) for i in (0, 1))
        factors = np.full(len(c.shadows), look.shadow, np.float32)
        fill_spans(tex, polygon_spans(xs, ys, h, w), factors, scale=True)
    if look.vignette:
        tex *= _vignette(h, w, look.vignette)
    return tex


@functools.lru_cache(maxsize=8)
def _vignette(height: int, width: int, strength: float) -> np.ndarray:
    y = (np.arange(height) + 0.5) / height - 0.5
    x = (np.arange(width) + 0.5) / width - 0.5
    return (1.0 - strength * (y[:, None] ** 2 + x[None, :] ** 2) * 2).astype(np.float32)


def _blur(planes: np.ndarray) -> None:
    """In-place [1, 2, 1] / 4 blur along both image axes of planes `[C, H, W]` float32
    (the soft optics of a real camera)."""
    buf = np.empty_like(planes)
    for axis in (1, 2):
        a, b, mid = (
            tuple([slice(None)] * axis + [s]) for s in (np.s_[:-2], np.s_[2:], np.s_[1:-1])
        )
        np.add(planes[a], planes[b], out=buf[mid])
        buf[mid] *= 0.5
        buf[mid] += planes[mid]
        np.multiply(buf[mid], 0.5, out=planes[mid])


def paint(sc: Scene, domain: str, rng: np.random.Generator) -> np.ndarray:
    """The image of a built scene: uint8 RGB `[H, W, 3]`."""
    look, part = LOOKS[domain], sc.canvas.part
    h, w = part.shape
    colours = _light(_part_colours(sc, domain, rng), look, rng)
    planes = np.take(np.ascontiguousarray(colours.T), part, axis=1)  # [3, H, W]
    planes *= _texture(sc, domain, rng, part)
    oy, ox = rng.integers(0, h), rng.integers(0, w)
    sigma = np.float32(rng.uniform(*look.noise) * np.sqrt(3.0))  # the field is uniform in [-1, 1]
    planes += sigma * texture_fields(domain, h, w)[0, oy : oy + h, ox : ox + w]
    if look.blur:
        _blur(planes)
    np.clip(planes, 0, 255, out=planes)
    channels = [Image.fromarray(p) for p in planes.astype(np.uint8)]
    return np.asarray(Image.merge("RGB", channels))


def render(
    domain: str, index: int, *, seed: int = 0, size=DEFAULT_SIZE, image: bool = True
) -> tuple[np.ndarray | None, np.ndarray]:
    """Image uint8 `[H, W, 3]` (None unless `image`) and trainIds int32 `[H, W]` of scene
    `index` of `domain`; a pure function of the arguments."""
    sc = build_scene(domain, int(index), seed, tuple(size))
    labels = sc.canvas.labels()
    if not image:
        return None, labels
    rng = np.random.default_rng([seed, _check_domain(domain), int(index), 1])
    return paint(sc, domain, rng), labels


# ----------------------------------------------------------------------------------------
# Grain source, on-disk export, preview and command line.
# ----------------------------------------------------------------------------------------
class SyntheticSource:
    """Scenes 0..num_images-1 of one domain as a grain random-access source.

    `source[i]` -> {"image": uint8 `[H, W, 3]`, "label": int32 `[H, W]` trainIds} ("label"
    only with `labels=True`). Images are rendered on demand and depend only on (domain,
    seed, size, i), so the source is picklable and every worker process sees the same data.
    Different seeds give different scenes (e.g. one seed for training, one for evaluation).
    """

    def __init__(
        self, domain: str, num_images: int, size=DEFAULT_SIZE, seed: int = 0, labels: bool = True
    ):
        _check_domain(domain)
        size = tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 16:
            raise ValueError(f"size must be (height, width) of at least 16 pixels, got {size}")
        if num_images < 1 or seed < 0:
            raise ValueError(f"need num_images >= 1 and seed >= 0, got {num_images}, {seed}")
        self.domain, self.num_images, self.size, self.seed = domain, int(num_images), size, seed
        self._labels = bool(labels)

    @property
    def has_labels(self) -> bool:
        return self._labels

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        return (
            f"SyntheticSource({self.domain!r}, {self.num_images} images, size={self.size}, "
            f"seed={self.seed}, labels={self._labels})"
        )

    def _index(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self!r}")
        return index

    def read_label(self, index: int) -> np.ndarray:
        """int32 trainIds `[H, W]` (rendered without the image, for class statistics)."""
        if not self._labels:
            raise ValueError(f"{self!r} has no labels")
        return render(self.domain, self._index(index), seed=self.seed, size=self.size, image=False)[
            1
        ]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        image, label = render(self.domain, self._index(index), seed=self.seed, size=self.size)
        return {"image": image, "label": label} if self._labels else {"image": image}


EXPORT_LAYOUTS = ("gta5", "cityscapes")
CITIES = ("alderby", "brookton", "corwen")  # invented, so exports never pass for real data
_STALE = ("lcmsm_manifest.json", "lcmsm_class_stats.json")  # lcmsm-prepare's outputs


def _train_to_label_ids() -> np.ndarray:
    """`[256]` uint8 table trainId -> Cityscapes labelId; ignore and unknown -> 0."""
    lut = np.zeros(256, np.uint8)
    for label_id, (_, train_id) in label_tables.CITYSCAPES_LABEL_IDS.items():
        if train_id != IGNORE:
            lut[train_id] = label_id
    return lut


def _gta5_palette() -> list[int]:
    """GTA5's label palette: labelId -> the colour of its trainId (others black)."""
    palette = np.zeros((256, 3), np.uint8)
    for label_id, (_, train_id) in label_tables.CITYSCAPES_LABEL_IDS.items():
        if train_id != IGNORE:
            palette[label_id] = label_tables.CITYSCAPES_PALETTE[train_id]
    return palette.ravel().tolist()


def export_paths(layout: str, index: int, num_images: int, split: str = "train") -> dict:
    """Relative paths of image `index` in an export: "image", "ids" and, for Cityscapes,
    "trainids". Sorted paths follow the index order, as the readers list them."""
    if layout == "gta5":
        name = f"{index + 1:0{max(5, len(str(num_images)))}d}.png"
        return {"image": f"images/{name}", "ids": f"labels/{name}"}
    city = CITIES[index * len(CITIES) // num_images]
    stem = f"{city}_{index:06d}_000019"
    gt = f"gtFine/{split}/{city}/{stem}_gtFine_"
    return {
        "image": f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
        "ids": gt + "labelIds.png",
        "trainids": gt + "labelTrainIds.png",
    }


def _write_example(root: str, paths: dict, image: np.ndarray, label: np.ndarray, layout: str):
    for rel in paths.values():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
    # Level 1: the noisy images hardly compress better at higher levels, only slower.
    Image.fromarray(image, "RGB").save(os.path.join(root, paths["image"]), compress_level=1)
    ids = _train_to_label_ids()[label.astype(np.uint8)]
    if layout == "gta5":
        im = Image.fromarray(ids, "P")
        im.putpalette(_gta5_palette())  # all 256 entries: a short palette changes the bit depth
        im.save(os.path.join(root, paths["ids"]))
    else:
        Image.fromarray(ids, "L").save(os.path.join(root, paths["ids"]))
        Image.fromarray(label.astype(np.uint8), "L").save(os.path.join(root, paths["trainids"]))


class _Progress:
    """`title: done/total` on one rewritten line on a terminal, else a line per 10%."""

    def __init__(self, total: int, title: str, stream=None):
        self.total, self.title, self.stream = total, title, stream
        self.done, self.start, self.shown = 0, time.monotonic(), 0

    def update(self) -> None:
        self.done += 1
        if self.stream is None:
            return
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        if not (tty or self.done * 10 // self.total > self.shown or self.done == self.total):
            return
        self.shown = self.done * 10 // self.total
        rate = self.done / max(time.monotonic() - self.start, 1e-9)
        line = (
            f"{self.title}: {self.done}/{self.total} ({100 * self.done // self.total}%), "
            f"{rate:.1f} images/s, about {(self.total - self.done) / rate:.0f}s left"
        )
        end = "\n" if not tty or self.done == self.total else ""
        self.stream.write(("\r" if tty else "") + line + end)
        self.stream.flush()


def _split_dirs(layout: str, split: str) -> tuple[str, ...]:
    """The folders one export owns, labels first (they are moved into place first)."""
    return ("labels", "images") if layout == "gta5" else (f"gtFine/{split}", f"leftImg8bit/{split}")


def _swap_in(tmp: str, out_root: str, dirs: tuple[str, ...]) -> None:
    """Move the folders written under `tmp` into an existing `out_root`, replacing any old
    ones (moved into `tmp` and deleted with it). lcmsm-prepare's files no longer describe
    the folders, so they go first."""
    for name in _STALE:
        if os.path.exists(os.path.join(out_root, name)):
            os.remove(os.path.join(out_root, name))
    for k, rel in enumerate(dirs):
        target = os.path.join(out_root, rel)
        if os.path.exists(target):
            os.rename(target, os.path.join(tmp, f".old-{k}"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(os.path.join(tmp, rel), target)


def export(
    domain: str,
    out_root: str,
    num_images: int,
    *,
    layout: str = "gta5",
    split: str = "train",
    size=DEFAULT_SIZE,
    seed: int = 0,
    overwrite: bool = False,
    progress=None,
) -> str:
    """Write scenes 0..num_images-1 of `domain` to `out_root` in a real dataset's layout.

    layout "gta5": images/00001.png + labels/00001.png (palette PNG, index = Cityscapes
    labelId); `split` is not used (GTA5 has one). layout "cityscapes":
    leftImg8bit/{split}/{city}/X_leftImg8bit.png + gtFine/{split}/{city}/X_gtFine_labelIds.png
    and X_gtFine_labelTrainIds.png. Ignored pixels get labelId 0 (trainId files keep 255).

    Everything is written into a temporary folder next to the target and renamed into place
    at the end, so an interrupted export leaves nothing half-written. Into an existing root
    (e.g. adding a Cityscapes "val" split) only this export's split folders are replaced,
    and only with `overwrite`. `progress`: a stream for progress lines (None = quiet).
    Returns the absolute root.
    """
    _check_domain(domain)
    if layout not in EXPORT_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {EXPORT_LAYOUTS}")
    source = SyntheticSource(domain, num_images, size, seed)
    out_root = os.path.abspath(out_root)
    dirs = _split_dirs(layout, split)
    fresh = not os.path.exists(out_root)
    taken = [] if fresh else [d for d in dirs if os.path.exists(os.path.join(out_root, d))]
    if taken and not overwrite:
        raise FileExistsError(
            f"{out_root} already holds {', '.join(taken)}; pass --overwrite to replace them"
        )
    parent = os.path.dirname(out_root) if fresh else out_root
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_root)}.tmp-", dir=parent)
    try:
        bar = _Progress(num_images, f"{domain} -> {layout} {out_root}", progress)
        for i in range(num_images):
            example = source[i]
            paths = export_paths(layout, i, num_images, split)
            _write_example(tmp, paths, example["image"], example["label"], layout)
            bar.update()
        info = {"generator": "lcmsm_jax.data.synthetic", "domain": domain, "seed": seed}
        info |= {"layout": layout, "split": split if layout == "cityscapes" else "all"}
        info |= {"size": list(source.size), "num_images": num_images}
        info_name = "synthetic.json" if layout == "gta5" else f"synthetic_{split}.json"
        with open(os.path.join(tmp, info_name), "w") as f:
            json.dump(info, f, indent=1)
        if fresh:
            os.rename(tmp, out_root)
        else:
            _swap_in(tmp, out_root, dirs)
            os.replace(os.path.join(tmp, info_name), os.path.join(out_root, info_name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # also on errors and Ctrl-C
    return out_root


def preview_grid(num_images: int = 4, size=DEFAULT_SIZE, seed: int = 0) -> np.ndarray:
    """uint8 `[num_images * H, 4 * W, 3]`: per row, a source image, its colourised labels, a
    target image and its labels."""
    rows = []
    for i in range(num_images):
        row = []
        for domain in DOMAINS:
            image, label = render(domain, i, seed=seed, size=size)
            row += [image, label_tables.colorize(label)]
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lcmsm_jax.data.synthetic",
        description="Write the synthetic two-domain street scenes to disk in the GTA5 or "
        "Cityscapes layout, or a preview picture of both domains.",
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--export", action="store_true", help="write a dataset to --out")
    mode.add_argument("--preview", metavar="PNG", help="write a picture of a few scenes")
    p.add_argument("--domain", choices=DOMAINS, default="source", help="which domain to write")
    p.add_argument("--layout", choices=EXPORT_LAYOUTS, default="gta5", help="on-disk layout")
    p.add_argument("--split", default="train", help="Cityscapes split folder (train, val, ...)")
    p.add_argument("--out", help="dataset root to create (or add a split to)")
    p.add_argument(
        "--num-images",
        type=int,
        default=None,
        help="images to write (default: 500 for --export, 4 for --preview)",
    )
    p.add_argument("--height", type=int, default=DEFAULT_SIZE[0], help="image height")
    p.add_argument("--width", type=int, default=DEFAULT_SIZE[1], help="image width")
    p.add_argument("--seed", type=int, default=0, help="scene seed (use another one for val)")
    p.add_argument("--overwrite", action="store_true", help="replace this split if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command line; returns the exit status."""
    args = _parser().parse_args(argv)
    size = (args.height, args.width)
    try:
        if args.preview:
            grid = preview_grid(args.num_images or 4, size, args.seed)
            Image.fromarray(grid).save(args.preview)
            print(f"wrote {args.preview}")
            return 0
        if not args.out:
            print("synthetic: --export needs --out DIR", file=sys.stderr)
            return 2
        root = export(
            args.domain,
            args.out,
            args.num_images or 500,
            layout=args.layout,
            split=args.split,
            size=size,
            seed=args.seed,
            overwrite=args.overwrite,
            progress=None if args.quiet else sys.stderr,
        )
    except (ValueError, FileExistsError) as e:
        print(f"synthetic: {e}", file=sys.stderr)
        return 1
    print(f"wrote {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
