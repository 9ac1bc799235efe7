"""gst_ros without DDS: message conversions, the latest-frame worker, parameters vs YAML, launch file."""
from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

try:
    import rclpy
    from sensor_msgs.msg import CameraInfo, Image
except ImportError as exc:
    pytest.skip(f"rclpy not importable ({exc}); run `bash scripts/setup_ros.sh`", allow_module_level=True)

from geometry_msgs.msg import Pose, Transform  # noqa: E402

from gst_ros import conversions as conv  # noqa: E402
from gst_ros.worker import LatestWorker, Stats  # noqa: E402

pytestmark = pytest.mark.ros
REPO_ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------ images
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_image_round_trip(encoding):
    src = np.concatenate([RGB, RGB[:, :, :1]], axis=2) if encoding.endswith("a8") else RGB
    msg = conv.numpy_to_image(src, encoding)
    assert (msg.height, msg.width, msg.step, msg.encoding) == (5, 7, 7 * src.shape[2], encoding)
    np.testing.assert_array_equal(conv.image_to_numpy(msg), src)


def test_bgr_channel_order_and_mono():
    msg = conv.numpy_to_image(RGB, "bgr8")
    assert bytes(msg.data)[:3] == bytes(RGB[0, 0, ::-1])
    mono = conv.numpy_to_image(RGB[:, :, 0], "mono8")
    out = conv.image_to_numpy(mono)
    assert out.shape == (5, 7, 3) and np.all(out == RGB[:, :, :1])


def test_row_padding_is_dropped():
    padded = np.zeros((5, 7 * 3 + 5), np.uint8)
    padded[:, :21] = RGB.reshape(5, 21)
    msg = Image(height=5, width=7, encoding="rgb8", step=26, data=padded.tobytes())
    np.testing.assert_array_equal(conv.image_to_numpy(msg), RGB)


def test_matches_rosbags_image():
    rosbags_image = pytest.importorskip("rosbags.image")
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    ros_msg = conv.numpy_to_image(RGB, "bgr8")
    Img = store.types["sensor_msgs/msg/Image"]
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    rb = Img(header=Header(stamp=Time(sec=0, nanosec=0), frame_id=""), height=5, width=7, encoding="bgr8",
             is_bigendian=0, step=21, data=np.frombuffer(bytes(ros_msg.data), np.uint8))
    np.testing.assert_array_equal(rosbags_image.message_to_cvimage(rb, "rgb8"), conv.image_to_numpy(ros_msg))


def _msg(**changes) -> Image:
    msg = conv.numpy_to_image(RGB, "rgb8")
    for k, v in changes.items():
        setattr(msg, k, v)
    return msg


@pytest.mark.parametrize("changes, why", [
    ({"encoding": "16UC1"}, "unsupported image encoding '16UC1'"),
    ({"encoding": "RGB8"}, "unsupported image encoding"),
    ({"encoding": ""}, "unsupported image encoding ''"),
    ({"data": bytes(50)}, "expected step*height"),
    ({"height": 0}, "empty image"),
    ({"width": 0, "step": 0}, "empty image"),
    ({"step": 20}, "step 20 < width*channels = 7*3"),
    ({"height": 5000, "width": 5000, "step": 15000}, "image too large"),
    ({"data": bytes(5 * 21 + 1)}, "image data has 106 bytes, expected step*height = 21*5 = 105"),  # padded
])
def test_bad_images_rejected(changes, why):
    with pytest.raises(ValueError, match=None) as err:
        conv.image_to_numpy(_msg(**changes))
    assert why in str(err.value)


def test_empty_message_is_an_empty_image():
    with pytest.raises(ValueError, match=r"^empty image: 0x0, encoding '', 0 data bytes$"):
        conv.image_to_numpy(Image())


