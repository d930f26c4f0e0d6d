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
adaptation has to close. The "far_objects" variant (`variant=` of `render`, `SyntheticSource`)
adds people, riders, bikes and poles with signs and lights far down the street, a few pixels
tall at half resolution, for multi-resolution training (rendered e.g. at 512 x 1024).

Rendering is pure numpy: scenes are painted back to front as convex polygons and ellipses
(scanline spans) into a part-id map; the label is a lookup of the part map and the image
is part colours times texture fields plus noise. `render(domain, index, seed=...)` is a pure
function of its arguments; `SyntheticSource` exposes a finite prefix of that infinite
sequence as a grain random-access source, and `export` writes it in the GTA5 or Cityscapes
on-disk layout:

  lcmsm-synthetic --export --domain source --layout gta5 --out data/synthetic_gta5 \
      --num-images 2000

Modules, bottom up: `geometry` (rasterising shapes, camera, canvas), `scene` (domain layout
tables, the street, drawing in world coordinates), `objects` (one drawing function per kind
of object), `build` (`build_scene`: where objects go), `look` (domain looks, painting,
`render`), `source` (`SyntheticSource`), `exporter` (`export`, previews), `cli` (the
command line).
"""

from lcmsm_jax.data.synthetic.build import build_scene
from lcmsm_jax.data.synthetic.exporter import (
    CITIES,
    EXPORT_LAYOUTS,
    export,
    preview_grid,
    write_preview,
)
from lcmsm_jax.data.synthetic.geometry import (
    IGNORE,
    Camera,
    Canvas,
    ellipse_spans,
    fill_spans,
    polygon_spans,
)
from lcmsm_jax.data.synthetic.look import (
    LOOKS,
    TEXTURES,
    DomainLook,
    paint,
    render,
    texture_fields,
)
from lcmsm_jax.data.synthetic.scene import (
    DEFAULT_SIZE,
    DOMAINS,
    LAYOUTS,
    VARIANTS,
    DomainLayout,
    Scene,
    Street,
)
from lcmsm_jax.data.synthetic.source import SyntheticSource

__all__ = [
    "CITIES",
    "DEFAULT_SIZE",
    "DOMAINS",
    "EXPORT_LAYOUTS",
    "IGNORE",
    "LAYOUTS",
    "LOOKS",
    "TEXTURES",
    "VARIANTS",
    "Camera",
    "Canvas",
    "DomainLayout",
    "DomainLook",
    "Scene",
    "Street",
    "SyntheticSource",
    "build_scene",
    "ellipse_spans",
    "export",
    "fill_spans",
    "paint",
    "polygon_spans",
    "preview_grid",
    "render",
    "texture_fields",
    "write_preview",
]
