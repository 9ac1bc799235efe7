"""Small pinhole-camera helpers shared by the renderer, the format readers and the pair dataset.

Conventions used everywhere in `gst_model.data`:

* Poses are camera-to-world 4x4 matrices (float64) with OpenCV/RDF camera axes: x right, y down,
  z forward.
* Intrinsics K are 3x3 in pixels on the continuous image plane [0, W] x [0, H]: the centre of pixel
  (row i, column j) is at (u, v) = (j + 0.5, i + 0.5), so a centred principal point is (W/2, H/2).
  COLMAP, RealEstate10K (normalised by W, H) and PyTorch3D NDC all use this plane, and with it a crop
  only shifts (cx, cy) and a resize only scales the first two rows of K.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from gst_model import geometry


def fov_to_K(fovy_deg: float, height: int, width: int) -> np.ndarray:
    """Square-pixel K with the given vertical field of view and a centred principal point."""
    return geometry.intrinsics_from_fov(fovy_deg, height, width).numpy()


def look_at(eye: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0), roll_deg: float = 0.0) -> np.ndarray:
    """OpenCV camera-to-world pose at `eye` looking at `target`; `up` is the world up direction."""
    eye = np.asarray(eye, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, dtype=np.float64))  # right = forward x up (y then points down)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z], axis=1)
    if roll_deg:
        c, s = math.cos(math.radians(roll_deg)), math.sin(math.radians(roll_deg))
        R = R @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])  # roll about the optical axis
    c2w = np.eye(4)
    c2w[:3, :3] = R
    c2w[:3, 3] = eye
    return c2w


def relative_pose(c2w_obs: np.ndarray, c2w_target: np.ndarray) -> np.ndarray:
    """Target pose in the observation camera's frame (the observation becomes the identity)."""
    return geometry.relative_pose(torch.from_numpy(np.asarray(c2w_obs, dtype=np.float64)),
                                  torch.from_numpy(np.asarray(c2w_target, dtype=np.float64))).numpy()


def project(points_world: np.ndarray, c2w: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (continuous plane, see module doc) and z-depth of world points [N, 3]."""
    w2c = np.linalg.inv(c2w)
    pc = points_world @ w2c[:3, :3].T + w2c[:3, 3]
    uv = pc @ K.T
    return uv[:, :2] / uv[:, 2:3], pc[:, 2]
