"""Pure conversions between ROS messages and the numpy/array types GSTPipeline uses.

No node, no DDS: every function takes a message (or array) and returns the other side, raising
ValueError with a message fit for a service answer or a diagnostics entry when the input is bad.

Images: rgb8/bgr8/rgba8/bgra8/mono8 become HxWx3 RGB (HxWx4 RGBA for the alpha encodings, which the
pipeline composites over white), uint8. The 16-bit forms (rgb16/bgr16/rgba16/bgra16/mono16, either byte
order) are scaled from the full 16-bit range, v * 255 / 65535, rounded. cv_bridge is used for 8-bit
encodings when a sourced ROS install provides it (ROS_DISTRO set); otherwise a numpy path. The PyPI
`cv-bridge` is a ROS 1 port that breaks on numpy 2, hence the ROS_DISTRO gate. Our own size checks run
first on both paths.

Camera intrinsics come from CameraInfo (`camera_intrinsics`): P's left 3x3 (the camera matrix of the
rectified image) when P is set, else K. The nodes expect rectified images (image_rect from image_proc):
a non-zero D is reported, never applied.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseWithCovariance, Transform
from sensor_msgs.msg import CameraInfo, Image

from gst_model import geometry
from gst_ros.params import MAX_IMAGE_PIXELS

# encoding -> (channels, channel order as indices into the RGB(A) output)
ENCODINGS = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2, 3)),
    "bgra8": (4, (2, 1, 0, 3)),
    "mono8": (1, (0,)),
}
# Accepted as input only (predicted images are 8-bit): encoding -> (channels, order) as above.
ENCODINGS_16 = {enc.replace("8", "16"): spec for enc, spec in ENCODINGS.items()}
INPUT_ENCODINGS = {**ENCODINGS, **ENCODINGS_16}
# A quaternion from a float32 source normalised once is within ~1e-7 of unit; 1e-3 admits sloppy
# publishers (rounded printouts) but rejects anything that is really a different rotation.
UNIT_QUATERNION_TOL = 1e-3


def _cv_bridge():
    if not os.environ.get("ROS_DISTRO"):
        return None
    try:
        from cv_bridge import CvBridge
    except ImportError:
        return None
    return CvBridge()


_BRIDGE = _cv_bridge()


def check_image_msg(msg: Image, max_pixels: int = MAX_IMAGE_PIXELS, min_side: int = 1) -> int:
    """Validate an Image's size, encoding and layout without touching pixels; return its channel count.

    min_side: smallest accepted short side (gst_model.image.min_input_side of the model's input size).
    """
    enc = msg.encoding
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0:
        raise ValueError(f"empty image: {w}x{h}, encoding {enc!r}, {len(msg.data)} data bytes")
    if enc not in INPUT_ENCODINGS:
        raise ValueError(f"unsupported image encoding {enc!r}; supported: {', '.join(INPUT_ENCODINGS)}")
    channels = INPUT_ENCODINGS[enc][0]
    if min(h, w) < min_side:
        raise ValueError(f"image too small: {w}x{h}, the model needs a short side of at least {min_side} px")
    if h * w > max_pixels:
        raise ValueError(f"image too large: {w}x{h} = {h * w} pixels > max_image_pixels={max_pixels}")
    depth = 2 if enc in ENCODINGS_16 else 1
    if step < w * channels * depth:
        per_pixel = f"{w}*{channels}" + ("*2 bytes" if depth == 2 else "")
        raise ValueError(f"step {step} < width*channels = {per_pixel} for {enc}")
    if len(msg.data) != step * h:  # shorter: truncated; longer: a layout the header does not describe
        raise ValueError(f"image data has {len(msg.data)} bytes, expected step*height = {step}*{h} = {step * h}")
    return channels


def image_to_numpy(msg: Image, max_pixels: int = MAX_IMAGE_PIXELS, min_side: int = 1) -> np.ndarray:
    """sensor_msgs/Image -> HxWx3 RGB (or HxWx4 RGBA) uint8, a copy independent of the message."""
    channels = check_image_msg(msg, max_pixels, min_side)
    h, w = int(msg.height), int(msg.width)
    wide = msg.encoding in ENCODINGS_16
    if _BRIDGE is not None and not wide:
        want = "rgba8" if channels == 4 else "rgb8"
        return np.array(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding=want), dtype=np.uint8, copy=True)
    # msg.data is an array.array / bytes; a strided view drops the per-row padding
    buf = np.frombuffer(memoryview(msg.data), dtype=np.uint8, count=int(msg.step) * h)
    rows = buf.reshape(h, int(msg.step))[:, :w * channels * (2 if wide else 1)]
    if wide:
        rows = rows.copy().view(">u2" if msg.is_bigendian else "<u2")  # copy: rows of a padded step are unaligned
        rows = ((rows.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    rows = rows.reshape(h, w, channels)
    order = INPUT_ENCODINGS[msg.encoding][1]
    if channels == 1:
        return np.repeat(rows, 3, axis=2)
    return np.ascontiguousarray(rows[:, :, list(order)])


def numpy_to_image(array: np.ndarray, encoding: str = "rgb8", header=None) -> Image:
    """HxWx3 RGB / HxWx4 RGBA / HxW mono uint8 -> sensor_msgs/Image with the given encoding."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unsupported image encoding {encoding!r}; supported: {', '.join(ENCODINGS)}")
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    channels, order = ENCODINGS[encoding]
    if a.ndim != 3 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"image must be HxW or HxWxC and non-empty, got shape {a.shape}")
    if channels == 1:
        if a.shape[2] != 1:
            raise ValueError(f"mono8 needs a single-channel image, got shape {a.shape}")
    elif a.shape[2] != channels:
        raise ValueError(f"{encoding} needs {channels} channels, got shape {a.shape}")
    else:
        a = a[:, :, list(order)]  # the permutations are their own inverses
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(a.shape[0]), int(a.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * channels
    msg.data = np.ascontiguousarray(a).tobytes()
    return msg


# ------------------------------------------------------------------------------------ poses
def _quaternion(q, what: str) -> np.ndarray:
    xyzw = np.array([q.x, q.y, q.z, q.w], dtype=np.float64)
    if not np.all(np.isfinite(xyzw)):
        raise ValueError(f"{what} orientation contains NaN or inf: {xyzw.tolist()}")
    norm = float(np.linalg.norm(xyzw))
    if abs(norm - 1.0) > UNIT_QUATERNION_TOL:
        # a non-unit quaternion usually means a bug upstream (uninitialised w=0, wrong field order)
        raise ValueError(f"{what} orientation is not a unit quaternion (norm {norm:.6g}, tolerance "
                         f"{UNIT_QUATERNION_TOL}); normalise it before sending")
    return xyzw / norm


def _matrix(t_xyz, q, what: str) -> np.ndarray:
    t = np.array(t_xyz, dtype=np.float64)
    if not np.all(np.isfinite(t)):
        raise ValueError(f"{what} position contains NaN or inf: {t.tolist()}")
    T = np.eye(4)
    T[:3, :3] = geometry.quaternion_xyzw_to_matrix(torch.from_numpy(_quaternion(q, what))).numpy()
    T[:3, 3] = t
    return T


def pose_to_matrix(pose: Pose, what: str = "pose") -> np.ndarray:
    """geometry_msgs/Pose -> 4x4 float64 (finite position, unit quaternion, else ValueError)."""
    p = pose.position
    return _matrix((p.x, p.y, p.z), pose.orientation, what)


def transform_to_matrix(transform: Transform, what: str = "transform") -> np.ndarray:
    t = transform.translation
    return _matrix((t.x, t.y, t.z), transform.rotation, what)


def _rotation_translation(T: np.ndarray):
    T = np.asarray(T, dtype=np.float64)
    geometry.validate_rigid(torch.from_numpy(T), tol=1e-4)
    q = geometry.matrix_to_quaternion_xyzw(torch.from_numpy(T[:3, :3])).numpy()
    return q, T[:3, 3]


def matrix_to_pose(T: np.ndarray) -> Pose:
    q, t = _rotation_translation(T)
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in t)
    o = pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in q)
    return pose


