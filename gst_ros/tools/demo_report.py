"""The demo's scoring and report, without ROS: what the client recorded -> errors, figures, summary.json, report.md.

Estimated translations are in the model's scene-normalised units; they are drawn in metres with the
scene's known scale (simulation only). Rotation and translation-direction errors need no scale.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gst_model.data.cameras import relative_pose
from gst_model.geometry import rotation_angle_deg
from gst_model.image import center_crop_resize
from gst_model import metrics
from gst_model.metrics import translation_direction_errors_deg
from gst_ros.tools.demo_scene import DemoScene


@dataclass
class Estimate:
    """One /localize/estimate message as the client received it."""
    c2w: np.ndarray  # 4x4 pose relative to the reference frame, model units
    confidence: float  # the node's P(rotation error < 15°)
    low_confidence: bool  # confidence below the node's min_confidence
    latency_ms: float  # the node's own: image in -> estimate out
    received_s: float  # wall time of receiving it


@dataclass
class ViewQuery:
    """One /view_predictor/predict_view answer for a frame's ground-truth pose."""
    frame: int
    predicted: np.ndarray  # uint8 HxWx3 as returned (camera resolution when camera_info was seen)
    latency_s: float


@dataclass
class Record:
    """What the client observed during a run."""
    estimates: dict[int, Estimate] = field(default_factory=dict)  # frame -> estimate
    published_s: dict[int, float] = field(default_factory=dict)  # frame -> wall time of publishing
    tf_frames: set[tuple[str, str]] = field(default_factory=set)  # (parent, child) pairs seen on /tf


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(metrics.psnr(a[None], b[None])[0])


def summarize(scene: DemoScene, record: Record, queries: list[ViewQuery], model_size: int) -> dict:
    """Per-frame errors against the ground truth, and each view query scored on the model's square crop."""
    frames = sorted(record.estimates)
    rot_err, dir_err, t_est, t_gt, lat = [], [], [], [], []
    for f in frames:
        e = record.estimates[f]
        gt = relative_pose(scene.c2w[0], scene.c2w[f])
        rot_err.append(float(rotation_angle_deg(e.c2w, gt)))
        dir_err.append(float(translation_direction_errors_deg(e.c2w, gt)))
        t_est.append(e.c2w[:3, 3] * scene.scale)
        t_gt.append(gt[:3, 3])
        lat.append((e.latency_ms, (e.received_s - record.published_s.get(f, e.received_s)) * 1000.0))
    identity_err = [float(rotation_angle_deg(np.eye(4), relative_pose(scene.c2w[0], scene.c2w[f]))) for f in frames]
    views = []
    for q in queries:
        truth = center_crop_resize(scene.frames[q.frame], model_size)
        copy = center_crop_resize(scene.frames[0], model_size)
        # With camera_info the view comes back at the camera's resolution: score the model's square of it.
        scored = q.predicted if q.predicted.shape == truth.shape else center_crop_resize(q.predicted, model_size)
        views.append({"frame": q.frame, "psnr_pred": psnr(scored, truth), "psnr_copy": psnr(copy, truth),
                      "latency_s": q.latency_s, "predicted": q.predicted, "truth": truth, "copy": copy})
    return {"frames": frames, "rot_err": np.array(rot_err), "dir_err": np.array(dir_err),
            "identity_err": np.array(identity_err), "t_est": np.array(t_est).reshape(-1, 3),
            "t_gt": np.array(t_gt).reshape(-1, 3), "latency": np.array(lat).reshape(-1, 2),
            "confidence": np.array([record.estimates[f].confidence for f in frames], dtype=float),
            "low_confidence": np.array([record.estimates[f].low_confidence for f in frames], dtype=bool),
            "views": views}


def _plt():
    # The file-only backend, chosen when a figure is drawn rather than on import: importers keep theirs.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def plot_trajectory(out: Path, scene: DemoScene, s: dict) -> None:
    fig, ax = _plt().subplots(figsize=(5, 5))
    gt_all = np.stack([relative_pose(scene.c2w[0], c)[:3, 3] for c in scene.c2w])
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
    _save(fig, out / "trajectory.png")


def plot_errors(out: Path, s: dict) -> None:
    fig, ax = _plt().subplots(figsize=(7, 3.2))
    ax.plot(s["frames"], s["rot_err"], "o-", label="rotation error (GST)")
    ax.plot(s["frames"], s["identity_err"], "--", color="gray", label="rotation error (identity)")
    ax.plot(s["frames"], s["dir_err"], "s-", label="translation direction error (GST)")
    ax.set_xlabel("frame")
    ax.set_ylabel("degrees")
    ax.legend(fontsize=8)
    ax.set_title("Pose error over time (relative to the reference frame)")
    _save(fig, out / "errors.png")


def plot_views(out: Path, s: dict) -> None:
    """Observation / prediction / truth, one row per query (no file without queries)."""
    if not s["views"]:
        return
    fig, axes = _plt().subplots(len(s["views"]), 3, figsize=(6, 2.1 * len(s["views"])), squeeze=False)
    for row, v in zip(axes, s["views"]):
        # The observation is frame 0, the reference, on the same square as the truth (v["copy"]).
        for ax, im, title in zip(row, (v["copy"], v["predicted"], v["truth"]),
                                 ("observation (frame 0)", f"predicted (PSNR {v['psnr_pred']:.1f} dB)",
                                  f"ground truth (frame {v['frame']})")):
            ax.imshow(im)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    _save(fig, out / "views.png")


