"""`build_scene`: where the objects of one scene go (lanes, sidewalks, depths), drawn far to
near, then rasterised into the part-id map; the "far_objects" variant adds small objects far
down the street.
"""

from __future__ import annotations

import functools

import numpy as np

from lcmsm_jax.data.synthetic.geometry import BUILDING, BUS, HOOD, TRAIN, TRUCK, Camera
from lcmsm_jax.data.synthetic.objects import (
    _car,
    _cyclist,
    _draw_background,
    _draw_ground,
    _draw_side,
    _long_vehicle,
    _person,
    _pole,
    _tree,
)  # fmt: skip
from lcmsm_jax.data.synthetic.scene import (
    DEFAULT_SIZE,
    LAYOUTS,
    Scene,
    _check_domain,
    _check_variant,
    _make_street,
)  # fmt: skip

# Poisson means per image of the "far_objects" variant's additions, per domain.
FAR_COUNTS = {
    "source": dict(persons=16.0, riders=5.0, bikes=4.0, poles=8.0),
    "target": dict(persons=20.0, riders=6.0, bikes=5.0, poles=10.0),
}
FAR_DEPTH = 60.0  # metres: the nearest far object; the farthest stand 4 m before the street ends


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


def _on_sidewalk(sc: Scene, side: int, margin: float = 0.4) -> float:
    """A lateral position on the sidewalk of `side` (0 left, 1 right), off its lawn strip."""
    st = sc.street
    sign, edge = (-1, 1)[side], st.road[side]
    return edge + sign * sc.u(st.lawn[side] + margin, abs(st.curb[side] - edge) - margin)


def _place_people(sc: Scene) -> None:
    """Pedestrians, cyclists, parked bikes, poles and street trees."""
    st, counts = sc.street, sc.layout.counts
    on_sidewalk = functools.partial(_on_sidewalk, sc)
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


class _OwnStream:
    """Runs draws on a scene from their own random stream, so that adding them leaves every
    other random draw of the scene, and so its default layout, unchanged."""

    def __init__(self, sc: Scene, rng: np.random.Generator):
        self.sc, self.stream = sc, (rng, [])

    def __call__(self, draw) -> None:
        self.stream = self.sc.swap_stream(self.stream)
        try:
            draw()
        finally:
            self.stream = self.sc.swap_stream(self.stream)


def _place_far_objects(sc: Scene, counts: dict[str, float], z_end: float, own: _OwnStream):
    """Pedestrians, riders, parked bikes and poles (with signs and lights) between FAR_DEPTH
    and the end of the street, on their own random stream (`own`)."""
    st = sc.street

    def far() -> float:
        return sc.u(FAR_DEPTH, z_end - 4.0)

    def later(z: float, draw, *args, **kwargs) -> None:
        sc.defer(z, functools.partial(own, functools.partial(draw, sc, *args, **kwargs)))

    for _ in range(int(sc.rng.poisson(counts["persons"]))):
        x = sc.u(*st.road) if sc.chance(0.15) else _on_sidewalk(sc, sc.pick(2))
        z = far()
        later(z, _person, x, z)
    for _ in range(int(sc.rng.poisson(counts["riders"]))):
        side, motor, side_view = sc.pick(2), sc.chance(0.4), sc.chance(0.3)
        x, z = st.road[side] - (-1, 1)[side] * sc.u(0.6, 1.4), far()
        later(z, _cyclist, x, z, motor=motor, side_view=side_view, rider=True)
    for _ in range(int(sc.rng.poisson(counts["bikes"]))):
        x, z, motor = _on_sidewalk(sc, sc.pick(2)), far(), sc.chance(0.3)
        later(z, _cyclist, x, z, motor=motor, side_view=True, rider=False)
    for _ in range(int(sc.rng.poisson(counts["poles"]))):
        side = sc.pick(2)
        x, z = st.road[side] + (-1, 1)[side] * sc.u(0.3, 0.9), far()
        later(z, _pole, x, z, (1, -1)[side])


def build_scene(
    domain: str, index: int, seed: int = 0, size=DEFAULT_SIZE, variant: str = "default"
) -> Scene:
    """Lay out and rasterise scene `index` of `domain`: labels only, no colours yet.

    variant "far_objects": the same scene (every draw of the default one is kept) plus the
    far objects of `_place_far_objects`, drawn in depth order with the rest.
    """
    _check_variant(variant)
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
    if variant == "far_objects":
        own = _OwnStream(sc, np.random.default_rng([seed, _check_domain(domain), index, 2]))
        own(functools.partial(_place_far_objects, sc, FAR_COUNTS[domain], z_end, own))
    for _, _, draw in sorted(sc.deferred, key=lambda d: (-d[0], d[1])):
        draw()
    if sc.chance(lay.p_hood):
        depth = h * sc.u(0.06, 0.11)
        sc.canvas.ellipse(w / 2, h + depth * 0.3, w * 0.75, depth * 1.3, sc.part(HOOD))
    sc.canvas.rasterise()
    return sc
