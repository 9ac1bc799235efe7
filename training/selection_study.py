"""Which rule should turn N sampled poses into one estimate, on data unlike the training data?

    python -m training.selection_study --data data/holdout --intrinsics --label "other renderer" --out runs/sel
    python -m training.selection_study --real --out runs/sel_real
    python -m training.selection_study --cache runs/sel/samples.npz --out runs/sel   # rules only, no model

For each pair the pipeline samples `--num-samples` poses (`estimate_pose`, its defaults) and every rule
below picks from the same samples, so the rules differ only in how they choose:
  view_likelihood   argmax log p(image b | image a, <GEN>, camera): the pipeline's default;
  consensus         the rotation medoid of the samples;
  pose_likelihood   argmax log p(camera | image a, <EST>, image b): the pose layout's own score of the
                    (re-encoded rigid) sample;
  joint             argmax of the sum of the two (both directions of the same joint model agree);
  low_residual_view argmax view likelihood among the samples whose ray-fit residual is at most the median
                    (samples whose tokens are not a rigid camera are dropped first);
and two references: identity (no motion) and best_of_n (the sample closest to the truth: the most any
rule could get). Each estimate is built around the chosen sample as the pipeline does
(`pose_samples.summarize`). Every rule is parameter-free, so nothing is fitted to the pairs it is scored on.

Pairs: `--data ROOT` (a RealEstate10K-layout root: the synthetic test split, or a holdout renderer's
scenes) — with `--intrinsics` the images go in at `--image-size` with their K (the pipeline resamples them
to the model's camera), without it as the model's own centre crops like `training.evaluate`; or `--real`
(the real pairs of `training.evaluate_real`). Outputs in `--out`: samples.npz (the cache), metrics.json,
report.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gst_model import metrics
from gst_model.geometry import rotation_angle_deg
from gst_model.pipeline import GSTPipeline
from gst_model.pose_samples import summarize
from training import pair_sets
from training.common import torch_threads

log = logging.getLogger("gst.selection_study")

RULES = ("view_likelihood", "consensus", "pose_likelihood", "joint", "low_residual_view")
REFERENCES = ("identity", "best_of_n")
KEYS = ("samples", "view_ll", "pose_ll", "residuals", "truth")
ROTATION_BINS = (0.0, 15.0, 30.0, 180.0)  # degrees of true relative rotation


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    pair_sets.add_arguments(p, pairs=100)
    p.add_argument("--intrinsics", action="store_true",
                   help="pass each image with its K at --image-size (for cameras unlike the model's)")
    p.add_argument("--image-size", type=int, default=256)
    return pair_sets.check_source(p, p.parse_args(argv))


def collect(pipe: GSTPipeline, pairs, args) -> dict:
    out = {k: [] for k in KEYS}
    for i, (a, b, K_a, K_b, truth) in enumerate(tqdm(list(pairs), desc="pairs", unit="pair")):
        est = pipe.estimate_pose(a, b, num_samples=args.num_samples, seed=args.seed * 1_000_003 + i,
                                 K_a=K_a, K_b=K_b)
        out["samples"].append(est.samples)
        out["view_ll"].append(est.sample_log_likelihoods)
        out["pose_ll"].append(pipe.pose_log_likelihoods(a, b, est.samples, est.intrinsics, K_a=K_a, K_b=K_b))
        out["residuals"].append(est.sample_residuals)
        out["truth"].append(truth)
    return {k: np.asarray(v) for k, v in out.items()}


def choose(rule: str, samples: np.ndarray, view_ll: np.ndarray, pose_ll: np.ndarray,
           residuals: np.ndarray) -> int | None:
    """Index of the sample a rule builds its estimate around (None: the medoid)."""
    if rule == "view_likelihood":
        return int(np.argmax(view_ll))
    if rule == "consensus":
        return None
    if rule == "pose_likelihood":
        return int(np.argmax(pose_ll))
    if rule == "joint":
        return int(np.argmax(view_ll + pose_ll))
    if rule == "low_residual_view":
        return int(np.argmax(np.where(residuals <= np.median(residuals), view_ll, -np.inf)))
    raise ValueError(f"unknown rule {rule!r}")


def estimates(data: dict, inlier_deg: float = 15.0) -> dict[str, np.ndarray]:
    """Each rule's and reference's estimate [P,4,4] of every pair."""
    n_pairs = len(data["truth"])
    out = {name: np.zeros((n_pairs, 4, 4)) for name in RULES + REFERENCES}
    for i in range(n_pairs):
        samples = data["samples"][i]
        for rule in RULES:
            anchor = choose(rule, samples, data["view_ll"][i], data["pose_ll"][i], data["residuals"][i])
            out[rule][i] = summarize(samples, inlier_deg=inlier_deg, anchor=anchor).c2w
        out["identity"][i] = np.eye(4)
        best = int(np.argmin(rotation_angle_deg(samples[:, :3, :3], data["truth"][i][None, :3, :3])))
        out["best_of_n"][i] = summarize(samples, inlier_deg=inlier_deg, anchor=best).c2w
    return out


def score(data: dict) -> dict[str, dict]:
    """Each rule's and reference's pose metrics over all pairs, and over the pairs of each true-rotation bin
    (`by_rotation`: on small turns the identity is right by construction, so accuracy there says little)."""
    est = estimates(data)
    true_rot = rotation_angle_deg(data["truth"][:, :3, :3], np.eye(3)[None])
    out = {name: metrics.pair_pose_metrics(e, data["truth"]) for name, e in est.items()}
    for name, e in est.items():
        out[name]["by_rotation"] = {}
        for lo, hi in zip(ROTATION_BINS[:-1], ROTATION_BINS[1:]):
            inside = (true_rot >= lo) & (true_rot < hi)
            out[name]["by_rotation"][f"{lo:g}-{hi:g}"] = (
                metrics.pair_pose_metrics(e[inside], data["truth"][inside]) if inside.any() else None)
    return out


def _degrees(value: float) -> str:
    return f"{value:.1f}°" if np.isfinite(value) else "—"  # the identity has no translation direction


def write_report(result: dict, path: Path) -> None:
    lines = [f"# Pose selection rules: {result['label']}", "",
             f"Written by `{result['command']}`. {result['pairs']} pairs, {result['num_samples']} samples each, "
             f"true rotations {result['true_rotation_deg']['median']:.1f}° median "
             f"(max {result['true_rotation_deg']['max']:.1f}°). Every rule chooses among the same samples.", "",
             "| rule | Rot@15 | Rot@30 | median rot. err | median transl. dir. err |", "|---|---|---|---|---|"]
    for name in RULES + REFERENCES:
        m = result["metrics"][name]
        lines.append(f"| {name} | {100 * m['rot_acc_15']:.0f}% | {100 * m['rot_acc_30']:.0f}% | "
                     f"{m['rot_median_deg']:.1f}° | {_degrees(m['transl_dir_median_deg'])} |")
    bins = list(result["metrics"]["identity"]["by_rotation"])
    counts = {b: (m or {}).get("n", 0) for b, m in result["metrics"]["identity"]["by_rotation"].items()}
    lines += ["", "Rot@15 by true rotation (pairs per bin: " + ", ".join(f"{b}°: {n}" for b, n in counts.items())
              + ")", "",
        "| rule | " + " | ".join(f"{b}°" for b in bins) + " |", "|---|" + "---|" * len(bins)]
    for name in RULES + REFERENCES:
        by = result["metrics"][name]["by_rotation"]
        lines.append(f"| {name} | " + " | ".join("-" if by[b] is None else f"{100 * by[b]['rot_acc_15']:.0f}%"
                                               for b in bins) + " |")
    path.write_text("\n".join(lines) + "\n")


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.cache:
        with np.load(args.cache) as f:
            data = {k: f[k] for k in KEYS}
    else:
        with torch_threads(args.threads):
            pipe = GSTPipeline.from_pretrained(args.model)
            pairs = pair_sets.pairs_of(args)
            start = time.perf_counter()
            data = collect(pipe, pairs, args)
            log.info("%d pairs in %.0f s", len(data["truth"]), time.perf_counter() - start)
        np.savez_compressed(out / "samples.npz", **data)
    true_rot = rotation_angle_deg(data["truth"][:, :3, :3], np.eye(3)[None])
    label = args.label or ("real pairs (training.evaluate_real)" if args.real else f"{args.data} ({args.split})")
    result = {"label": label, "command": "python -m training.selection_study " + " ".join(_argv_of(args)),
              "pairs": len(data["truth"]), "num_samples": int(data["samples"].shape[1]),
              "true_rotation_deg": {"median": float(np.median(true_rot)), "max": float(true_rot.max())},
              "metrics": score(data)}
    (out / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    write_report(result, out / "report.md")
    return result


def _argv_of(args: argparse.Namespace) -> list[str]:
    """The arguments that change the result, as a command line for the report."""
    parts = [f"--model {args.model}"] if args.model else []
    if args.real:
        parts.append("--real")
    elif args.data:
        parts += [f"--data {args.data}", f"--split {args.split}", f"--pairs {args.pairs}"]
        if args.intrinsics:
            parts += ["--intrinsics", f"--image-size {args.image_size}"]
        if args.max_rot != 60.0:
            parts.append(f"--max-rot {args.max_rot:g}")
    if args.num_samples != 16:
        parts.append(f"--num-samples {args.num_samples}")
    if args.seed:
        parts.append(f"--seed {args.seed}")
    return parts


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    result = run(args)
    print((Path(args.out) / "report.md").read_text())
    return 0 if result["pairs"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
