"""COLMAP sparse models (binary and text), as MVImgNet ships its camera poses.

MVImgNet layout: `<root>/<category>/<object>/images/<name>` and `<root>/<category>/<object>/sparse/0/`
holding `cameras`, `images` and `points3D` as `.bin` or `.txt`. COLMAP stores world-to-camera
poses as a unit quaternion (w, x, y, z) and a translation, in OpenCV camera axes, and puts pixel
centres at +0.5 like the rest of `gst_model.data`, so intrinsics carry over unchanged. Distortion
parameters are read and kept in `View.meta` but not applied (the pinhole part is used).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gst_model.data.formats import Scene, View

# id -> (name, number of parameters), in COLMAP's order
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
    4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
}
_MODEL_IDS = {name: (i, n) for i, (name, n) in CAMERA_MODELS.items()}
_SINGLE_FOCAL = {"SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE"}


@dataclass
class Camera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray

    @property
    def K(self) -> np.ndarray:
        p = self.params
        fx, fy, cx, cy = (p[0], p[0], p[1], p[2]) if self.model in _SINGLE_FOCAL else p[:4]
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])

    @property
    def distortion(self) -> np.ndarray:
        return self.params[3:] if self.model in _SINGLE_FOCAL else self.params[4:]


@dataclass
class ImageRecord:
    id: int
    qvec: np.ndarray  # (w, x, y, z), world-to-camera rotation
    tvec: np.ndarray  # world-to-camera translation
    camera_id: int
    name: str
    xys: np.ndarray  # [N, 2] keypoints
    point3D_ids: np.ndarray  # [N], -1 where unmatched

    @property
    def c2w(self) -> np.ndarray:
        w2c = np.eye(4)
        w2c[:3, :3] = qvec_to_rotmat(self.qvec)
        w2c[:3, 3] = self.tvec
        return np.linalg.inv(w2c)


@dataclass
class Point3D:
    id: int
    xyz: np.ndarray
    rgb: np.ndarray
    error: float
    image_ids: np.ndarray
    point2D_idxs: np.ndarray


def qvec_to_rotmat(q) -> np.ndarray:
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


class _Reader:
    """Little-endian struct reads over a bytes buffer."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype, count: int) -> np.ndarray:
        out = np.frombuffer(self.data, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=self.pos)
        self.pos += out.nbytes
        return out.astype(dtype)

    def cstring(self) -> str:
        end = self.data.index(b"\0", self.pos)
        s = self.data[self.pos:end].decode("utf-8")
        self.pos = end + 1
        return s


def read_cameras_binary(path: Path) -> dict[int, Camera]:
    r = _Reader(Path(path).read_bytes())
    cameras = {}
    for _ in range(r.read("Q")[0]):
        cam_id, model_id, width, height = r.read("iiQQ")
        name, n_params = CAMERA_MODELS[model_id]
        cameras[cam_id] = Camera(cam_id, name, width, height, np.array(r.read("d" * n_params)))
    return cameras


def read_images_binary(path: Path) -> dict[int, ImageRecord]:
    r = _Reader(Path(path).read_bytes())
    images = {}
    for _ in range(r.read("Q")[0]):
        image_id, *pose, camera_id = r.read("i7di")
        name = r.cstring()
        n = r.read("Q")[0]
        pts = r.array(np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")]), n)
        images[image_id] = ImageRecord(image_id, np.array(pose[:4]), np.array(pose[4:]), camera_id, name,
                                       np.stack([pts["x"], pts["y"]], axis=1), pts["id"].copy())
    return images


def read_points3D_binary(path: Path) -> dict[int, Point3D]:
    r = _Reader(Path(path).read_bytes())
    points = {}
    for _ in range(r.read("Q")[0]):
        pid, x, y, z, cr, cg, cb, error = r.read("Q3d3Bd")
        track = r.array(np.dtype([("image", "<i4"), ("idx", "<i4")]), r.read("Q")[0])
        points[pid] = Point3D(pid, np.array([x, y, z]), np.array([cr, cg, cb], dtype=np.uint8), error,
                              track["image"].copy(), track["idx"].copy())
    return points


def _data_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in Path(path).read_text().splitlines() if not ln.startswith("#")]


