"""ROS 2 interfaces of gst_ros: generated types, TFMessage wire compatibility, two-process DDS.

Needs rclpy and the interfaces built by scripts/setup_ros.sh (or colcon); skipped otherwise.
Every DDS test runs in its own ROS_DOMAIN_ID with localhost-only discovery.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

try:
    import rclpy
except ImportError as exc:  # no ROS 2 here (or a broken one): nothing to test
    pytest.skip(f"rclpy not importable ({exc}); install ROS 2 or run `bash scripts/setup_ros.sh`",
                allow_module_level=True)

try:
    from gst_ros.msg import PoseEstimate
    from gst_ros.srv import EstimatePose, PredictView, SetReference
    from tf2_msgs.msg import TFMessage
except ImportError as exc:  # rclpy present but the interfaces were not built
    pytest.skip(f"gst_ros / tf2_msgs interfaces not built ({exc}); run `bash scripts/setup_ros.sh`",
                allow_module_level=True)

from geometry_msgs.msg import TransformStamped  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
TF_MESSAGE_HASH = "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087"
POSE_TOPIC = "/gst_test/pose_estimate"


def _fields(cls) -> dict[str, str]:
    return dict(cls.get_fields_and_field_types())


def test_pose_estimate_fields():
    assert _fields(PoseEstimate) == {
        "header": "std_msgs/Header",
        "child_frame_id": "string",
        "pose": "geometry_msgs/PoseWithCovariance",
        "confidence": "float",
        "low_confidence": "boolean",
        "source": "string",
        "consistency": "float",
        "residual": "float",
        "num_samples": "uint32",
        "rotation_spread_deg": "float",
        "reference_stamp": "builtin_interfaces/Time",
        "reference_id": "uint32",
        "latency_ms": "float",
    }


def test_service_fields():
    assert _fields(PredictView.Request) == {
        "use_latest_frame": "boolean",
        "observation": "sensor_msgs/Image",
        "target_pose": "geometry_msgs/Pose",
        "num_samples": "uint32",
        "temperature": "float",
        "top_k": "uint32",
        "top_p": "float",
        "cfg_scale": "float",
        "seed": "int64",
    }
    assert _fields(PredictView.Response) == {
        "success": "boolean",
        "message": "string",
        "images": "sequence<sensor_msgs/Image>",
        "latency_ms": "float",
    }
    assert _fields(EstimatePose.Request) == {
        "image_a": "sensor_msgs/Image",
        "image_b": "sensor_msgs/Image",
        "num_samples": "uint32",
        "seed": "int64",
    }
    assert _fields(EstimatePose.Response) == {
        "success": "boolean",
        "message": "string",
        "pose": "geometry_msgs/PoseWithCovariance",
        "confidence": "float",
        "low_confidence": "boolean",
        "source": "string",
        "consistency": "float",
        "residual": "float",
        "samples": "sequence<geometry_msgs/Pose>",
    }
    assert _fields(SetReference.Request) == {
        "use_latest_frame": "boolean",
        "image": "sensor_msgs/Image",
    }
    assert _fields(SetReference.Response) == {
        "success": "boolean",
        "message": "string",
        "reference_id": "uint32",
        "reference_stamp": "builtin_interfaces/Time",
    }


def test_tf_message_fields():
    assert _fields(TFMessage) == {"transforms": "sequence<geometry_msgs/TransformStamped>"}


def _domain_id() -> int:
    # 1..100: inside the range every platform supports; random per run to isolate parallel runs
    return random.Random(os.getpid() ^ time.time_ns()).randint(1, 100)


@pytest.fixture
def ros_context(monkeypatch):
    """(context, node, executor, domain_id) in a fresh domain with localhost-only discovery."""
    domain_id = _domain_id()
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain_id))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    context = Context()
    rclpy.init(context=context, domain_id=domain_id)
    node = Node("gst_test_listener", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        yield context, node, executor, domain_id
    finally:
        executor.shutdown()
        node.destroy_node()
        context.try_shutdown()


def test_tf_message_type_hash(ros_context):
    """The type hash of our TFMessage (what DDS matches on) equals the official tf2_msgs one."""
    _, node, _, _ = ros_context
    node.create_publisher(TFMessage, "/tf", 10)
    infos = node.get_publishers_info_by_topic("/tf")
    assert [str(i.topic_type_hash) for i in infos] == [TF_MESSAGE_HASH]


# The publisher process: /tf (TFMessage) and POSE_TOPIC (PoseEstimate) at 20 Hz until SIGINT or
# its own deadline, so it never outlives a crashed test for long.
PUBLISHER = textwrap.dedent(f"""
    import sys, time
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage
    from gst_ros.msg import PoseEstimate

    def main():
        rclpy.init()
        node = rclpy.create_node("gst_test_talker")
        tf_pub = node.create_publisher(TFMessage, "/tf", 100)
        pose_pub = node.create_publisher(PoseEstimate, "{POSE_TOPIC}", 10)
        count = [0]

        def tick():
            count[0] += 1
            stamp = node.get_clock().now().to_msg()
            t = TransformStamped()
            t.header.stamp = stamp
            t.header.frame_id = "ref_optical"
            t.child_frame_id = "cam_optical"
            t.transform.translation.x = 0.25
            t.transform.rotation.w = 1.0
            tf_pub.publish(TFMessage(transforms=[t]))
            p = PoseEstimate()
            p.header = t.header
            p.child_frame_id = t.child_frame_id
            p.pose.pose.position.x = 0.25
            p.pose.pose.orientation.w = 1.0
            p.pose.covariance[0] = 0.01
            p.consistency = 0.9
            p.num_samples = 8
            p.reference_id = count[0]
            pose_pub.publish(p)

        node.create_timer(0.05, tick)
        print("ready", flush=True)
        deadline = time.monotonic() + float(sys.argv[1])
        try:
            while rclpy.ok() and time.monotonic() < deadline:
                rclpy.spin_once(node, timeout_sec=0.05)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            node.destroy_node()
            rclpy.try_shutdown()

    main()
