"""Offline replay: the localize node's logic over a recorded bag or a folder of images, with its outputs as files.

    python -m gst_ros.tools.replay INPUT --out DIR [--image-topic /camera/image_raw] [--camera-info-topic TOPIC]
        [--params config/gst_ros.yaml] [--param NAME:=VALUE ...] [--every N] [--max-frames N]
        [--gt-tf PARENT:CHILD | --gt-topic TOPIC] [--bag-out] [--fps 10]

INPUT is a ROS 2 bag (a rosbag2 directory, sqlite3 or mcap) or a ROS 1 .bag, read with `rosbags`
(sensor_msgs/Image or CompressedImage on --image-topic; the only image topic when not given), or a folder of
images (.png/.jpg, in name order, stamped 1/--fps apart).

It runs what localize runs on each frame, with the same parameters (the YAML's `/**` and `/**/localize`
sections, then --param overrides, checked against the node's own table): the same image checks, the same
GSTPipeline.estimate_pose call, with the intrinsics of the newest CameraInfo (as the node takes them from
camera_info when use_camera_info is set: --camera-info-topic, default the image topic's sibling camera_info),
the same reference / keyframe / re-keying decisions (gst_ros.keyframes.Localizer), and builds the same messages
(localize_node.estimate_messages). Unlike the
node it drops no frame (the node's worker takes the newest frame when the model is busy); --every N keeps
every N-th. Fix the seed (--param seed:=0) for repeatable runs: the node's default draws a new one per call.

Outputs in --out:
  trajectory.tum   `stamp x y z qx qy qz qw` per pose of camera_frame in reference_frame (the reference
                   frame itself first, as identity): `evo_traj tum trajectory.tum`, `evo_ape tum gt.tum
                   trajectory.tum --align --correct_scale` (translations are in the model's scene units)
  groundtruth.tum  with --gt-*: the ground-truth camera in the reference image's camera frame, same stamps
  estimates.csv    every field of every gst_ros/PoseEstimate (latency_ms = the model's time here)
  replay.bag/      with --bag-out: /tf, /localize/pose and /localize/estimate as the node publishes them
  metrics.json     with --gt-*: the evaluation's pose metrics (gst_model.metrics.pair_pose_metrics)

Ground truth: --gt-tf PARENT:CHILD composes /tf and /tf_static from PARENT down to CHILD (interpolated at
each image stamp); --gt-topic reads a PoseStamped, PoseWithCovarianceStamped, Odometry or TransformStamped
topic. CHILD (or the pose) must be the camera's optical frame (REP-103: x right, y down, z forward), the frame
the model's poses are in.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm
from transforms3d.axangles import axangle2mat
from transforms3d.quaternions import quat2mat

from gst_model import metrics
from gst_model.image import min_input_side
from gst_model.pose_samples import rotation_log
from gst_ros import params
from gst_ros.keyframes import Localizer

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
POSE_TYPES = ("geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/PoseWithCovarianceStamped",
              "nav_msgs/msg/Odometry", "geometry_msgs/msg/TransformStamped")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")
OUTPUT_TOPICS = {"/tf": "tf2_msgs/msg/TFMessage", "/localize/pose": "geometry_msgs/msg/PoseWithCovarianceStamped",
                 "/localize/estimate": "gst_ros/msg/PoseEstimate"}


@dataclass
class Frame:
    stamp_ns: int
    image: object  # a sensor_msgs/Image-like message (height, width, encoding, step, data)
    camera_info: object = None  # the newest CameraInfo recorded before the frame


# ------------------------------------------------------------------------------------ geometry
def matrix(translation, quaternion_xyzw) -> np.ndarray:
    x, y, z, w = (float(v) for v in quaternion_xyzw)
    norm = np.sqrt(x * x + y * y + z * z + w * w)
    if not np.isfinite(norm) or norm < 1e-9:
        raise ValueError(f"invalid quaternion {quaternion_xyzw}")
    T = np.eye(4)
    T[:3, :3] = quat2mat([w / norm, x / norm, y / norm, z / norm])
    T[:3, 3] = [float(v) for v in translation]
    return T


def interpolate(T0: np.ndarray, T1: np.ndarray, s: float) -> np.ndarray:
    """Rigid interpolation: rotation along the geodesic, translation linearly."""
    T = np.eye(4)
    rotvec = rotation_log(T0[:3, :3].T @ T1[:3, :3])
    angle = float(np.linalg.norm(rotvec))
    step = axangle2mat(rotvec / angle, s * angle) if angle > 1e-12 else np.eye(3)
    T[:3, :3] = T0[:3, :3] @ step
    T[:3, 3] = (1.0 - s) * T0[:3, 3] + s * T1[:3, 3]
    return T


class PoseSeries:
    """Stamped poses; `at(t)` interpolates between the two around t (None outside the recorded span)."""

    def __init__(self):
        self._stamps: list[int] = []
        self._poses: list[np.ndarray] = []
        self._sorted = True

    def add(self, stamp_ns: int, T: np.ndarray) -> None:
        if self._stamps and stamp_ns < self._stamps[-1]:
            self._sorted = False
        self._stamps.append(int(stamp_ns))
        self._poses.append(T)

    def at(self, stamp_ns: int) -> np.ndarray | None:
        if not self._sorted:
            order = np.argsort(self._stamps, kind="stable")
            self._stamps = [self._stamps[i] for i in order]
            self._poses = [self._poses[i] for i in order]
            self._sorted = True
        if not self._stamps or not self._stamps[0] <= stamp_ns <= self._stamps[-1]:
            return None
        i = int(np.searchsorted(self._stamps, stamp_ns, side="left"))
        if self._stamps[i] == stamp_ns:
            return self._poses[i]
        t0, t1 = self._stamps[i - 1], self._stamps[i]
        return interpolate(self._poses[i - 1], self._poses[i], (stamp_ns - t0) / (t1 - t0))


class TfTree:
    """/tf and /tf_static as a tree of child -> parent links; `lookup` composes them at a stamp."""

    def __init__(self):
        self._static: dict[str, tuple[str, np.ndarray]] = {}
        self._dynamic: dict[str, tuple[str, PoseSeries]] = {}

    def add(self, transform, static: bool) -> None:
        child, parent = transform.child_frame_id.lstrip("/"), transform.header.frame_id.lstrip("/")
        t, q = transform.transform.translation, transform.transform.rotation
        T = matrix((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))
        if static:
            self._static[child] = (parent, T)
        else:
            series = self._dynamic.setdefault(child, (parent, PoseSeries()))[1]
            series.add(stamp_ns(transform.header.stamp), T)

    def lookup(self, parent: str, child: str, stamp: int) -> np.ndarray | None:
        """Pose of `child` in `parent` (parent an ancestor of child), or None where a link is missing."""
        T, frame, seen = np.eye(4), child, set()
        while frame != parent:
            if frame in seen:
                return None
            seen.add(frame)
            if frame in self._static:
                up, link = self._static[frame]
            elif frame in self._dynamic:
                up, series = self._dynamic[frame]
                link = series.at(stamp)
                if link is None:
                    return None
            else:
                return None
            T, frame = link @ T, up
        return T


def stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


# -------------------------------------------------------------------------------------- inputs
def _compressed_to_image(msg):
    """sensor_msgs/CompressedImage -> an rgb8 sensor_msgs/Image (decoded with OpenCV)."""
    import cv2

    from gst_ros import conversions as conv

    bgr = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot decode compressed image (format {msg.format!r})")
    return conv.numpy_to_image(np.ascontiguousarray(bgr[:, :, ::-1]), "rgb8")


def read_bag(path: Path, image_topic: str | None, gt_tf: tuple[str, str] | None, gt_topic: str | None,
             info_topic: str | None = None):
    """(frames, ground truth series or None, image topic): frames as messages with their header stamps and the
    newest CameraInfo on `info_topic` (default: the image topic's sibling camera_info) before each."""
    from rosbags.highlevel import AnyReader

    with AnyReader([path]) as reader:
        images = [c for c in reader.connections if c.msgtype in IMAGE_TYPES]
        if image_topic is None:
            topics = sorted({c.topic for c in images})
            if len(topics) != 1:
                raise ValueError(f"{path}: {len(topics)} image topics {topics}; choose one with --image-topic")
            image_topic = topics[0]
        connections = [c for c in images if c.topic == image_topic]
        if not connections:
            raise ValueError(f"{path}: no sensor_msgs Image or CompressedImage on {image_topic!r}; image topics: "
                             f"{sorted({c.topic for c in images})}")
        if info_topic is None:
            info_topic = image_topic.rsplit("/", 1)[0] + "/camera_info"
        infos = [c for c in reader.connections if c.topic == info_topic and c.msgtype == "sensor_msgs/msg/CameraInfo"]
        wanted = connections + infos
        info = None
        tf = TfTree() if gt_tf else None
        series = PoseSeries() if gt_topic else None
        if gt_tf:
            wanted += [c for c in reader.connections if c.topic in ("/tf", "/tf_static")]
        if gt_topic:
            gt_conns = [c for c in reader.connections if c.topic == gt_topic]
            if not gt_conns or gt_conns[0].msgtype not in POSE_TYPES:
                raise ValueError(f"{path}: ground-truth topic {gt_topic!r} missing or not one of {POSE_TYPES}")
            wanted += gt_conns
        frames = []
        total = sum(c.msgcount for c in wanted)
        for conn, _, raw in tqdm(reader.messages(connections=wanted), total=total, desc="reading", unit="msg"):
            msg = reader.deserialize(raw, conn.msgtype)
            if conn in connections:
                frames.append(Frame(stamp_ns(msg.header.stamp), msg, info))
            elif conn in infos:
                info = msg
            elif conn.topic in ("/tf", "/tf_static"):
                for t in msg.transforms:
                    tf.add(t, static=conn.topic == "/tf_static")
            else:
                series.add(stamp_ns(msg.header.stamp), _pose_of(msg, conn.msgtype))
    frames.sort(key=lambda f: f.stamp_ns)
    if gt_tf:
        parent, child = gt_tf
        return frames, (lambda t: tf.lookup(parent, child, t)), image_topic
    return frames, (series.at if series is not None else None), image_topic


def _pose_of(msg, msgtype: str) -> np.ndarray:
    if msgtype == "geometry_msgs/msg/TransformStamped":
        t, q = msg.transform.translation, msg.transform.rotation
        return matrix((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))
    pose = msg.pose if msgtype == "geometry_msgs/msg/PoseStamped" else msg.pose.pose
    p, q = pose.position, pose.orientation
    return matrix((p.x, p.y, p.z), (q.x, q.y, q.z, q.w))


def read_folder(path: Path, fps: float) -> list[Frame]:
    from PIL import Image as PILImage

    from gst_ros import conversions as conv

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)})")
    step = int(round(1e9 / fps))
    return [Frame(i * step, conv.numpy_to_image(np.asarray(PILImage.open(f).convert("RGB")), "rgb8"))
            for i, f in enumerate(files)]