def read_cameras_text(path: Path) -> dict[int, Camera]:
    cameras = {}
    for line in filter(None, _data_lines(path)):
        cam_id, model, width, height, *params = line.split()
        if len(params) != _MODEL_IDS[model][1]:
            raise ValueError(f"{path}: camera {cam_id} ({model}) has {len(params)} parameters")
        cameras[int(cam_id)] = Camera(int(cam_id), model, int(width), int(height), np.array(params, dtype=np.float64))
    return cameras


def read_images_text(path: Path) -> dict[int, ImageRecord]:
    lines = _data_lines(path)
    while lines and not lines[-1]:  # a trailing empty line is not an image
        lines.pop()
    images = {}
    for header, points in zip(lines[0::2], lines[1::2] + [""] * (len(lines) % 2)):
        f = header.split()
        image_id, camera_id = int(f[0]), int(f[8])
        name = " ".join(f[9:])
        p = np.array(points.split(), dtype=np.float64).reshape(-1, 3)
        images[image_id] = ImageRecord(image_id, np.array(f[1:5], dtype=np.float64), np.array(f[5:8], dtype=np.float64),
                                       camera_id, name, p[:, :2], p[:, 2].astype(np.int64))
    return images


def read_points3D_text(path: Path) -> dict[int, Point3D]:
    points = {}
    for line in filter(None, _data_lines(path)):
        f = line.split()
        track = np.array(f[8:], dtype=np.int64).reshape(-1, 2)
        points[int(f[0])] = Point3D(int(f[0]), np.array(f[1:4], dtype=np.float64), np.array(f[4:7], dtype=np.uint8),
                                    float(f[7]), track[:, 0].astype(np.int32), track[:, 1].astype(np.int32))
    return points


def read_model(model_dir: Path, with_points: bool = False):
    """(cameras, images, points3D or None) from a sparse model folder, binary preferred over text."""
    model_dir = Path(model_dir)
    if (model_dir / "cameras.bin").is_file():
        readers, ext = (read_cameras_binary, read_images_binary, read_points3D_binary), ".bin"
    elif (model_dir / "cameras.txt").is_file():
        readers, ext = (read_cameras_text, read_images_text, read_points3D_text), ".txt"
    else:
        raise FileNotFoundError(f"no COLMAP cameras.bin or cameras.txt in {model_dir}")
    cameras = readers[0](model_dir / f"cameras{ext}")
    images = readers[1](model_dir / f"images{ext}")
    points = readers[2](model_dir / f"points3D{ext}") if with_points else None
    return cameras, images, points


def read_colmap_scene(scene_dir: Path, images_dir: Path | None = None, model_dir: Path | None = None) -> Scene:
    """A scene from `<scene_dir>/sparse/0` and `<scene_dir>/images`, views sorted by image name."""
    scene_dir = Path(scene_dir)
    cameras, images, _ = read_model(model_dir if model_dir is not None else scene_dir / "sparse" / "0")
    images_dir = Path(images_dir) if images_dir is not None else scene_dir / "images"
    views = []
    for rec in sorted(images.values(), key=lambda r: r.name):
        cam = cameras[rec.camera_id]
        views.append(View(images_dir / rec.name, rec.c2w, cam.K, (cam.height, cam.width),
                          {"image_id": rec.id, "model": cam.model, "distortion": cam.distortion}))
    return Scene(scene_dir.name if scene_dir.name else str(scene_dir), views, "colmap")


def read_mvimgnet_root(root: Path) -> list[Scene]:
    """Every `<...>/sparse/0` under `root` (MVImgNet: category/object/sparse/0), sorted by path."""
    scenes = []
    for model_dir in sorted(Path(root).rglob("sparse/0")):
        scene = read_colmap_scene(model_dir.parent.parent)
        scene.name = str(model_dir.parent.parent.relative_to(root))
        scenes.append(scene)
    return scenes
