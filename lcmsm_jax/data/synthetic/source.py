"""`SyntheticSource`: a finite prefix of the rendered scenes as a grain random-access source."""

from __future__ import annotations

import numpy as np

from lcmsm_jax.data.synthetic.look import render
from lcmsm_jax.data.synthetic.scene import DEFAULT_SIZE, _check_domain, _check_variant


class SyntheticSource:
    """Scenes 0..num_images-1 of one domain as a grain random-access source.

    `source[i]` -> {"image": uint8 `[H, W, 3]`, "label": int32 `[H, W]` trainIds} ("label"
    only with `labels=True`). Images are rendered on demand and depend only on (domain,
    seed, size, variant, i), so the source is picklable and every worker process sees the
    same data. Different seeds give different scenes (e.g. one seed for training, one for
    evaluation); `variant` is one of scene.VARIANTS.
    """

    def __init__(
        self,
        domain: str,
        num_images: int,
        size=DEFAULT_SIZE,
        seed: int = 0,
        labels: bool = True,
        variant: str = "default",
    ):
        _check_domain(domain)
        size = tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 16:
            raise ValueError(f"size must be (height, width) of at least 16 pixels, got {size}")
        if num_images < 1 or seed < 0:
            raise ValueError(f"need num_images >= 1 and seed >= 0, got {num_images}, {seed}")
        self.domain, self.num_images, self.size, self.seed = domain, int(num_images), size, seed
        self._labels = bool(labels)
        self.variant = _check_variant(variant)

    @property
    def has_labels(self) -> bool:
        return self._labels

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        variant = "" if self.variant == "default" else f", variant={self.variant!r}"
        return (
            f"SyntheticSource({self.domain!r}, {self.num_images} images, size={self.size}, "
            f"seed={self.seed}, labels={self._labels}{variant})"
        )

    def _render(self, index: int, image: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        index = int(index)
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self!r}")
        return render(self.domain, index, seed=self.seed, size=self.size, image=image,
                      variant=self.variant)  # fmt: skip

    def read_label(self, index: int) -> np.ndarray:
        """int32 trainIds `[H, W]` (rendered without the image, for class statistics)."""
        if not self._labels:
            raise ValueError(f"{self!r} has no labels")
        return self._render(index, image=False)[1]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        image, label = self._render(index)
        return {"image": image, "label": label} if self._labels else {"image": image}
