"""Readers for the posed multi-view datasets GST trains on, all converted to one convention.

Every reader returns `Scene`s: lists of `View`s holding an image path, an OpenCV camera-to-world
pose and pixel intrinsics on the continuous image plane (see `cameras.py`). Pairs drawn from a
scene are expressed relative to the observation camera, which becomes the identity.

Supported layouts (COLMAP / MVImgNet lives in `colmap.py`):

RealEstate10K   `<root>/<split>/<seq_id>.txt`: first line the video URL, then one line per frame
                `timestamp fx fy cx cy k1 k2 w2c(3x4, row-major)` with fx, cx divided by the image
                width and fy, cy by the height, and w2c in OpenCV axes. The dataset ships no images;
                we expect extracted frames at `<root>/<split>/<seq_id>/<timestamp>.png` (or .jpg),
                the layout written by `make_synthetic` and most frame-extraction scripts.
CO3D v2         `<root>/<category>/frame_annotations.jgz` (gzipped JSON list of frames) with
                PyTorch3D cameras: X_cam = X_world @ R + T (row vectors), camera axes +X left,
                +Y up, +Z forward, NDC intrinsics ("ndc_isotropic" or "ndc_norm_image_bounds");
                image paths are relative to `<root>`. Optional `set_lists/*.json` filter frames.
Objaverse       Zero-1-to-3 renders: `<uid>/000.png ...` RGBA and `<uid>/000.npy ...` 3x4
                world-to-camera matrices in Blender camera axes (x right, y up, -z forward), fixed
                field of view (49.1 degrees, 256x256 renders).

Scale: poses are kept in each dataset's own units; `scene_scale` gives a per-scene length that the
pair dataset may divide translations by (see `pairs.PairDataset`).
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from gst_model.data.cameras import fov_to_K, relative_pose
from gst_model.image import composite_on_white

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# OpenCV camera axes expressed in PyTorch3D camera axes (x and y flip; z forward in both) and in
# Blender camera axes (y and z flip). Both are their own inverse.
_FLIP_XY = np.diag([-1.0, -1.0, 1.0])
_FLIP_YZ = np.diag([1.0, -1.0, -1.0])


@dataclass
class View:
    image_path: Path
    c2w: np.ndarray  # 4x4 float64, OpenCV axes, camera-to-world
    K: np.ndarray  # 3x3 float64 pixel intrinsics for an image of `size`
    size: tuple[int, int]  # (height, width) the intrinsics refer to
    meta: dict = field(default_factory=dict)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """The image (uint8 HxWx3) and K rescaled to the stored image's actual size."""
        image = load_rgb(self.image_path)
        return image, scale_intrinsics(self.K, self.size, image.shape[:2])


@dataclass
class Scene:
    name: str
    views: list[View]
    source: str  # "re10k" | "co3d" | "colmap" | "objaverse"


class PairSample(NamedTuple):
    obs_image: np.ndarray  # uint8 HxWx3
    target_image: np.ndarray
    rel_c2w: np.ndarray  # 4x4 float64: target camera in the observation camera's frame
    K_obs: np.ndarray
    K_target: np.ndarray
    meta: dict


def load_rgb(path: Path) -> np.ndarray:
    """uint8 RGB; images with alpha are composited over white as the official preprocessing does."""
    with Image.open(path) as im:
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            return composite_on_white(np.asarray(im.convert("RGBA")))
        return np.array(im.convert("RGB"))


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    with Image.open(path) as im:
        return im.height, im.width


def scale_intrinsics(K: np.ndarray, size_from: tuple[int, int], size_to: tuple[int, int]) -> np.ndarray:
    if tuple(size_from) == tuple(size_to):
        return K
    S = np.diag([size_to[1] / size_from[1], size_to[0] / size_from[0], 1.0])
    return S @ K


def scene_scale(scene: Scene) -> float:
    """RMS distance of the camera centres from their centroid (1.0 for a single position)."""
    centres = np.stack([v.c2w[:3, 3] for v in scene.views])
    spread = float(np.sqrt(((centres - centres.mean(axis=0)) ** 2).sum(axis=1).mean()))
    return spread if spread > 1e-12 else 1.0


