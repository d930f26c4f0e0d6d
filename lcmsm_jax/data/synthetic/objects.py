"""The objects of a street scene, each drawn by one function of (scene, position): the
background and ground, facades, parks and walls, trees, poles with signs and traffic lights,
pedestrians, cyclists and riders, cars and long vehicles (truck, bus, train).
"""

from __future__ import annotations

import numpy as np

from lcmsm_jax.data.synthetic.geometry import (
    BICYCLE,
    BODY,
    BUILDING,
    BUS,
    CAR,
    DARK,
    FENCE,
    LAMP,
    LIGHT,
    MOTORCYCLE,
    PAINT,
    PERSON,
    POLE,
    RIDER,
    ROAD,
    SECOND,
    SIDEWALK,
    SIGN,
    SKIN,
    SKY,
    TERRAIN,
    TRAIN,
    TRUCK,
    VEGETATION,
    WALL,
)  # fmt: skip
from lcmsm_jax.data.synthetic.scene import Scene

FAR = 400.0  # depth (m) where ground strips end


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
