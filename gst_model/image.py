"""Image pre- and post-processing in the official GST convention.

Official preprocessing: RGBA is composited over white, then a centred square crop of the short side
(offset = integer half of the difference), a resize with Pillow's bicubic filter and a map to [-1, 1].
The same crop changes the pinhole intrinsics, which `crop_resize_intrinsics` tracks.

Real cameras (any size, aspect and field of view, with known pixel intrinsics K): `resample_to_camera`
shows the image as another pinhole camera at the same optical centre and orientation would see it. The map
between the two image planes is the homography K_dst K_src^-1, which for two zero-skew cameras is an
axis-aligned scale and shift: a crop (or a pad, where the source does not cover the target's field of
view) and a resize, with no rotation of the optical frame. So a pose in the resampled camera's frame is the
same pose in the real camera's frame, with no crop bias, whatever the real camera's fov or aspect.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


# A short side below a quarter of the model's input size means upsampling by more than 4x: too little of
# the scene to estimate a pose or a view from (a 1x1 image gave a confident-looking pose).
MAX_UPSAMPLING = 4


def min_input_side(model_size: int) -> int:
    """Smallest short side (px) of an input image for a model with `model_size` px inputs."""
    return max(1, -(-int(model_size) // MAX_UPSAMPLING))


def validate_image(image: np.ndarray, name: str = "image", min_side: int = 1) -> np.ndarray:
    """Check an HxWx3 (RGB) or HxWx4 (RGBA) uint8 array whose short side is at least `min_side` (see
    `min_input_side`) and return it; raise ValueError otherwise."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"{name} must have shape HxWx3 (RGB) or HxWx4 (RGBA), got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name} is empty: shape {image.shape}")
    if min(image.shape[:2]) < min_side:
        raise ValueError(f"{name} is too small: {image.shape[1]}x{image.shape[0]}, the short side must be at least "
                         f"{min_side} px")
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


def validate_intrinsics(K, name: str = "K") -> np.ndarray:
    """A 3x3 zero-skew pinhole matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with positive focal lengths,
    as float64; ValueError otherwise (a skewed camera is not a crop of another one)."""
    try:
        K = np.array(K, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a 3x3 numeric matrix: {exc}") from None
    if K.shape != (3, 3) or not np.all(np.isfinite(K)):
        raise ValueError(f"{name} must be a finite 3x3 matrix, got shape {K.shape}: {K.tolist()}")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"{name} must have positive focal lengths, got fx={K[0, 0]}, fy={K[1, 1]}")
    if abs(K[0, 1]) > 1e-9 * K[0, 0] or np.any(K[1:, 0] != 0) or K[2, 1] != 0 or K[2, 2] != 1:
        raise ValueError(f"{name} must be a zero-skew pinhole matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], "
                         f"got {K.tolist()}")
    return K


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel (a = -0.5), the kernel of Pillow's BICUBIC."""
    x = np.abs(x)
    return np.where(x < 1, (1.5 * x - 2.5) * x * x + 1,
                    np.where(x < 2, ((-0.5 * x + 2.5) * x - 4) * x + 2, 0.0))


def _axis_weights(n_dst: int, n_src: int, scale: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """Resampling matrix [n_dst, n_src] along one axis for source coordinate = scale * destination
    coordinate + offset (continuous pixel coordinates, centres at i + 0.5), and which destination pixels
    have their centre inside the source.

    As Pillow resizes: the cubic kernel is widened by the scale when downsampling (antialiasing) and
    renormalised over the source pixels that exist, so a border pixel is not darkened by missing ones.
    """
    width = max(scale, 1.0)
    centre = scale * (np.arange(n_dst) + 0.5) + offset
    weights = _cubic((np.arange(n_src)[None, :] + 0.5 - centre[:, None]) / width)
    total = weights.sum(1, keepdims=True)
    inside = (centre >= 0) & (centre <= n_src) & (total[:, 0] > 1e-12)
    return np.where(inside[:, None], weights / np.where(total > 1e-12, total, 1.0), 0.0), inside


def resample_to_camera(image: np.ndarray, K_src, K_dst, width: int, height: int, fill=(0, 0, 0)) -> np.ndarray:
    """The HxWx3/4 uint8 `image` of a camera with intrinsics `K_src` as a `width` x `height` camera with
    intrinsics `K_dst` at the same centre and orientation sees it (-> height x width x 3 uint8).

    Target pixels whose centre falls outside the source image get `fill` (an RGB colour). Bicubic with
    antialiasing, in one pass: for a K_dst that is a plain resize of K_src this is Pillow's bicubic resize
    up to rounding, except where Pillow clips the overshoot of its first (horizontal) pass.
    """
    image = validate_image(image)
    if image.shape[2] == 4:
        image = composite_on_white(image)
    K_src, K_dst = validate_intrinsics(K_src, "K_src"), validate_intrinsics(K_dst, "K_dst")
    if int(width) < 1 or int(height) < 1:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    h, w = image.shape[:2]
    # u_src = fx_src / fx_dst * (u_dst - cx_dst) + cx_src, and the same for v
    sx, sy = K_src[0, 0] / K_dst[0, 0], K_src[1, 1] / K_dst[1, 1]
    wx, in_x = _axis_weights(int(width), w, sx, K_src[0, 2] - sx * K_dst[0, 2])
    wy, in_y = _axis_weights(int(height), h, sy, K_src[1, 2] - sy * K_dst[1, 2])
    out = np.einsum("yh,hwc,xw->yxc", wy, image.astype(np.float64), wx, optimize=True)
    out[~(in_y[:, None] & in_x[None, :])] = np.asarray(fill, dtype=np.float64)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def to_model_camera(image: np.ndarray, K, K_model, size: int) -> np.ndarray:
    """`image` (intrinsics K) as the model's size x size camera `K_model` sees it. Where the real camera
    does not cover the model's field of view, the image's mean colour fills in (no structure added)."""
    rgb = validate_image(image)
    if rgb.shape[2] == 4:
        rgb = composite_on_white(rgb)
    return resample_to_camera(rgb, K, K_model, size, size, fill=rgb.reshape(-1, 3).mean(0))


def implied_intrinsics(height: int, width: int, K_model, size: int) -> np.ndarray:
    """Intrinsics of an HxW image whose official centre crop + resize is the model's camera `K_model`
    (the inverse of `crop_resize_intrinsics`): what the model assumes when it is given no K."""
    top, left, side = center_crop_box(height, width)
    K = np.array(K_model, dtype=np.float64, copy=True)
    K[:2] *= side / size
    K[0, 2] += left
    K[1, 2] += top
    return K


def to_model_input(images: list[np.ndarray], size: int, Ks: list | None = None, K_model=None) -> torch.Tensor:
    """List of uint8 images -> [B, 3, size, size] float32 in [-1, 1].

    Without intrinsics (`Ks` None, or an entry None) an image is centre-cropped and resized (official);
    with its K it is resampled to the model's camera `K_model` (`to_model_camera`).
    """
    Ks = [None] * len(images) if Ks is None else Ks
    if len(Ks) != len(images):
        raise ValueError(f"{len(images)} images but {len(Ks)} intrinsics")
    batch = np.stack([center_crop_resize(im, size) if K is None else to_model_camera(im, K, K_model, size)
                      for im, K in zip(images, Ks)])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
    return x * 2.0 - 1.0


def to_uint8(x: torch.Tensor) -> list[np.ndarray]:
    """[B, 3, H, W] in [-1, 1] -> list of HxWx3 uint8 (rounded, clipped)."""
    x = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return [im for im in x.permute(0, 2, 3, 1).cpu().numpy()]