def matrix_to_transform(T: np.ndarray) -> Transform:
    q, t = _rotation_translation(T)
    tf = Transform()
    tf.translation.x, tf.translation.y, tf.translation.z = (float(v) for v in t)
    r = tf.rotation
    r.x, r.y, r.z, r.w = (float(v) for v in q)
    return tf


def covariance_to_list(cov: np.ndarray) -> list[float]:
    """6x6 (x, y, z, rx, ry, rz) -> the 36 row-major floats of PoseWithCovariance.covariance.

    Symmetrised (the sample covariance is symmetric up to rounding); non-finite entries raise.
    """
    c = np.asarray(cov, dtype=np.float64)
    if c.shape != (6, 6):
        raise ValueError(f"covariance must be 6x6, got {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError("covariance contains NaN or inf")
    return [float(v) for v in (0.5 * (c + c.T)).reshape(-1)]


def list_to_covariance(values) -> np.ndarray:
    c = np.asarray(values, dtype=np.float64)
    if c.size != 36:
        raise ValueError(f"covariance must have 36 entries, got {c.size}")
    return c.reshape(6, 6)


def pose_with_covariance(T: np.ndarray, cov: np.ndarray) -> PoseWithCovariance:
    msg = PoseWithCovariance()
    msg.pose = matrix_to_pose(T)
    msg.covariance = covariance_to_list(cov)
    return msg


def camera_intrinsics(info: CameraInfo) -> tuple[np.ndarray, tuple[int, int], bool]:
    """CameraInfo -> (3x3 intrinsics of the rectified image, (width, height), whether D is non-zero).

    The rectified image's camera matrix is P's left 3x3 (REP-104; image_proc rectifies into it); a
    CameraInfo without P (all zeros) gives K. ValueError for unusable values.
    """
    if info.width == 0 or info.height == 0:
        raise ValueError(f"camera_info has an empty image size {info.width}x{info.height}")
    P = np.asarray(info.p, dtype=np.float64).reshape(3, 4)
    K = P[:, :3].copy() if np.any(P != 0) else np.asarray(info.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"camera_info intrinsics must be finite with positive focal lengths, got {K.tolist()}")
    if abs(K[0, 1]) > 1e-9 * K[0, 0] or np.any(K[2] != [0, 0, 1]) or K[1, 0] != 0:
        raise ValueError(f"camera_info intrinsics must be a zero-skew pinhole matrix, got {K.tolist()}")
    D = np.asarray(info.d, dtype=np.float64)
    return K, (int(info.width), int(info.height)), bool(np.any(D != 0))


def fovy_deg(K: np.ndarray, height: int) -> float:
    """Vertical field of view of a pinhole camera, in degrees."""
    return math.degrees(2.0 * math.atan2(0.5 * height, float(K[1, 1])))


def time_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
