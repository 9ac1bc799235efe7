"""Evaluate GST on real posed image pairs, next to the identity and the classical two-view baseline.

    python -m training.evaluate_real --out docs/real_eval               # the fetched samples (make real-data)
    python -m training.evaluate_real --set heldout --out docs/real_eval_heldout   # the held-out real set
    python -m training.evaluate_real --scene tum:/data/rgbd_dataset_freiburg1_xyz --out runs/real

Scenes: by default the real samples of `gst_model.data.real_samples` (7-Scenes stairs, a drone survey
with its COLMAP model, an OpenSfM street scene as kapture, a Middlebury stereo pair); or any `--scene
FORMAT:PATH` (formats in `SCENE_READERS`); or, with `--set heldout`, the held-out real set: OpenCV's stereo
calibration sample (13 stereo pairs of a calibrated rig, a different camera and place; ground truth from
calibrating the rig on its chessboard), on which no setting of the package was chosen. Pairs: every ordered pair of views of a scene whose relative
rotation is at most `--max-rot` degrees and whose camera centres are at least `--min-baseline` scene
scales apart (near-duplicate frames of one video say nothing), at most `--max-pairs-per-scene` of them
per scene (a seeded choice). They are binned by true relative rotation (`--bins`, degrees).

Each pair goes to the model as the full images (shrunk to `--max-side`) with their real intrinsics
(`estimate_pose(K_a=, K_b=)`: each image resampled to the model's own camera, poses in the real optical
frames). Pose methods:
  gst              likelihood selection among `--num-samples` samples (the pipeline's default);
  gst_hybrid       the same samples plus the classical estimate as one more hypothesis
                   (`hybrid=True`; the same call, so `gst` is read from it without the classical one);
  gst_center_crop  the official preprocessing without intrinsics (centre crop assumed to have the
                   model's field of view): what the model did on real images before K was used;
  essential_matrix SIFT + essential matrix with RANSAC on the full images with the real K
                   (`gst_model.classical` at its own inlier minimum; a failure scores as the identity);
  identity         no motion.
Views: GST `predict_view` / `expected_view` of the target (observation with its real K, the target's
centre-crop camera requested, translation in scene scales as the shipped model was trained), copy of the
observation and the tokenizer's reconstruction of the target, all at the model's size against the
target's centre crop: PSNR, SSIM, LPIPS.

Outputs in `--out`: metrics.json, report.md, rotation_errors.png, accuracy_by_bin.png, views.png.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from gst_model import classical, metrics  # noqa: E402
from gst_model.data import real_samples  # noqa: E402
from gst_model.data.cameras import relative_pose  # noqa: E402
from gst_model.data.colmap import read_colmap_scene  # noqa: E402
from gst_model.data.formats import Scene, scale_intrinsics, scene_scale  # noqa: E402
from gst_model.data.kapture import read_kapture  # noqa: E402
from gst_model.data.rgbd import read_7scenes_scene, read_tum_sequence  # noqa: E402
from gst_model.geometry import rotation_angle_deg  # noqa: E402
from gst_model.image import center_crop_resize, crop_resize_intrinsics  # noqa: E402
from gst_model.pipeline import GSTPipeline  # noqa: E402
from gst_model.pose_samples import summarize  # noqa: E402
from training import baselines  # noqa: E402
from training.common import torch_threads  # noqa: E402
from training.evaluate import (_finite_or_none, _fmt, _image_metrics, _load_lpips, _view_summary,  # noqa: E402
                               save_image_grid)

log = logging.getLogger("gst.evaluate_real")

POSE_METHODS = ("gst", "gst_hybrid", "gst_center_crop", "essential_matrix", "identity")
VIEW_METHODS = ("gst", "gst_expected", "copy_observation", "tokenizer_upper_bound")
LABELS = {"gst": "GST (real K)", "gst_hybrid": "GST + classical hypothesis (hybrid)",
          "gst_center_crop": "GST, centre crop without K", "essential_matrix": "SIFT + essential matrix (real K)",
          "identity": "identity", "gst_expected": "GST expected view (mean of samples)",
          "copy_observation": "copy observation", "tokenizer_upper_bound": "tokenizer upper bound"}
VIEW_LABELS = {**LABELS, "gst": "GST view sample"}

SET_NOTES = {
    "samples": "The samples' JPEGs are heavily compressed (kapture shrank its test data: a 7-Scenes frame is ~2.5 KB, "
               "a 2-megapixel drone frame ~17 KB), which costs the feature matcher most.",
    "heldout": "Held-out set: OpenCV's stereo calibration sample, each pair the left and right view of one calibrated "
               "rig (the same relative pose in every pair: a sideways step with almost no rotation), so it tests "
               "near-identity rotation and the direction of a sideways translation on another camera and place; "
               "no setting of the package was chosen on it.",
}

SCENE_READERS = {
    "7scenes": lambda p: read_7scenes_scene(p, merge=True)[0],  # a scene folder (e.g. stairs), all sequences
    "tum": read_tum_sequence,  # a TUM RGB-D sequence folder
    "colmap": read_colmap_scene,  # a folder with images/ and sparse/0
    "kapture": read_kapture,  # a kapture root (sensors/...)
}


def parse_scene(spec: str) -> Scene:
    fmt, sep, path = spec.partition(":")
    if not sep or fmt not in SCENE_READERS:
        raise argparse.ArgumentTypeError(f"--scene must be FORMAT:PATH with FORMAT one of {sorted(SCENE_READERS)}, "
                                         f"got {spec!r}")
    return SCENE_READERS[fmt](Path(path))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint directory or preset name (default: the shipped model)")
    p.add_argument("--scene", action="append", default=None, metavar="FORMAT:PATH",
                   help=f"a posed scene to pair ({', '.join(SCENE_READERS)}); repeatable; default: the fetched samples")
    p.add_argument("--set", default="samples", choices=("samples", "heldout"),
                   help="without --scene: the fetched evaluation samples, or the held-out stereo set")
    p.add_argument("--cache", default=None, help="real-sample cache (default $GST_REAL_DATA or ~/.cache/gst_ros/real)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-samples", type=int, default=16, help="pose samples per estimate")
    p.add_argument("--mean-view-samples", type=int, default=8, help="samples in the expected view (0 = skip)")
    p.add_argument("--max-rot", type=float, default=60.0, help="largest true relative rotation paired (degrees)")
    p.add_argument("--min-baseline", type=float, default=0.2,
                   help="smallest camera distance paired, in scene scales (RMS spread of the scene's cameras)")
    p.add_argument("--max-pairs-per-scene", type=int, default=30)
    p.add_argument("--max-side", type=int, default=1024,
                   help="larger images are shrunk to this longer side first (K scaled with them): a robot "
                        "camera's resolution, and SIFT on 8-megapixel frames takes tens of seconds")
    p.add_argument("--bins", type=float, nargs="+", default=[0.0, 15.0, 30.0, 60.0],
                   help="rotation bin edges in degrees")
    p.add_argument("--seed", type=int, default=0, help="pair choice and sampling seed")
    p.add_argument("--grid-pairs", type=int, default=6, help="pairs shown in views.png")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--device", default="cpu", help="torch device of the model, e.g. cuda")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    args = p.parse_args(argv)
    if args.num_samples < 1 or args.mean_view_samples < 0 or args.max_pairs_per_scene < 1 or args.max_side < 64:
        p.error("--num-samples and --max-pairs-per-scene must be >= 1, --mean-view-samples >= 0, --max-side >= 64")
    if len(args.bins) < 2 or any(hi <= lo for lo, hi in zip(args.bins[:-1], args.bins[1:])):
        p.error("--bins must be at least two increasing edges")
    return args


# ------------------------------------------------------------------------------------- pairs


def select_pairs(scene: Scene, max_rot: float, min_baseline: float, max_pairs: int,
                 rng: np.random.Generator) -> list[tuple[int, int]]:
    """Ordered (observation, target) view pairs within the rotation and baseline limits (see module doc)."""
    scale = scene_scale(scene)
    pairs = []
    for a, va in enumerate(scene.views):
        for b, vb in enumerate(scene.views):
            if a == b:
                continue
            rot = float(rotation_angle_deg(va.c2w, vb.c2w))
            dist = float(np.linalg.norm(va.c2w[:3, 3] - vb.c2w[:3, 3])) / scale
            if rot <= max_rot and dist >= min_baseline:
                pairs.append((a, b))
    if len(pairs) > max_pairs:
        keep = rng.choice(len(pairs), max_pairs, replace=False)
        pairs = [pairs[i] for i in sorted(keep)]
    return pairs


def bin_label(angle: float, edges: list[float]) -> str | None:
    for lo, hi in zip(edges[:-1], edges[1:]):
        if lo <= angle < hi or (hi == edges[-1] and angle == hi):
            return f"{lo:g}-{hi:g}"
    return None


def limit_size(image: np.ndarray, K: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """The image shrunk (antialiased bicubic) so its longer side is at most max_side, and its K."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image, K
    size = (max(1, round(h * max_side / max(h, w))), max(1, round(w * max_side / max(h, w))))
    small = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BICUBIC))
    return small, scale_intrinsics(K, (h, w), size)


