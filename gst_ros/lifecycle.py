"""Lifecycle plumbing shared by localize and view_predictor: `GstNode`.

configure loads the model and creates the ROS entities, activate starts processing, deactivate
pauses it, cleanup (and shutdown) stop the worker, destroy what configure created and drop the model.
Every node has the same image and camera_info inputs, a 1 Hz /diagnostics report and one
LatestWorker; a subclass adds its own job:
  _configure()        its state and entities, as (destroy function, entity) pairs
  _on_frame(msg)      what it does with an image whose header passed the checks (executor thread)
  _process(item)      what the worker does with a submitted item
  _diagnostics()      its DiagnosticArray (built from _snapshot())
  _warm_up_shapes()   the GSTPipeline.warm_up arguments for its work (compile: true)

Services are created with `_create_service`: a request is refused with a reason while the node is not
active or is shutting down, and `idle_s()` tells the runner's shutdown when the request queues are empty,
so every queued caller gets an answer (success=false, "node is shutting down") before the node goes.
Errors are counted on /diagnostics and logged throttled per kind (worker.ErrorThrottle).

With use_camera_info, camera_info gives both nodes the camera's intrinsics (`_intrinsics`): the rectified
camera matrix (P, else K) for images of the size it describes. The nodes expect rectified images
(image_rect from image_proc); a non-zero distortion D is warned about once, not applied.
"""
from __future__ import annotations

import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from gst_model.image import min_input_side
from gst_ros import common, conversions as conv, params
from gst_ros.common import param
from gst_ros.worker import ErrorThrottle, LatestWorker, Stats


