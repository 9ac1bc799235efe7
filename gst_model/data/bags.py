"""Posed camera frames from ROS 2 and ROS 1 bags, read with the `rosbags` package (no ROS install needed).

    scene = read_bag("run.mcap", "/camera/image_raw", "frames/", pose_topic="/vicon/camera",
                     camera_info_topic="/camera/camera_info")
    scene = read_bag("run.bag", "/camera/image_raw", "frames/", world_frame="map",
                     camera_info_topic="/camera/camera_info")      # ground truth from /tf + /tf_static

Images: `sensor_msgs/Image` (rgb8, bgr8, rgba8, bgra8, mono8, mono16 / 16UC1 scaled by 1/256) or
`sensor_msgs/CompressedImage` (JPEG / PNG). Each frame is written once as `<frames_dir>/<stamp ns>.png`
so that the returned `View`s are ordinary image files like every other reader's.

Ground truth, evaluated at each image's header stamp (bag receive time when the stamp is zero):
  pose topic  `geometry_msgs/PoseStamped`, `PoseWithCovarianceStamped`, `TransformStamped` or
              `nav_msgs/Odometry`: the pose of some body frame in the world; the nearest message within
              `max_difference` seconds is used;
  /tf         `world_frame` -> the image's `header.frame_id` (or `camera_frame`) through the transform
              tree of /tf_static and /tf, each dynamic edge taken at its nearest stamp within
              `max_difference`.
`body_T_camera` (4x4) is the camera's optical frame in the posed frame: identity when the pose is already
that of the optical frame; `ROS_BODY_TO_OPTICAL` for a REP-103 body frame (x forward, y left, z up).
Frames without a pose within `max_difference` are left out.

Intrinsics: the first `sensor_msgs/CameraInfo` on `camera_info_topic` (ROS, like OpenCV, puts pixel
centres at integer coordinates, so cx and cy move by +0.5 px into this package's convention; D is kept in
`View.meta["distortion"]`, not applied: record `image_rect` for undistorted frames), or `K` given in this
package's convention (e.g. from a COLMAP / kapture calibration).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from transforms3d.quaternions import quat2mat

from gst_model.data.formats import Scene, View

# The optical frame (x right, y down, z forward) expressed in a REP-103 body frame (x forward, y left, z up).
ROS_BODY_TO_OPTICAL = np.array([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0],
                                [0.0, 0.0, 0.0, 1.0]])
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
POSE_TYPES = ("geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/PoseWithCovarianceStamped",
              "geometry_msgs/msg/TransformStamped", "nav_msgs/msg/Odometry")
TF_TYPE = "tf2_msgs/msg/TFMessage"
# encoding -> (channels, numpy dtype, RGB channel order)
_ENCODINGS = {"rgb8": (3, "u1", (0, 1, 2)), "bgr8": (3, "u1", (2, 1, 0)), "rgba8": (4, "u1", (0, 1, 2)),
              "bgra8": (4, "u1", (2, 1, 0)), "mono8": (1, "u1", (0, 0, 0)), "8UC1": (1, "u1", (0, 0, 0)),
              "mono16": (1, "u2", (0, 0, 0)), "16UC1": (1, "u2", (0, 0, 0))}


def _rosbags():
    try:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore
    except ImportError as exc:
        raise RuntimeError(f"reading bags needs the rosbags package ({exc}); it is pinned in "
                           "requirements-ros.txt: pip install rosbags==0.11.9") from exc
    return AnyReader, get_typestore(Stores.LATEST)


def stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _matrix(translation, rotation) -> np.ndarray:
    q = np.array([rotation.w, rotation.x, rotation.y, rotation.z], dtype=np.float64)
    norm = np.linalg.norm(q)
    if not np.isfinite(norm) or abs(norm - 1.0) > 1e-3:
        raise ValueError(f"quaternion {q.tolist()} (w, x, y, z) is not of unit length")
    T = np.eye(4)
    T[:3, :3] = quat2mat(q / norm)
    T[:3, 3] = (translation.x, translation.y, translation.z)
    return T


def pose_from_msg(msg, msgtype: str) -> np.ndarray:
    """4x4 pose of a pose-carrying message (see POSE_TYPES)."""
    if msgtype == "geometry_msgs/msg/TransformStamped":
        return _matrix(msg.transform.translation, msg.transform.rotation)
    pose = msg.pose if msgtype == "geometry_msgs/msg/PoseStamped" else msg.pose.pose
    return _matrix(pose.position, pose.orientation)


def image_from_msg(msg, msgtype: str) -> np.ndarray:
    """HxWx3 uint8 RGB from a sensor_msgs Image or CompressedImage."""
    if msgtype == "sensor_msgs/msg/CompressedImage":
        if "compressedDepth" in msg.format:
            raise ValueError(f"compressedDepth images are not camera images (format {msg.format!r})")
        with Image.open(io.BytesIO(bytes(msg.data))) as im:
            return np.array(im.convert("RGB"))
    if msg.encoding not in _ENCODINGS:
        raise ValueError(f"unsupported image encoding {msg.encoding!r}; supported: {', '.join(_ENCODINGS)}")
    channels, kind, order = _ENCODINGS[msg.encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    dtype = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<")
    if h == 0 or w == 0 or step < w * channels * dtype.itemsize or len(msg.data) < step * h:
        raise ValueError(f"inconsistent {msg.encoding} image: {w}x{h}, step {step}, {len(msg.data)} bytes")
    rows = np.frombuffer(bytes(msg.data), dtype=np.uint8, count=step * h).reshape(h, step)
    pixels = rows[:, :w * channels * dtype.itemsize].copy().view(dtype).reshape(h, w, channels)
    if dtype.itemsize == 2:
        pixels = (pixels >> 8).astype(np.uint8)  # keep the top 8 of 16 bits
    return np.ascontiguousarray(pixels[:, :, list(order)].astype(np.uint8))


def camera_info_K(msg) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
    """(K in this package's convention, (height, width), D) from a CameraInfo (ROS 2 or ROS 1 names)."""
    K = np.array(msg.k if hasattr(msg, "k") else msg.K, dtype=np.float64).reshape(3, 3)
    D = np.array(msg.d if hasattr(msg, "d") else msg.D, dtype=np.float64)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"CameraInfo K must be finite with positive focal lengths, got {K.tolist()}")
    K = K.copy()
    K[0, 2] += 0.5
    K[1, 2] += 0.5
    return K, (int(msg.height), int(msg.width)), D