class _Images:
    """The evaluated scenes' images, each decoded (and shrunk to `max_side`) once."""

    def __init__(self, max_side: int):
        self.cache, self.max_side = {}, max_side

    def get(self, scene: Scene, index: int) -> tuple[np.ndarray, np.ndarray]:
        key = (scene.name, index)
        if key not in self.cache:
            self.cache[key] = limit_size(*scene.views[index].load(), self.max_side)
        return self.cache[key]


# ------------------------------------------------------------------------------------ evaluation


def _gst_only(pipe: GSTPipeline, est) -> np.ndarray:
    """The estimate without the classical hypothesis, from the same samples and likelihoods."""
    if est.source == "gst":
        return est.c2w
    anchor = int(np.argmax(est.sample_log_likelihoods)) if est.sample_log_likelihoods is not None else None
    return summarize(est.samples, inlier_deg=pipe.inlier_deg, anchor=anchor).c2w


def evaluate(pipe: GSTPipeline, scenes: list[Scene], args, lpips_net) -> tuple[dict, list[dict], dict]:
    rng = np.random.default_rng(args.seed)
    size = pipe.view.image_size
    hybrid = classical.OPENCV_ERROR is None
    images = _Images(args.max_side)
    todo = [(scene, a, b) for scene in scenes
            for a, b in select_pairs(scene, args.max_rot, args.min_baseline, args.max_pairs_per_scene, rng)]
    if not todo:
        raise ValueError("no pair of views within the rotation / baseline limits")
    poses = {m: [] for m in POSE_METHODS}
    views = {m: [] for m in VIEW_METHODS if m != "gst_expected" or args.mean_view_samples}
    gt_poses, gt_views, observations, records = [], [], [], []
    for i, (scene, a, b) in enumerate(tqdm(todo, desc="pairs", unit="pair")):
        seed = args.seed * 1_000_003 + i
        (img_a, K_a), (img_b, K_b) = images.get(scene, a), images.get(scene, b)
        rel = relative_pose(scene.views[a].c2w, scene.views[b].c2w)
        t0 = time.perf_counter()
        est = pipe.estimate_pose(img_a, img_b, num_samples=args.num_samples, seed=seed, K_a=K_a, K_b=K_b,
                                 hybrid=hybrid)
        gst_seconds = time.perf_counter() - t0
        crop = pipe.estimate_pose(img_a, img_b, num_samples=args.num_samples, seed=seed)
        # the baseline at its own inlier minimum (the hybrid's gate is stricter)
        two_view = classical.essential_matrix_pose(img_a, img_b, K_a, K_b) if hybrid else None
        if two_view is not None and two_view.c2w is not None:
            E_pose, reason = two_view.c2w, ""
        else:
            E_pose, reason = baselines.identity_pose(), (two_view.reason if two_view is not None else "unavailable")
        poses["gst"].append(_gst_only(pipe, est))
        poses["gst_hybrid"].append(est.c2w if hybrid else _gst_only(pipe, est))
        poses["gst_center_crop"].append(crop.c2w)
        poses["essential_matrix"].append(E_pose)
        poses["identity"].append(baselines.identity_pose())
        gt_poses.append(rel)

        # views: the target's centre-crop camera at the model's size, translation in scene scales
        scaled = rel.copy()
        scaled[:3, 3] /= scene_scale(scene)
        K_view = crop_resize_intrinsics(K_b, *img_b.shape[:2], size)
        views["gst"].append(pipe.predict_view(img_a, scaled, num_samples=1, seed=seed, K=K_view, K_image=K_a)[0])
        if args.mean_view_samples:
            views["gst_expected"].append(pipe.expected_view(img_a, scaled, num_samples=args.mean_view_samples,
                                                            seed=seed, K=K_view, K_image=K_a))
        views["copy_observation"].append(baselines.copy_observation(img_a, size))
        views["tokenizer_upper_bound"].append(baselines.tokenizer_reconstruction(pipe, img_b))
        gt_views.append(center_crop_resize(img_b, size))
        observations.append(center_crop_resize(img_a, size))
        angle = float(rotation_angle_deg(np.eye(4), rel))
        records.append({"index": i, "scene": scene.name, "views": [a, b],
                        "obs": scene.views[a].image_path.name, "target": scene.views[b].image_path.name,
                        "gt_rotation_deg": angle, "bin": bin_label(angle, args.bins),
                        "hybrid_source": est.source if hybrid else None,
                        "classical_inliers": two_view.inliers if two_view is not None else None,
                        "hybrid_classical_used": bool(hybrid and est.classical is not None
                                                      and est.classical.c2w is not None),
                        "essential_matrix_failure": reason or None, "gst_seconds": gst_seconds})

    gt = np.stack(gt_poses)
    for m, p in poses.items():
        p = np.stack(p)
        rot, trans = metrics.rotation_errors_deg(p, gt), metrics.translation_direction_errors_deg(p, gt)
        for r, e, t in zip(records, rot, trans):
            r[f"{m}_rot_err_deg"], r[f"{m}_transl_dir_err_deg"] = float(e), float(t)
    view_values = {m: _image_metrics(v, gt_views, lpips_net) for m, v in views.items()}
    for m, vals in view_values.items():
        for k, v in vals.items():
            for r, x in zip(records, v):
                r[f"{m}_{k}"] = float(x)
    summary = {"pose": pose_summary(records, gt, poses, args.bins),
               "views": {m: _view_summary(v, len(records)) for m, v in view_values.items()}}
    figures = {"observations": observations, "targets": gt_views, "predictions": views["gst"],
               "expected": views.get("gst_expected"), "records": records}
    return summary, records, figures