# ------------------------------------------------------------------------------------- outputs
def flatten(msg, prefix: str = "") -> dict:
    """Every field of a ROS message as CSV columns: nested fields joined with '.', arrays indexed, stamps in ns."""
    out = {}
    for name in msg.get_fields_and_field_types():
        value = getattr(msg, name)
        key = f"{prefix}{name}"
        if hasattr(value, "get_fields_and_field_types"):
            if type(value).__name__ == "Time":
                out[key + "_ns"] = stamp_ns(value)
            else:
                out.update(flatten(value, key + "."))
        elif isinstance(value, (list, tuple, np.ndarray)) or type(value).__name__ == "array":
            out.update({f"{key}.{i}": float(v) for i, v in enumerate(value)})
        else:
            out[key] = value
    return out


def tum_line(stamp: int, T: np.ndarray) -> str:
    from transforms3d.quaternions import mat2quat

    w, x, y, z = mat2quat(T[:3, :3])
    if w < 0:
        w, x, y, z = -w, -x, -y, -z
    t = T[:3, 3]
    return f"{stamp / 1e9:.9f} {t[0]:.9f} {t[1]:.9f} {t[2]:.9f} {x:.9f} {y:.9f} {z:.9f} {w:.9f}"


class BagOut:
    """The node's output topics into a rosbag2 (serialized with rclpy, as on the wire)."""

    def __init__(self, path: Path):
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_types_from_msg, get_typestore

        store = get_typestore(Stores.ROS2_KILTED)
        msg_file = Path(__file__).resolve().parents[2] / "msg" / "PoseEstimate.msg"
        store.register(get_types_from_msg(msg_file.read_text(), "gst_ros/msg/PoseEstimate"))
        self._writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._conns = {t: self._writer.add_connection(t, m, typestore=store) for t, m in OUTPUT_TOPICS.items()}

    def write(self, stamp: int, messages) -> None:
        from rclpy.serialization import serialize_message

        for topic, msg in zip(OUTPUT_TOPICS, messages):
            self._writer.write(self._conns[topic], stamp, serialize_message(msg))

    def close(self) -> None:
        self._writer.close()


