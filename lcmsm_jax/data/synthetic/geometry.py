"""Painting convex polygons and ellipses into a part-id map, and the camera that places them.

Every shape is the colour of one part: a piece of an object instance, with the instance's
class (a Cityscapes trainId, or HOOD) and a colour kind that says how the part's colour
follows from the instance's colours (look.py). Shapes are collected in painting order on a
`Canvas` and rasterised together into row spans: per covered row of each shape, (shape, row,
first column, end column); a pixel is covered when its centre is inside the shape.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lcmsm_jax.data import labels as label_tables

IGNORE = label_tables.IGNORE_INDEX
# Classes of the parts (trainIds) and of the hood.
(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON,
 RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(19)  # fmt: skip
HOOD = 19  # appearance row of the ego-vehicle hood (labelled IGNORE)
# How a part's colour follows from its instance's colours.
BODY, SECOND, DARK, LAMP, SKIN, PAINT = range(6)


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
