"""Image pre- and post-processing in the official GST convention.

Official preprocessing: RGBA is composited over white, then a centred square crop of the short side
(offset = integer half of the difference), a resize with Pillow's bicubic filter and a map to [-1, 1].
The same crop changes the pinhole intrinsics, which `crop_resize_intrinsics` tracks.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def validate_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Check an HxWx3 (RGB) or HxWx4 (RGBA) uint8 array and return it; raise ValueError otherwise."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"{name} must have shape HxWx3 (RGB) or HxWx4 (RGBA), got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name} is empty: shape {image.shape}")
    return image


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Official alpha handling: rgb*a + (1-a) in [0,1], x255, truncated to integers."""
    x = rgba.astype(np.float32) / 255.0
    rgb = x[..., :3] * x[..., 3:4] + (1.0 - x[..., 3:4])
    return (rgb * 255.0).astype(np.uint8)


def center_crop_box(height: int, width: int) -> tuple[int, int, int]:
    """(top, left, side) of the centred square crop of the short side."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    """HxWx3/4 uint8 -> size x size x 3 uint8, official crop and Pillow bicubic resize."""
    image = validate_image(image)
    if image.shape[2] == 4:
        image = composite_on_white(image)
    top, left, side = center_crop_box(*image.shape[:2])
    crop = np.ascontiguousarray(image[top:top + side, left:left + side])
    if side == size:
        return crop
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC))


def crop_resize_intrinsics(K: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
    """Pinhole intrinsics after `center_crop_resize` of an HxW image to size x size."""
    top, left, side = center_crop_box(height, width)
    scale = size / side
    out = np.array(K, dtype=np.float64, copy=True)
    out[0, 2] -= left
    out[1, 2] -= top
    out[:2] *= scale
    return out


def to_model_input(images: list[np.ndarray], size: int) -> torch.Tensor:
    """List of uint8 images -> [B, 3, size, size] float32 in [-1, 1]."""
    batch = np.stack([center_crop_resize(im, size) for im in images])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
    return x * 2.0 - 1.0


def to_uint8(x: torch.Tensor) -> list[np.ndarray]:
    """[B, 3, H, W] in [-1, 1] -> list of HxWx3 uint8 (rounded, clipped)."""
    x = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return [im for im in x.permute(0, 2, 3, 1).cpu().numpy()]