@dataclass
class Result:
    frames: int = 0
    estimates: int = 0
    refused: dict = field(default_factory=dict)  # reason -> count
    rekeys: int = 0
    model_s: list = field(default_factory=list)


def replay(frames: list[Frame], values: dict, out: Path, ground_truth=None, bag_out: bool = False,
           progress: bool = True) -> tuple[Result, dict | None]:
    """Run the localize logic over `frames` with parameter `values`; write the outputs; (result, metrics)."""
    from builtin_interfaces.msg import Time

    from gst_ros import conversions as conv
    from gst_ros.localize_node import estimate_messages

    get = values.__getitem__
    pipeline = params.load_pipeline(get)
    if get("compile"):
        pipeline.warm_up(pose_samples=get("num_samples"))
    min_side = min_input_side(pipeline.view.image_size)
    localizer, result = Localizer(), Result()
    camera = None  # (K, (width, height), distorted) of the newest usable CameraInfo, as the node keeps it
    last_info = None
    out.mkdir(parents=True, exist_ok=True)
    bag = BagOut(out / "replay.bag") if bag_out else None
    rows, tum, gt_tum, pred, gt_rel, pairs_pred, pairs_gt = [], [], [], [], [], [], []
    gt_reference = gt_keyframes = None

    def intrinsics(image):  # lifecycle.GstNode._intrinsics: the camera's K for images of its size
        h, w = image.shape[:2]
        return camera[0] if camera is not None and camera[1] == (w, h) else None

    def estimate(image_a, image_b):
        t0 = time.perf_counter()
        est = pipeline.estimate_pose(image_a, image_b, K_a=intrinsics(image_a), K_b=intrinsics(image_b),
                                     **params.pose_kwargs(get, prior_c2w=localizer.temporal_prior()))
        result.model_s.append(time.perf_counter() - t0)
        return est

    try:
        for frame in tqdm(frames, desc="localizing", unit="frame", disable=not progress):
            result.frames += 1
            if get("use_camera_info") and frame.camera_info is not None and frame.camera_info is not last_info:
                last_info = frame.camera_info
                try:
                    camera = conv.camera_intrinsics(last_info)
                except ValueError as exc:  # the node logs it and keeps the previous intrinsics
                    reason = f"camera_info: {exc}"
                    result.refused[reason] = result.refused.get(reason, 0) + 1
            try:
                rgb = conv.image_to_numpy(frame.image, get("max_image_pixels"), min_side)
            except ValueError as exc:
                reason = f"dropped image: {exc}"
                result.refused[reason] = result.refused.get(reason, 0) + 1
                continue
            res = localizer.localize(rgb, frame.stamp_ns, estimate, params.rekey_policy(get))
            gt = ground_truth(frame.stamp_ns) if ground_truth is not None else None
            if res.pose is None:  # the first frame: the reference
                tum.append(tum_line(frame.stamp_ns, np.eye(4)))
                gt_reference = gt
                gt_keyframes = {res.keyframe.id: gt}
                if gt is not None:
                    gt_tum.append(tum_line(frame.stamp_ns, np.eye(4)))
                continue
            result.estimates += 1
            stamp = Time(sec=frame.stamp_ns // 1_000_000_000, nanosec=frame.stamp_ns % 1_000_000_000)
            messages = estimate_messages(res, stamp, get)
            messages[2].latency_ms = 1e3 * result.model_s[-1]
            rows.append(flatten(messages[2]))
            tum.append(tum_line(frame.stamp_ns, res.pose))
            if bag is not None:
                bag.write(frame.stamp_ns, messages)
            if gt is not None and gt_reference is not None:
                rel = np.linalg.inv(gt_reference) @ gt
                gt_tum.append(tum_line(frame.stamp_ns, rel))
                pred.append(res.pose)
                gt_rel.append(rel)
                gt_key = gt_keyframes.get(res.keyframe.id)
                if gt_key is not None:
                    pairs_pred.append(res.estimate.c2w)
                    pairs_gt.append(np.linalg.inv(gt_key) @ gt)
            if res.rekeyed_to is not None:
                gt_keyframes[res.rekeyed_to] = gt
    finally:
        if bag is not None:
            bag.close()
    result.rekeys = localizer.rekeys
    (out / "trajectory.tum").write_text("\n".join(tum) + "\n")
    if rows:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with open(out / "estimates.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    summary = None
    if ground_truth is not None:
        (out / "groundtruth.tum").write_text("\n".join(gt_tum) + "\n")
        summary = pose_metrics(pred, gt_rel, pairs_pred, pairs_gt)
        (out / "metrics.json").write_text(json.dumps(summary, indent=1) + "\n")
    return result, summary


def pose_metrics(pred, gt_rel, pairs_pred, pairs_gt) -> dict:
    """The evaluation's pose metrics for the published poses (reference frame), the model's pairs (keyframe,
    frame) and the identity guess."""
    if not pred:
        return {"n": 0}
    gt = np.stack(gt_rel)
    return {"published (reference -> frame)": metrics.pair_pose_metrics(np.stack(pred), gt),
            "model pairs (keyframe -> frame)": metrics.pair_pose_metrics(np.stack(pairs_pred), np.stack(pairs_gt)),
            "identity (reference -> frame)": metrics.pair_pose_metrics(np.tile(np.eye(4), (len(gt), 1, 1)), gt)}


def format_metrics(summary: dict) -> str:
    lines = [f"{'':34s} {'Rot@15':>7s} {'Rot@30':>7s} {'rot med':>8s} {'dir med':>8s} {'n':>5s}"]
    for name, m in summary.items():
        if isinstance(m, dict):
            lines.append(f"{name:34s} {m['rot_acc_15']:7.1%} {m['rot_acc_30']:7.1%} {m['rot_median_deg']:7.2f}° "
                         f"{m['transl_dir_median_deg']:7.2f}° {m['n']:5d}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="rosbag2 directory, ROS 1 .bag, or a folder of images")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--image-topic", help="image topic in the bag (default: its only image topic)")
    parser.add_argument("--camera-info-topic", help="CameraInfo topic (default: the image topic's sibling camera_info)")
    parser.add_argument("--params", type=Path, default=params.default_file(), help="parameter YAML")
    parser.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="localize parameter override, e.g. seed:=0")
    parser.add_argument("--every", type=int, default=1, help="use every N-th frame")
    parser.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0 = all)")
    gt = parser.add_mutually_exclusive_group()
    gt.add_argument("--gt-tf", metavar="PARENT:CHILD", help="ground truth: the TF chain PARENT -> camera optical CHILD")
    gt.add_argument("--gt-topic", help="ground truth: a pose topic of the camera's optical frame")
    parser.add_argument("--bag-out", action="store_true", help="also write /tf and the estimates to a bag (mcap)")
    parser.add_argument("--fps", type=float, default=10.0, help="image folder: frame rate for the stamps")
    args = parser.parse_args(argv)
    if args.every < 1 or args.max_frames < 0 or args.fps <= 0:
        parser.error("need --every >= 1, --max-frames >= 0 and --fps > 0")
    gt_tf = None
    if args.gt_tf:
        parent, sep, child = args.gt_tf.partition(":")
        if not sep or not parent or not child:
            parser.error("--gt-tf expects PARENT:CHILD")
        gt_tf = (parent.lstrip("/"), child.lstrip("/"))
    try:
        values = params.yaml_values(args.params, "localize") if args.params else {}
        values.update(params.parse_assignment(p) for p in args.param)
        values = params.resolve(params.LOCALIZE_PARAMS, values)
        if not args.input.exists():
            raise ValueError(f"{args.input}: no such bag or folder")
        if args.input.is_dir() and not (args.input / "metadata.yaml").is_file():
            if args.gt_tf or args.gt_topic:
                raise ValueError("ground truth needs a bag; a folder of images has none")
            frames, ground_truth, source = read_folder(args.input, args.fps), None, "images"
        else:
            frames, ground_truth, source = read_bag(args.input, args.image_topic, gt_tf, args.gt_topic,
                                                    args.camera_info_topic)
    except ValueError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    frames = frames[::args.every][:args.max_frames or None]
    print(f"replay: {len(frames)} frames from {args.input} ({source}); model "
          f"{params.model_label(values['model_path'])}, {values['num_samples']} samples, "
          f"{values['pose_selection']}, seed {values['seed']}")
    try:
        result, summary = replay(frames, values, args.out, ground_truth, args.bag_out)
    except (ValueError, OSError) as exc:  # the model could not be loaded
        print(f"replay: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    ms = np.median(result.model_s) * 1e3 if result.model_s else float("nan")
    print(f"replay: {result.estimates} estimates of {result.frames} frames, {result.rekeys} re-keys, "
          f"{sum(result.refused.values())} refused, model median {ms:.0f} ms; outputs in {args.out}")
    for reason, count in result.refused.items():
        print(f"  refused {count}x: {reason}")
    if summary is not None:
        print(format_metrics(summary) if summary.get("n", 1) else "replay: no frame had ground truth")
    return 0


if __name__ == "__main__":
    sys.exit(main())
