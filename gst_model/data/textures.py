"""Photographs as surface textures for the domain-randomised synthetic scenes (`synthetic.randomized_scene`).

The bank is scikit-image's CC0 / public-domain sample photographs (`real_samples.TEXTURE_PHOTOS`), which
`make real-data` fetches into the real-data cache. The photos are split by name: TRAIN_TEXTURES may appear
in training renders; HOLDOUT_TEXTURES never do, they are reserved for evaluation renderers, so a model
tested on them has not seen those surfaces.
"""
from __future__ import annotations

import colorsys
import functools
import math
from pathlib import Path

import numpy as np
from PIL import Image

from gst_model.data import real_samples

TRAIN_TEXTURES = ("brick", "grass", "coffee", "astronaut", "rocket", "camera")
HOLDOUT_TEXTURES = ("gravel", "chelsea", "coins", "hubble_deep_field")
MAX_SIDE = 256  # photos are downscaled on loading: a tile uses at most ~180 px of one
TILE_TEXELS = 64  # a photo material's tile; at 64-128 px renders a tile spans a few dozen pixels

_FILES = {Path(name).stem: name for name in real_samples.TEXTURE_PHOTOS}


def texture_names(which: str) -> tuple[str, ...]:
    if which == "train":
        return TRAIN_TEXTURES
    if which == "holdout":
        return HOLDOUT_TEXTURES
    raise ValueError(f"which must be 'train' or 'holdout', got {which!r}")


def _read_photo(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        image = image.convert("RGB")  # brick, grass, camera are grey: tints colour them
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        return np.asarray(image, dtype=np.float32) / np.float32(255.0)


@functools.lru_cache(maxsize=4)
def _bank(which: str, folder: Path) -> tuple[np.ndarray, ...]:
    paths = [folder / _FILES[name] for name in texture_names(which)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"texture photos {missing} are not in {folder}: run `make real-data` "
                                "(python -m gst_model.data.real_samples)")
    images = tuple(_read_photo(p) for p in paths)
    for image in images:
        image.flags.writeable = False  # shared by every scene a process renders
    return images


def load_texture_bank(which: str = "train", root: str | Path | None = None) -> list[np.ndarray]:
    """The `which` ("train" or "holdout") photos as float32 RGB [H, W, 3] in [0, 1], longest side at most
    MAX_SIDE, from the real-data cache (`root`, else `real_samples.cache_dir()`); read once per process."""
    return list(_bank(which, real_samples.cache_dir(root) / "scikit-image"))


def photo_tile(image: np.ndarray, rng: np.random.Generator, texels: int = TILE_TEXELS) -> np.ndarray:
    """A random square crop of `image` (a quarter to 70% of its short side), turned by a random angle and
    area-resampled to texels x texels: float32 [texels, texels, 3]."""
    h, w = image.shape[:2]
    side = float(rng.uniform(0.25, 0.7)) * min(h, w)
    bound = min(h, w, int(math.ceil(side * math.sqrt(2.0))))  # holds the crop at any angle
    y0, x0 = int(rng.integers(0, h - bound + 1)), int(rng.integers(0, w - bound + 1))
    patch = Image.fromarray((image[y0:y0 + bound, x0:x0 + bound] * 255.0 + 0.5).astype(np.uint8))
    patch = patch.rotate(float(rng.uniform(0.0, 360.0)), resample=Image.Resampling.BILINEAR)
    m = (bound - side) / 2
    # BOX averages every source pixel under a texel: no aliasing when the crop is shrunk
    patch = patch.resize((texels, texels), Image.Resampling.BOX, box=(m, m, m + side, m + side))
    return np.asarray(patch, dtype=np.float32) / np.float32(255.0)


def random_tint(rng: np.random.Generator) -> np.ndarray:
    """An RGB multiplier: mostly near white, sometimes a clear colour (grey photos need one to vary)."""
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.45), rng.uniform(0.7, 1.1)))