""")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=3)


def test_two_process_pubsub(ros_context):
    """Another process publishes /tf and a PoseEstimate over DDS; this one receives both."""
    _, node, executor, domain_id = ros_context
    got: dict[str, object] = {}
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(TFMessage, "/tf", lambda m: got.setdefault("tf", m), 100)
    node.create_subscription(PoseEstimate, POSE_TOPIC, lambda m: got.setdefault("pose", m), qos)

    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, "25"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20.0
        remote = []  # looked up while the publisher is alive: it exits after its last message
        while (len(got) < 2 or not remote) and time.monotonic() < deadline and proc.poll() is None:
            executor.spin_once(timeout_sec=0.05)
            remote = remote or [i for i in node.get_publishers_info_by_topic("/tf")
                                if i.node_name == "gst_test_talker"]
        if len(got) < 2:
            _stop(proc)
            out, err = proc.communicate(timeout=5)
            pytest.fail(f"received only {sorted(got)} from the publisher process "
                        f"(rc={proc.returncode}); stdout={out[-500:]!r} stderr={err[-2000:]!r}")
        # the remote publisher's type hash on /tf is the official one
        assert remote and str(remote[0].topic_type_hash) == TF_MESSAGE_HASH
    finally:
        _stop(proc)

    tf: TFMessage = got["tf"]
    assert len(tf.transforms) == 1
    t: TransformStamped = tf.transforms[0]
    assert (t.header.frame_id, t.child_frame_id) == ("ref_optical", "cam_optical")
    assert t.transform.translation.x == pytest.approx(0.25)
    pose: PoseEstimate = got["pose"]
    assert (pose.header.frame_id, pose.child_frame_id) == ("ref_optical", "cam_optical")
    assert pose.pose.pose.position.x == pytest.approx(0.25)
    assert pose.pose.covariance[0] == pytest.approx(0.01)
    assert pose.consistency == pytest.approx(0.9)
    assert pose.num_samples == 8 and pose.reference_id >= 1
