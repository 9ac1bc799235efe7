"""kapture datasets (NAVER LABS' exchange format for localisation / mapping data), camera records only.

Parsed from the documented text format (kapture_format.adoc, version 1.x) rather than with the `kapture`
PyPI package, which pulls in numba, scipy and numpy-quaternion for what are four small CSV files:

`<root>/sensors/sensors.txt`         `sensor_id, name, sensor_type, [params]+`; for `camera`:
                                     `model, w, h, model parameters` with COLMAP's camera models and
                                     parameter order (and COLMAP's pixel centres at +0.5, like this package)
`<root>/sensors/records_camera.txt`  `timestamp, sensor_id, image_path` (relative to `sensors/records_data/`)
`<root>/sensors/trajectories.txt`    `timestamp, device_id, qw, qx, qy, qz, tx, ty, tz`: world-to-device
                                     (COLMAP's convention), device being a sensor or a rig
`<root>/sensors/rigs.txt` (optional) `rig_id, sensor_id, qw, qx, qy, qz, tx, ty, tz`: rig-to-sensor

Every file starts with `# kapture format: 1.x`; values are comma separated with spaces around commas
ignored; other `#` lines and blank lines are comments. A record's camera pose is its own trajectory entry
at its timestamp, or else its rig's entry composed with the rig-to-sensor transform; records without
either (and cameras of model UNKNOWN_CAMERA) are left out.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gst_model.data.colmap import CAMERA_MODELS, Camera, qvec_to_rotmat
from gst_model.data.formats import Scene, View

_PARAM_COUNTS = {name: n for name, n in CAMERA_MODELS.values()}


def _rows(path: Path, min_fields: int, max_fields: int | None = None) -> list[list[str]]:
    """CSV rows of a kapture text file (version header checked, comments and blank lines skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].replace(" ", "").lower().startswith("#kaptureformat:1."):
        raise ValueError(f"{path}: not a kapture 1.x file (first line must be '# kapture format: 1.x')")
    rows = []
    for n, line in enumerate(lines[1:], 2):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < min_fields or (max_fields is not None and len(fields) > max_fields):
            raise ValueError(f"{path}:{n}: expected {min_fields}"
                             f"{'' if max_fields == min_fields else '+'} fields, got {len(fields)}: {line!r}")
        rows.append(fields)
    return rows