class GstNode(LifecycleNode):
    def __init__(self, name: str, params, worker_name: str, **kwargs):
        super().__init__(name, **kwargs)
        self.configured = False  # read by the parameter validation (configure-only parameters)
        common.declare(self, params)
        self._worker_name = worker_name
        self._model_lock = threading.Lock()  # the worker and the services share one pipeline
        self._pipeline = None
        self._worker = None
        self._active = False
        self._shutting_down = False
        self._entities = []
        self._throttle = ErrorThrottle(period_s=5.0)
        self._service_lock = threading.Lock()
        self._serving = 0  # service callbacks running now
        self._last_served = 0.0  # monotonic time the last one ended

    # ----------------------------------------------------------------------------- lifecycle
    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            self._pipeline = common.load_pipeline(self)
            if param(self, "compile"):  # compile now, not on the first frame
                seconds = self._pipeline.warm_up(**self._warm_up_shapes())
                self.get_logger().info(f"compiled the model in {seconds:.0f} s")
        except Exception as exc:  # any load failure: the message is the cause, the state stays unconfigured
            self.get_logger().fatal(f"cannot load model (model_path={param(self, 'model_path')!r}, "
                                    f"backend={param(self, 'backend')}): {type(exc).__name__}: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._stats = Stats()
        self._reported_errors = 0
        self._latest = None  # latest Image message whose header passed the checks
        self._lost = 0  # frames the middleware reported lost (message_lost events)
        self._min_side = min_input_side(self._pipeline.view.image_size)
        self._camera = None  # (K, (width, height), distorted) from camera_info
        self._distortion_warned = False
        # the subclass first, so its state exists before any callback below can run;
        # (destroy function, entity) pairs so cleanup can undo configure exactly
        self._entities = self._configure()
        # diagnostics also report while inactive, so they are a plain publisher
        diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._entities += [
            (self.destroy_publisher, diag_pub),
            (self.destroy_subscription, self.create_subscription(
                Image, "image", self._on_image, common.image_qos(self), event_callbacks=SubscriptionEventCallbacks(
                    incompatible_qos=self._on_incompatible_qos, message_lost=self._on_message_lost))),
            (self.destroy_timer, self.create_timer(1.0, lambda: diag_pub.publish(self._diagnostics()))),
        ]
        if param(self, "use_camera_info"):
            info_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                                  durability=DurabilityPolicy.VOLATILE)
            self._entities.append((self.destroy_subscription, self.create_subscription(
                CameraInfo, "camera_info", self._on_camera_info, info_qos)))
        self._worker = LatestWorker(self._process, self._worker_name, lambda: common.min_period_s(self),
                                    on_error=lambda exc: self._error(f"{self._worker_name}: {type(exc).__name__}: {exc}"))
        self.configured = True
        self.get_logger().info(self._configured_message())
        return TransitionCallbackReturn.SUCCESS

    def _configured_message(self) -> str:
        return (f"configured: model {params.model_label(param(self, 'model_path'))} on "
                f"{param(self, 'backend')}/{param(self, 'device')}")

    def on_activate(self, state) -> TransitionCallbackReturn:
        self._active = True
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self._active = False
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self._active = False
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def begin_shutdown(self) -> None:
        """From now on refuse every request and frame (the runner then spins until idle_s() says the
        queued requests are answered)."""
        self._shutting_down = True
        self._active = False

    def idle_s(self) -> float:
        """Seconds since the last service callback ended; 0 while one runs."""
        with self._service_lock:
            return 0.0 if self._serving else time.monotonic() - self._last_served

    def release(self) -> None:
        """Stop the worker, destroy what configure created and drop the model (idempotent)."""
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        for destroy, entity in self._entities:
            destroy(entity)
        self._entities = []
        self._pipeline = None
        self.configured = False

    # ----------------------------------------------------------------------------- services
    def _create_service(self, srv_type, name: str, callback, **kwargs):
        """A service whose requests are refused with a reason while the node is inactive or shutting down."""
        def serve(request, response):
            with self._service_lock:
                self._serving += 1
            try:
                why = self._unavailable()
                if why:
                    response.success, response.message = False, why
                    return response
                return callback(request, response)
            finally:
                with self._service_lock:
                    self._serving -= 1
                    self._last_served = time.monotonic()
        return self.create_service(srv_type, name, serve, **kwargs)

    def _unavailable(self) -> str:
        if self._shutting_down:
            return "node is shutting down"
        if not self._active:
            return "node is not active"
        return ""

    # ------------------------------------------------------------------------------ inputs
    def _on_image(self, msg: Image) -> None:
        # executor thread: only the header is checked here (no conversion, no copy of the pixels), so a bad
        # frame is refused before anything keeps it; the model and the conversion run where it is used
        self._stats.count_received()
        try:
            conv.check_image_msg(msg, param(self, "max_image_pixels"), self._min_side)
        except ValueError as exc:
            self._error(f"dropped image: {exc}")
            return
        self._latest = msg
        self._on_frame(msg)

    def _on_frame(self, msg: Image) -> None:
        pass

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            camera = conv.camera_intrinsics(msg)
        except ValueError as exc:
            self._error(f"camera_info: {exc}")
            return
        if camera[2] and not self._distortion_warned:
            self._distortion_warned = True
            self.get_logger().warning("camera_info has a non-zero distortion D: the node expects rectified images "
                                      "(remap image to image_rect from image_proc) and uses P as their intrinsics")
        self._camera = camera

    def _intrinsics(self, width: int, height: int):
        """The camera's intrinsics for an image of this size; None without camera_info or for another size
        (the image is then centre-cropped as if it had the model's field of view)."""
        camera = self._camera
        return camera[0] if camera is not None and camera[1] == (int(width), int(height)) else None

    def _camera_status(self) -> tuple[dict, str]:
        """Diagnostics values about the intrinsics the latest image gets, and a warning or ''."""
        camera, latest = self._camera, self._latest
        if camera is None:
            return {"intrinsics": "none (centre crop)"}, ""
        K, (w, h), distorted = camera
        values = {"intrinsics": f"camera_info {w}x{h}", "camera_fovy_deg": conv.fovy_deg(K, h),
                  "camera_distortion": "non-zero D (expects image_rect)" if distorted else "none"}
        if latest is not None and (latest.width, latest.height) != (w, h):
            return values, (f"camera_info is {w}x{h} but images are {latest.width}x{latest.height}: "
                            "its intrinsics are not used")
        return values, ""

    def _to_rgb(self, msg: Image):
        """An Image (topic or request) as RGB(A) uint8 under the node's size limits; ValueError if bad."""
        return conv.image_to_numpy(msg, param(self, "max_image_pixels"), self._min_side)

    def _on_incompatible_qos(self, info) -> None:
        policy = str(getattr(info.last_policy_kind, "name", info.last_policy_kind)).replace("RMW_QOS_POLICY_", "")
        self._error(f"an image publisher on {self.resolve_topic_name('image')} offers a QoS incompatible with "
                    f"qos_reliability={param(self, 'qos_reliability')} (policy {policy.lower()}): no frames arrive "
                    "from it; set qos_reliability to match the publisher (best_effort receives any)")

    def _on_message_lost(self, info) -> None:
        self._lost = int(info.total_count)

    def _error(self, message: str) -> None:
        self._stats.record_error(message)
        text = self._throttle(message)
        if text is not None:
            self.get_logger().warning(text)

    # -------------------------------------------------------------------------- diagnostics
    def _snapshot(self) -> dict:
        """Stats snapshot; new_errors says whether errors came since the last report (level ERROR)."""
        snap = self._stats.snapshot()
        snap["new_errors"] = snap["errors"] > self._reported_errors
        snap["lost_frames"] = self._lost
        self._reported_errors = snap["errors"]
        return snap
