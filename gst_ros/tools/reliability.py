"""`make soak`: how the nodes answer bad input and load over real DDS, written to bench/reliability.md.

    python -m gst_ros.tools.reliability [--short] [--out bench/reliability.md] [--model DIR] [--flood-s 60]

The nodes run as `python -m gst_ros.run` child processes with config/gst_ros.yaml (localhost-only discovery,
a ROS_DOMAIN_ID of their own); this process is the client. Sections:
  matrix      malformed inputs of every kind (frames, CameraInfo, service requests, concurrent floods, model
              directories) and the answer each got: a service's message, the error the node counted on
              /diagnostics, an estimate, or the exit status and log line of a node that could not start;
  shutdown    SIGINT with service requests queued: every caller gets an answer, exit status 0;
  lifecycle   deactivate / activate / cleanup / configure of localize while frames and requests keep coming;
  restart     kill -9, then a new process: time until it serves again, shared-memory files left behind;
  qos         share of 640x480 frames that reach the node, by subscription reliability and depth, publisher
              reliability and rate (the image QoS default comes from this table);
  flood       100 Hz of 640x480 frames for --flood-s seconds on the shipped model: RSS and the latency of the
              newest frame over time, and the RSS after one 8000x6000 frame.
--short (tests/test_ros_reliability.py, part of `make test`) runs matrix (without the model directories),
shutdown and lifecycle on the random-weight `tiny` preset in about a minute. Each row says what was expected;
the exit status is 1 when any row differs. A JSON copy of the rows goes beside the report.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
IMAGE_TOPIC, INFO_TOPIC = "/soak/image", "/soak/camera_info"
STARTUP_S = 180.0  # torch import and model load on a busy 2-core machine
CALL_S = 120.0
TINY = ["--param", "model_path:=tiny", "--param", "random_weights:=true", "--param", "num_samples:=2",
        "--param", "max_samples:=8", "--param", "seed:=0"]


@dataclass
class Row:
    section: str
    case: str
    expected: str  # a substring of the answer, or a condition in words
    answer: str
    ok: bool
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------ processes
class NodeProcess:
    """`python -m gst_ros.run ...` with its log in a file (a chatty child never blocks on a pipe)."""

    def __init__(self, domain_id: int, log: Path, *args: str):
        self.log = log
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                   PYTHONUNBUFFERED="1")
        with open(log, "w") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "gst_ros.run", "--remap", f"image:={IMAGE_TOPIC}",
                                          "--remap", f"camera_info:={INFO_TOPIC}", *args],
                                         cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except FileNotFoundError:
            pass
        return math.nan

    def stop(self, first=signal.SIGINT, wait_s: float = 60.0) -> int:
        for sig, wait in ((first, wait_s), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        return self.proc.returncode


class Client:
    """The client node: publishers, service clients, /diagnostics and estimates recorded as they arrive."""

    def __init__(self, domain_id: int):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from lifecycle_msgs.srv import ChangeState
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from sensor_msgs.msg import CameraInfo, Image

        from gst_ros.common import SERVICE_QOS
        from gst_ros.msg import PoseEstimate
        from gst_ros.srv import EstimatePose, PredictView, SetReference

        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node("gst_soak_client", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.image_pub = self.image_publisher("reliable", 10)
        self.info_pub = self.node.create_publisher(CameraInfo, INFO_TOPIC, 10)
        self.set_reference = self.node.create_client(SetReference, "/localize/set_reference", qos_profile=SERVICE_QOS)
        self.estimate_pose = self.node.create_client(EstimatePose, "/localize/estimate_pose", qos_profile=SERVICE_QOS)
        self.predict_view = self.node.create_client(PredictView, "/view_predictor/predict_view",
                                                    qos_profile=SERVICE_QOS)
        self.change_state = self.node.create_client(ChangeState, "/localize/change_state")
        self.diag: dict[str, list[dict]] = {}
        self.estimates: list[tuple[float, object]] = []  # (receive time, PoseEstimate)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.node.create_subscription(PoseEstimate, "/localize/estimate", lambda m: self.estimates.append(
            (time.monotonic(), m)), 100)
        self._Image = Image

    def image_publisher(self, reliability: str, depth: int):
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        rel = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}[reliability]
        return self.node.create_publisher(Image, IMAGE_TOPIC, QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=rel))

    def _on_diag(self, arr) -> None:
        for status in arr.status:
            self.diag.setdefault(status.hardware_id, []).append(
                {"level": status.level[0] if isinstance(status.level, bytes) else int(status.level),
                 "message": status.message, "t": time.monotonic(), **{kv.key: kv.value for kv in status.values}})

    def latest_diag(self, node: str) -> dict:
        return (self.diag.get(node) or [{}])[-1]

    def spin_until(self, predicate, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate()
            if result:
                return result
            self.executor.spin_once(timeout_sec=0.02)
        return None

    def spin_for(self, seconds: float) -> None:
        self.spin_until(lambda: False, seconds)

    def call(self, client, request, timeout: float = CALL_S):
        future = client.call_async(request)
        if not self.spin_until(future.done, timeout):
            client.remove_pending_request(future)
            return None
        return future.result()

    def wait_ready(self, clients, proc: NodeProcess, timeout: float = STARTUP_S) -> bool:
        return bool(self.spin_until(lambda: proc.proc.poll() is not None or all(c.service_is_ready() for c in clients),
                                    timeout)) and proc.proc.poll() is None

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


# ---------------------------------------------------------------------------------------- inputs
def test_image(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((np.stack([xx * 4 + seed * 9, yy * 5, (xx + yy) * 2 + seed * 17], -1)
             + np.random.default_rng(seed).integers(0, 20, (h, w, 3))) % 256).astype(np.uint8)


def image_msg(array: np.ndarray | None = None, enc: str = "rgb8", stamp_ns: int = 0, **changes):
    """An Image of `array` (default: a 64x48 test image) in `enc`, then the fields in `changes` overwritten."""
    from gst_ros import conversions as conv

    msg = conv.numpy_to_image(test_image() if array is None else array, enc)
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp_ns // 10**9, stamp_ns % 10**9
    msg.header.frame_id = "soak_camera_optical"
    for k, v in changes.items():
        setattr(msg, k, v)
    return msg


def pose(x: float = 0.1, q=(0.0, 0.0, 0.0, 1.0), y: float = 0.0):
    from geometry_msgs.msg import Pose

    p = Pose()
    # floats: these rclpy wheels serialize an int in a float64 field as its bit pattern (2 -> 1e-323)
    p.position.x, p.position.y = float(x), float(y)
    p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = (float(v) for v in q)
    return p


def bad_frames() -> list[tuple[str, object, str]]:
    """(case, Image, expected substring of the node's error) for the image topic."""
    raw = test_image()
    cases = [
        ("empty Image()", None, "empty image: 0x0"),
        ("0 rows", image_msg(height=0, data=b""), "empty image: 64x0"),
        ("1x1", image_msg(np.zeros((1, 1, 3), np.uint8)), "image too small: 1x1"),
        ("8x8 (below the model's minimum side)", image_msg(np.zeros((8, 8, 3), np.uint8)), "image too small: 8x8"),
        ("encoding 32FC1", image_msg(encoding="32FC1"), "unsupported image encoding '32FC1'"),
        ("encoding '' with pixels", image_msg(encoding=""), "unsupported image encoding ''"),
        ("truncated data", image_msg(data=raw.tobytes()[:1000]), "image data has 1000 bytes"),
        ("padded data", image_msg(data=raw.tobytes() + bytes(64)), "image data has 9280 bytes, expected"),
        ("step < width*channels", image_msg(step=10), "step 10 < width*channels"),
        ("step > data", image_msg(step=64 * 3 + 8), "expected step*height = 200*48"),
        ("100000x100000 header", image_msg(height=100_000, width=100_000, step=300_000), "image too large"),
    ]
    from sensor_msgs.msg import Image

    return [(name, Image() if msg is None else msg, why) for name, msg, why in cases]


# ---------------------------------------------------------------------------------------- matrix
def matrix(client: Client, proc: NodeProcess, rows: list[Row]) -> None:
    """Every kind of bad input to a fresh node process (localize + view_predictor)."""
    from sensor_msgs.msg import CameraInfo

    from gst_ros.srv import EstimatePose, PredictView, SetReference

    def add(case, expected, answer, ok, **extra):
        rows.append(Row("matrix", case, expected, answer, ok, extra))

    def service(case, client_, request, expected, success=False):
        r = client.call(client_, request)
        answer = "no answer" if r is None else f"success={r.success}: {r.message}"
        add(case, f"success={success}: …{expected}…", answer, r is not None and r.success == success
            and expected in r.message)

    # before any frame
    service("set_reference(use_latest_frame) before any frame", client.set_reference,
            SetReference.Request(use_latest_frame=True), "no image received yet")
    service("predict_view(use_latest_frame) before any frame", client.predict_view,
            PredictView.Request(use_latest_frame=True, target_pose=pose()), "no image received yet")

    # frames on the image topic: each refused and counted (answer = the error on /diagnostics)
    for case, msg, why in bad_frames():
        before = int(client.latest_diag("/localize").get("errors", 0))
        client.image_pub.publish(msg)
        diag = client.spin_until(lambda: [d for d in client.diag.get("/localize", [])
                                          if int(d.get("errors", 0)) > before], 10.0)
        answer = diag[-1]["last_error"] if diag else "no error counted within 10 s"
        add(f"frame: {case}", f"…{why}…", answer, bool(diag) and why in answer)
    for case, info, why in (
            ("CameraInfo K all zero", CameraInfo(width=64, height=48), "must be finite with positive focal lengths"),
            ("CameraInfo K NaN", CameraInfo(width=64, height=48, k=[math.nan] * 9),
             "must be finite with positive focal lengths"),
            ("CameraInfo 0x0 size", CameraInfo(k=[50.0, 0, 32, 0, 50, 24, 0, 0, 1]), "empty image size")):
        before = int(client.latest_diag("/localize").get("errors", 0))
        client.info_pub.publish(info)
        diag = client.spin_until(lambda: [d for d in client.diag.get("/localize", [])
                                          if int(d.get("errors", 0)) > before], 10.0)
        answer = diag[-1]["last_error"] if diag else "no error counted within 10 s"
        add(f"camera_info: {case}", f"…{why}…", answer, bool(diag) and why in answer)
    # a best-effort (sensor-data) publisher and the default reliable subscription: no frames, said so
    before = int(client.latest_diag("/localize").get("errors", 0))
    sensor_pub = client.image_publisher("best_effort", 1)
    diag = client.spin_until(lambda: [d for d in client.diag.get("/localize", []) if int(d.get("errors", 0)) > before
                                      and "incompatible" in d.get("last_error", "")], 10.0)
    client.node.destroy_publisher(sensor_pub)
    answer = diag[-1]["last_error"] if diag else "no error counted within 10 s"
    add("a best-effort image publisher (subscription reliable)", "…offers a QoS incompatible…", answer, bool(diag))
    # good frames of other encodings are accepted: the first becomes the reference, the next gets an estimate
    for case, msg in (("mono8 64x48 (accepted)", image_msg(test_image(seed=3)[:, :, 0], "mono8", 10**9)),
                      ("bgra8 64x48 (accepted)", image_msg(np.dstack([test_image(seed=4), np.full((48, 64), 255,
                                                                                                     np.uint8)]),
                                                           "bgra8", 2 * 10**9))):
        since = len(client.estimates)

        def estimated(msg=msg):
            client.image_pub.publish(msg)  # again until it is used: the first one may only set the reference
            client.spin_for(0.3)
            return [m for _, m in client.estimates[since:] if m.header.stamp.sec == msg.header.stamp.sec]
        got = client.spin_until(estimated, CALL_S)
        add(f"frame: {case}", "an estimate of that frame", f"estimate, reference {got[-1].reference_id}" if got
            else "no estimate", bool(got))

    # service requests
    good = image_msg()
    service("estimate_pose: image_b = Image()", client.estimate_pose,
            EstimatePose.Request(image_a=good, image_b=image_msg(height=0, width=0, step=0, data=b"")), "empty image")
    service("estimate_pose: image_a 1x1", client.estimate_pose,
            EstimatePose.Request(image_a=image_msg(np.zeros((1, 1, 3), np.uint8)), image_b=good), "image too small")
    service("estimate_pose: num_samples 1000", client.estimate_pose,
            EstimatePose.Request(image_a=good, image_b=good, num_samples=1000), "outside [1, max_samples=8]")
    service("estimate_pose: valid", client.estimate_pose,
            EstimatePose.Request(image_a=good, image_b=image_msg(test_image(seed=1)), seed=1), "2 samples", True)
    service("set_reference: padded image", client.set_reference,
            SetReference.Request(image=image_msg(data=test_image().tobytes() + b"x")), "expected step*height")
    for case, p, why in (("NaN position", pose(y=math.nan), "NaN or inf"),
                         ("inf orientation", pose(q=(0, 0, math.inf, 1)), "NaN or inf"),
                         ("non-unit quaternion (norm 2)", pose(q=(0, 0, 0, 2)), "not a unit quaternion (norm 2,"),
                         ("zero quaternion", pose(q=(0, 0, 0, 0)), "not a unit quaternion")):
        service(f"predict_view: {case}", client.predict_view,
                PredictView.Request(observation=good, target_pose=p), why)
    for case, changes, why in (("num_samples 4e9", {"num_samples": 4_000_000_000}, "outside [1, max_samples=8]"),
                               ("temperature NaN", {"temperature": math.nan}, "temperature must be finite"),
                               ("top_p 1.5", {"top_p": 1.5}, "top_p")):
        service(f"predict_view: {case}", client.predict_view,
                PredictView.Request(observation=good, target_pose=pose(), **changes), why)
    service("predict_view: observation 8000x6000 header, no data", client.predict_view,
            PredictView.Request(observation=image_msg(height=6000, width=8000, step=24000), target_pose=pose()),
            "image too large")

    # a concurrent flood: every request answered
    n = 40
    futures = [client.predict_view.call_async(PredictView.Request(observation=good, target_pose=pose(0.01 * i),
                                                                  num_samples=1, seed=i)) for i in range(n)]
    t0 = time.monotonic()
    client.spin_until(lambda: all(f.done() for f in futures), 4 * CALL_S)
    answered = [f.result() for f in futures if f.done()]
    ok = sum(a.success for a in answered)
    add(f"{n} concurrent predict_view calls", f"{n} answered, {n} succeeded",
        f"{len(answered)} answered, {ok} succeeded in {time.monotonic() - t0:.1f} s", ok == n)


def model_directories(domain_id: int, tmp: Path, rows: list[Row]) -> None:
    """Start-up with a model directory that is missing, truncated, or has a tampered safetensors header."""
    from gst_model.checkpoint import DEFAULT_MODEL_DIR

    cases = {}
    cases["missing directory"] = (tmp / "no_such_model", "no such checkpoint directory")
    truncated = tmp / "truncated"
    shutil.copytree(DEFAULT_MODEL_DIR, truncated, ignore=shutil.ignore_patterns("evaluation", "training"))
    weights = truncated / "transformer.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    cases["transformer.safetensors cut in half"] = (truncated, "cannot load model")
    tampered = tmp / "tampered"
    shutil.copytree(DEFAULT_MODEL_DIR, tampered, ignore=shutil.ignore_patterns("evaluation", "training"))
    weights = tampered / "image_tokenizer.safetensors"
    data = bytearray(weights.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    name = sorted(k for k in header if k != "__metadata__")[0]
    header[name]["shape"] = [s + 1 for s in header[name]["shape"]]  # claims more bytes than its offsets hold
    text = json.dumps(header).encode().ljust(header_len)[:header_len]
    weights.write_bytes(bytes(data[:8]) + text + bytes(data[8 + header_len:]))
    cases["image_tokenizer.safetensors header: a tensor's shape changed"] = (tampered, "cannot load model")
    cases["preset name without random_weights"] = ("official", "random_weights:=true")
    procs = {case: (NodeProcess(domain_id, tmp / f"start_{i}.log", "--nodes", "localize", "--param",
                                f"model_path:={path}"), why) for i, (case, (path, why)) in enumerate(cases.items())}
    for case, (proc, why) in procs.items():
        try:
            rc = proc.proc.wait(timeout=STARTUP_S)
        except subprocess.TimeoutExpired:
            rc = proc.stop()
        text = proc.text()
        fatal = next((line.strip() for line in text.splitlines() if "cannot load model" in line), text[-300:])
        rows.append(Row("matrix", f"model: {case}", f"exit 1, log …{why}…", f"exit {rc}: {fatal[:400]}",
                        rc == 1 and why in text))


# -------------------------------------------------------------------------------------- shutdown
def shutdown_with_queue(domain_id: int, tmp: Path, rows: list[Row]) -> None:
    """SIGINT while predict_view requests wait in the queue: each gets an answer; exit 0; no traceback."""
    from gst_ros.srv import PredictView

    client = Client(domain_id)
    proc = NodeProcess(domain_id, tmp / "shutdown.log", "--nodes", "view_predictor", *TINY)
    try:
        if not client.wait_ready([client.predict_view], proc):
            rows.append(Row("shutdown", "SIGINT with queued requests", "node starts", proc.text()[-300:], False))
            return
        n = 40
        futures = [client.predict_view.call_async(PredictView.Request(
            observation=image_msg(), target_pose=pose(0.01 * i), num_samples=4, seed=i)) for i in range(n)]
        client.spin_until(lambda: any(f.done() for f in futures), CALL_S)  # the first one served: the rest queue
        queued = sum(not f.done() for f in futures)
        proc.proc.send_signal(signal.SIGINT)
        client.spin_until(lambda: all(f.done() for f in futures) and proc.proc.poll() is not None, 60.0)
        rc = proc.stop()
        answers = [f.result() for f in futures if f.done()]
        refused = sum(not a.success and "shutting down" in a.message for a in answers)
        served = sum(a.success for a in answers)
        text = proc.text()
        traceback = "never retrieved" in text or "Traceback" in text
        # On a failure, the report carries the log's error lines, since the log lives in a temporary folder.
        errors = [line for line in text.splitlines() if "Error" in line or "never retrieved" in line][-3:]
        answer = (f"{queued} queued at SIGINT; {served} served, {refused} refused 'node is shutting down', "
                  f"{n - len(answers)} unanswered; exit {rc}; traceback in log: {'yes' if traceback else 'no'}"
                  + (f" ({' | '.join(errors)})" if traceback else ""))
        rows.append(Row("shutdown", f"SIGINT with {n} predict_view requests sent", "all answered, exit 0, no traceback",
                        answer, len(answers) == n and queued > 0 and rc == 0 and not traceback))
    finally:
        proc.stop()
        client.close()


# ------------------------------------------------------------------------------------- lifecycle
def lifecycle_under_load(client: Client, rows: list[Row]) -> None:
    """localize: deactivate, activate, cleanup, configure, activate while frames arrive at 20 Hz."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    from gst_ros.srv import EstimatePose

    frames = [image_msg(test_image(seed=s), stamp_ns=(500 + k) * 10**9) for k, s in enumerate((1, 2))]
    k = [0]

    def load(seconds: float) -> None:  # 20 Hz of frames while spinning
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            msg = frames[k[0] % 2]
            msg.header.stamp.sec += 1
            client.image_pub.publish(msg)
            k[0] += 1
            client.spin_for(0.05)

    def transition(tid: int) -> bool:
        r = client.call(client.change_state, ChangeState.Request(transition=Transition(id=tid)), CALL_S)
        return bool(r and r.success)

    def estimates_within(seconds: float) -> int:
        since = len(client.estimates)
        load(seconds)
        return len(client.estimates) - since

    def add(case, expected, answer, ok):
        rows.append(Row("lifecycle", case, expected, answer, ok))

    request = EstimatePose.Request(image_a=frames[0], image_b=frames[1], seed=0)
    client.spin_until(lambda: estimates_within(1.0), CALL_S)
    ok = transition(Transition.TRANSITION_DEACTIVATE)
    load(1.0)  # an estimate in flight may still land
    n = estimates_within(3.0)
    r = client.call(client.estimate_pose, request)
    diag = client.spin_until(lambda: client.latest_diag("/localize").get("message") == "inactive", 3.0)
    add("deactivate under load", "no estimates; estimate_pose refused; diagnostics 'inactive'",
        f"transition ok={ok}; {n} estimates in 3 s; estimate_pose: {r.message if r else 'no answer'}; "
        f"diagnostics: {client.latest_diag('/localize').get('message')}",
        ok and n == 0 and r is not None and not r.success and "not active" in r.message and bool(diag))
    ok = transition(Transition.TRANSITION_ACTIVATE)
    t0 = time.monotonic()
    got = client.spin_until(lambda: estimates_within(0.5), CALL_S)
    r = client.call(client.estimate_pose, request)
    add("activate under load", "estimates resume; estimate_pose served",
        f"transition ok={ok}; first estimate after {time.monotonic() - t0:.1f} s; estimate_pose: "
        f"{r.message if r else 'no answer'}", ok and bool(got) and r is not None and r.success)
    ok = transition(Transition.TRANSITION_DEACTIVATE) and transition(Transition.TRANSITION_CLEANUP)
    load(1.0)
    gone = bool(client.spin_until(lambda: not client.estimate_pose.service_is_ready(), 5.0))
    ok2 = transition(Transition.TRANSITION_CONFIGURE) and transition(Transition.TRANSITION_ACTIVATE)
    back = client.spin_until(lambda: client.estimate_pose.service_is_ready(), 10.0)
    t0 = time.monotonic()
    got = client.spin_until(lambda: estimates_within(0.5), CALL_S)
    add("cleanup, configure, activate under load", "services gone after cleanup, back after configure; estimates "
        "resume", f"deactivate+cleanup ok={ok}; estimate_pose gone={gone}; configure+activate ok={ok2}; back="
        f"{bool(back)}; first estimate after {time.monotonic() - t0:.1f} s", ok and gone and ok2 and bool(back)
        and bool(got))


# --------------------------------------------------------------------------------------- restart
def kill_and_restart(domain_id: int, tmp: Path, rows: list[Row]) -> None:
    from gst_ros.srv import PredictView

    client = Client(domain_id)
    args = ("--nodes", "view_predictor", *TINY)
    shm = Path("/dev/shm")
    shm_before = set(os.listdir(shm)) if shm.is_dir() else set()
    proc = NodeProcess(domain_id, tmp / "kill.log", *args)
    try:
        ready = client.wait_ready([client.predict_view], proc)
        request = PredictView.Request(observation=image_msg(), target_pose=pose(), num_samples=1, seed=0)
        first = client.call(client.predict_view, request) if ready else None
        proc.proc.kill()
        proc.proc.wait(10)
        left = sorted(set(os.listdir(shm)) - shm_before) if shm.is_dir() else []
        t0 = time.monotonic()
        proc = NodeProcess(domain_id, tmp / "restart.log", *args)
        ready2 = client.wait_ready([client.predict_view], proc)
        # The killed server stays discovered until its lease expires, so service_is_ready() is true at once and a
        # request may go only to the dead one: a client retries with a short timeout.
        second, attempts = None, 0
        while ready2 and time.monotonic() - t0 < STARTUP_S and not (second and second.success):
            attempts += 1
            second = client.call(client.predict_view, request, timeout=10.0)
        elapsed = time.monotonic() - t0
        same = first is not None and second is not None and second.success and \
            bytes(first.images[0].data) == bytes(second.images[0].data)
        rows.append(Row("restart", "kill -9, start again", "the new process serves the same answer (seed 0); "
                        "same client, no restart of it",
                        f"served again {elapsed:.1f} s after the kill (start-up included), on request {attempts} "
                        f"(10 s timeout each); same image: {same}; /dev/shm entries left by the killed process: "
                        f"{len(left)}", same, {"shm_left": left, "attempts": attempts}))
    finally:
        proc.stop()
        client.close()


# ------------------------------------------------------------------------------------------- qos
LARGE_IMAGES_PROFILE = REPO / "config" / "fastdds_large_images.xml"
QOS_SETTINGS = (("best_effort", 1, False), ("reliable", 1, False), ("reliable", 5, False), ("best_effort", 1, True))


def qos_delivery(domain_id: int, tmp: Path, rows: list[Row], model: str, seconds: float = 6.0,
                 settings=QOS_SETTINGS) -> None:
    """Share of 640x480 rgb8 frames that reach localize (its `received` count), per subscription reliability and
    depth, with or without config/fastdds_large_images.xml (both sides), publisher reliability and rate; the node
    runs its model on what arrives, as in use."""
    frame = image_msg(test_image(480, 640, 7))
    for sub_rel, depth, profile in settings:
        saved = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")
        if profile:  # read when a participant is created: the client's below and the node's
            os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(LARGE_IMAGES_PROFILE)
        client = Client(domain_id)
        proc = NodeProcess(domain_id, tmp / f"qos_{sub_rel}_{depth}_{profile}.log", "--nodes", "localize",
                           "--param", f"qos_reliability:={sub_rel}", "--param", f"qos_depth:={depth}",
                           *(["--param", f"model_path:={model}"] if model else []))
        if saved is None:
            os.environ.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
        else:
            os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = saved
        label = f"sub {sub_rel} depth {depth}" + (", fastdds_large_images.xml" if profile else "")
        try:
            if not client.wait_ready([client.estimate_pose], proc):
                rows.append(Row("qos", label, "node starts", proc.text()[-300:], False))
                continue
            for pub_rel in ("reliable", "best_effort"):
                if profile and pub_rel != sub_rel:
                    continue
                pub = client.image_publisher(pub_rel, 10 if pub_rel == "reliable" else 1)
                client.spin_until(lambda: pub.get_subscription_count() > 0, 5.0)
                for rate in (10, 30, 100):
                    client.spin_for(1.2)
                    before = client.latest_diag("/localize")
                    sent, t0 = 0, time.monotonic()
                    while time.monotonic() - t0 < seconds:
                        frame.header.stamp.sec += 1
                        pub.publish(frame)
                        sent += 1
                        client.spin_until(lambda: time.monotonic() >= t0 + sent / rate, 1.0)
                    client.spin_for(2.2)  # two diagnostics reports
                    after = client.latest_diag("/localize")
                    got = int(after.get("received", 0)) - int(before.get("received", 0))
                    lost = int(after.get("lost_frames", 0)) - int(before.get("lost_frames", 0))
                    rows.append(Row("qos", f"{label}, pub {pub_rel}, {rate} Hz",
                                    "(measurement)", f"{got}/{sent} frames received ({got / sent:.0%}); "
                                    f"middleware-reported lost {lost}", True,
                                    {"sub": sub_rel, "depth": depth, "profile": profile, "pub": pub_rel,
                                     "rate": rate, "sent": sent,
                                     "received": got, "lost_reported": lost}))
                client.node.destroy_publisher(pub)
        finally:
            proc.stop()
            client.close()


# ----------------------------------------------------------------------------------------- flood
def flood(domain_id: int, tmp: Path, rows: list[Row], model: str, seconds: float, rate: float = 100.0) -> None:
    """`rate` Hz of 640x480 frames for `seconds` with the node's defaults: RSS and the newest frame's latency
    (publish -> its estimate received) over time; then one 8000x6000 frame and the RSS after it."""
    client = Client(domain_id)
    proc = NodeProcess(domain_id, tmp / "flood.log", "--nodes", "localize",
                       *(["--param", f"model_path:={model}"] if model else []))
    try:
        if not client.wait_ready([client.estimate_pose], proc):
            rows.append(Row("flood", "start", "node starts", proc.text()[-300:], False))
            return
        frames = [image_msg(test_image(480, 640, s)) for s in range(4)]
        sent_at: dict[int, float] = {}
        samples, k, t0 = [], 0, time.monotonic()
        next_sample = t0
        since = len(client.estimates)
        while time.monotonic() - t0 < seconds:
            msg = frames[k % 4]
            msg.header.stamp.sec, msg.header.stamp.nanosec = 10_000 + k // 100, (k % 100) * 10_000_000
            sent_at[msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec] = time.monotonic()
            client.image_pub.publish(msg)
            k += 1
            if time.monotonic() >= next_sample:
                samples.append((time.monotonic() - t0, proc.rss_mb()))
                next_sample += 1.0
            client.spin_until(lambda: time.monotonic() >= t0 + k / rate, 1.0)
        client.spin_for(3.0)
        alive = proc.proc.poll() is None
        lat = [(t - t0, 1e3 * (t - sent_at[m.header.stamp.sec * 10**9 + m.header.stamp.nanosec]), m.latency_ms)
               for t, m in client.estimates[since:]
               if m.header.stamp.sec * 10**9 + m.header.stamp.nanosec in sent_at]
        diag = client.latest_diag("/localize")
        rss = np.array([r for _, r in samples])
        warm = rss[len(rss) // 6:]  # after start-up allocations (first sixth)
        growth = (warm[-5:].mean() - warm[:5].mean()) / warm[:5].mean() if len(warm) >= 10 else math.nan
        windows = []
        for w0 in range(0, int(seconds), max(1, int(seconds) // 6)):
            in_w = [e2e for t, e2e, _ in lat if w0 <= t < w0 + max(1, int(seconds) // 6)]
            r_w = [r for t, r in samples if w0 <= t < w0 + max(1, int(seconds) // 6)]
            windows.append({"t0_s": w0, "rss_mb": float(np.mean(r_w)) if r_w else math.nan, "estimates": len(in_w),
                            "latency_median_ms": float(np.median(in_w)) if in_w else math.nan,
                            "latency_max_ms": float(np.max(in_w)) if in_w else math.nan})
        e2e = [e for _, e, _ in lat]
        third = max(1, len(e2e) // 3)
        bounded = len(e2e) >= 3 and np.median(e2e[-third:]) < np.median(e2e[:third]) + 1000
        rows.append(Row("flood", f"{rate:g} Hz 640x480 for {seconds:g} s", "alive; RSS growth <= 5%; latency bounded",
                        f"alive {alive}; sent {k}, received {diag.get('received')}, estimated {len(lat)}; RSS "
                        f"{warm[0]:.0f} -> {rss[-1]:.0f} MB (growth {growth:+.1%}); newest-frame latency median "
                        f"{np.median(e2e):.0f} ms, max {np.max(e2e):.0f} ms (node's own: median "
                        f"{np.median([n for *_, n in lat]):.0f} ms)" if e2e else f"alive {alive}; no estimates",
                        alive and growth <= 0.05 and bounded, {"windows": windows, "rss": samples}))
        # one 8000x6000 frame: refused from its header; what does it cost in memory?
        before = proc.rss_mb()
        huge = image_msg(np.zeros((6000, 8000, 3), np.uint8))
        errors = int(diag.get("errors", 0))
        client.image_pub.publish(huge)
        refused = client.spin_until(lambda: int(client.latest_diag("/localize").get("errors", 0)) > errors, 60.0)
        peak = proc.rss_mb()
        for i in range(20):
            client.image_pub.publish(frames[i % 4])
            client.spin_for(0.1)
        client.spin_for(3.0)
        after = proc.rss_mb()
        rows.append(Row("flood", "one 8000x6000 rgb8 frame (144 MB)", "refused; RSS back within 5%",
                        f"refused: {client.latest_diag('/localize').get('last_error', '')[:120] if refused else 'no'}; "
                        f"RSS {before:.0f} -> {peak:.0f} MB after it -> {after:.0f} MB after 20 more frames",
                        bool(refused) and after <= 1.05 * before))
    finally:
        proc.stop()
        client.close()


# --------------------------------------------------------------------------------------- latency
def pipeline_latency(model: str, frames: list[np.ndarray], n: int, in_thread: bool) -> list[float]:
    """Seconds per GSTPipeline.estimate_pose on (first frame, frame k) with the node's default parameters, called
    from a worker thread as the node calls it, or from the main thread as a script does. (On a loaded machine
    the two differ by up to 30x: torch's 2 OpenMP threads of the main thread spin for descheduled peers.)"""
    import threading

    from gst_ros import params

    values = params.resolve(params.LOCALIZE_PARAMS, {"model_path": model} if model else {})
    pipeline = params.load_pipeline(values.__getitem__)
    out = []

    def run():
        pipeline.estimate_pose(frames[0], frames[1], **params.pose_kwargs(values.__getitem__))  # warm-up
        for k in range(n):
            t0 = time.perf_counter()
            pipeline.estimate_pose(frames[0], frames[1 + k % (len(frames) - 1)],
                                   **params.pose_kwargs(values.__getitem__))
            out.append(time.perf_counter() - t0)
    if in_thread:
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
    else:
        run()
    return out


def latency(domain_id: int, tmp: Path, rows: list[Row], model: str, n: int = 8, rate: float = 10.0) -> None:
    """The node's latency (frame received -> estimate published) against estimate_pose alone on the same frames,
    measured before and after the node's run on the same machine; the node's own breakdown from /diagnostics."""
    arrays = [test_image(480, 640, s) for s in range(4)]
    before = pipeline_latency(model, arrays, n, in_thread=True)
    client = Client(domain_id)
    proc = NodeProcess(domain_id, tmp / "latency.log", "--nodes", "localize",
                       *(["--param", f"model_path:={model}"] if model else []))
    try:
        if not client.wait_ready([client.estimate_pose], proc):
            rows.append(Row("latency", "start", "node starts", proc.text()[-300:], False))
            return
        msgs = [image_msg(a) for a in arrays]
        sent_at, k, since = {}, 0, len(client.estimates)
        t0 = time.monotonic()
        while len(client.estimates) - since < n + 1 and time.monotonic() - t0 < 30 * n:
            msg = msgs[k % 4]
            msg.header.stamp.sec = 20_000 + k
            sent_at[20_000 + k] = time.monotonic()
            client.image_pub.publish(msg)
            k += 1
            client.spin_until(lambda: time.monotonic() >= t0 + k / rate, 1.0)
        ests = [(t, m) for t, m in client.estimates[since:] if m.header.stamp.sec in sent_at][1:]  # first: warm-up
        node = [m.latency_ms / 1e3 for _, m in ests]
        e2e = [t - sent_at[m.header.stamp.sec] for t, m in ests]
        diags = [d for d in client.diag.get("/localize", []) if "model_ms" in d and d["t"] >= t0]
        stages = {s: float(np.mean([float(d[f"{s}_ms"]) for d in diags])) for s in ("wait", "convert", "model",
                                                                                    "publish")} if diags else {}
    finally:
        proc.stop()
        client.close()
    after = pipeline_latency(model, arrays, n, in_thread=True)
    main_thread = pipeline_latency(model, arrays, 2, in_thread=False)
    alone = float(np.median(before + after))
    ratio = float(np.median(node)) / alone if node else math.nan
    rows.append(Row("latency", f"localize at {rate:g} Hz vs estimate_pose alone, 640x480, {n} estimates",
                    "node <= 1.3x the pipeline",
                    f"estimate_pose alone in a thread: median {1e3 * np.median(before):.0f} ms before, "
                    f"{1e3 * np.median(after):.0f} ms after (main thread: {1e3 * np.median(main_thread):.0f} ms); "
                    f"node (received -> published): median {1e3 * np.median(node):.0f} ms = {ratio:.2f}x; "
                    f"end to end (published -> estimate here): median {1e3 * np.median(e2e):.0f} ms; node stages "
                    f"(means): " + ", ".join(f"{s} {v:.0f} ms" for s, v in stages.items()) if node else "no estimates",
                    bool(node) and ratio <= 1.3, {"alone_s": before + after, "main_thread_s": main_thread,
                                                  "node_s": node, "e2e_s": e2e, "stages_ms": stages}))


# ---------------------------------------------------------------------------------------- report
def write_report(rows: list[Row], out: Path, args, seconds: float) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# Reliability of the gst_ros nodes", "",
             f"`python -m gst_ros.tools.reliability{' --short' if args.short else ''}` on {os.cpu_count()} CPU "
             f"core(s), {time.strftime('%Y-%m-%d')}, {seconds:.0f} s. Nodes: `python -m gst_ros.run` processes with "
             "`config/gst_ros.yaml` (matrix, shutdown, lifecycle, restart on the random-weight `tiny` preset; qos "
             f"and flood on `{args.model or 'the shipped model'}`); this process is the client, over Fast DDS on "
             f"localhost. {sum(r.ok for r in rows)} of {len(rows)} rows as expected.", ""]
    for section in dict.fromkeys(r.section for r in rows):
        lines += [f"## {section}", "", "| case | expected | answer | ok |", "|---|---|---|---|"]
        for r in rows:
            if r.section == section:
                cell = r.answer.replace("|", "\\|").replace("\n", " ")
                lines.append(f"| {r.case} | {r.expected.replace('|', '/')} | {cell} | {'yes' if r.ok else '**NO**'} |")
        lines.append("")
        for r in rows:
            if r.section == section and "windows" in r.extra:
                lines += ["Over time:", "", "| from s | RSS MB | estimates | latency median ms | max ms |",
                          "|---|---|---|---|---|"]
                lines += [f"| {w['t0_s']} | {w['rss_mb']:.0f} | {w['estimates']} | {w['latency_median_ms']:.0f} | "
                          f"{w['latency_max_ms']:.0f} |" for w in r.extra["windows"]]
                lines.append("")
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in rows], indent=1, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="matrix, shutdown and lifecycle on the tiny preset")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "reliability.md")
    parser.add_argument("--model", default="", help="model for qos and flood ('' = the shipped model)")
    parser.add_argument("--flood-s", type=float, default=60.0)
    parser.add_argument("--sections", default="matrix,shutdown,lifecycle,restart,qos,latency,flood")
    args = parser.parse_args(argv)
    sections = {"matrix", "shutdown", "lifecycle"} if args.short else set(args.sections.split(","))
    domain = random.Random(os.getpid() ^ time.time_ns()).randint(1, 100)
    rows: list[Row] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gst_soak_") as tmp_name:
        tmp = Path(tmp_name)
        startups = []
        if "matrix" in sections or "lifecycle" in sections:
            client = Client(domain)
            proc = NodeProcess(domain, tmp / "nodes.log", *TINY, "--param", "max_image_pixels:=1000000")
            try:
                if not client.wait_ready([client.set_reference, client.estimate_pose, client.predict_view], proc):
                    rows.append(Row("matrix", "start", "nodes start", proc.text()[-500:], False))
                else:
                    if "matrix" in sections:
                        matrix(client, proc, rows)
                    if "lifecycle" in sections:
                        lifecycle_under_load(client, rows)
            finally:
                rc = proc.stop()
                client.close()
            rows.append(Row("shutdown", "SIGINT after the matrix and lifecycle", "exit 0", f"exit {rc}", rc == 0))
        if "matrix" in sections and not args.short:
            startups.append(model_directories)
        for run in startups:
            run(domain, tmp, rows)
        if "shutdown" in sections:
            shutdown_with_queue(domain, tmp, rows)
        if "restart" in sections:
            kill_and_restart(domain, tmp, rows)
        if "qos" in sections:
            qos_delivery(domain, tmp, rows, args.model, settings=[s for s in QOS_SETTINGS if not s[2]])
            # Fast DDS reads its profile file once per process: the publisher side of the profile rows runs in
            # a child process that has it from the start
            child_out = tmp / "qos_profile.md"
            subprocess.run([sys.executable, "-m", "gst_ros.tools.reliability", "--sections", "qos_profile", "--out",
                            str(child_out), "--model", args.model], cwd=REPO, timeout=1800,
                           env=dict(os.environ, FASTDDS_DEFAULT_PROFILES_FILE=str(LARGE_IMAGES_PROFILE)))
            if child_out.with_suffix(".json").is_file():
                rows += [Row(**r) for r in json.loads(child_out.with_suffix(".json").read_text())]
            else:
                rows.append(Row("qos", "with fastdds_large_images.xml", "child run", "no result", False))
        if "qos_profile" in sections:
            qos_delivery(domain, tmp, rows, args.model, settings=[s for s in QOS_SETTINGS if s[2]])
        if "latency" in sections:
            latency(domain, tmp, rows, args.model)
        if "flood" in sections:
            flood(domain, tmp, rows, args.model, args.flood_s)
    write_report(rows, args.out, args, time.monotonic() - t0)
    bad = [r for r in rows if not r.ok]
    print(f"reliability: {len(rows) - len(bad)}/{len(rows)} rows as expected in {time.monotonic() - t0:.0f} s; "
          f"report: {args.out}")
    for r in bad:
        print(f"  NOT as expected: [{r.section}] {r.case}: {r.answer}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
