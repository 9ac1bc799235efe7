"""`view_predictor`: what the camera would see from another pose, as a service and as topics.

Lifecycle as in localize_node (gst_ros.lifecycle.GstNode; configure loads the model; `autostart` drives
it without a manager; gst_ros.run starts it: `ros2 run gst_ros view_predictor`, `gst-view-predictor`).

Subscribes  image (sensor_msgs/Image): the latest observation; camera_info (optional): intrinsics
            ~/query_pose (geometry_msgs/PoseStamped): target pose in the observation's optical frame
Publishes   ~/predicted_image (sensor_msgs/Image, rgb8): header.stamp = the query's stamp,
            frame_id = target_frame; /diagnostics (1 Hz)
Services    ~/predict_view (gst_ros/PredictView)

The service runs in a mutually exclusive callback group of a MultiThreadedExecutor, so concurrent
calls queue rather than race, while image callbacks keep running on other threads. Topic queries go
to one worker thread that takes the newest query (a planner wants the answer to its latest question).
Both share the pipeline under one lock. With camera_info and use_camera_info, an observation of the size
camera_info describes is given with the camera's intrinsics (resampled to the model's own camera, so the
target pose is in the real camera's optical frame) and the predicted images come back as that camera
would see them, at its resolution (black where the model's field of view does not reach); otherwise the
observation is centre-cropped and the images are the model's square views.
"""
from __future__ import annotations

import math
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from gst_ros import common, conversions as conv, params
from gst_ros.common import param
from gst_ros.lifecycle import GstNode
from gst_ros.srv import PredictView

PARAMS = params.VIEW_PREDICTOR_PARAMS


class ViewPredictorNode(GstNode):
    def __init__(self, **kwargs):
        super().__init__("view_predictor", PARAMS, "view-predictor-worker", **kwargs)

    # ----------------------------------------------------------------------------- lifecycle
    def _warm_up_shapes(self) -> dict:
        return {"view_samples": param(self, "num_samples")}

    def _configure(self) -> list:
        model_group = MutuallyExclusiveCallbackGroup()
        self._image_pub = self.create_lifecycle_publisher(Image, "~/predicted_image", 10)
        return [
            (self.destroy_lifecycle_publisher, self._image_pub),
            (self.destroy_subscription, self.create_subscription(PoseStamped, "~/query_pose", self._on_query, 10)),
            (self.destroy_service, self._create_service(PredictView, "~/predict_view", self._on_predict_view,
                                                        callback_group=model_group, qos_profile=common.SERVICE_QOS)),
        ]

    # ------------------------------------------------------------------------------ inputs
    def _on_query(self, msg: PoseStamped) -> None:
        if self._active:
            self._worker.submit((msg, time.monotonic()))

    def _predict(self, image_msg: Image, target, num_samples: int, seed: int | None = None, **sampling):
        """Validated inputs -> list of predicted images (HxWx3 uint8; one, the mean or the greedy view, with
        prediction=mean or greedy); ValueError on a bad input."""
        rgb = self._to_rgb(image_msg)
        c2w = conv.pose_to_matrix(target, "target_pose")
        K = self._intrinsics(image_msg.width, image_msg.height)
        kwargs = dict(num_samples=num_samples, K_image=K, output_K=K,
                      **common.sampling_kwargs(self, seed=seed, **sampling))
        with self._model_lock:
            mode = param(self, "prediction")
            if mode == "mean":
                return [self._pipeline.expected_view(rgb, c2w, **kwargs)]
            if mode == "greedy":
                return self._pipeline.predict_view(rgb, c2w, **{**kwargs, "num_samples": 1}, greedy=True)
            return self._pipeline.predict_view(rgb, c2w, **kwargs)

    def _no_image(self) -> str:
        return f"no image received yet on {self.resolve_topic_name('image')}"

    # ------------------------------------------------------------------------------ topic path
    def _process(self, item) -> None:
        query, received = item
        if self._latest is None:
            self._error(f"query_pose: {self._no_image()}")
            return
        try:
            images = self._predict(self._latest, query.pose, param(self, "num_samples"))
            header = Header(stamp=query.header.stamp, frame_id=param(self, "target_frame"))
            self._image_pub.publish(conv.numpy_to_image(images[0], "rgb8", header))
        except Exception as exc:  # bad query or model failure: count it, keep serving
            self._error(f"query_pose: {type(exc).__name__}: {exc}")
            return
        self._stats.record_done(time.monotonic() - received)

    # ----------------------------------------------------------------------------- service
    def _on_predict_view(self, request: PredictView.Request, response: PredictView.Response):
        started = time.monotonic()
        try:
            image_msg = self._latest if request.use_latest_frame else request.observation
            if image_msg is None:
                raise ValueError(self._no_image())
            n = common.check_num_samples(self, request.num_samples, param(self, "num_samples"))
            sampling = {}
            # <= 0 (0 for top_k) means the node default; NaN/inf are errors, not defaults
            for name in ("temperature", "top_p", "cfg_scale"):
                v = float(getattr(request, name))
                if not math.isfinite(v):
                    raise ValueError(f"{name} must be finite, got {v}")
                sampling[name] = v if v > 0 else None
            sampling["top_k"] = int(request.top_k) or None
            seed = int(request.seed) if request.seed >= 0 else -1
            images = self._predict(image_msg, request.target_pose, n, seed=seed, **sampling)
            header = Header(stamp=image_msg.header.stamp, frame_id=param(self, "target_frame"))
            response.images = [conv.numpy_to_image(im, "rgb8", header) for im in images]
            response.success, response.message = True, f"{len(images)} image(s)"
            self._stats.record_done(time.monotonic() - started)
        except Exception as exc:  # bad request or model failure: answer, count, keep serving
            self._error(f"predict_view: {exc}")
            response.success, response.message = False, str(exc)
        response.latency_ms = 1e3 * (time.monotonic() - started)
        return response

    # -------------------------------------------------------------------------- diagnostics
    def _diagnostics(self) -> DiagnosticArray:
        snap = self._snapshot()
        warn = "inactive" if not self._active else ("waiting for the first image" if self._latest is None else "")
        camera, camera_warning = self._camera_status()
        extra = {"dropped_queries": self._worker.dropped if self._worker else 0, **camera}
        return common.diagnostics(self, "view prediction", snap, extra, warn or camera_warning)
