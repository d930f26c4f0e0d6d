"""The look of each domain and the painting of a built scene: part colours under the image's
light, times texture fields, plus sensor noise, vignetting and blur; `render` = build + paint.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from PIL import Image

from lcmsm_jax.data.synthetic.build import build_scene
from lcmsm_jax.data.synthetic.geometry import fill_spans, polygon_spans
from lcmsm_jax.data.synthetic.scene import DEFAULT_SIZE, Scene, _check_domain

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
    domain: str,
    index: int,
    *,
    seed: int = 0,
    size=DEFAULT_SIZE,
    image: bool = True,
    variant: str = "default",
) -> tuple[np.ndarray | None, np.ndarray]:
    """Image uint8 `[H, W, 3]` (None unless `image`) and trainIds int32 `[H, W]` of scene
    `index` of `domain` (`variant`: scene.VARIANTS); a pure function of the arguments."""
    sc = build_scene(domain, int(index), seed, tuple(size), variant)
    labels = sc.canvas.labels()
    if not image:
        return None, labels
    rng = np.random.default_rng([seed, _check_domain(domain), int(index), 1])
    return paint(sc, domain, rng), labels
