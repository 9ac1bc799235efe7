"""`localize`: pose of the current camera relative to a reference keyframe, on /tf and as topics.

A LifecycleNode (rclpy's lifecycle works with the Kilted wheels; the shared plumbing is
gst_ros.lifecycle.GstNode): configure loads the model and creates the ROS entities, activate starts
processing, deactivate pauses it, cleanup frees the model. gst_ros.run starts it (`ros2 run gst_ros
localize`, the launch file, `gst-localize`), with `autostart` driving configure+activate, because the
pip setup has no lifecycle manager or `ros2 lifecycle`; a failed configure (missing model) exits 1.

Subscribes  image (sensor_msgs/Image), camera_info (sensor_msgs/CameraInfo, optional)
Publishes   /tf (tf2_msgs/TFMessage): reference_frame -> camera_frame, stamp = the image's stamp
            ~/pose (geometry_msgs/PoseWithCovarianceStamped), ~/estimate (gst_ros/PoseEstimate)
            /diagnostics (diagnostic_msgs/DiagnosticArray, 1 Hz)
Services    ~/set_reference (gst_ros/SetReference), ~/estimate_pose (gst_ros/EstimatePose)

Frames are REP-103 optical frames (x right, y down, z forward). Both default frame names are this
node's own (gst_reference_optical, gst_camera_optical): the reference is the camera at an earlier
time, so reusing the driver's optical frame as child would give it a second TF parent. Which image is
compared with which, re-keying, and the chaining of keyframes into the reference frame are
gst_ros.keyframes.Localizer's, shared with the offline replay (gst_ros.tools.replay).
The image callback checks the header and hands the message to one worker thread (latest frame wins);
conversion and the model run there. With use_camera_info, images of the size camera_info describes are
given to GSTPipeline.estimate_pose with the camera's intrinsics (resampled to the model's own camera, so
poses are in the real camera's optical frame); the estimate_pose service does the same for its images.
Every estimate carries a confidence (the probability that its rotation is within 15 degrees); below
min_confidence the PoseEstimate says low_confidence and /diagnostics reports WARN.
"""
from __future__ import annotations

import time

from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseWithCovarianceStamped, TransformStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage
from diagnostic_msgs.msg import DiagnosticArray

from gst_ros import common, conversions as conv, params
from gst_ros.common import param
from gst_ros.keyframes import Localized, Localizer
from gst_ros.lifecycle import GstNode
from gst_ros.msg import PoseEstimate
from gst_ros.srv import EstimatePose, SetReference

PARAMS = params.LOCALIZE_PARAMS