def _transform(fields: list[str], where: str) -> np.ndarray | None:
    """4x4 matrix of `qw, qx, qy, qz, tx, ty, tz`, or None when the pose is left empty (unknown)."""
    if all(f == "" for f in fields):
        return None
    try:
        values = np.array([float(f) for f in fields], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{where}: bad pose {fields}: {exc}") from exc
    q = values[:4]
    if not np.all(np.isfinite(values)) or abs(np.linalg.norm(q) - 1.0) > 1e-3:
        raise ValueError(f"{where}: quaternion {q.tolist()} (w, x, y, z) is not a finite unit quaternion")
    T = np.eye(4)
    T[:3, :3] = qvec_to_rotmat(q)
    T[:3, 3] = values[4:]
    return T


def read_sensors(path: Path) -> dict[str, Camera | None]:
    """Camera sensors: id -> `colmap.Camera` (None for UNKNOWN_CAMERA); other sensor types are ignored."""
    cameras: dict[str, Camera | None] = {}
    for index, fields in enumerate(_rows(path, 3)):
        sensor_id, _name, sensor_type, *params = fields
        if sensor_type != "camera":
            continue
        if not params:
            raise ValueError(f"{path}: camera {sensor_id!r} has no model")
        model, *numbers = params
        if model == "UNKNOWN_CAMERA":
            cameras[sensor_id] = None
            continue
        if model not in _PARAM_COUNTS:
            raise ValueError(f"{path}: camera {sensor_id!r} has unknown model {model!r}")
        if len(numbers) != 2 + _PARAM_COUNTS[model]:
            raise ValueError(f"{path}: camera {sensor_id!r} ({model}) needs w, h and {_PARAM_COUNTS[model]} "
                             f"parameters, got {len(numbers)} values")
        try:
            values = [float(x) for x in numbers]
        except ValueError as exc:
            raise ValueError(f"{path}: camera {sensor_id!r}: {exc}") from exc
        cameras[sensor_id] = Camera(index, model, int(values[0]), int(values[1]), np.array(values[2:]))
    return cameras


def read_rigs(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """rig id -> {sensor id: rig-to-sensor 4x4}; entries with an empty (unknown) pose are left out."""
    rigs: dict[str, dict[str, np.ndarray]] = {}
    if not Path(path).is_file():
        return rigs
    for rig_id, sensor_id, *pose in _rows(path, 9, 9):
        T = _transform(pose, f"{path}: rig {rig_id!r} sensor {sensor_id!r}")
        if T is not None:
            rigs.setdefault(rig_id, {})[sensor_id] = T
    return rigs


def read_trajectories(path: Path) -> dict[tuple[int, str], np.ndarray]:
    """(timestamp, device id) -> world-to-device 4x4; empty poses are left out."""
    poses = {}
    for ts, device, *pose in _rows(path, 9, 9):
        T = _transform(pose, f"{path}: timestamp {ts} device {device!r}")
        if T is not None:
            poses[(int(ts), device)] = T
    return poses


def read_records_camera(path: Path) -> list[tuple[int, str, str]]:
    """(timestamp, sensor id, image path relative to records_data) rows, in file order."""
    return [(int(ts), sensor, image) for ts, sensor, image in _rows(path, 3, 3)]


def camera_pose(timestamp: int, sensor_id: str, trajectories: dict, rigs: dict) -> np.ndarray | None:
    """World-to-camera pose of one record: its own trajectory entry, or its rig's composed with the
    rig-to-sensor transform (x_sensor = T_rig_to_sensor x_rig); None when neither is known."""
    if (timestamp, sensor_id) in trajectories:
        return trajectories[(timestamp, sensor_id)]
    for rig_id, sensors in rigs.items():
        if sensor_id in sensors and (timestamp, rig_id) in trajectories:
            return sensors[sensor_id] @ trajectories[(timestamp, rig_id)]
    return None


def read_kapture(root: Path, sensor_ids: list[str] | None = None, name: str | None = None) -> Scene:
    """The posed camera records of a kapture folder as one Scene, in records_camera.txt order.

    `sensor_ids` keeps only those cameras. Every view's meta holds its `timestamp` and `sensor_id`, and
    the camera model's distortion parameters (not applied).
    """
    root = Path(root)
    sensors_dir = root / "sensors"
    for required in ("sensors.txt", "records_camera.txt", "trajectories.txt"):
        if not (sensors_dir / required).is_file():
            raise FileNotFoundError(f"{root} is not a kapture folder with poses: missing sensors/{required}")
    cameras = read_sensors(sensors_dir / "sensors.txt")
    rigs = read_rigs(sensors_dir / "rigs.txt")
    trajectories = read_trajectories(sensors_dir / "trajectories.txt")
    views = []
    for ts, sensor_id, image in read_records_camera(sensors_dir / "records_camera.txt"):
        if sensor_ids is not None and sensor_id not in sensor_ids:
            continue
        if sensor_id not in cameras:
            raise ValueError(f"{sensors_dir / 'records_camera.txt'}: sensor {sensor_id!r} is not a camera "
                             "in sensors.txt")
        camera = cameras[sensor_id]
        w2c = camera_pose(ts, sensor_id, trajectories, rigs)
        if camera is None or w2c is None:
            continue
        views.append(View(sensors_dir / "records_data" / image, np.linalg.inv(w2c), camera.K,
                          (camera.height, camera.width),
                          {"timestamp": ts, "sensor_id": sensor_id, "model": camera.model,
                           "distortion": camera.distortion}))
    return Scene(name or root.name, views, "kapture")


def read_kapture_root(path: Path) -> list[Scene]:
    """The kapture folder `path`, or every kapture folder below it (named by their path under `path`)."""
    path = Path(path)
    if (path / "sensors" / "records_camera.txt").is_file():
        return [read_kapture(path)]
    roots = sorted(p.parent.parent for p in path.rglob("sensors/records_camera.txt"))
    return [read_kapture(r, name=r.relative_to(path).as_posix()) for r in roots]
