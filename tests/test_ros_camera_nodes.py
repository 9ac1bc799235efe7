"""The nodes' camera intrinsics and confidence reporting, in process (no DDS): camera_info -> the pipeline's
K arguments, views at the camera's resolution, low confidence in PoseEstimate and on /diagnostics."""
from __future__ import annotations

import numpy as np
import pytest

try:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticStatus
    from sensor_msgs.msg import CameraInfo
except ImportError as exc:
    pytest.skip(f"rclpy not importable ({exc}); run `bash scripts/setup_ros.sh`", allow_module_level=True)

from gst_model.data.cameras import fov_to_K  # noqa: E402
from gst_ros import conversions as conv  # noqa: E402

pytestmark = pytest.mark.ros
K_CAMERA = np.array([[80.0, 0.0, 80.0], [0.0, 80.0, 60.0], [0.0, 0.0, 1.0]])  # 160x120, 90 deg horizontal


@pytest.fixture(scope="module")
def ros_context():
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context, domain_id=0)
    try:
        yield context
    finally:
        context.try_shutdown()


def _configured(cls, context, **overrides):
    from rclpy.parameter import Parameter

    params = {"model_path": "tiny", "random_weights": True, "num_samples": 2, **overrides}
    node = cls(context=context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    node.trigger_configure()
    assert node.configured
    return node


def _camera_info(D=(0.0,) * 5) -> CameraInfo:
    info = CameraInfo(width=160, height=120, distortion_model="plumb_bob")
    info.k = [float(v) for v in K_CAMERA.ravel()]
    info.d = [float(v) for v in D]
    return info


def _image(h=120, w=160, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_localize_passes_the_cameras_intrinsics_for_images_of_its_size(ros_context, monkeypatch):
    from gst_ros.localize_node import LocalizeNode

    node = _configured(LocalizeNode, ros_context)
    try:
        calls = []
        real = node._pipeline.estimate_pose
        monkeypatch.setattr(node._pipeline, "estimate_pose", lambda a, b, **kw: calls.append(kw) or real(a, b, **kw))
        node._estimate(_image(), _image(seed=1))
        assert calls[-1]["K_a"] is None and calls[-1]["K_b"] is None  # no camera_info yet: centre crop
        node._on_camera_info(_camera_info(D=(0.1, 0, 0, 0, 0)))
        est = node._estimate(_image(), _image(seed=1))
        np.testing.assert_array_equal(calls[-1]["K_a"], K_CAMERA)
        np.testing.assert_array_equal(calls[-1]["K_b"], K_CAMERA)
        assert calls[-1]["hybrid"] is True and 0.0 <= est.confidence <= 1.0
        node._estimate(_image(), _image(48, 64))  # another size: that image gets no K
        assert calls[-1]["K_b"] is None and calls[-1]["K_a"] is not None
        values, warning = node._camera_status()
        assert values["camera_distortion"].startswith("non-zero D") and warning == ""
        assert values["camera_fovy_deg"] == pytest.approx(conv.fovy_deg(K_CAMERA, 120))
    finally:
        node.release()
        node.destroy_node()


def test_low_confidence_is_flagged_in_the_estimate_and_warned_on_diagnostics(ros_context):
    from builtin_interfaces.msg import Time
    from gst_ros.keyframes import Keyframe, Localized
    from gst_ros.localize_node import LocalizeNode, estimate_messages
    from gst_ros.params import LOCALIZE_PARAMS

    defaults = {s.name: s.default for s in LOCALIZE_PARAMS}

    class Estimate:  # the PoseEstimate fields estimate_messages reads
        c2w, covariance, samples = np.eye(4), np.eye(6), np.zeros((2, 4, 4))
        consistency, residual, rotation_spread_deg, source = 0.5, 0.1, 3.0, "classical"

    keyframe = Keyframe(np.zeros((4, 4, 3), np.uint8), 5, 1, np.eye(4), 1)
    for confidence, low in ((0.9, False), (0.1, True)):
        est = Estimate()
        est.confidence = confidence
        _, _, msg = estimate_messages(Localized(keyframe, est, np.eye(4), np.eye(6)), Time(sec=1), defaults.get)
        assert msg.confidence == pytest.approx(confidence) and msg.low_confidence is low
        assert msg.source == "classical"
    assert defaults["min_confidence"] > 0.1

    node = _configured(LocalizeNode, ros_context)
    try:
        node._active = True
        node._localizer.set_reference(_image(), 0)
        node._last_confidence = 0.1
        (status,) = node._diagnostics().status
        assert status.level == DiagnosticStatus.WARN and "low confidence 0.10" in status.message
        node._last_confidence = 0.9
        (status,) = node._diagnostics().status
        assert status.level == DiagnosticStatus.OK
    finally:
        node.release()
        node.destroy_node()


def test_view_predictor_answers_at_the_cameras_resolution(ros_context):
    from gst_ros.view_predictor_node import ViewPredictorNode

    node = _configured(ViewPredictorNode, ros_context, num_samples=1)
    try:
        target = conv.matrix_to_pose(np.eye(4))
        observation = conv.numpy_to_image(_image(), "rgb8")
        assert node._predict(observation, target, 1, seed=0)[0].shape == (64, 64, 3)  # no camera_info
        node._on_camera_info(_camera_info())
        (view,) = node._predict(observation, target, 1, seed=0)
        assert view.shape == (120, 160, 3)
        # the model's 55 degree square view inside the 90 degree camera: black outside it
        K_model = fov_to_K(node._pipeline.view.fovy_deg, 64, 64)
        half_width = 32 / K_model[0, 0] * 80  # in camera pixels
        assert (view[:, : int(80 - half_width) - 1] == 0).all() and view[:, 70:90].any()
        small = conv.numpy_to_image(_image(48, 64), "rgb8")  # not camera_info's size: the model's view
        assert node._predict(small, target, 1, seed=0)[0].shape == (64, 64, 3)
        node._latest = small
        assert "camera_info is 160x120 but images are 64x48" in node._camera_status()[1]
    finally:
        node.release()
        node.destroy_node()