def make_pair(scene: Scene, obs: int, target: int, scale: float = 1.0) -> PairSample:
    """Load two views; the relative pose's translation is divided by `scale`."""
    a, b = scene.views[obs], scene.views[target]
    obs_image, K_obs = a.load()
    target_image, K_target = b.load()
    rel = relative_pose(a.c2w, b.c2w)
    rel[:3, 3] /= scale
    meta = {"scene": scene.name, "source": scene.source, "views": (obs, target), "scale": scale,
            "obs_path": str(a.image_path), "target_path": str(b.image_path)}
    return PairSample(obs_image, target_image, rel, K_obs, K_target, meta)


def _find_image(stem: Path) -> Path:
    for suffix in IMAGE_SUFFIXES:
        if stem.with_suffix(suffix).is_file():
            return stem.with_suffix(suffix)
    return stem.with_suffix(".png")


# ---------------------------------------------------------------------------------------------
# RealEstate10K


def read_re10k_sequence(txt_path: Path, frames_dir: Path | None = None,
                        size: tuple[int, int] | None = None) -> Scene:
    """One sequence file. Frames default to `<txt without .txt>/<timestamp>.png|jpg`.

    The normalised intrinsics are turned into pixels with `size` (height, width), or, when not
    given, the size read from the first frame's header (one video has one resolution).
    """
    txt_path = Path(txt_path)
    frames_dir = Path(frames_dir) if frames_dir is not None else txt_path.with_suffix("")
    lines = [ln.split() for ln in txt_path.read_text().splitlines()]
    rows = [ln for ln in lines[1:] if ln]  # line 0 is the source video URL
    views = []
    for row in rows:
        if len(row) != 19:
            raise ValueError(f"{txt_path}: expected 19 fields per frame line, got {len(row)}")
        timestamp = row[0]
        fx, fy, cx, cy, k1, k2 = (float(x) for x in row[1:7])
        w2c = np.eye(4)
        w2c[:3, :4] = np.array([float(x) for x in row[7:19]]).reshape(3, 4)
        path = _find_image(frames_dir / timestamp)
        if size is None:
            size = image_size(path)
        h, w = size
        K = np.array([[fx * w, 0.0, cx * w], [0.0, fy * h, cy * h], [0.0, 0.0, 1.0]])
        views.append(View(path, np.linalg.inv(w2c), K, (h, w),
                          {"timestamp": int(timestamp), "distortion": (k1, k2)}))
    return Scene(txt_path.stem, views, "re10k")


def read_re10k_split(root: Path, split: str) -> list[Scene]:
    """All sequences of `<root>/<split>/*.txt`, sorted by sequence id."""
    return [read_re10k_sequence(p) for p in sorted((Path(root) / split).glob("*.txt"))]


def write_re10k_sequence(root: Path, split: str, seq_id: str, timestamps, c2w: np.ndarray, K: np.ndarray,
                         size: tuple[int, int], images=None, url: str = "synthetic://") -> Path:
    """Write `<root>/<split>/<seq_id>.txt` (and PNG frames when `images` is given).

    Numbers are written with 17 significant digits, which round-trips float64 exactly.
    """
    split_dir = Path(root) / split
    split_dir.mkdir(parents=True, exist_ok=True)
    h, w = size
    lines = [url]
    for i, ts in enumerate(timestamps):
        Ki = K[i] if np.ndim(K) == 3 else K
        w2c = np.linalg.inv(c2w[i])[:3, :4]
        intr = (Ki[0, 0] / w, Ki[1, 1] / h, Ki[0, 2] / w, Ki[1, 2] / h, 0.0, 0.0)
        lines.append(" ".join([str(int(ts))] + [f"{x:.17g}" for x in (*intr, *w2c.ravel())]))
    txt = split_dir / f"{seq_id}.txt"
    txt.write_text("\n".join(lines) + "\n")
    if images is not None:
        (split_dir / seq_id).mkdir(exist_ok=True)
        for ts, image in zip(timestamps, images):
            Image.fromarray(image).save(split_dir / seq_id / f"{int(ts)}.png")
    return txt


# ---------------------------------------------------------------------------------------------
# CO3D v2