def plot_latency(out: Path, s: dict) -> None:
    fig, ax = _plt().subplots(figsize=(5, 3))
    if len(s["latency"]):
        ax.hist(s["latency"][:, 0], bins=15, alpha=0.7, label="model (image in -> estimate out)")
        ax.hist(s["latency"][:, 1], bins=15, alpha=0.7, label="end to end (publish -> receive)")
    ax.set_xlabel("ms")
    ax.set_ylabel("estimates")
    ax.legend(fontsize=8)
    ax.set_title("Localization latency")
    _save(fig, out / "latency.png")


def _median(x) -> float:
    return float(np.nanmedian(x)) if len(x) else float("nan")


def _share_below(x, threshold: float) -> float:
    return float(np.mean(np.asarray(x) < threshold)) if len(x) else float("nan")


def build_summary(scene: DemoScene, s: dict, *, model: str, published: int, tf_frames: set[tuple[str, str]],
                  stream_s: float) -> dict:
    """The contents of summary.json: headline numbers plus each estimate's confidence and flag."""
    n = len(s["frames"])
    return {
        "model": model, "scene_index": scene.index, "frames_published": published, "frames_estimated": n,
        "frames_dropped": published - n, "rot_median_deg": _median(s["rot_err"]),
        "rot_acc_15": _share_below(s["rot_err"], 15), "identity_rot_median_deg": _median(s["identity_err"]),
        "identity_rot_acc_15": _share_below(s["identity_err"], 15), "transl_dir_median_deg": _median(s["dir_err"]),
        "latency_model_ms_median": _median(s["latency"][:, 0]),
        "latency_e2e_ms_median": _median(s["latency"][:, 1]),
        "confidence_median": _median(s["confidence"]),
        "low_confidence_share": float(np.mean(s["low_confidence"])) if n else float("nan"),
        "view_psnr_pred_mean": _median([v["psnr_pred"] for v in s["views"]]),
        "view_psnr_copy_mean": _median([v["psnr_copy"] for v in s["views"]]),
        "tf_frames": sorted(f"{a} -> {b}" for a, b in tf_frames),
        "stream_s": stream_s,
        "per_frame": [{"frame": int(f), "confidence": float(c), "low_confidence": bool(low)}
                      for f, c, low in zip(s["frames"], s["confidence"], s["low_confidence"])],
    }


def write_markdown(out: Path, summary: dict, *, frames: int, rate: float, queries: int) -> str:
    """Writes report.md; returns the one-line summary to print."""
    published, n, dropped = summary["frames_published"], summary["frames_estimated"], summary["frames_dropped"]
    lines = [
        "# gst_ros demo", "",
        f"Model: `{summary['model']}`. Held-out synthetic test scene #{summary['scene_index']}, {frames} frames along a "
        f"smooth path between two dataset cameras about 45° apart, published at {rate:g} Hz over ROS 2; the localize and view_predictor nodes ran in a "
        "process each, started by `python -m gst_ros.run --nodes <node>` with `config/gst_ros.yaml` (as the launch "
        "file starts them).", "",
        "| metric | value |", "|---|---|",
        f"| frames published / estimated / dropped (latest-frame worker) | {published} / {n} / {dropped} |",
        f"| rotation error, median (GST) | {summary['rot_median_deg']:.1f}° |",
        f"| rotation error, median (identity baseline) | {summary['identity_rot_median_deg']:.1f}° |",
        f"| rotation within 15° (GST / identity) | {summary['rot_acc_15']:.0%} / {summary['identity_rot_acc_15']:.0%} |",
        f"| translation direction error, median | {summary['transl_dir_median_deg']:.1f}° |",
        f"| confidence P(rotation error < 15°), median / estimates flagged low_confidence | "
        f"{summary['confidence_median']:.2f} / {summary['low_confidence_share']:.0%} |",
        f"| latency, median: model / end to end | {summary['latency_model_ms_median']:.0f} ms / "
        f"{summary['latency_e2e_ms_median']:.0f} ms |",
        f"| predicted-view PSNR, mean over {queries} queries (GST / copy observation) | "
        f"{summary['view_psnr_pred_mean']:.2f} dB / {summary['view_psnr_copy_mean']:.2f} dB |",
        f"| TF frames seen on /tf | {', '.join(summary['tf_frames']) or 'none'} |", "",
        "![trajectory](trajectory.png) ![errors](errors.png)", "", "![views](views.png) ![latency](latency.png)", "",
        "Estimated translations are in the model's scene-normalised units and are drawn in metres using the "
        "scene's known scale (simulation only). Rotation and translation-direction errors are scale-free.",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return (f"demo: {n}/{published} frames estimated ({dropped} dropped), rotation error median "
            f"{summary['rot_median_deg']:.1f}° (identity {summary['identity_rot_median_deg']:.1f}°), "
            f"within 15°: {summary['rot_acc_15']:.0%}; translation direction median "
            f"{summary['transl_dir_median_deg']:.1f}°; model latency median {summary['latency_model_ms_median']:.0f} ms; "
            f"view PSNR {summary['view_psnr_pred_mean']:.2f} dB vs copy-observation {summary['view_psnr_copy_mean']:.2f} dB; "
            f"report: {out / 'report.md'}")


def write_report(out: Path, scene: DemoScene, s: dict, *, model: str, rate: float, published: int,
                 tf_frames: set[tuple[str, str]], stream_s: float) -> str:
    """Figures, summary.json and report.md in `out`; returns the one-line summary to print."""
    out.mkdir(parents=True, exist_ok=True)
    plot_trajectory(out, scene, s)
    plot_errors(out, s)
    plot_views(out, s)
    plot_latency(out, s)
    summary = build_summary(scene, s, model=model, published=published, tf_frames=tf_frames, stream_s=stream_s)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return write_markdown(out, summary, frames=len(scene.frames), rate=rate, queries=len(s["views"]))
