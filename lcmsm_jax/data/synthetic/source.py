"""`SyntheticSource`: a finite prefix of the rendered scenes as a grain random-access source."""

from __future__ import annotations

import numpy as np

from lcmsm_jax.data.synthetic.look import render
from lcmsm_jax.data.synthetic.scene import DEFAULT_SIZE, _check_domain


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
