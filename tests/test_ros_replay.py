"""Offline replay (gst_ros.tools.replay) on bags written here with rosbags' writer (sqlite3 and mcap) and on a
folder of images: the node's estimate for every frame, TUM / CSV / bag outputs, ground truth from a TF chain."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from transforms3d.axangles import axangle2mat
from transforms3d.quaternions import mat2quat

pytest.importorskip("rosbags", reason="rosbags not installed (make setup installs requirements-ros.txt)")
pytest.importorskip("gst_ros.msg", reason="gst_ros interfaces not built (scripts/setup_ros.sh)")

from rosbags.rosbag2 import Reader, StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_types_from_msg, get_typestore  # noqa: E402

from gst_model.pipeline import GSTPipeline  # noqa: E402
from gst_ros.tools import replay  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
N = 5
PARAMS = ["model_path:=tiny", "random_weights:=true", "num_samples:=2", "seed:=0"]
STORE = get_typestore(Stores.ROS2_KILTED)


def _image(i: int) -> np.ndarray:
    yy, xx = np.mgrid[0:48, 0:64]
    return ((np.stack([xx * 4 + i * 30, yy * 5 + i * 7, (xx + yy) * 2], -1) + i * 11) % 256).astype(np.uint8)


def _world_base(i: int) -> np.ndarray:
    """Ground truth of the robot base (dynamic TF); the camera's optical frame hangs below it (static)."""
    T = np.eye(4)
    T[:3, :3] = axangle2mat([0, 0, 1], np.radians(6.0 * i))
    T[:3, 3] = [0.2 * i, 0.05 * i, 0.0]
    return T


K = np.array([[40.0, 0.0, 33.0], [0.0, 40.0, 23.5], [0.0, 0.0, 1.0]])  # a wider camera than the model's
BASE_OPTICAL = np.array([[0, 0, 1, 0.1], [-1, 0, 0, 0], [0, -1, 0, 0.3], [0, 0, 0, 1]], dtype=float)