def _nearest(times: np.ndarray, t: int, max_difference_ns: int) -> int:
    """Index of the nearest time in a sorted array, or -1 when none is within max_difference_ns."""
    if len(times) == 0:
        return -1
    i = int(np.searchsorted(times, t))
    best = min((j for j in (i - 1, i) if 0 <= j < len(times)), key=lambda j: abs(int(times[j]) - t))
    return best if abs(int(times[best]) - t) <= max_difference_ns else -1


class _Track:
    """A time series of 4x4 poses, looked up by nearest stamp."""

    def __init__(self):
        self.times, self.poses = [], []

    def add(self, t: int, T: np.ndarray) -> None:
        self.times.append(t)
        self.poses.append(T)

    def finish(self) -> "_Track":
        order = np.argsort(np.array(self.times, dtype=np.int64), kind="stable")
        self.times = np.array(self.times, dtype=np.int64)[order]
        self.poses = [self.poses[i] for i in order]
        return self

    def at(self, t: int, max_difference_ns: int) -> np.ndarray | None:
        i = _nearest(self.times, t, max_difference_ns)
        return None if i < 0 else self.poses[i]


class TransformTree:
    """/tf_static + /tf: parent_T_child edges (static, or dynamic tracks looked up by nearest stamp)."""

    def __init__(self):
        self.parent: dict[str, str] = {}
        self.static: dict[str, np.ndarray] = {}
        self.dynamic: dict[str, _Track] = {}

    def add(self, msg, static: bool, receive_ns: int) -> None:
        for tf in msg.transforms:
            parent, child = tf.header.frame_id.lstrip("/"), tf.child_frame_id.lstrip("/")
            if self.parent.get(child, parent) != parent:
                raise ValueError(f"frame {child!r} has two parents: {self.parent[child]!r} and {parent!r}")
            self.parent[child] = parent
            T = _matrix(tf.transform.translation, tf.transform.rotation)
            if static:
                self.static[child] = T
            else:
                self.dynamic.setdefault(child, _Track()).add(stamp_ns(tf.header.stamp) or receive_ns, T)

    def finish(self) -> "TransformTree":
        for track in self.dynamic.values():
            track.finish()
        return self

    def _to_root(self, frame: str, t: int, max_difference_ns: int) -> tuple[str, np.ndarray] | None:
        """(root frame, root_T_frame) at time t, or None when an edge has no sample near t."""
        T = np.eye(4)
        seen = {frame}
        while frame in self.parent:
            edge = self.static.get(frame)
            if edge is None:
                edge = self.dynamic[frame].at(t, max_difference_ns)
                if edge is None:
                    return None
            T = edge @ T
            frame = self.parent[frame]
            if frame in seen:
                raise ValueError(f"the transform tree has a cycle through {frame!r}")
            seen.add(frame)
        return frame, T

    def lookup(self, target: str, source: str, t: int, max_difference_ns: int) -> np.ndarray | None:
        """target_T_source at time t (None when not available); raises when the frames are not connected."""
        a = self._to_root(target.lstrip("/"), t, max_difference_ns)
        b = self._to_root(source.lstrip("/"), t, max_difference_ns)
        if a is None or b is None:
            return None
        if a[0] != b[0]:
            raise ValueError(f"frames {target!r} and {source!r} are not connected in /tf and /tf_static "
                             f"(roots {a[0]!r} and {b[0]!r})")
        return np.linalg.inv(a[1]) @ b[1]


