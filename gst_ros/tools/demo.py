"""`make demo`: the whole mission on a held-out synthetic scene, over real ROS 2, with a report.

    python -m gst_ros.tools.demo [--model DIR|preset] [--frames 24] [--rate 1.0] [--queries 3] [--out demo_output]

1. A camera source (this process) renders a smooth trajectory through a scene of the synthetic test
   split (never seen in training) and publishes sensor_msgs/Image + CameraInfo; the ground-truth
   poses stay here.
2. The localize and view_predictor nodes run in a process each, as the launch file starts them, on a
   machine without `ros2 launch`: `python -m gst_ros.run --nodes <node>` with config/gst_ros.yaml and
   the image/camera_info remaps (what `ros2 run gst_ros <node>` runs).
3. A planner-like client here sets the first frame as reference, listens to /tf and
   /localize/estimate, and calls /view_predictor/predict_view for a few query poses.
4. demo_output/ gets report.md and PNG figures; a short summary is printed.

Translations: the model works in scene-normalised units (RMS spread of a scene's cameras = 1). In
simulation that scale is known, so estimated translations are shown in metres by multiplying with
it; rotation and translation-direction errors need no scale at all.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from transforms3d.axangles import axangle2mat

from gst_model.checkpoint import BUNDLE_PRESETS, DEFAULT_MODEL_DIR
from gst_model.data.cameras import fov_to_K, relative_pose
from gst_model.data.formats import Scene, View, scene_scale
from gst_model.data.make_synthetic import assign_splits
from gst_model.data.synthetic import random_scene, render, sample_cameras
from gst_model.geometry import rotation_angle_deg
from gst_model.metrics import translation_direction_errors_deg
from gst_model.pose_samples import rotation_log

REPO = Path(__file__).resolve().parents[2]
IMAGE_TOPIC, INFO_TOPIC = "/demo/camera/image_raw", "/demo/camera/camera_info"
# The default build's recipe: its synthetic-data settings regenerate a test-split scene exactly when the
# model's metadata does not record its own (preset models).
DEFAULT_BUILD_CONFIG = REPO / "training" / "configs" / "default.yaml"


@dataclass
class DemoScene:
    frames: list[np.ndarray]  # uint8 HxWx3
    c2w: np.ndarray  # [N,4,4] ground truth, world frame
    K: np.ndarray  # [3,3] for the published frames
    scale: float  # metres per model translation unit
    index: int  # scene index in the synthetic dataset (a test-split scene)


@dataclass
class Record:
    estimates: dict = field(default_factory=dict)  # frame -> (rel c2w 4x4, consistency, latency_ms, recv_s)
    tf_frames: set = field(default_factory=set)
    published_s: dict = field(default_factory=dict)  # frame -> wall time of publishing


def synthetic_config(model: str) -> dict:
    """The synthetic-data settings the model was trained with, from its checkpoint metadata."""
    default = yaml.safe_load(DEFAULT_BUILD_CONFIG.read_text())["synthetic"]
    cfg_file = Path(model) / "config.json"
    if cfg_file.is_file():
        meta = json.loads(cfg_file.read_text()).get("metadata", {})
        return {**default, **meta.get("build_config", {}).get("synthetic", {})}
    return default


def held_out_scene(syn: dict, frames: int, height: int, width: int, which: int = 0) -> DemoScene:
    """A test-split scene regenerated exactly as the dataset writer made it, plus a smooth path."""
    splits = assign_splits(syn["scenes"], syn["split_fractions"], syn["seed"])
    index = [i for i, s in enumerate(splits) if s == "test"][which]
    rng = np.random.default_rng([syn["seed"], index])
    scene = random_scene(rng)
    # The dataset's own cameras of this scene define its unit of length (PairDataset scale_mode "scene").
    views, _ = sample_cameras(scene, rng, syn["views_per_scene"], fov_deg=(syn["fov_min"], syn["fov_max"]),
                                 azimuth_spread_deg=syn["azimuth_spread"])
    scale = scene_scale(Scene("demo", [View(Path(), c, np.eye(3), (1, 1)) for c in views], "synthetic"))
    c2w = interpolated_path(views, frames, target_deg=45.0)
    K = fov_to_K(0.5 * (syn["fov_min"] + syn["fov_max"]), height, width)
    images = [render(scene, c, K, height, width) for c in c2w]
    return DemoScene(images, c2w, K, scale, index)


def interpolated_path(views: np.ndarray, frames: int, target_deg: float) -> np.ndarray:
    """A smooth path between two of the scene's dataset cameras about `target_deg` apart.

    Dataset cameras keep clear of objects and look at the scene, so the path's views resemble the
    training distribution; rotation is interpolated on SO(3), the centre linearly.
    """
    pairs = [(a, b) for a in range(len(views)) for b in range(len(views)) if a != b]
    a, b = min(pairs, key=lambda p: abs(rotation_angle_deg(views[p[0]], views[p[1]]) - target_deg))
    start, end = views[a], views[b]
    rotvec = rotation_log(start[:3, :3].T @ end[:3, :3])
    angle = float(np.linalg.norm(rotvec))
    path = []
    for s in np.linspace(0.0, 1.0, frames):
        c2w = np.eye(4)
        step = axangle2mat(rotvec / angle, s * angle) if angle > 1e-9 else np.eye(3)
        c2w[:3, :3] = start[:3, :3] @ step
        c2w[:3, 3] = (1.0 - s) * start[:3, 3] + s * end[:3, 3]
        path.append(c2w)
    return np.stack(path)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


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


def run_client(scene: DemoScene, args, record: Record) -> tuple[list, dict]:
    """The camera source and planner-like client: publish, listen, query. Returns (queries, info)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo
    from sensor_msgs.msg import Image as ImageMsg
    from tf2_msgs.msg import TFMessage

    from gst_ros.conversions import image_to_numpy, matrix_to_pose, numpy_to_image, pose_to_matrix, time_to_ns
    from gst_ros.msg import PoseEstimate
    from gst_ros.srv import PredictView, SetReference

    rclpy.init()
    node = Node("gst_demo")
    image_pub = node.create_publisher(ImageMsg, IMAGE_TOPIC, 10)
    info_pub = node.create_publisher(CameraInfo, INFO_TOPIC, 10)
    stamp_to_frame: dict[int, int] = {}

    def on_estimate(msg: PoseEstimate) -> None:
        frame = stamp_to_frame.get(time_to_ns(msg.header.stamp))
        if frame is not None:
            record.estimates[frame] = (pose_to_matrix(msg.pose.pose), float(msg.consistency), float(msg.latency_ms),
                                       time.time())

    def on_tf(msg: TFMessage) -> None:
        for t in msg.transforms:
            record.tf_frames.add((t.header.frame_id, t.child_frame_id))

    node.create_subscription(PoseEstimate, "/localize/estimate", on_estimate, 10)
    node.create_subscription(TFMessage, "/tf", on_tf, 100)
    set_ref = node.create_client(SetReference, "/localize/set_reference")
    predict = node.create_client(PredictView, "/view_predictor/predict_view")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()

    def call(client, request, timeout):
        future = client.call_async(request)
        deadline = time.time() + timeout
        while not future.done() and time.time() < deadline:
            time.sleep(0.05)
        if not future.done():
            raise TimeoutError(f"{client.srv_name} did not answer within {timeout:.0f} s")
        return future.result()

    def frame_msg(i: int):
        stamp = node.get_clock().now().to_msg()
        stamp_to_frame[time_to_ns(stamp)] = i
        msg = numpy_to_image(scene.frames[i], "rgb8")
        msg.header.stamp, msg.header.frame_id = stamp, "gst_camera_optical"
        info = CameraInfo(header=msg.header, height=msg.height, width=msg.width, distortion_model="plumb_bob",
                          d=[0.0] * 5, k=scene.K.ravel().tolist(), p=np.hstack([scene.K, np.zeros((3, 1))]).ravel().tolist())
        info.r = np.eye(3).ravel().tolist()
        return msg, info

    info = {}
    try:
        for client in (set_ref, predict):
            if not client.wait_for_service(timeout_sec=args.startup_timeout):
                raise TimeoutError(f"{client.srv_name} not available after {args.startup_timeout:.0f} s "
                                   "(did the nodes start? see the node log in the report folder)")
        ref_msg, ref_info = frame_msg(0)
        info_pub.publish(ref_info)
        answer = call(set_ref, SetReference.Request(use_latest_frame=False, image=ref_msg), args.call_timeout)
        if not answer.success:
            raise RuntimeError(f"set_reference failed: {answer.message}")
        # Wait for the localizer's image subscription before streaming.
        deadline = time.time() + args.startup_timeout
        while image_pub.get_subscription_count() == 0 and time.time() < deadline:
            time.sleep(0.1)
        t_start = time.time()
        for i in range(1, len(scene.frames)):
            msg, cam_info = frame_msg(i)
            info_pub.publish(cam_info)
            image_pub.publish(msg)
            record.published_s[i] = time.time()
            time.sleep(1.0 / args.rate)
        # Let the worker finish the frame it holds (it always takes the latest one).
        last = len(scene.frames) - 1
        deadline = time.time() + args.call_timeout
        while last not in record.estimates and time.time() < deadline:
            time.sleep(0.1)
        info["stream_s"] = time.time() - t_start

        queries = []
        picks = np.linspace(len(scene.frames) // 3, len(scene.frames) - 1, args.queries).round().astype(int)
        for q, target in enumerate(picks):
            rel = relative_pose(scene.c2w[0], scene.c2w[target])
            rel_model = rel.copy()
            rel_model[:3, 3] /= scene.scale
            request = PredictView.Request(use_latest_frame=False, observation=ref_msg,
                                          target_pose=matrix_to_pose(rel_model), num_samples=1, seed=q)
            t0 = time.time()
            answer = call(predict, request, args.call_timeout)
            if not answer.success or not answer.images:
                raise RuntimeError(f"predict_view failed: {answer.message}")
            queries.append({"frame": int(target), "predicted": image_to_numpy(answer.images[0]),
                            "latency_s": time.time() - t0})
        return queries, info
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


def summarize(scene: DemoScene, record: Record, queries: list, model_size: int) -> dict:
    frames = sorted(record.estimates)
    rot_err, dir_err, t_est, t_gt, lat = [], [], [], [], []
    for f in frames:
        est, _, latency_ms, recv = record.estimates[f]
        gt = relative_pose(scene.c2w[0], scene.c2w[f])
        rot_err.append(float(rotation_angle_deg(est, gt)))
        dir_err.append(float(translation_direction_errors_deg(est, gt)))
        t_est.append(est[:3, 3] * scene.scale)
        t_gt.append(gt[:3, 3])
        lat.append((latency_ms, (recv - record.published_s.get(f, recv)) * 1000.0))
    identity_err = [float(rotation_angle_deg(np.eye(4), relative_pose(scene.c2w[0], scene.c2w[f]))) for f in frames]
    view_scores = []
    for q in queries:
        truth, copy = _square(scene.frames[q["frame"]], model_size), _square(scene.frames[0], model_size)
        # With camera_info the view comes back at the camera's resolution: score the model's square of it.
        predicted = q["predicted"] if q["predicted"].shape == truth.shape else _square(q["predicted"], model_size)
        view_scores.append({"frame": q["frame"], "psnr_pred": psnr(predicted, truth), "psnr_copy": psnr(copy, truth),
                            "latency_s": q["latency_s"], "truth": truth, "copy": copy})
    return {"frames": frames, "rot_err": np.array(rot_err), "dir_err": np.array(dir_err),
            "identity_err": np.array(identity_err), "t_est": np.array(t_est).reshape(-1, 3),
            "t_gt": np.array(t_gt).reshape(-1, 3), "latency": np.array(lat).reshape(-1, 2), "views": view_scores}


def _square(image: np.ndarray, size: int) -> np.ndarray:
    from gst_model.image import center_crop_resize

    return center_crop_resize(image, size)


def write_report(out: Path, scene: DemoScene, s: dict, published: int, args, info: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    gt_all = np.stack([relative_pose(scene.c2w[0], c)[:3, 3] for c in scene.c2w])
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(gt_all[:, 0], gt_all[:, 2], "k.-", label="ground truth")
    if len(s["t_est"]):
        ax.plot(s["t_est"][:, 0], s["t_est"][:, 2], "o", color="tab:red", label="GST estimate")
        for a, b in zip(s["t_est"], s["t_gt"]):
            ax.plot([a[0], b[0]], [a[2], b[2]], color="tab:red", alpha=0.3)
    ax.plot([0], [0], "b^", ms=10, label="reference camera")
    ax.set_xlabel("x (m, right of reference)")
    ax.set_ylabel("z (m, forward of reference)")
    ax.set_title("Trajectory, top view (reference optical frame)")
    ax.axis("equal")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "trajectory.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(s["frames"], s["rot_err"], "o-", label="rotation error (GST)")
    ax.plot(s["frames"], s["identity_err"], "--", color="gray", label="rotation error (identity)")
    ax.plot(s["frames"], s["dir_err"], "s-", label="translation direction error (GST)")
    ax.set_xlabel("frame")
    ax.set_ylabel("degrees")
    ax.legend(fontsize=8)
    ax.set_title("Pose error over time (relative to the reference frame)")
    fig.tight_layout()
    fig.savefig(out / "errors.png", dpi=110)
    plt.close(fig)

    if s["views"]:
        fig, axes = plt.subplots(len(s["views"]), 3, figsize=(6, 2.1 * len(s["views"])), squeeze=False)
        obs = _square(scene.frames[0], s["views"][0]["truth"].shape[0])
        for row, v in zip(axes, s["views"]):
            q = next(q for q in s["_queries"] if q["frame"] == v["frame"])
            for ax, im, title in zip(row, (obs, q["predicted"], v["truth"]),
                                     ("observation (frame 0)", f"predicted (PSNR {v['psnr_pred']:.1f} dB)",
                                      f"ground truth (frame {v['frame']})")):
                ax.imshow(im)
                ax.set_title(title, fontsize=8)
                ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / "views.png", dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3))
    if len(s["latency"]):
        ax.hist(s["latency"][:, 0], bins=15, alpha=0.7, label="model (image in -> estimate out)")
        ax.hist(s["latency"][:, 1], bins=15, alpha=0.7, label="end to end (publish -> receive)")
    ax.set_xlabel("ms")
    ax.set_ylabel("estimates")
    ax.legend(fontsize=8)
    ax.set_title("Localization latency")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)

    n = len(s["frames"])
    med = lambda x: float(np.nanmedian(x)) if len(x) else float("nan")  # noqa: E731
    acc = lambda x, t: float(np.mean(np.asarray(x) < t)) if len(x) else float("nan")  # noqa: E731
    summary = {
        "model": args.model, "scene_index": scene.index, "frames_published": published, "frames_estimated": n,
        "frames_dropped": published - n, "rot_median_deg": med(s["rot_err"]), "rot_acc_15": acc(s["rot_err"], 15),
        "identity_rot_median_deg": med(s["identity_err"]), "identity_rot_acc_15": acc(s["identity_err"], 15),
        "transl_dir_median_deg": med(s["dir_err"]),
        "latency_model_ms_median": med(s["latency"][:, 0]) if n else float("nan"),
        "latency_e2e_ms_median": med(s["latency"][:, 1]) if n else float("nan"),
        "view_psnr_pred_mean": med([v["psnr_pred"] for v in s["views"]]),
        "view_psnr_copy_mean": med([v["psnr_copy"] for v in s["views"]]),
        "tf_frames": sorted(f"{a} -> {b}" for a, b in s["_tf_frames"]),
        "stream_s": info.get("stream_s"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "# gst_ros demo", "",
        f"Model: `{args.model}`. Held-out synthetic test scene #{scene.index}, {len(scene.frames)} frames along a "
        f"smooth path between two dataset cameras about 45° apart, published at {args.rate:g} Hz over ROS 2; the localize and view_predictor nodes ran in a "
        "process each, started by `python -m gst_ros.run --nodes <node>` with `config/gst_ros.yaml` (as the launch "
        "file starts them).", "",
        "| metric | value |", "|---|---|",
        f"| frames published / estimated / dropped (latest-frame worker) | {published} / {n} / {published - n} |",
        f"| rotation error, median (GST) | {summary['rot_median_deg']:.1f}° |",
        f"| rotation error, median (identity baseline) | {summary['identity_rot_median_deg']:.1f}° |",
        f"| rotation within 15° (GST / identity) | {summary['rot_acc_15']:.0%} / {summary['identity_rot_acc_15']:.0%} |",
        f"| translation direction error, median | {summary['transl_dir_median_deg']:.1f}° |",
        f"| latency, median: model / end to end | {summary['latency_model_ms_median']:.0f} ms / "
        f"{summary['latency_e2e_ms_median']:.0f} ms |",
        f"| predicted-view PSNR, mean over {len(s['views'])} queries (GST / copy observation) | "
        f"{summary['view_psnr_pred_mean']:.2f} dB / {summary['view_psnr_copy_mean']:.2f} dB |",
        f"| TF frames seen on /tf | {', '.join(summary['tf_frames']) or 'none'} |", "",
        "![trajectory](trajectory.png) ![errors](errors.png)", "", "![views](views.png) ![latency](latency.png)", "",
        "Estimated translations are in the model's scene-normalised units and are drawn in metres using the "
        "scene's known scale (simulation only). Rotation and translation-direction errors are scale-free.",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return (f"demo: {n}/{published} frames estimated ({published - n} dropped), rotation error median "
            f"{summary['rot_median_deg']:.1f}° (identity {summary['identity_rot_median_deg']:.1f}°), "
            f"within 15°: {summary['rot_acc_15']:.0%}; translation direction median "
            f"{summary['transl_dir_median_deg']:.1f}°; model latency median {summary['latency_model_ms_median']:.0f} ms; "
            f"view PSNR {summary['view_psnr_pred_mean']:.2f} dB vs copy-observation {summary['view_psnr_copy_mean']:.2f} dB; "
            f"report: {out / 'report.md'}")


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
        queries, info = run_client(scene, args, record)
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
    model_size = queries[0]["predicted"].shape[0]
    s = summarize(scene, record, queries, model_size)
    s["_queries"], s["_tf_frames"] = queries, record.tf_frames
    line = write_report(out, scene, s, len(scene.frames) - 1, args, info)
    print(line)
    print(f"demo: finished in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