def co3d_to_opencv(R: np.ndarray, T: np.ndarray, focal_length, principal_point, intrinsics_format: str,
                   size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(c2w, K) in OpenCV/pixels from one CO3D viewpoint; `size` is the image (height, width)."""
    # column form of X_cam = X_world @ R + T is x_cam = R^T x + T; then flip to OpenCV axes
    w2c = np.eye(4)
    w2c[:3, :3] = _FLIP_XY @ np.asarray(R, dtype=np.float64).T
    w2c[:3, 3] = _FLIP_XY @ np.asarray(T, dtype=np.float64)
    h, w = size
    half = np.array([w / 2.0, h / 2.0])
    if intrinsics_format == "ndc_norm_image_bounds":
        rescale = half  # NDC [-1, 1] spans each image side
    elif intrinsics_format == "ndc_isotropic":
        rescale = np.full(2, half.min())  # NDC [-1, 1] spans the shorter side
    else:
        raise ValueError(f"unknown CO3D intrinsics_format {intrinsics_format!r}")
    f = np.asarray(focal_length, dtype=np.float64) * rescale
    c = half - np.asarray(principal_point, dtype=np.float64) * rescale  # NDC +x is left, +y up
    K = np.array([[f[0], 0.0, c[0]], [0.0, f[1], c[1]], [0.0, 0.0, 1.0]])
    return np.linalg.inv(w2c), K


def read_co3d_category(category_dir: Path, dataset_root: Path | None = None,
                       set_list: tuple[str, str] | None = None) -> list[Scene]:
    """Sequences of one category, frames sorted by frame number.

    `dataset_root` (default: the category's parent) is what image paths are relative to.
    `set_list=(name, split)` keeps only the frames listed under `split` in
    `set_lists/set_lists_<name>.json` (entries are [sequence_name, frame_number, image_path]).
    """
    category_dir = Path(category_dir)
    dataset_root = Path(dataset_root) if dataset_root is not None else category_dir.parent
    with gzip.open(category_dir / "frame_annotations.jgz", "rt", encoding="utf-8") as f:
        frames = json.load(f)
    keep = None
    if set_list is not None:
        name, split = set_list
        listed = json.loads((category_dir / "set_lists" / f"set_lists_{name}.json").read_text())[split]
        keep = {(seq, int(num)) for seq, num, *_ in listed}
    sequences: dict[str, list] = {}
    for fr in frames:
        if keep is not None and (fr["sequence_name"], int(fr["frame_number"])) not in keep:
            continue
        vp = fr["viewpoint"]
        size = tuple(int(x) for x in fr["image"]["size"])
        c2w, K = co3d_to_opencv(vp["R"], vp["T"], vp["focal_length"], vp["principal_point"],
                                vp.get("intrinsics_format", "ndc_norm_image_bounds"), size)
        view = View(dataset_root / fr["image"]["path"], c2w, K, size, {"frame_number": int(fr["frame_number"])})
        sequences.setdefault(fr["sequence_name"], []).append(view)
    return [Scene(name, sorted(views, key=lambda v: v.meta["frame_number"]), "co3d")
            for name, views in sorted(sequences.items())]


# ---------------------------------------------------------------------------------------------
# Objaverse renders in the Zero-1-to-3 layout


def blender_w2c_to_opencv_c2w(RT: np.ndarray) -> np.ndarray:
    """Camera-to-world OpenCV pose from a 3x4 world-to-camera matrix in Blender camera axes."""
    w2c = np.eye(4)
    w2c[:3, :4] = _FLIP_YZ @ np.asarray(RT, dtype=np.float64)[:3, :4]
    return np.linalg.inv(w2c)


def read_zero123_object(obj_dir: Path, fov_deg: float = 49.1) -> Scene:
    """One object directory of NNN.png (RGBA) + NNN.npy (3x4 Blender world-to-camera) files."""
    obj_dir = Path(obj_dir)
    views = []
    for npy in sorted(obj_dir.glob("*.npy")):
        png = npy.with_suffix(".png")
        h, w = image_size(png)
        K = fov_to_K(fov_deg, h, w)
        views.append(View(png, blender_w2c_to_opencv_c2w(np.load(npy)), K, (h, w), {"index": int(npy.stem)}))
    return Scene(obj_dir.name, views, "objaverse")


def read_zero123_root(root: Path, uids: list[str] | None = None, fov_deg: float = 49.1) -> list[Scene]:
    """Objects under `root` (all sub-directories holding .npy files, or the given uids)."""
    root = Path(root)
    dirs = [root / u for u in uids] if uids is not None else \
        sorted(d for d in root.iterdir() if d.is_dir() and any(d.glob("*.npy")))
    return [read_zero123_object(d, fov_deg) for d in dirs]

