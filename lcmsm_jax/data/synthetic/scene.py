"""A scene being laid out: the domains' layout tables, the street, and `Scene`, the drawing
helpers in world coordinates. Lengths are metres; X < 0 is the left of the camera, Z the depth.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lcmsm_jax.data.synthetic.geometry import BODY, Camera, Canvas

DOMAINS = ("source", "target")
DEFAULT_SIZE = (256, 512)
# "far_objects": the default scenes plus people, riders, bikes and poles with signs and
# lights far down the street (build.py:_place_far_objects), for multi-resolution training.
VARIANTS = ("default", "far_objects")


def _check_domain(domain: str) -> int:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    return DOMAINS.index(domain)


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown scene variant {variant!r}; expected one of {VARIANTS}")
    return variant


# How each domain lays a street out: (low, high) ranges, or Poisson means per image.
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

    def swap_stream(self, stream: tuple) -> tuple:
        """Make `stream` (a generator and its buffered uniforms, as returned here) the
        scene's random stream; returns the previous one."""
        previous = self.rng, self._uniform
        self.rng, self._uniform = stream
        return previous

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