def _single_connection(reader, topic: str, allowed: tuple[str, ...]):
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns:
        topics = sorted({f"{c.topic} ({c.msgtype})" for c in reader.connections})
        raise ValueError(f"topic {topic!r} is not in the bag; topics: {', '.join(topics)}")
    if conns[0].msgtype not in allowed:
        raise ValueError(f"topic {topic!r} has type {conns[0].msgtype}; expected one of {', '.join(allowed)}")
    return conns


def read_bag(path: Path, image_topic: str, frames_dir: Path, *, pose_topic: str | None = None,
             world_frame: str | None = None, camera_frame: str | None = None,
             camera_info_topic: str | None = None, K: np.ndarray | None = None,
             body_T_camera: np.ndarray | None = None, max_difference: float = 0.02, every: int = 1,
             max_frames: int | None = None, tf_topics: tuple[str, str] = ("/tf", "/tf_static"),
             name: str | None = None) -> Scene:
    """Posed frames of one image topic as a Scene (see the module doc); `every` keeps every n-th frame."""
    if (pose_topic is None) == (world_frame is None):
        raise ValueError("give exactly one ground-truth source: pose_topic=... or world_frame=... (/tf)")
    if (camera_info_topic is None) == (K is None):
        raise ValueError("give exactly one intrinsics source: camera_info_topic=... or K=...")
    if every < 1 or max_difference < 0:
        raise ValueError(f"every must be >= 1 and max_difference >= 0, got {every}, {max_difference}")
    body_T_camera = np.eye(4) if body_T_camera is None else np.asarray(body_T_camera, dtype=np.float64)
    max_ns = int(round(max_difference * 1e9))
    AnyReader, typestore = _rosbags()
    frames_dir = Path(frames_dir)
    with AnyReader([Path(path)], default_typestore=typestore) as reader:
        image_conns = _single_connection(reader, image_topic, IMAGE_TYPES)
        # ground truth and intrinsics first (small messages), then the images one at a time
        track, tree = _Track(), TransformTree()
        if pose_topic is not None:
            conns = _single_connection(reader, pose_topic, POSE_TYPES)
            for conn, t, raw in reader.messages(connections=conns):
                msg = reader.deserialize(raw, conn.msgtype)
                track.add(stamp_ns(msg.header.stamp) or t, pose_from_msg(msg, conn.msgtype))
            track.finish()
        else:
            conns = [c for c in reader.connections if c.topic in tf_topics and c.msgtype == TF_TYPE]
            if not conns:
                raise ValueError(f"no {TF_TYPE} messages on {tf_topics} in {path}")
            for conn, t, raw in reader.messages(connections=conns):
                tree.add(reader.deserialize(raw, conn.msgtype), conn.topic == tf_topics[1], t)
            tree.finish()
        size = distortion = None
        if camera_info_topic is not None:
            conns = _single_connection(reader, camera_info_topic, ("sensor_msgs/msg/CameraInfo",))
            first = next(reader.messages(connections=conns), None)
            if first is None:
                raise ValueError(f"no CameraInfo message on {camera_info_topic}")
            K, size, distortion = camera_info_K(reader.deserialize(first[2], first[0].msgtype))
        K = np.asarray(K, dtype=np.float64)

        views, index = [], -1
        for conn, t, raw in reader.messages(connections=image_conns):
            index += 1
            if index % every or (max_frames is not None and len(views) >= max_frames):
                continue
            msg = reader.deserialize(raw, conn.msgtype)
            stamp = stamp_ns(msg.header.stamp) or t
            if pose_topic is not None:
                pose = track.at(stamp, max_ns)
            else:
                pose = tree.lookup(world_frame, camera_frame or msg.header.frame_id, stamp, max_ns)
            if pose is None:
                continue
            image = image_from_msg(msg, conn.msgtype)
            if size is not None and image.shape[:2] != size:
                raise ValueError(f"{image_topic}: image {image.shape[1]}x{image.shape[0]} does not match "
                                 f"CameraInfo {size[1]}x{size[0]}")
            frames_dir.mkdir(parents=True, exist_ok=True)
            file = frames_dir / f"{stamp}.png"
            Image.fromarray(image).save(file)
            views.append(View(file, pose @ body_T_camera, K.copy(), image.shape[:2],
                              {"stamp_ns": stamp, "frame_id": msg.header.frame_id, "distortion": distortion}))
    return Scene(name or Path(path).stem, views, "bag")
