"""Lifecycle plumbing shared by localize and view_predictor: `GstNode`.

configure loads the model and creates the ROS entities, activate starts processing, deactivate
pauses it, cleanup (and shutdown) stop the worker, destroy what configure created and drop the model.
Every node has the same image and camera_info inputs, a 1 Hz /diagnostics report and one
LatestWorker; a subclass adds its own job:
  _configure()        its state and entities, as (destroy function, entity) pairs
  _process(item)      what the worker does with a submitted item
  _on_camera_info()   what it makes of camera_info
  _diagnostics()      its DiagnosticArray (built from _snapshot())
  _warm_up_shapes()   the GSTPipeline.warm_up arguments for its work (compile: true)
"""
from __future__ import annotations

import threading

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from gst_ros import common
from gst_ros.common import param
from gst_ros.worker import LatestWorker, Stats


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
        self._entities = []

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
        self._latest = None  # latest Image message
        # the subclass first, so its state exists before any callback below can run;
        # (destroy function, entity) pairs so cleanup can undo configure exactly
        self._entities = self._configure()
        # diagnostics also report while inactive, so they are a plain publisher
        diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._entities += [
            (self.destroy_publisher, diag_pub),
            (self.destroy_subscription, self.create_subscription(Image, "image", self._on_image,
                                                                 common.image_qos(self))),
            (self.destroy_timer, self.create_timer(1.0, lambda: diag_pub.publish(self._diagnostics()))),
        ]
        if param(self, "use_camera_info"):
            info_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                                  durability=DurabilityPolicy.VOLATILE)
            self._entities.append((self.destroy_subscription, self.create_subscription(
                CameraInfo, "camera_info", self._on_camera_info, info_qos)))
        self._worker = LatestWorker(self._process, self._worker_name, lambda: common.min_period_s(self))
        self.configured = True
        self.get_logger().info(self._configured_message())
        return TransitionCallbackReturn.SUCCESS

    def _configured_message(self) -> str:
        return (f"configured: model {param(self, 'model_path') or 'default'} on "
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

    # ------------------------------------------------------------------------------ inputs
    def _on_image(self, msg: Image) -> None:
        # executor thread: no conversion, no model; the message is converted where it is used
        self._stats.count_received()
        self._latest = msg

    def _error(self, message: str) -> None:
        self._stats.record_error(message)
        self.get_logger().warning(message, throttle_duration_sec=5.0)

    # -------------------------------------------------------------------------- diagnostics
    def _snapshot(self) -> dict:
        """Stats snapshot; new_errors says whether errors came since the last report (level ERROR)."""
        snap = self._stats.snapshot()
        snap["new_errors"] = snap["errors"] > self._reported_errors
        self._reported_errors = snap["errors"]
        return snap
