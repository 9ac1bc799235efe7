"""Readers for the two classic RGB-D SLAM benchmarks: Microsoft 7-Scenes and TUM RGB-D.

Both return `Scene`s in the `gst_model.data` convention (OpenCV camera-to-world, pixel intrinsics on
the continuous plane with pixel centres at +0.5, see `cameras.py`).

7-Scenes   `<scene>/seq-XX/frame-XXXXXX.color.png` (`.color.jpg` in some re-distributions) and
           `frame-XXXXXX.pose.txt`, a 4x4 camera-to-world matrix in the Kinect camera's axes (x right,
           y down, z forward); `<scene>/TrainSplit.txt` / `TestSplit.txt` list `sequenceN` names.
           The dataset documents one pinhole for all frames: principal point (320, 240), focal length
           585 px (`SEVEN_SCENES_K`). The stored rotations are not exactly orthonormal (singular values
           ~0.99994 in the `stairs` sample), which alone reads as a ~1 degree rotation between identical
           poses; the reader projects them onto the nearest rotation (SVD).
TUM RGB-D  `<sequence>/rgb.txt` (`timestamp filename`) and `<sequence>/groundtruth.txt`
           (`timestamp tx ty tz qx qy qz qw`: the colour camera's optical centre and orientation in the
           motion-capture world, i.e. camera-to-world in OpenCV axes). The two streams have their own
           clocks and rates (30 Hz images, 100 Hz motion capture); each image takes the ground-truth
           pose with the nearest timestamp, and images with none within `max_difference` seconds (the
           benchmark's associate.py default, 0.02 s) are left out. Intrinsics come from the sequence
           name (`freiburg1/2/3`, the published calibrations) or the ROS default otherwise; they were
           calibrated with OpenCV/ROS, which put pixel centres at integers, so the principal point moves
           by +0.5 px into this package's convention. fr1 and fr2 images are distorted; the coefficients
           are kept in `View.meta["distortion"]` and not applied.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from transforms3d.quaternions import quat2mat

from gst_model.data.formats import IMAGE_SUFFIXES, Scene, View, image_size

SEVEN_SCENES_K = np.array([[585.0, 0.0, 320.0], [0.0, 585.0, 240.0], [0.0, 0.0, 1.0]])
SEVEN_SCENES_SIZE = (480, 640)
_FRAME = re.compile(r"^frame-(\d+)\.pose\.txt$")

# TUM RGB-D colour cameras: (fx, fy, cx, cy) in OpenCV pixels and OpenCV distortion (k1, k2, p1, p2, k3).
TUM_CAMERAS = {
    "freiburg1": ((517.3, 516.5, 318.6, 255.3), (0.2624, -0.9531, -0.0054, 0.0026, 1.1633)),
    "freiburg2": ((520.9, 521.0, 325.1, 249.7), (0.2312, -0.7849, -0.0033, -0.0001, 0.9172)),
    "freiburg3": ((535.4, 539.2, 320.1, 247.6), (0.0, 0.0, 0.0, 0.0, 0.0)),
    "default": ((525.0, 525.0, 319.5, 239.5), (0.0, 0.0, 0.0, 0.0, 0.0)),  # ROS OpenNI driver
}
TUM_MAX_DIFFERENCE = 0.02


def nearest_rotation(M: np.ndarray) -> np.ndarray:
    """The rotation closest to M in the Frobenius norm (polar decomposition via SVD)."""
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


# ---------------------------------------------------------------------------------------------
# 7-Scenes


def read_7scenes_pose(path: Path) -> np.ndarray:
    """A 4x4 camera-to-world matrix from a `frame-XXXXXX.pose.txt`, rotation made orthonormal."""
    try:
        M = np.loadtxt(path, dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: not a 4x4 matrix of numbers: {exc}") from exc
    if M.shape != (4, 4):
        raise ValueError(f"{path}: expected a 4x4 matrix, got shape {M.shape}")
    if not np.all(np.isfinite(M)) or not np.allclose(M[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"{path}: not a finite rigid transform (last row {M[3].tolist()})")
    c2w = np.eye(4)
    c2w[:3, :3] = nearest_rotation(M[:3, :3])
    c2w[:3, 3] = M[:3, 3]
    return c2w


def _color_image(pose_path: Path) -> Path:
    stem = pose_path.name[: -len(".pose.txt")]
    for suffix in (".color.png", ".color.jpg"):
        if (pose_path.parent / (stem + suffix)).is_file():
            return pose_path.parent / (stem + suffix)
    raise FileNotFoundError(f"no {stem}.color.png or .color.jpg beside {pose_path}")


def read_7scenes_sequence(seq_dir: Path, K: np.ndarray | None = None, scene_name: str | None = None) -> Scene:
    """One `seq-XX` folder, frames in frame-number order. `K` overrides the documented intrinsics."""
    seq_dir = Path(seq_dir)
    K = SEVEN_SCENES_K if K is None else np.asarray(K, dtype=np.float64)
    poses = sorted((int(m.group(1)), p) for p in seq_dir.iterdir() if (m := _FRAME.match(p.name)))
    if not poses:
        raise FileNotFoundError(f"no frame-XXXXXX.pose.txt files in {seq_dir}")
    views = []
    for frame, pose_path in poses:
        c2w = read_7scenes_pose(pose_path)
        image = _color_image(pose_path)
        size = image_size(image)
        if size != SEVEN_SCENES_SIZE:
            raise ValueError(f"{image}: 7-Scenes colour frames are 640x480, got {size[1]}x{size[0]}")
        views.append(View(image, c2w, K.copy(), size,
                          {"frame": frame, "sequence": seq_dir.name}))
    name = f"{scene_name}/{seq_dir.name}" if scene_name else seq_dir.name
    return Scene(name, views, "7scenes")


def read_7scenes_split(scene_dir: Path, split: str | None = None) -> list[str]:
    """Sequence folder names (`seq-01`, ...) of a split: "train", "test", or None for all present."""
    scene_dir = Path(scene_dir)
    if split is None:
        return sorted(p.name for p in scene_dir.glob("seq-*") if p.is_dir())
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
    listing = scene_dir / f"{split.capitalize()}Split.txt"
    names = []
    for line in listing.read_text().split():
        m = re.fullmatch(r"sequence(\d+)", line.strip())
        if not m:
            raise ValueError(f"{listing}: expected lines like 'sequence1', got {line!r}")
        names.append(f"seq-{int(m.group(1)):02d}")
    return names


def read_7scenes_scene(scene_dir: Path, split: str | None = None, K: np.ndarray | None = None,
                       merge: bool = False) -> list[Scene]:
    """Sequences of one 7-Scenes scene (e.g. `stairs`), one `Scene` each, or one merged `Scene`
    (`merge=True`: every sequence shares the scene's world frame, so cross-sequence pairs are valid)."""
    scene_dir = Path(scene_dir)
    sequences = [read_7scenes_sequence(scene_dir / name, K, scene_dir.name)
                 for name in read_7scenes_split(scene_dir, split)]
    if not sequences:
        raise FileNotFoundError(f"no seq-* folders in {scene_dir}")
    if merge:
        return [Scene(scene_dir.name, [v for s in sequences for v in s.views], "7scenes")]
    return sequences


def read_7scenes_root(path: Path) -> list[Scene]:
    """Every sequence of every scene under a 7-Scenes root (or of one scene folder), named `<scene>/seq-XX`."""
    path = Path(path)
    scene_dirs = [path] if any(path.glob("seq-*/frame-*.pose.txt")) else \
        sorted(p for p in path.iterdir() if p.is_dir() and any(p.glob("seq-*/frame-*.pose.txt")))
    return [seq for scene_dir in scene_dirs for seq in read_7scenes_scene(scene_dir)]


# ---------------------------------------------------------------------------------------------
# TUM RGB-D


def _tum_rows(path: Path, fields: int) -> list[list[str]]:
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != fields:
            raise ValueError(f"{path}:{n}: expected {fields} fields, got {len(parts)}: {line!r}")
        rows.append(parts)
    return rows


def read_tum_groundtruth(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps [N] in seconds, camera-to-world poses [N, 4, 4]) from a groundtruth.txt, by time."""
    rows = _tum_rows(path, 8)
    if not rows:
        raise ValueError(f"{path}: no poses")
    data = np.array(rows, dtype=np.float64)
    order = np.argsort(data[:, 0], kind="stable")
    data = data[order]
    poses = np.repeat(np.eye(4)[None], len(data), axis=0)
    for pose, (_, tx, ty, tz, qx, qy, qz, qw) in zip(poses, data):
        q = np.array([qw, qx, qy, qz])
        norm = np.linalg.norm(q)
        if not math.isfinite(norm) or abs(norm - 1.0) > 1e-3:
            raise ValueError(f"{path}: quaternion {q.tolist()} (w, x, y, z) is not of unit length")
        pose[:3, :3] = quat2mat(q / norm)
        pose[:3, 3] = (tx, ty, tz)
    return data[:, 0], poses


def read_tum_list(path: Path) -> list[tuple[float, str]]:
    """(timestamp, relative file name) rows of an rgb.txt / depth.txt."""
    return [(float(t), name) for t, name in _tum_rows(path, 2)]


def associate_nearest(query: np.ndarray, reference: np.ndarray, max_difference: float) -> np.ndarray:
    """For each query time, the index of the nearest reference time (sorted), or -1 when farther than
    `max_difference`."""
    reference = np.asarray(reference, dtype=np.float64)
    query = np.asarray(query, dtype=np.float64)
    right = np.clip(np.searchsorted(reference, query), 1, len(reference) - 1) if len(reference) > 1 else \
        np.zeros(len(query), dtype=np.int64)
    left = np.maximum(right - 1, 0)
    pick = np.where(np.abs(reference[left] - query) <= np.abs(reference[right] - query), left, right)
    return np.where(np.abs(reference[pick] - query) <= max_difference, pick, -1)


def tum_camera(sequence_name: str) -> tuple[np.ndarray, tuple[float, ...], str]:
    """(K in this package's convention, distortion, which calibration) for a sequence name."""
    key = next((k for k in ("freiburg1", "freiburg2", "freiburg3") if k in sequence_name), "default")
    (fx, fy, cx, cy), dist = TUM_CAMERAS[key]
    K = np.array([[fx, 0.0, cx + 0.5], [0.0, fy, cy + 0.5], [0.0, 0.0, 1.0]])
    return K, dist, key


def read_tum_sequence(seq_dir: Path, max_difference: float = TUM_MAX_DIFFERENCE, K: np.ndarray | None = None,
                      camera: str | None = None) -> Scene:
    """One TUM RGB-D sequence folder; `camera` ("freiburg1", ...) or `K` (package convention) override
    the calibration guessed from the folder name."""
    seq_dir = Path(seq_dir)
    if max_difference < 0:
        raise ValueError(f"max_difference must be >= 0, got {max_difference}")
    if camera is not None and camera not in TUM_CAMERAS:
        raise ValueError(f"unknown TUM camera {camera!r}; known: {sorted(TUM_CAMERAS)}")
    times, poses = read_tum_groundtruth(seq_dir / "groundtruth.txt")
    frames = read_tum_list(seq_dir / "rgb.txt")
    K_named, dist, calibration = tum_camera(camera if camera is not None else seq_dir.name)
    K = K_named if K is None else np.asarray(K, dtype=np.float64)
    match = associate_nearest(np.array([t for t, _ in frames]), times, max_difference)
    views = []
    for (t, name), k in zip(frames, match):
        if k < 0:
            continue
        path = seq_dir / name
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{seq_dir / 'rgb.txt'}: {name} is not an image file")
        views.append(View(path, poses[k].copy(), K.copy(), image_size(path),
                          {"timestamp": t, "groundtruth_timestamp": float(times[k]), "distortion": dist,
                           "calibration": calibration}))
    return Scene(seq_dir.name, views, "tum")


def read_tum_root(path: Path, max_difference: float = TUM_MAX_DIFFERENCE) -> list[Scene]:
    """Every TUM RGB-D sequence under `path` (folders holding groundtruth.txt and rgb.txt), or `path` itself."""
    path = Path(path)
    if (path / "groundtruth.txt").is_file():
        return [read_tum_sequence(path, max_difference)]
    return [read_tum_sequence(p.parent, max_difference) for p in sorted(path.glob("*/groundtruth.txt"))
            if (p.parent / "rgb.txt").is_file()]