def test_minimum_input_side():
    from gst_model.image import min_input_side

    assert min_input_side(64) == 16 and min_input_side(256) == 64 and min_input_side(2) == 1
    assert conv.image_to_numpy(_msg(), min_side=5).shape == (5, 7, 3)
    with pytest.raises(ValueError, match="image too small: 7x5, the model needs a short side of at least 6 px"):
        conv.image_to_numpy(_msg(), min_side=6)
    one = conv.numpy_to_image(np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(ValueError, match="image too small: 1x1"):
        conv.check_image_msg(one, min_side=min_input_side(64))


def test_max_pixels_parameter():
    assert conv.image_to_numpy(_msg(), max_pixels=35).shape == (5, 7, 3)
    with pytest.raises(ValueError, match="max_image_pixels=34"):
        conv.image_to_numpy(_msg(), max_pixels=34)


def test_numpy_to_image_rejects_bad_arrays():
    for array, encoding in [(RGB.astype(np.float32), "rgb8"), (RGB, "rgba8"), (RGB, "mono8"),
                            (np.zeros((0, 3, 3), np.uint8), "rgb8"), (RGB, "yuv422")]:
        with pytest.raises(ValueError):
            conv.numpy_to_image(array, encoding)


# ------------------------------------------------------------------------------------- poses
def _rotation(axis, deg):
    """Rodrigues' formula."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    a = math.radians(deg)
    return np.eye(3) + math.sin(a) * Kx + (1 - math.cos(a)) * Kx @ Kx


def test_pose_and_transform_round_trip():
    T = np.eye(4)
    T[:3, :3] = _rotation([0.3, -1.0, 0.2], 73.0)
    T[:3, 3] = [0.5, -2.0, 3.25]
    pose = conv.matrix_to_pose(T)
    q = pose.orientation
    assert math.isclose(q.x ** 2 + q.y ** 2 + q.z ** 2 + q.w ** 2, 1.0, rel_tol=1e-12)
    np.testing.assert_allclose(conv.pose_to_matrix(pose), T, atol=1e-12)
    np.testing.assert_allclose(conv.transform_to_matrix(conv.matrix_to_transform(T)), T, atol=1e-12)


def test_quaternion_convention_is_xyzw():
    pose = Pose()
    pose.orientation.z, pose.orientation.w = math.sin(math.pi / 4), math.cos(math.pi / 4)  # 90 deg about z
    np.testing.assert_allclose(conv.pose_to_matrix(pose)[:3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)


@pytest.mark.parametrize("field, value, why", [
    ("position.x", float("nan"), "position contains NaN or inf"),
    ("position.z", float("inf"), "position contains NaN or inf"),
    ("orientation.w", float("nan"), "orientation contains NaN or inf"),
    ("orientation.w", 2.0, "not a unit quaternion (norm 2"),
    ("orientation.w", 0.0, "not a unit quaternion (norm 0"),
    ("orientation.w", 1.01, "not a unit quaternion"),
])
def test_bad_poses_rejected(field, value, why):
    pose = Pose()  # identity: w = 1
    part, attr = field.split(".")
    setattr(getattr(pose, part), attr, value)
    with pytest.raises(ValueError) as err:
        conv.pose_to_matrix(pose, "target_pose")
    assert why in str(err.value) and "target_pose" in str(err.value)


def test_nearly_unit_quaternion_accepted():
    t = Transform()
    t.rotation.w = 1.0 + 5e-4
    np.testing.assert_allclose(conv.transform_to_matrix(t), np.eye(4), atol=1e-12)


def test_matrix_to_pose_rejects_non_rigid():
    with pytest.raises(ValueError, match="NaN"):
        conv.matrix_to_pose(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="reflection"):
        conv.matrix_to_pose(np.diag([1.0, 1.0, -1.0, 1.0]))


def test_covariance_helpers():
    A = RNG.normal(size=(6, 6))
    cov = A @ A.T
    values = conv.covariance_to_list(cov)
    assert len(values) == 36
    np.testing.assert_allclose(conv.list_to_covariance(values), cov)
    msg = conv.pose_with_covariance(np.eye(4), cov)
    np.testing.assert_allclose(np.array(msg.covariance).reshape(6, 6), cov)
    with pytest.raises(ValueError, match="6x6"):
        conv.covariance_to_list(np.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        conv.covariance_to_list(np.full((6, 6), np.nan))


def test_camera_intrinsics_and_fov():
    info = CameraInfo(width=640, height=480, k=[500.0, 0, 320, 0, 500.0, 240, 0, 0, 1])
    K = conv.camera_intrinsics(info)[0]
    assert K.shape == (3, 3) and K[0, 0] == 500.0
    assert conv.fovy_deg(K, 480) == pytest.approx(2 * math.degrees(math.atan(240 / 500)))
    with pytest.raises(ValueError, match="positive focal"):
        conv.camera_intrinsics(CameraInfo(width=640, height=480))  # all-zero K and P: no calibration
    with pytest.raises(ValueError, match="empty image size"):
        conv.camera_intrinsics(CameraInfo(k=info.k))


# ------------------------------------------------------------------------------------ worker
def test_latest_worker_drops_oldest_and_respects_rate_cap():
    seen, gate = [], threading.Event()

    def handle(item):
        gate.wait(5)
        seen.append(item)

    worker = LatestWorker(handle, "test-worker")
    try:
        worker.submit(0)
        time.sleep(0.1)  # 0 is being handled (blocked on the gate)
        for i in range(1, 6):
            worker.submit(i)
        gate.set()
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
    assert seen == [0, 5] and worker.dropped == 4

    starts = []
    capped = LatestWorker(lambda item: starts.append(time.monotonic()), "capped", lambda: 0.2)
    try:
        for i in range(3):
            capped.submit(i)
            time.sleep(0.25)
    finally:
        capped.stop()
    assert len(starts) == 3 and min(np.diff(starts)) >= 0.19


def test_stats_snapshot():
    stats = Stats(window_s=10.0)
    stats.count_received()
    stats.record_done(0.5)
    stats.record_done(1.5)
    stats.record_error("boom")
    snap = stats.snapshot()
    assert snap["processed"] == 2 and snap["errors"] == 1 and snap["last_error"] == "boom"
    assert snap["latency_mean_ms"] == pytest.approx(1000.0) and snap["latency_max_ms"] == pytest.approx(1500.0)
    assert snap["rate_hz"] == pytest.approx(0.2)


# ------------------------------------------------------------------------- parameters / YAML
@pytest.fixture
def ros_context():
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context, domain_id=0)
    try:
        yield context
    finally:
        context.try_shutdown()


def test_yaml_equals_declared_defaults(ros_context):
    """config/gst_ros.yaml is the documented source of defaults: it must not drift from the code."""
    import yaml
    from gst_ros.localize_node import PARAMS as LOCALIZE
    from gst_ros.view_predictor_node import PARAMS as VIEW

    cfg = yaml.safe_load((REPO_ROOT / "config" / "gst_ros.yaml").read_text())
    common = cfg["/**"]["ros__parameters"]
    for node, specs in (("localize", LOCALIZE), ("view_predictor", VIEW)):
        yaml_values = {**common, **cfg[f"/**/{node}"]["ros__parameters"]}
        declared = {s.name: s.default for s in specs}
        assert yaml_values == declared, node
        for name, value in declared.items():  # same types too (1 vs 1.0 is a type error in ROS)
            assert type(yaml_values[name]) is type(value), name



def test_pose_selection_choices_are_the_pipelines(ros_context):
    from gst_model.pipeline import POSE_SELECTIONS
    from gst_ros.localize_node import PARAMS

    (spec,) = [s for s in PARAMS if s.name == "pose_selection"]
    assert spec.choices == POSE_SELECTIONS and spec.default == POSE_SELECTIONS[0]


def test_run_parses_overrides_like_ros():
    from gst_ros.run import parse_override

    assert parse_override("model_path:=tiny").value == "tiny"
    assert parse_override("num_samples:=2").value == 2
    assert parse_override("top_p:=0.5").value == 0.5
    assert parse_override("model_path:=").value == ""
    with pytest.raises(SystemExit):
        parse_override("no_separator")


def test_nodes_construct_with_overrides_and_reject_bad_ones(ros_context):
    from rclpy.exceptions import ParameterException
    from rclpy.parameter import Parameter
    from gst_ros.localize_node import LocalizeNode

    node = LocalizeNode(context=ros_context, parameter_overrides=[Parameter("num_samples", value=3)])
    try:
        assert node.get_parameter("num_samples").value == 3
        result = node.set_parameters([Parameter("qos_reliability", value="sometimes")])[0]
        assert not result.successful and "best_effort" in result.reason
    finally:
        node.destroy_node()
    with pytest.raises(ParameterException):
        LocalizeNode(context=ros_context, parameter_overrides=[Parameter("max_samples", value=0)])


@pytest.mark.parametrize("node_name", ["localize", "view_predictor"])
def test_compile_warms_up_at_configure_with_the_nodes_sample_count(ros_context, monkeypatch, node_name):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from gst_model.pipeline import GSTPipeline
    from gst_ros.localize_node import LocalizeNode
    from gst_ros.view_predictor_node import ViewPredictorNode

    calls = []
    monkeypatch.setattr(GSTPipeline, "warm_up", lambda self, **shapes: calls.append(shapes) or 0.0)
    overrides = [Parameter(n, value=v) for n, v in
                 (("model_path", "tiny"), ("random_weights", True), ("compile", True), ("autostart", False),
                  ("num_samples", 3))]
    node = {"localize": LocalizeNode, "view_predictor": ViewPredictorNode}[node_name](
        context=ros_context, parameter_overrides=overrides)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert calls == [{"pose_samples": 3} if node_name == "localize" else {"view_samples": 3}]
        node.trigger_cleanup()
    finally:
        node.destroy_node()


# ------------------------------------------------------------------------------------ launch
def test_launch_description():
    try:
        import launch_ros  # noqa: F401
    except ImportError:
        pytest.skip("launch/launch_ros are not installable from the package registries (ROS_PIP_NOTES.md); "
                    "tests/test_launch.py evaluates the file with stand-ins")
    import importlib.util
    from launch import LaunchDescription

    spec = importlib.util.spec_from_file_location("localize_launch", REPO_ROOT / "launch" / "localize.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ld = module.generate_launch_description()
    assert isinstance(ld, LaunchDescription)
    names = {a.name for a in ld.get_launch_arguments()}
    assert names == {"image", "camera_info", "params_file", "model_path", "backend", "namespace"}
    assert all(a.description for a in ld.get_launch_arguments())