def _transform(T: np.ndarray, parent: str, child: str, ns: int):
    Ty = STORE.types
    w, x, y, z = mat2quat(T[:3, :3])
    return Ty["geometry_msgs/msg/TransformStamped"](
        header=Ty["std_msgs/msg/Header"](stamp=_time(ns), frame_id=parent), child_frame_id=child,
        transform=Ty["geometry_msgs/msg/Transform"](
            translation=Ty["geometry_msgs/msg/Vector3"](x=T[0, 3], y=T[1, 3], z=T[2, 3]),
            rotation=Ty["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w)))


def _time(ns: int):
    return STORE.types["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)


def _frame_ns(i: int) -> int:
    return 10**9 * 100 + i * 100_000_000


def write_bag(path: Path, plugin: StoragePlugin) -> None:
    """Images on /cam/image_raw with CameraInfo on /cam/camera_info; /tf (world -> base) at 20 Hz, so image
    stamps fall between TF samples for the odd frames; /tf_static base -> cam_optical."""
    Ty = STORE.types
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        img = writer.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=STORE)
        info = writer.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=STORE)
        writer.write(info, _frame_ns(0) - 1, STORE.serialize_cdr(Ty["sensor_msgs/msg/CameraInfo"](
            header=Ty["std_msgs/msg/Header"](stamp=_time(_frame_ns(0)), frame_id="cam_optical"), height=48, width=64,
            distortion_model="plumb_bob", d=np.zeros(5), k=K.reshape(-1), r=np.eye(3).reshape(-1),
            p=np.hstack([K, np.zeros((3, 1))]).reshape(-1), binning_x=0, binning_y=0,
            roi=Ty["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)),
            "sensor_msgs/msg/CameraInfo"))
        tf = writer.add_connection("/tf", "tf2_msgs/msg/TFMessage", typestore=STORE)
        static = writer.add_connection("/tf_static", "tf2_msgs/msg/TFMessage", typestore=STORE)
        writer.write(static, _frame_ns(0), STORE.serialize_cdr(Ty["tf2_msgs/msg/TFMessage"](
            transforms=[_transform(BASE_OPTICAL, "base", "cam_optical", 0)]), "tf2_msgs/msg/TFMessage"))
        for k in range(2 * N + 1):  # TF every 50 ms, pose linear in time (so interpolation is exact in t)
            ns = _frame_ns(0) + k * 50_000_000
            writer.write(tf, ns, STORE.serialize_cdr(Ty["tf2_msgs/msg/TFMessage"](
                transforms=[_transform(_world_base(k / 2), "world", "base", ns)]), "tf2_msgs/msg/TFMessage"))
        for i in range(N):
            im = _image(i)
            msg = Ty["sensor_msgs/msg/Image"](
                header=Ty["std_msgs/msg/Header"](stamp=_time(_frame_ns(i)), frame_id="cam_optical"),
                height=48, width=64, encoding="rgb8", is_bigendian=0, step=64 * 3, data=im.reshape(-1))
            writer.write(img, _frame_ns(i), STORE.serialize_cdr(msg, "sensor_msgs/msg/Image"))


def _tum(path: Path) -> np.ndarray:
    return np.array([[float(v) for v in line.split()] for line in path.read_text().splitlines()])


def _pose_from_tum(row) -> np.ndarray:
    from transforms3d.quaternions import quat2mat

    T = np.eye(4)
    T[:3, :3] = quat2mat([row[7], row[4], row[5], row[6]])
    T[:3, 3] = row[1:4]
    return T


@pytest.fixture(scope="module")
def pipeline():
    return GSTPipeline.from_pretrained("tiny")


@pytest.mark.parametrize("plugin", [StoragePlugin.SQLITE3, StoragePlugin.MCAP])
def test_replay_of_a_bag(tmp_path, plugin, pipeline, monkeypatch):
    bag = tmp_path / "in"
    write_bag(bag, plugin)
    out = tmp_path / "out"
    intrinsics = []
    original = GSTPipeline.estimate_pose
    monkeypatch.setattr(GSTPipeline, "estimate_pose", lambda self, a, b, **kw: intrinsics.append(
        (kw["K_a"], kw["K_b"])) or original(self, a, b, **kw))
    rc = replay.main([str(bag), "--out", str(out), "--gt-tf", "world:cam_optical", "--bag-out",
                      *[a for p in PARAMS for a in ("--param", p)]])
    assert rc == 0
    monkeypatch.setattr(GSTPipeline, "estimate_pose", original)
    assert len(intrinsics) == N - 1 and all(np.array_equal(k, K) for pair in intrinsics for k in pair)

    # the trajectory: the reference (identity) then one pose per frame, stamped as the images
    traj = _tum(out / "trajectory.tum")
    assert traj.shape == (N, 8)
    np.testing.assert_allclose(traj[:, 0], [_frame_ns(i) / 1e9 for i in range(N)])
    np.testing.assert_allclose(traj[0, 1:], [0, 0, 0, 0, 0, 0, 1])

    # each estimate is exactly the pipeline's estimate_pose of (first frame, frame) with the node's parameters and
    # the camera's intrinsics from camera_info
    rows = list(csv.DictReader(open(out / "estimates.csv")))
    assert len(rows) == N - 1
    for i, row in enumerate(rows, start=1):
        est = pipeline.estimate_pose(_image(0), _image(i), num_samples=2, seed=0, selection="likelihood", K_a=K, K_b=K)
        assert int(row["header.stamp_ns"]) == _frame_ns(i) and int(row["reference_id"]) == 1
        assert int(row["reference_stamp_ns"]) == _frame_ns(0) and int(row["num_samples"]) == 2
        assert row["header.frame_id"] == "gst_reference_optical" and row["child_frame_id"] == "gst_camera_optical"
        np.testing.assert_allclose([float(row[f"pose.pose.position.{a}"]) for a in "xyz"], est.c2w[:3, 3], atol=1e-12)
        np.testing.assert_allclose(float(row["consistency"]), est.consistency, rtol=1e-6)
        cov = np.array([float(row[f"pose.covariance.{k}"]) for k in range(36)]).reshape(6, 6)
        np.testing.assert_allclose(cov, 0.5 * (est.covariance + est.covariance.T), atol=1e-12)
        np.testing.assert_allclose(_pose_from_tum(traj[i]), est.c2w, atol=1e-8)

    # ground truth through world -> base (dynamic, interpolated) -> cam_optical (static)
    gt = _tum(out / "groundtruth.tum")
    cam = [_world_base(i) @ BASE_OPTICAL for i in range(N)]
    for i in range(N):
        np.testing.assert_allclose(_pose_from_tum(gt[i]), np.linalg.inv(cam[0]) @ cam[i], atol=1e-8)
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["published (reference -> frame)"]["n"] == N - 1
    assert summary["identity (reference -> frame)"]["rot_median_deg"] == pytest.approx(15.0, abs=1e-6)  # 6, 12, 18, 24 deg

    # the output bag holds what the node would publish, one of each per estimate
    counts, estimates = {}, []
    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg((REPO_ROOT / "msg" / "PoseEstimate.msg").read_text(), "gst_ros/msg/PoseEstimate"))
    with Reader(out / "replay.bag") as reader:
        for conn, ns, data in reader.messages():
            counts[conn.topic] = counts.get(conn.topic, 0) + 1
            if conn.topic == "/localize/estimate":
                estimates.append(store.deserialize_cdr(data, conn.msgtype))
    assert counts == {"/tf": N - 1, "/localize/pose": N - 1, "/localize/estimate": N - 1}
    assert [e.pose.pose.position.x for e in estimates] == [float(r["pose.pose.position.x"]) for r in rows]


def test_replay_of_an_image_folder(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(_image(i)).save(folder / f"{i:04d}.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "0003.png")  # below the model's minimum size
    out = tmp_path / "out"
    assert replay.main([str(folder), "--out", str(out), "--fps", "4", *[a for p in PARAMS for a in ("--param", p)]]) == 0
    traj = _tum(out / "trajectory.tum")
    np.testing.assert_allclose(traj[:, 0], [0.0, 0.25, 0.5])
    assert len(list(csv.DictReader(open(out / "estimates.csv")))) == 2


def test_replay_refuses_bad_input(tmp_path, capsys):
    bag = tmp_path / "in"
    write_bag(bag, StoragePlugin.SQLITE3)
    assert replay.main([str(bag), "--out", str(tmp_path / "o"), "--image-topic", "/nope", "--param", PARAMS[0]]) == 2
    assert "no sensor_msgs Image or CompressedImage on '/nope'" in capsys.readouterr().err
    assert replay.main([str(bag), "--out", str(tmp_path / "o"), "--param", "num_samples:=0"]) == 2
    assert "num_samples=0: must be in" in capsys.readouterr().err
    assert replay.main([str(bag), "--out", str(tmp_path / "o"), "--param", "model_path:=tiny"]) == 1
    assert "random_weights:=true" in capsys.readouterr().err


def test_tf_interpolation_and_chains():
    tree = replay.TfTree()

    class Stamp:
        def __init__(self, ns):
            self.sec, self.nanosec = ns // 10**9, ns % 10**9

    def tf(T, parent, child, ns):
        t = _transform(T, parent, child, ns)
        t.header.stamp = Stamp(ns)
        return t

    R90 = np.eye(4)
    R90[:3, :3] = axangle2mat([0, 0, 1], np.pi / 2)
    R90[:3, 3] = [2.0, 0, 0]
    tree.add(tf(np.eye(4), "map", "body", 0), static=False)
    tree.add(tf(R90, "map", "body", 10), static=False)
    tree.add(tf(BASE_OPTICAL, "body", "cam", 0), static=True)
    half = np.eye(4)
    half[:3, :3] = axangle2mat([0, 0, 1], np.pi / 4)
    half[:3, 3] = [1.0, 0, 0]
    np.testing.assert_allclose(tree.lookup("map", "body", 5), half, atol=1e-12)
    np.testing.assert_allclose(tree.lookup("map", "cam", 5), half @ BASE_OPTICAL, atol=1e-12)
    assert tree.lookup("map", "cam", 11) is None and tree.lookup("odom", "cam", 5) is None
