"""`localize`: pose of the current camera relative to a reference keyframe, on /tf and as topics.

A LifecycleNode (rclpy's lifecycle works with the Kilted wheels; the shared plumbing is
gst_ros.lifecycle.GstNode): configure loads the model and creates the ROS entities, activate starts
processing, deactivate pauses it, cleanup frees the model.
With `autostart` (default) `main()` / gst_ros.run drive configure+activate themselves, because the
pip setup has no lifecycle manager or `ros2 lifecycle`; a failed configure (missing model) exits 1.

Subscribes  image (sensor_msgs/Image), camera_info (sensor_msgs/CameraInfo, optional)
Publishes   /tf (tf2_msgs/TFMessage): reference_frame -> camera_frame, stamp = the image's stamp
            ~/pose (geometry_msgs/PoseWithCovarianceStamped), ~/estimate (gst_ros/PoseEstimate)
            /diagnostics (diagnostic_msgs/DiagnosticArray, 1 Hz)
Services    ~/set_reference (gst_ros/SetReference), ~/estimate_pose (gst_ros/EstimatePose)

Frames are REP-103 optical frames (x right, y down, z forward). Both default frame names are this
node's own (gst_reference_optical, gst_camera_optical): the reference is the camera at an earlier
time, so reusing the driver's optical frame as child would give it a second TF parent.
The image callback only hands the message to one worker thread (latest frame wins); conversion and
the model run there. Camera intrinsics are not an input of GSTPipeline.estimate_pose, so camera_info
is only compared against the model's field of view and reported on /diagnostics.
"""
from __future__ import annotations

import sys
import threading
import time

from geometry_msgs.msg import PoseWithCovarianceStamped, TransformStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage
from diagnostic_msgs.msg import DiagnosticArray

from gst_ros import common, conversions as conv
from gst_ros.common import ParamSpec, param
from gst_ros.lifecycle import GstNode
from gst_ros.msg import PoseEstimate
from gst_ros.srv import EstimatePose, SetReference

# GSTPipeline's choices (gst_model.pipeline.POSE_SELECTIONS; not imported here: it pulls in torch).
POSE_SELECTIONS = ("likelihood", "consensus")
PARAMS = common.MODEL_PARAMS + (
    ParamSpec("num_samples", 16, "pose samples per estimate (the covariance comes from their spread)", 1, 256),
    ParamSpec("pose_selection", "likelihood", "how the samples become one pose: 'likelihood' = around the sample "
              "under which the image is most probable (one extra scoring pass), 'consensus' = around their "
              "rotation medoid", choices=POSE_SELECTIONS),
    ParamSpec("reference_frame", "gst_reference_optical", "TF parent: optical frame of the reference keyframe"),
    ParamSpec("camera_frame", "gst_camera_optical", "TF child: optical frame of the current camera"),
    ParamSpec("publish_tf", True, "broadcast reference_frame -> camera_frame on /tf"),
    ParamSpec("max_rate_hz", 0.0, "cap on estimates per second (0 = as fast as the model runs)", 0.0, 1000.0),
    ParamSpec("rekey_min_consistency", 0.0, "re-key (current frame becomes the reference) when consistency "
              "stays below this for rekey_after_frames frames (0 = never)", 0.0, 1.0),
    ParamSpec("rekey_after_frames", 3, "consecutive low-consistency frames before re-keying", 1, 10000),
    ParamSpec("autostart", True, "configure and activate at start-up (no lifecycle manager needed)",
              configure_only=True),
)
FOV_WARN_DEG = 5.0  # camera vs model field of view mismatch worth a diagnostics warning


