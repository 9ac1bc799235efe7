"""`make demo`: the whole mission on a held-out synthetic scene, over real ROS 2, with a report.

    python -m gst_ros.tools.demo [--model DIR|preset] [--frames 24] [--rate 1.0] [--queries 3] [--out demo_output]

1. A camera source (this process) renders a smooth trajectory through a scene of the synthetic test
   split (never seen in training; gst_ros.tools.demo_scene) and publishes sensor_msgs/Image +
   CameraInfo; the ground-truth poses stay here.
2. The localize and view_predictor nodes run in a process each, as the launch file starts them, on a
   machine without `ros2 launch`: `python -m gst_ros.run --nodes <node>` with config/gst_ros.yaml and
   the image/camera_info remaps (what `ros2 run gst_ros <node>` runs).
3. A planner-like client here sets the first frame as reference, listens to /tf and
   /localize/estimate (pose, confidence, low_confidence, latency per frame), and calls
   /view_predictor/predict_view for a few query poses.
4. demo_output/ gets report.md, summary.json and PNG figures (gst_ros.tools.demo_report); a short
   summary is printed.

Translations: the model works in scene-normalised units (RMS spread of a scene's cameras = 1). In
simulation that scale is known, so estimated translations are shown in metres by multiplying with
it; rotation and translation-direction errors need no scale at all.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from gst_model.checkpoint import BUNDLE_PRESETS, DEFAULT_MODEL_DIR
from gst_model.data.cameras import relative_pose
from gst_ros.tools.demo_report import Estimate, Record, ViewQuery, summarize, write_report
from gst_ros.tools.demo_scene import DemoScene, held_out_scene, synthetic_config

REPO = Path(__file__).resolve().parents[2]
IMAGE_TOPIC, INFO_TOPIC = "/demo/camera/image_raw", "/demo/camera/camera_info"
NODES = ("localize", "view_predictor")


def start_nodes(model: str, env: dict, extra_params: list[str]) -> list[subprocess.Popen]:
    """One process per node, as the launch file runs them."""
    common = ["--params", str(REPO / "config" / "gst_ros.yaml"), "--remap", f"image:={IMAGE_TOPIC}",
              "--remap", f"camera_info:={INFO_TOPIC}", "--param", f"model_path:={model}"]
    if model in BUNDLE_PRESETS and not Path(model).is_dir():
        common += ["--param", "random_weights:=true"]
    for p in extra_params:
        common += ["--param", p]
    return [subprocess.Popen([sys.executable, "-m", "gst_ros.run", "--nodes", node, *common], env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
            for node in NODES]


def stop_process(proc: subprocess.Popen) -> None:
    # SIGINT waits for an estimate in progress to finish, which can take a while on a loaded machine
    for sig, wait in ((signal.SIGINT, 60), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            break
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


class DemoClient:
    """The camera source and planner-like client on one rclpy node; each public method is one step.

    ROS imports stay inside the methods so that the rest of the demo (--help, the model check) runs
    without a ROS environment.
    """

    def __init__(self, scene: DemoScene, record: Record):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from sensor_msgs.msg import CameraInfo
        from sensor_msgs.msg import Image as ImageMsg
        from tf2_msgs.msg import TFMessage

        from gst_ros.msg import PoseEstimate
        from gst_ros.srv import PredictView, SetReference

        self.scene, self.record = scene, record
        self._stamp_to_frame: dict[int, int] = {}
        self._ref_msg = None  # the reference image as sent to set_reference, the observation of each view query
        rclpy.init()
        self.node = Node("gst_demo")
        self._image_pub = self.node.create_publisher(ImageMsg, IMAGE_TOPIC, 10)
        self._info_pub = self.node.create_publisher(CameraInfo, INFO_TOPIC, 10)
        self.node.create_subscription(PoseEstimate, "/localize/estimate", self._on_estimate, 10)
        self.node.create_subscription(TFMessage, "/tf", self._on_tf, 100)
        self._set_ref = self.node.create_client(SetReference, "/localize/set_reference")
        self._predict = self.node.create_client(PredictView, "/view_predictor/predict_view")
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self.node)
        threading.Thread(target=self._executor.spin, daemon=True).start()

    def wait_for_services(self, timeout: float) -> None:
        for client in (self._set_ref, self._predict):
            if not client.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"{client.srv_name} not available after {timeout:.0f} s "
                                   "(did the nodes start? see the node log in the report folder)")

    def set_reference(self, timeout: float) -> None:
        """Frame 0 becomes the localizer's reference."""
        from gst_ros.srv import SetReference

        self._ref_msg, ref_info = self._frame_msg(0)
        self._info_pub.publish(ref_info)
        answer = self._call(self._set_ref, SetReference.Request(use_latest_frame=False, image=self._ref_msg), timeout)
        if not answer.success:
            raise RuntimeError(f"set_reference failed: {answer.message}")

    def wait_for_image_subscriber(self, timeout: float) -> None:
        """Frames published before the localizer subscribes would be lost."""
        deadline = time.time() + timeout
        while self._image_pub.get_subscription_count() == 0 and time.time() < deadline:
            time.sleep(0.1)

    def stream_frames(self, rate: float) -> None:
        """Publishes frames 1.. with their camera_info at `rate` Hz."""
        for i in range(1, len(self.scene.frames)):
            msg, cam_info = self._frame_msg(i)
            self._info_pub.publish(cam_info)
            self._image_pub.publish(msg)
            self.record.published_s[i] = time.time()
            time.sleep(1.0 / rate)

    def wait_for_last_estimate(self, timeout: float) -> None:
        """Lets the worker finish the frame it holds (it always takes the latest one, so the last frame comes)."""
        last = len(self.scene.frames) - 1
        deadline = time.time() + timeout
        while last not in self.record.estimates and time.time() < deadline:
            time.sleep(0.1)

    def predict_views(self, count: int, timeout: float) -> list[ViewQuery]:
        """The reference image's view at the ground-truth poses of `count` frames from the path's last two thirds."""
        from gst_ros.conversions import image_to_numpy, matrix_to_pose
        from gst_ros.srv import PredictView

        scene = self.scene
        queries = []
        picks = np.linspace(len(scene.frames) // 3, len(scene.frames) - 1, count).round().astype(int)
        for q, target in enumerate(picks):
            rel_model = relative_pose(scene.c2w[0], scene.c2w[target])
            rel_model[:3, 3] /= scene.scale
            request = PredictView.Request(use_latest_frame=False, observation=self._ref_msg,
                                          target_pose=matrix_to_pose(rel_model), num_samples=1, seed=q)
            t0 = time.time()
            answer = self._call(self._predict, request, timeout)
            if not answer.success or not answer.images:
                raise RuntimeError(f"predict_view failed: {answer.message}")
            queries.append(ViewQuery(int(target), image_to_numpy(answer.images[0]), time.time() - t0))
        return queries

    def shutdown(self) -> None:
        import rclpy

        self._executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown()

    def _on_estimate(self, msg) -> None:
        from gst_ros.conversions import pose_to_matrix, time_to_ns

        frame = self._stamp_to_frame.get(time_to_ns(msg.header.stamp))
        if frame is not None:
            self.record.estimates[frame] = Estimate(pose_to_matrix(msg.pose.pose), float(msg.confidence),
                                                    bool(msg.low_confidence), float(msg.latency_ms), time.time())

    def _on_tf(self, msg) -> None:
        for t in msg.transforms:
            self.record.tf_frames.add((t.header.frame_id, t.child_frame_id))

    def _call(self, client, request, timeout: float):
        future = client.call_async(request)
        deadline = time.time() + timeout
        while not future.done() and time.time() < deadline:
            time.sleep(0.05)
        if not future.done():
            raise TimeoutError(f"{client.srv_name} did not answer within {timeout:.0f} s")
        return future.result()

    def _frame_msg(self, i: int):
        """Frame i as Image + CameraInfo; its stamp is remembered to match the estimate to the frame."""
        from sensor_msgs.msg import CameraInfo

        from gst_ros.conversions import numpy_to_image, time_to_ns

        K = self.scene.K
        stamp = self.node.get_clock().now().to_msg()
        self._stamp_to_frame[time_to_ns(stamp)] = i
        msg = numpy_to_image(self.scene.frames[i], "rgb8")
        msg.header.stamp, msg.header.frame_id = stamp, "gst_camera_optical"
        info = CameraInfo(header=msg.header, height=msg.height, width=msg.width, distortion_model="plumb_bob",
                          d=[0.0] * 5, k=K.ravel().tolist(), p=np.hstack([K, np.zeros((3, 1))]).ravel().tolist())
        info.r = np.eye(3).ravel().tolist()
        return msg, info


def run_client(scene: DemoScene, args, record: Record) -> tuple[list[ViewQuery], float]:
    """The client's steps in order. Returns the view queries and the seconds from the first streamed
    frame to the last estimate."""
    client = DemoClient(scene, record)
    try:
        client.wait_for_services(args.startup_timeout)
        client.set_reference(args.call_timeout)
        client.wait_for_image_subscriber(args.startup_timeout)
        t_start = time.time()
        client.stream_frames(args.rate)
        client.wait_for_last_estimate(args.call_timeout)
        stream_s = time.time() - t_start
        return client.predict_views(args.queries, args.call_timeout), stream_s
    finally:
        client.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="checkpoint directory or preset name")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--rate", type=float, default=1.0, help="camera frame rate (Hz)")
    parser.add_argument("--queries", type=int, default=3, help="view-prediction queries")
    parser.add_argument("--size", type=int, nargs=2, default=(120, 160), metavar=("H", "W"), help="camera image size")
    parser.add_argument("--scene", type=int, default=0, help="which test-split scene")
    parser.add_argument("--param", action="append", default=[], help="extra node parameter NAME:=VALUE")
    parser.add_argument("--startup-timeout", type=float, default=180.0)
    parser.add_argument("--call-timeout", type=float, default=180.0)
    parser.add_argument("--out", default="demo_output")
    args = parser.parse_args(argv)
    if args.frames < 2 or args.rate <= 0 or args.queries < 1:
        parser.error("need --frames >= 2, --rate > 0 and --queries >= 1")
    model_path = Path(args.model)
    if args.model not in BUNDLE_PRESETS and not (model_path / "config.json").is_file():
        print(f"demo: model {args.model} not found (train it with python -m training.build_default)", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    scene = held_out_scene(synthetic_config(args.model), args.frames, *args.size, which=args.scene)
    print(f"demo: rendered {args.frames} frames of held-out scene #{scene.index} in {time.time() - t0:.1f} s")

    env = {k: v for k, v in os.environ.items()}
    env.setdefault("ROS_DOMAIN_ID", str(random.Random().randint(1, 100)))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    procs = start_nodes(args.model, env, args.param)
    log_lines: list[str] = []
    readers = [threading.Thread(target=lambda p=p, node=node: log_lines.extend(f"[{node}] {line}" for line in p.stdout),
                                daemon=True) for p, node in zip(procs, NODES)]
    for reader in readers:
        reader.start()
    record = Record()
    try:
        queries, stream_s = run_client(scene, args, record)
    except (TimeoutError, RuntimeError) as exc:
        for proc in procs:
            stop_process(proc)
        (out / "nodes.log").write_text("".join(log_lines))
        print(f"demo failed: {exc}\n(node log: {out / 'nodes.log'})", file=sys.stderr)
        return 1
    finally:
        for proc in procs:
            stop_process(proc)
    for reader in readers:
        reader.join(timeout=5)
    (out / "nodes.log").write_text("".join(log_lines))
    s = summarize(scene, record, queries, model_size=queries[0].predicted.shape[0])
    # Frame 0 is sent as the reference through the service, the others are streamed.
    line = write_report(out, scene, s, model=args.model, rate=args.rate, published=len(scene.frames) - 1,
                        tf_frames=record.tf_frames, stream_s=stream_s)
    print(line)
    print(f"demo: finished in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