class LocalizeNode(GstNode):
    def __init__(self, **kwargs):
        super().__init__("localize", PARAMS, "localize-worker", **kwargs)

    # ----------------------------------------------------------------------------- lifecycle
    def _warm_up_shapes(self) -> dict:
        return {"pose_samples": param(self, "num_samples")}

    def _configure(self) -> list:
        self._localizer = Localizer()
        self._last_confidence = None  # of the latest published estimate
        self._low_confidence = 0  # estimates published with low_confidence
        model_group = MutuallyExclusiveCallbackGroup()
        self._tf_pub = self.create_lifecycle_publisher(TFMessage, "/tf", 100)
        self._pose_pub = self.create_lifecycle_publisher(PoseWithCovarianceStamped, "~/pose", 10)
        self._est_pub = self.create_lifecycle_publisher(PoseEstimate, "~/estimate", 10)
        entities = [(self.destroy_lifecycle_publisher, p) for p in (self._tf_pub, self._pose_pub, self._est_pub)]
        return entities + [
            (self.destroy_service, self._create_service(SetReference, "~/set_reference", self._on_set_reference)),
            (self.destroy_service, self._create_service(EstimatePose, "~/estimate_pose", self._on_estimate_pose,
                                                        callback_group=model_group, qos_profile=common.SERVICE_QOS)),
        ]

    def _configured_message(self) -> str:
        return f"{super()._configured_message()}, image topic {self.resolve_topic_name('image')}"

    # ------------------------------------------------------------------------------ inputs
    def _on_frame(self, msg: Image) -> None:
        if self._active:
            self._worker.submit((msg, time.monotonic()))

    # ------------------------------------------------------------------------------ worker
    def _process(self, item) -> None:
        msg, received = item
        started = time.monotonic()
        try:
            rgb = self._to_rgb(msg)
        except ValueError as exc:
            self._error(f"dropped image: {exc}")
            return
        converted = time.monotonic()
        get = lambda name: param(self, name)  # noqa: E731
        model_s = []

        def estimate(image_a, image_b):
            t0 = time.monotonic()
            try:
                return self._estimate(image_a, image_b, prior_c2w=self._localizer.temporal_prior())
            finally:
                model_s.append(time.monotonic() - t0)
        out = self._localizer.localize(rgb, conv.time_to_ns(msg.header.stamp), estimate, params.rekey_policy(get))
        if out.pose is None:
            self.get_logger().info(f"reference {out.keyframe.id} set from the first image")
            return
        if out.stale:  # ~/set_reference ran during the estimate: its pose is in the previous reference frame
            return
        tf, pose, estimate = estimate_messages(out, msg.header.stamp, get)
        estimate.latency_ms = 1e3 * (time.monotonic() - received)
        self._last_confidence = estimate.confidence
        self._low_confidence += estimate.low_confidence
        if param(self, "publish_tf"):
            self._tf_pub.publish(tf)
        self._pose_pub.publish(pose)
        self._est_pub.publish(estimate)
        done = time.monotonic()
        # where the latency goes: waiting for the worker, conversion, the model (incl. its lock), the rest
        self._stats.record_done(done - received, wait=started - received, convert=converted - started,
                                model=model_s[0], publish=done - converted - model_s[0])
        if out.rekeyed_to is not None:
            self.get_logger().info(f"confidence below {param(self, 'rekey_min_confidence')} for "
                                   f"{param(self, 'rekey_after_frames')} frames: re-keyed, keyframe {out.rekeyed_to}")

    def _estimate(self, image_a, image_b, num_samples: int | None = None, seed: int | None = None,
                  prior_c2w=None):
        """The pipeline's estimate with the node's parameters (None: the parameter's value); `prior_c2w` is
        the speculative draft (the previous frame's estimate against the same keyframe)."""
        K_a, K_b = (self._intrinsics(im.shape[1], im.shape[0]) for im in (image_a, image_b))
        with self._model_lock:
            return self._pipeline.estimate_pose(image_a, image_b, K_a=K_a, K_b=K_b, **params.pose_kwargs(
                lambda name: param(self, name), num_samples=num_samples, seed=seed, prior_c2w=prior_c2w))

    # ----------------------------------------------------------------------------- services
    def _on_set_reference(self, request: SetReference.Request, response: SetReference.Response):
        msg = self._latest if request.use_latest_frame else request.image
        if msg is None:
            response.success = False
            response.message = f"no image received yet on {self.resolve_topic_name('image')}"
            return response
        try:
            rgb = self._to_rgb(msg)
        except ValueError as exc:
            self._error(f"set_reference: {exc}")
            response.success, response.message = False, f"bad image: {exc}"
            return response
        response.reference_id = self._localizer.set_reference(rgb, conv.time_to_ns(msg.header.stamp)).id
        response.reference_stamp = msg.header.stamp
        response.success, response.message = True, f"reference {response.reference_id} set"
        return response

    def _on_estimate_pose(self, request: EstimatePose.Request, response: EstimatePose.Response):
        try:
            a, b = self._to_rgb(request.image_a), self._to_rgb(request.image_b)
            n = common.check_num_samples(self, request.num_samples, param(self, "num_samples"))
            seed = int(request.seed) if request.seed >= 0 else -1
            est = self._estimate(a, b, n, seed)
            response.pose = conv.pose_with_covariance(est.c2w, est.covariance)
            response.samples = [conv.matrix_to_pose(T) for T in est.samples]
            response.consistency, response.residual = float(est.consistency), float(est.residual)
            response.confidence, response.source = float(est.confidence), est.source
            response.low_confidence = bool(est.confidence < param(self, "min_confidence"))
            response.success, response.message = True, f"{n} samples"
        except Exception as exc:  # bad request or model failure: answer, count, keep serving
            self._error(f"estimate_pose: {exc}")
            response.success, response.message = False, str(exc)
        return response

    # -------------------------------------------------------------------------- diagnostics
    def _diagnostics(self) -> DiagnosticArray:
        snap = self._snapshot()
        warn = ""
        keyframe = self._localizer.keyframe
        if not self._active:
            warn = "inactive"
        elif keyframe is None:
            warn = "waiting for the first image"
        camera, camera_warning = self._camera_status()
        confidence, threshold = self._last_confidence, param(self, "min_confidence")
        if confidence is not None and confidence < threshold:
            warn = warn or (f"low confidence {confidence:.2f} < min_confidence {threshold:g}: the latest pose is "
                            "likely wrong (images unlike the model's training data?)")
        warn = warn or camera_warning
        extra = {"dropped_frames": self._worker.dropped if self._worker else 0,
                 "reference_id": keyframe.id if keyframe else 0, "rekeys": self._localizer.rekeys,
                 "confidence": confidence if confidence is not None else "none yet",
                 "low_confidence_estimates": self._low_confidence, **camera,
                 "model_fovy_deg": float(self._pipeline.view.fovy_deg) if self._pipeline is not None else "unknown"}
        return common.diagnostics(self, "pose estimation", snap, extra, warn)


def estimate_messages(out: Localized, stamp: Time, get) -> tuple[TFMessage, PoseWithCovarianceStamped, PoseEstimate]:
    """What localize publishes for one localized frame (parameters by `get(name)`): /tf, ~/pose and
    ~/estimate (latency_ms left 0 for the caller); the offline replay writes the same messages."""
    header = Header(stamp=stamp, frame_id=get("reference_frame"))
    child = get("camera_frame")
    est = out.estimate
    pwc = conv.pose_with_covariance(out.pose, out.covariance)
    tf = TFMessage(transforms=[TransformStamped(header=header, child_frame_id=child,
                                                transform=conv.matrix_to_transform(out.pose))])
    ref_ns = out.keyframe.stamp_ns
    estimate = PoseEstimate(
        header=header, child_frame_id=child, pose=pwc, confidence=float(est.confidence),
        low_confidence=bool(est.confidence < get("min_confidence")), source=est.source,
        consistency=float(est.consistency),
        residual=float(est.residual), num_samples=len(est.samples), rotation_spread_deg=float(est.rotation_spread_deg),
        reference_stamp=Time(sec=ref_ns // 1_000_000_000, nanosec=ref_ns % 1_000_000_000),
        reference_id=out.keyframe.id)
    return tf, PoseWithCovarianceStamped(header=header, pose=pwc), estimate