class LocalizeNode(GstNode):
    def __init__(self, **kwargs):
        super().__init__("localize", PARAMS, "localize-worker", **kwargs)
        self._ref_lock = threading.Lock()

    # ----------------------------------------------------------------------------- lifecycle
    def _warm_up_shapes(self) -> dict:
        return {"pose_samples": param(self, "num_samples")}

    def _configure(self) -> list:
        self._reference = None  # (rgb array, stamp)
        self._reference_id = 0
        self._low_consistency = 0
        self._rekeys = 0
        self._camera_fov = None
        model_group = MutuallyExclusiveCallbackGroup()
        self._tf_pub = self.create_lifecycle_publisher(TFMessage, "/tf", 100)
        self._pose_pub = self.create_lifecycle_publisher(PoseWithCovarianceStamped, "~/pose", 10)
        self._est_pub = self.create_lifecycle_publisher(PoseEstimate, "~/estimate", 10)
        entities = [(self.destroy_lifecycle_publisher, p) for p in (self._tf_pub, self._pose_pub, self._est_pub)]
        return entities + [
            (self.destroy_service, self.create_service(SetReference, "~/set_reference", self._on_set_reference)),
            (self.destroy_service, self.create_service(EstimatePose, "~/estimate_pose", self._on_estimate_pose,
                                                       callback_group=model_group, qos_profile=common.SERVICE_QOS)),
        ]

    def _configured_message(self) -> str:
        return f"{super()._configured_message()}, image topic {self.resolve_topic_name('image')}"

    # ------------------------------------------------------------------------------ inputs
    def _on_image(self, msg: Image) -> None:
        super()._on_image(msg)  # also kept for set_reference with use_latest_frame
        if self._active:
            self._worker.submit((msg, time.monotonic()))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            self._camera_fov = conv.fovy_deg(conv.camera_info_to_k(msg), msg.height)
        except ValueError as exc:
            self._error(f"camera_info: {exc}")

    def _set_reference(self, rgb, stamp) -> int:
        with self._ref_lock:
            self._reference = (rgb, stamp)
            self._reference_id += 1
            self._low_consistency = 0
            return self._reference_id

    # ------------------------------------------------------------------------------ worker
    def _process(self, item) -> None:
        msg, received = item
        try:
            rgb = conv.image_to_numpy(msg, param(self, "max_image_pixels"))
        except ValueError as exc:
            self._error(f"dropped image: {exc}")
            return
        with self._ref_lock:
            reference, ref_id = self._reference, self._reference_id
        if reference is None:
            ref_id = self._set_reference(rgb, msg.header.stamp)
            self.get_logger().info(f"reference {ref_id} set from the first image")
            return
        try:
            n = param(self, "num_samples")
            est = self._estimate(reference[0], rgb, n)
            self._publish(msg, est, reference[1], ref_id, n, received)
        except Exception as exc:  # a model/conversion failure must not kill the worker thread
            self._error(f"estimate failed: {type(exc).__name__}: {exc}")
            return
        self._stats.record_done(time.monotonic() - received)
        self._maybe_rekey(est.consistency, rgb, msg.header.stamp)

    def _estimate(self, image_a, image_b, n: int, seed: int | None = None):
        """The pipeline's estimate with the node's selection and sampling parameters (seed None: the parameter)."""
        with self._model_lock:
            return self._pipeline.estimate_pose(image_a, image_b, num_samples=n,
                                                selection=param(self, "pose_selection"),
                                                **common.sampling_kwargs(self, seed=seed))

    def _publish(self, msg: Image, est, ref_stamp, ref_id: int, n: int, received: float) -> None:
        header = Header(stamp=msg.header.stamp, frame_id=param(self, "reference_frame"))
        child = param(self, "camera_frame")
        pwc = conv.pose_with_covariance(est.c2w, est.covariance)
        if param(self, "publish_tf"):
            t = TransformStamped(header=header, child_frame_id=child, transform=conv.matrix_to_transform(est.c2w))
            self._tf_pub.publish(TFMessage(transforms=[t]))
        self._pose_pub.publish(PoseWithCovarianceStamped(header=header, pose=pwc))
        self._est_pub.publish(PoseEstimate(
            header=header, child_frame_id=child, pose=pwc, consistency=float(est.consistency),
            residual=float(est.residual), num_samples=n, rotation_spread_deg=float(est.rotation_spread_deg),
            reference_stamp=ref_stamp, reference_id=ref_id,
            latency_ms=1e3 * (time.monotonic() - received)))

    def _maybe_rekey(self, consistency: float, rgb, stamp) -> None:
        threshold = param(self, "rekey_min_consistency")
        if threshold <= 0:
            return
        with self._ref_lock:
            self._low_consistency = self._low_consistency + 1 if consistency < threshold else 0
            due = self._low_consistency >= param(self, "rekey_after_frames")
        if due:
            self._rekeys += 1
            ref_id = self._set_reference(rgb, stamp)
            self.get_logger().info(f"consistency below {threshold}: re-keyed, reference {ref_id}")

    # ----------------------------------------------------------------------------- services
    def _on_set_reference(self, request: SetReference.Request, response: SetReference.Response):
        msg = self._latest if request.use_latest_frame else request.image
        if msg is None:
            response.success = False
            response.message = f"no image received yet on {self.resolve_topic_name('image')}"
            return response
        try:
            rgb = conv.image_to_numpy(msg, param(self, "max_image_pixels"))
        except ValueError as exc:
            self._error(f"set_reference: {exc}")
            response.success, response.message = False, f"bad image: {exc}"
            return response
        response.reference_id = self._set_reference(rgb, msg.header.stamp)
        response.reference_stamp = msg.header.stamp
        response.success, response.message = True, f"reference {response.reference_id} set"
        return response

    def _on_estimate_pose(self, request: EstimatePose.Request, response: EstimatePose.Response):
        try:
            limit = param(self, "max_image_pixels")
            a = conv.image_to_numpy(request.image_a, limit)
            b = conv.image_to_numpy(request.image_b, limit)
            n = common.check_num_samples(self, request.num_samples, param(self, "num_samples"))
            seed = int(request.seed) if request.seed >= 0 else -1
            est = self._estimate(a, b, n, seed)
            response.pose = conv.pose_with_covariance(est.c2w, est.covariance)
            response.samples = [conv.matrix_to_pose(T) for T in est.samples]
            response.consistency, response.residual = float(est.consistency), float(est.residual)
            response.success, response.message = True, f"{n} samples"
        except Exception as exc:  # bad request or model failure: answer, count, keep serving
            self._error(f"estimate_pose: {exc}")
            response.success, response.message = False, str(exc)
        return response

    # -------------------------------------------------------------------------- diagnostics
    def _diagnostics(self) -> DiagnosticArray:
        snap = self._snapshot()
        warn = ""
        if not self._active:
            warn = "inactive"
        elif self._reference is None:
            warn = "waiting for the first image"
        fov = self._pipeline.view.fovy_deg if self._pipeline is not None else 0.0
        if self._camera_fov is not None and abs(self._camera_fov - fov) > FOV_WARN_DEG:
            warn = warn or f"camera fovy {self._camera_fov:.1f} deg differs from the model's {fov:.1f} deg"
        extra = {"dropped_frames": self._worker.dropped if self._worker else 0,
                 "reference_id": self._reference_id, "rekeys": self._rekeys,
                 "camera_fovy_deg": self._camera_fov if self._camera_fov is not None else "unknown",
                 "model_fovy_deg": float(fov)}
        return common.diagnostics(self, "pose estimation", snap, extra, warn)


def main(args=None) -> int:
    from gst_ros.run import run_nodes  # one code path for ros2 run, the console script and gst_ros.run

    return run_nodes([LocalizeNode], args if args is not None else sys.argv)


if __name__ == "__main__":
    sys.exit(main())