def pose_summary(records: list[dict], gt: np.ndarray, poses: dict, edges: list[float]) -> dict:
    """Per method: pair metrics over all pairs and per rotation bin."""
    bins = ["all"] + [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])]
    out = {}
    for m, p in poses.items():
        p = np.stack(p)
        out[m] = {}
        for b in bins:
            mask = np.array([b == "all" or r["bin"] == b for r in records])
            out[m][b] = metrics.pair_pose_metrics(p[mask], gt[mask]) if mask.any() else {"n": 0}
    return out


# ---------------------------------------------------------------------------------------- outputs


def write_report(result: dict, path: Path) -> None:
    cfg, pose, views = result["config"], result["summary"]["pose"], result["summary"]["views"]
    records = result["pairs"]
    scenes = result["scenes"]
    lines = [f"# GST on real image pairs: `{cfg['model']}`", "",
             f"{len(records)} ordered pairs from {len(scenes)} real scenes "
             f"({', '.join(f'{s} ({n} pairs)' for s, n in scenes.items())}); true relative rotation up to "
             f"{cfg['max_rot']:g}°, camera centres at least {cfg['min_baseline']:g} scene scales apart; images "
             f"shrunk to at most {cfg['max_side']} px on the longer side (K with them). "
             f"{cfg['num_samples']} pose samples per estimate (likelihood selection), seed {cfg['seed']}; "
             f"model: {cfg['model_description']}; LPIPS: {result['lpips']}.", ""]
    cols = [("Rot@15", "rot_acc_15", "pct"), ("Rot@30", "rot_acc_30", "pct"),
            ("median rot err", "rot_median_deg", "deg"),
            ("median transl-dir err", "transl_dir_median_deg", "deg")]
    lines += ["## Relative pose, by true rotation", ""]
    for b in next(iter(pose.values())):
        n = pose["identity"][b]["n"]
        lines += [f"**{'all pairs' if b == 'all' else b + '°'}** ({n} pairs)", ""]
        if n == 0:
            lines += ["no pairs in this bin", ""]
            continue
        lines += ["| method | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for m in POSE_METHODS:
            row = pose[m][b]
            lines.append(f"| {LABELS[m]} | " + " | ".join(_fmt(row.get(k), kind) for _, k, kind in cols) + " |")
        lines.append("")
    fails = result["essential_matrix_failures"]
    won = sum(r["hybrid_source"] == "classical" for r in records)
    offered = sum(r["hybrid_classical_used"] for r in records)
    lines += [f"Translation direction is scored by angle only (monocular scale); the identity has none, so its "
              f"median is n/a, and so is a method's whose failures are more than half its pairs. Essential-matrix "
              f"failures score as the identity: {sum(fails.values())} of {len(records)} ({fails or 'none'}). The "
              f"classical estimate passed the hybrid's inlier gate on {offered} pairs and was chosen on {won}. "
              "Bins with few pairs say little. " + SET_NOTES.get("scenes" if cfg.get("scene") else cfg.get("set"), ""),
              "", "## Views", "",
              "At the model's size against the target's centre crop (the observation given with its real K, the "
              "target's centre-crop camera requested at the true pose).", "",
              "| method | PSNR (dB) | SSIM | LPIPS |", "|---|---|---|---|"]
    for m, row in views.items():
        lines.append(f"| {VIEW_LABELS[m]} | {_fmt(row['psnr'], 'f2')} | {_fmt(row['ssim'], 'f3')} | "
                     f"{_fmt(row['lpips'], 'f3')} |")
    lines += ["", "## Per scene (median rotation error)", "",
              "| scene | pairs | " + " | ".join(LABELS[m] for m in POSE_METHODS) + " | essential-matrix failures |",
              "|---" * (len(POSE_METHODS) + 3) + "|"]
    for s in scenes:
        rows = [r for r in records if r["scene"] == s]
        cells = [_fmt(metrics.median([r[f"{m}_rot_err_deg"] for r in rows]), "deg") for m in POSE_METHODS]
        failed = sum(bool(r["essential_matrix_failure"]) for r in rows)
        lines.append(f"| {s} | {len(rows)} | " + " | ".join(cells) + f" | {failed} |")
    lines += ["", "Figures: `rotation_errors.png` (error against true rotation), `accuracy_by_bin.png` (Rot@15 "
              "per bin), `views.png` (observation / GST sample / expected view / truth).",
              f"Run time {result['elapsed_s']:.0f} s; GST pose estimate {result['gst_seconds_median']:.2f} s "
              "median per pair (with the hybrid's SIFT).", ""]
    path.write_text("\n".join(lines))


def plot_rotation_errors(records: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    markers = dict(zip(POSE_METHODS, "os^Dx"))
    gt = [r["gt_rotation_deg"] for r in records]
    for m in POSE_METHODS:
        ax.scatter(gt, [r[f"{m}_rot_err_deg"] for r in records], marker=markers[m], s=22, alpha=0.75,
                   label=LABELS[m])
    ax.axhline(15, color="grey", lw=0.8, ls="--")
    ax.axhline(30, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("true relative rotation (degrees)")
    ax.set_ylabel("rotation error (degrees)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_accuracy_by_bin(pose: dict, path: Path) -> None:
    bins = [b for b in next(iter(pose.values())) if pose["identity"][b]["n"]]
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    width = 0.8 / len(POSE_METHODS)
    for k, m in enumerate(POSE_METHODS):
        ax.bar(np.arange(len(bins)) + k * width, [100 * pose[m][b]["rot_acc_15"] for b in bins], width,
               label=LABELS[m])
    ax.set_xticks(np.arange(len(bins)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{b}{'' if b == 'all' else '°'}\n({pose['identity'][b]['n']} pairs)" for b in bins])
    ax.set_ylabel("Rot@15 (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_views(figures: dict, n: int, path: Path) -> None:
    records = figures["records"]
    # spread the shown pairs over the scenes, and within a scene over its pairs (a seeded shuffle)
    rank = np.random.default_rng(0).permutation(len(records))
    order = sorted(range(len(records)), key=lambda i: (sum(r["scene"] == records[i]["scene"] and rank[j] < rank[i]
                                                           for j, r in enumerate(records)), i))[:n]
    rows = []
    for k in order:
        r = records[k]
        row = [(figures["observations"][k], f"{r['scene']}: observation"),
               (figures["predictions"][k], f"GST sample, {r['gst_psnr']:.1f} dB")]
        if figures["expected"] is not None:
            row.append((figures["expected"][k], f"expected, {r['gst_expected_psnr']:.1f} dB"))
        row.append((figures["targets"][k], f"truth, {r['gt_rotation_deg']:.0f}°"))
        rows.append(row)
    save_image_grid(rows, path, fontsize=7)


def run(args: argparse.Namespace) -> dict:
    with torch_threads(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> dict:
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.scene:
        scenes = [parse_scene(s) for s in args.scene]
    elif args.set == "heldout":
        scenes = real_samples.opencv_stereo_scenes(args.cache)
    else:
        scenes = real_samples.evaluation_scenes(args.cache)
    pipe = GSTPipeline.from_pretrained(args.model, device=args.device)
    lpips_net, lpips_note = _load_lpips(args.no_lpips)
    summary, records, figures = evaluate(pipe, scenes, args, lpips_net)
    fails = {}
    for r in records:
        if r["essential_matrix_failure"]:
            fails[r["essential_matrix_failure"]] = fails.get(r["essential_matrix_failure"], 0) + 1
    meta = pipe.bundle.metadata
    result = {
        "config": {**vars(args), "model": args.model or "shipped default",
                   "model_description": meta.get("name", meta.get("preset", "unknown")),
                   "model_image_size": pipe.view.image_size, "model_fovy_deg": pipe.view.fovy_deg},
        "lpips": lpips_note, "opencv": classical.OPENCV_ERROR or "available",
        "scenes": {s.name: sum(r["scene"] == s.name for r in records) for s in scenes},
        "summary": summary, "essential_matrix_failures": fails,
        "gst_seconds_median": float(np.median([r["gst_seconds"] for r in records])), "pairs": records,
    }
    result["elapsed_s"] = time.time() - t0
    result = _finite_or_none(result)
    (out / "metrics.json").write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    write_report(result, out / "report.md")
    plot_rotation_errors(records, out / "rotation_errors.png")
    plot_accuracy_by_bin(result["summary"]["pose"], out / "accuracy_by_bin.png")
    plot_views(figures, args.grid_pairs, out / "views.png")
    log.info("wrote %s in %.1f s", out, result["elapsed_s"])
    return result


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
