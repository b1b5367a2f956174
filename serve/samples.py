"""Built-in sample images for the web page: scikit-image's bundled photos plus one synthetic scene.

Nothing here reads user data or the network: ``skimage.data`` photos ship inside the package, and the
synthetic scene comes from ``edgesam.data.synthetic.make_scene`` when present (else a few drawn shapes).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .codec import encode_png

SKIMAGE_SAMPLES = {"astronaut": "Astronaut (scikit-image)", "coffee": "Coffee cup (scikit-image)",
                   "chelsea": "Chelsea the cat (scikit-image)"}
SYNTHETIC = ("shapes", "Synthetic scene (seeded)")


def _synthetic_scene(height: int = 384, width: int = 512, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    try:
        from edgesam.data.synthetic import make_scene  # type: ignore[import-not-found]

        scene = make_scene(rng, height, width)
        image = scene[0] if isinstance(scene, tuple) else getattr(scene, "image", scene)
        if isinstance(image, np.ndarray) and image.shape == (height, width, 3) and image.dtype == np.uint8:
            return image
    except (ImportError, TypeError, AttributeError):
        pass
    # Fallback: textured background with a few flat-coloured shapes (clear edges to click on).
    yy, xx = np.mgrid[:height, :width]
    image = (rng.normal(128, 12, (height, width, 3))).clip(0, 255).astype(np.uint8)
    for _ in range(6):
        cy, cx, r = rng.integers(40, height - 40), rng.integers(40, width - 40), rng.integers(20, 70)
        colour = rng.integers(0, 256, 3).astype(np.uint8)
        inside = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if rng.random() < 0.5 else \
            ((abs(yy - cy) <= r) & (abs(xx - cx) <= r * 1.4))
        image[inside] = colour
    return image


@lru_cache(maxsize=None)
def sample_image(name: str) -> np.ndarray:
    """uint8 (H,W,3) RGB; KeyError for an unknown name."""
    if name == SYNTHETIC[0]:
        return _synthetic_scene()
    if name not in SKIMAGE_SAMPLES:
        raise KeyError(name)
    import skimage.data

    return np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])


@lru_cache(maxsize=None)
def sample_png(name: str) -> bytes:
    return encode_png(sample_image(name))


def sample_names() -> list[tuple[str, str]]:
    """[(name, title)] in display order."""
    return [SYNTHETIC, *SKIMAGE_SAMPLES.items()]
