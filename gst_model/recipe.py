"""Deterministic "recipe weights" used by the official golden vectors.

Every weight depends only on its state_dict key and shape (see
``shared/reference/official_golden.md``, section "Deterministic weight recipe"), so a
re-implementation with the official key names can rebuild the exact tensors without any
torch RNG:

* seed = CRC-32 (zlib, unsigned) of the UTF-8 key; ``x = default_rng(seed).standard_normal(shape, float32)``
* key ends with ``codebook_used``                          -> zeros
* 1-D tensor whose key ends with ``.weight`` (norm scales)  -> 1 + 0.1 * x
* key ends with ``.bias``                                  -> 0.1 * x
* key ends with ``tok_embeddings.weight`` / ``quantize.embedding.weight`` -> x
* anything else (Linear / Conv weights)                     -> x * float32(1 / sqrt(fan_in)),
  fan_in = product of all dims after the first.

All arithmetic is float32, matching the stored tensors bit for bit.
"""

from __future__ import annotations

import math
import zlib
from typing import Iterable, Mapping

import numpy as np
import torch

__all__ = ["recipe_array", "recipe_state_dict"]

_UNIT_NORMAL_SUFFIXES = ("tok_embeddings.weight", "quantize.embedding.weight")


def recipe_array(key: str, shape: Iterable[int]) -> np.ndarray:
    """Return the recipe value for one (key, shape) pair as a float32 numpy array."""
    shape = tuple(int(s) for s in shape)
    if key.endswith("codebook_used"):
        return np.zeros(shape, dtype=np.float32)
    seed = zlib.crc32(key.encode("utf-8")) & 0xFFFFFFFF
    x = np.random.default_rng(seed).standard_normal(size=shape, dtype=np.float32)
    if len(shape) == 1 and key.endswith(".weight"):
        return np.float32(1.0) + np.float32(0.1) * x
    if key.endswith(".bias"):
        return np.float32(0.1) * x
    if key.endswith(_UNIT_NORMAL_SUFFIXES):
        return x
    fan_in = math.prod(shape[1:])
    return x * np.float32(1.0 / math.sqrt(fan_in))


def recipe_state_dict(named_shapes: Mapping[str, tuple]) -> dict[str, torch.Tensor]:
    """Build recipe weights for every ``key -> shape`` entry (float32 CPU tensors).

    ``named_shapes`` can be built from a model with
    ``{k: tuple(v.shape) for k, v in model.state_dict().items()}`` (works on the meta device too).
    """
    return {
        key: torch.from_numpy(np.ascontiguousarray(recipe_array(key, shape)))
        for key, shape in named_shapes.items()
    }
