"""Measure how pose uncertainty definitions track the real error, and the hybrid hypotheses against their parts.

    python -m training.uncertainty --data data/synthetic --split test --pairs 200 --out runs/uncertainty
    python -m training.uncertainty --real --out runs/uncertainty_real      # the fetched real samples

Each pair is estimated once (`estimate_pose(..., hybrid=True)`: the N samples, their likelihoods
log p(image b | image a, sample) and the classical two-view hypothesis with its likelihood) and cached in
`<out>/samples.npz`; everything below is recomputed from that cache (`--cache` reuses one).

The pairs are split at random in two halves: definitions and constants are chosen on the first ("choose")
and reported on the second ("report"), so the reported numbers are not fitted to the pairs they describe.
  confidence candidates  scored by the Spearman correlation with the rotation error (negative = tracks it),
                         Rot@15 of the most confident half against all pairs, and the AUROC of telling
                         the pairs within 15 deg from the others; plus a reliability table of the chosen one;
  covariance candidates  the share of pairs whose rotation error e lies in the covariance's 95% region
                         (e^T C^-1 e <= chi2_3(0.95)), and the scale that brings the choose half to 95%;
  hybrid                 Rot@15 / Rot@30 / median of GST alone (best sample by likelihood), the classical
                         estimate alone (identity where it fails) and the hybrid (best of all hypotheses).
Outputs in `--out`: samples.npz, metrics.json, report.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gst_model import classical, metrics, pose_samples
from gst_model.geometry import rotation_angle_deg
from gst_model.pipeline import HYBRID_MIN_INLIERS, HYBRID_PRIOR_NATS, GSTPipeline
from training import pair_sets

log = logging.getLogger("gst.uncertainty")

CHI2_3_95 = 7.814727903251178  # 95% quantile of chi-square with 3 degrees of freedom
TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 16.0, 64.0)  # nats, candidates for the confidence weights
KEYS = ("samples", "log_likelihoods", "truth", "classical_c2w", "classical_log_likelihood", "classical_inliers")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    pair_sets.add_arguments(p, pairs=200)  # --seed also splits the pairs into the two halves
    p.add_argument("--inlier-deg", type=float, default=15.0)
    return pair_sets.check_source(p, p.parse_args(argv))


# --------------------------------------------------------------------------------- the cache
def collect(pipe: GSTPipeline, pairs, args) -> dict:
    out = {k: [] for k in KEYS}
    for i, (a, b, K_a, K_b, truth) in enumerate(tqdm(list(pairs), desc="pairs", unit="pair")):
        # every classical estimate the method makes is kept (and scored); Study applies the hybrid's threshold
        est = pipe.estimate_pose(a, b, num_samples=args.num_samples, seed=args.seed * 1_000_003 + i, K_a=K_a,
                                 K_b=K_b, hybrid=True, hybrid_min_inliers=classical.MIN_INLIERS)
        two_view = est.classical
        out["samples"].append(est.samples)
        out["log_likelihoods"].append(est.sample_log_likelihoods)
        out["truth"].append(truth)
        out["classical_c2w"].append(two_view.c2w if two_view.c2w is not None else np.full((4, 4), np.nan))
        out["classical_log_likelihood"].append(np.nan if est.classical_log_likelihood is None
                                               else est.classical_log_likelihood)
        out["classical_inliers"].append(two_view.inliers)
    return {k: np.asarray(v) for k, v in out.items()}


# ------------------------------------------------------------------------------- statistics
def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties given their average rank."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    for v in np.unique(x):
        tie = x == v
        r[tie] = r[tie].mean()
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half."""
    if positive.all() or not positive.any():
        return math.nan
    r = ranks(score)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((r[positive].sum() - n_pos * (n_pos - 1) / 2) / (n_pos * n_neg))


class Study:
    """The cached hypotheses of every pair and the estimate the pipeline makes of them."""

    def __init__(self, cache: dict, inlier_deg: float):
        self.c = cache
        self.inlier_deg = inlier_deg
        self.n = len(cache["truth"])
        # the classical estimates the cache has (>= 15 inliers) and those that join the hypotheses
        self.has_classical = ~np.isnan(cache["classical_log_likelihood"])
        self.joins = self.has_classical & (cache["classical_inliers"] >= HYBRID_MIN_INLIERS)

    def hypotheses(self, i: int, hybrid: bool) -> tuple[np.ndarray, np.ndarray]:
        """The hypotheses and their selection scores (the classical one with its prior), as estimate_pose."""
        samples, ll = self.c["samples"][i], self.c["log_likelihoods"][i]
        if hybrid and self.joins[i]:
            samples = np.concatenate([samples, self.c["classical_c2w"][i][None]])
            ll = np.append(ll, self.c["classical_log_likelihood"][i] + HYBRID_PRIOR_NATS)
        return samples, ll

    def classical_wins(self, i: int) -> bool:
        return bool(self.joins[i]) and np.argmax(self.hypotheses(i, True)[1]) == self.c["samples"].shape[1]

    def estimate(self, i: int, hybrid: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(estimate c2w, hypotheses, their log-likelihoods) as estimate_pose(hybrid=hybrid) makes them."""
        samples, ll = self.hypotheses(i, hybrid)
        exact = hybrid and self.classical_wins(i)
        s = pose_samples.summarize(samples, self.inlier_deg, anchor=int(np.argmax(ll)), log_likelihoods=ll,
                                   exact_anchor=exact)
        return s.c2w, samples, ll

    def pose_rows(self) -> dict:
        truth = self.c["truth"]
        gst = np.stack([self.estimate(i, False)[0] for i in range(self.n)])
        hybrid = np.stack([self.estimate(i, True)[0] for i in range(self.n)])
        two_view = np.where(self.has_classical[:, None, None], self.c["classical_c2w"], np.eye(4))
        rows = {}
        for name, poses in (("GST alone", gst), ("classical alone (identity where it fails)", two_view),
                            ("hybrid", hybrid)):
            rows[name] = metrics.pair_pose_metrics(poses, truth)
        rows["hybrid"]["classical_won"] = int(sum(self.classical_wins(i) for i in range(self.n)))
        rows["classical alone (identity where it fails)"]["succeeded"] = int(self.has_classical.sum())
        return rows


def _deviations(estimate: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Rotation vectors (radians) of every sample around the estimate, in its frame: [N, 3]."""
    return pose_samples.rotation_log(estimate[:3, :3].T @ samples[:, :3, :3])


def confidence_candidates(study: Study) -> dict[str, np.ndarray]:
    """Per pair, each candidate confidence (higher = more confident) for the GST estimate."""
    near_deg = study.inlier_deg
    cands = {f"likelihood mass within {near_deg:g} deg, T={t:g}": [] for t in TEMPERATURES}
    cands.update({"share of samples within 15 deg of the anchor (old consistency)": [],
                  "share of samples within 15 deg of the estimate": [], "-RMS angle of all samples": [],
                  "likelihood margin best - second": []})
    for i in range(study.n):
        est, samples, ll = study.estimate(i, False)
        angle = np.degrees(np.linalg.norm(_deviations(est, samples), axis=1))
        anchor = samples[int(np.argmax(ll))]
        for t in TEMPERATURES:
            w = np.exp((ll - ll.max()) / t)
            cands[f"likelihood mass within {near_deg:g} deg, T={t:g}"].append(w[angle <= near_deg].sum() / w.sum())
        cands["share of samples within 15 deg of the anchor (old consistency)"].append(
            np.mean(rotation_angle_deg(anchor[None], samples) <= near_deg))
        cands["share of samples within 15 deg of the estimate"].append(np.mean(angle <= near_deg))
        cands["-RMS angle of all samples"].append(-np.sqrt(np.mean(angle ** 2)))
        top2 = np.sort(ll)[-2:]
        cands["likelihood margin best - second"].append(top2[1] - top2[0])
    return {k: np.asarray(v) for k, v in cands.items()}


def mahalanobis_sq(study: Study, kind: str) -> np.ndarray:
    """e^T C^-1 e of each pair's rotation error e for an unscaled covariance candidate."""
    out = []
    for i in range(study.n):
        est, samples, ll = study.estimate(i, False)
        dev = _deviations(est, samples)
        if kind == "inliers around the anchor (previous)":
            near = rotation_angle_deg(samples[int(np.argmax(ll))][None], samples) <= study.inlier_deg
            d = dev[near]
            C = d.T @ d / (len(d) - 1) if len(d) > 1 else np.eye(3) * pose_samples.UNKNOWN_ROTATION_VAR
        else:  # all samples around the estimate
            C = dev.T @ dev / len(dev)
        C = C + pose_samples.MIN_VAR * np.eye(3)
        e = pose_samples.rotation_log(est[:3, :3].T @ study.c["truth"][i][:3, :3])
        out.append(float(e @ np.linalg.solve(C, e)))
    return np.asarray(out)


def analyse(study: Study, seed: int) -> dict:
    errors = np.array([rotation_angle_deg(study.estimate(i, False)[0], study.c["truth"][i]) for i in range(study.n)])
    perm = np.random.default_rng([seed, 0xCA1]).permutation(study.n)
    halves = {"choose": np.sort(perm[: study.n // 2]), "report": np.sort(perm[study.n // 2:])}
    good = errors < 15.0
    result = {"pairs": study.n, "halves": {k: v.tolist() for k, v in halves.items()},
              "rot_acc_15": float(good.mean()), "confidence": {}, "covariance": {}}
    for name, c in confidence_candidates(study).items():
        result["confidence"][name] = {
            h: {"spearman": spearman(c[idx], errors[idx]),
                "rot_acc_15_most_confident_half": float(good[idx][c[idx] >= np.median(c[idx])].mean()),
                "rot_acc_15_all": float(good[idx].mean()), "auroc": auroc(c[idx], good[idx])}
            for h, idx in halves.items()}
    for kind in ("inliers around the anchor (previous)", "all samples around the estimate"):
        d2 = mahalanobis_sq(study, kind)
        scale = float(np.quantile(d2[halves["choose"]], 0.95) / CHI2_3_95)
        result["covariance"][kind] = {
            "scale_for_95_on_choose": scale,
            **{h: {"inside_95_unscaled": float(np.mean(d2[idx] <= CHI2_3_95)),
                   "inside_95_with_chosen_scale": float(np.mean(d2[idx] <= CHI2_3_95 * scale)),
                   "inside_95_with_shipped_scale": float(np.mean(d2[idx] <= CHI2_3_95 *
                                                                 pose_samples.COVARIANCE_SCALE))}
               for h, idx in halves.items()}}
    # the confidence the pipeline reports, against the truth: reliability on all pairs
    shipped = []
    for i in range(study.n):
        est, samples, ll = study.estimate(i, False)
        shipped.append(pose_samples.summarize(samples, study.inlier_deg, anchor=int(np.argmax(ll)),
                                              log_likelihoods=ll).confidence)
    shipped = np.asarray(shipped)
    edges = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0 + 1e-9)
    result["reliability"] = [
        {"bin": f"{lo:.1f}-{min(hi, 1.0):.1f}", "pairs": int(m.sum()),
         "mean_confidence": float(shipped[m].mean()) if m.any() else None,
         "rot_acc_15": float(good[m].mean()) if m.any() else None}
        for lo, hi in zip(edges[:-1], edges[1:]) for m in [(shipped >= lo) & (shipped < hi)]]
    result["shipped_confidence"] = {"mean": float(shipped.mean()), "rot_acc_15": float(good.mean()),
                                    "brier": float(np.mean((shipped - good) ** 2)),
                                    "brier_of_base_rate": float(np.mean((good.mean() - good) ** 2))}
    result["pose"] = study.pose_rows()
    return result


# ------------------------------------------------------------------------------------ report
def write_report(result: dict, config: dict, path: Path) -> None:
    lines = [f"# Pose uncertainty and hybrid hypotheses ({result['pairs']} pairs)", "",
             f"Data: {config['data']}; {config['num_samples']} samples per estimate; GST Rot@15 on all pairs "
             f"{result['rot_acc_15']:.0%}. Choose half / report half: {len(result['halves']['choose'])} / "
             f"{len(result['halves']['report'])} pairs.", "",
             f"Shipped constants: COVARIANCE_SCALE = {pose_samples.COVARIANCE_SCALE:g}, "
             f"CONFIDENCE_TEMPERATURE = {pose_samples.CONFIDENCE_TEMPERATURE:g} nats.", "",
             "## Confidence candidates", "",
             "| candidate | Spearman vs error (choose / report) | Rot@15 most confident half (choose / report) "
             "| AUROC (choose / report) |", "|---|---|---|---|"]
    for name, r in result["confidence"].items():
        c, rep = r["choose"], r["report"]
        lines.append(f"| {name} | {c['spearman']:+.2f} / {rep['spearman']:+.2f} | "
                     f"{c['rot_acc_15_most_confident_half']:.0%} / {rep['rot_acc_15_most_confident_half']:.0%} "
                     f"(all: {c['rot_acc_15_all']:.0%} / {rep['rot_acc_15_all']:.0%}) | "
                     f"{c['auroc']:.2f} / {rep['auroc']:.2f} |")
    lines += ["", "## Covariance candidates (rotation block)", "",
              "| candidate | inside its 95% region, unscaled (choose / report) | scale for 95% on choose | "
              "inside with that scale (report) | inside with the shipped scale (choose / report) |",
              "|---|---|---|---|---|"]
    for name, r in result["covariance"].items():
        lines.append(f"| {name} | {r['choose']['inside_95_unscaled']:.0%} / {r['report']['inside_95_unscaled']:.0%} | "
                     f"{r['scale_for_95_on_choose']:.2f} | {r['report']['inside_95_with_chosen_scale']:.0%} | "
                     f"{r['choose']['inside_95_with_shipped_scale']:.0%} / "
                     f"{r['report']['inside_95_with_shipped_scale']:.0%} |")
    s = result["shipped_confidence"]
    lines += ["", "## The shipped confidence on all pairs", "",
              f"Mean {s['mean']:.2f} against Rot@15 {s['rot_acc_15']:.0%}; Brier score {s['brier']:.3f} "
              f"(a constant at the base rate: {s['brier_of_base_rate']:.3f}).", "",
              "| confidence | pairs | mean confidence | Rot@15 |", "|---|---|---|---|"]
    for r in result["reliability"]:
        if r["pairs"]:
            lines.append(f"| {r['bin']} | {r['pairs']} | {r['mean_confidence']:.2f} | {r['rot_acc_15']:.0%} |")
    lines += ["", "## Hybrid hypotheses", "", "| method | Rot@15 | Rot@30 | median rot. error | note |",
              "|---|---|---|---|---|"]
    for name, r in result["pose"].items():
        note = (f"classical estimate succeeded on {r['succeeded']} pairs" if "succeeded" in r else
                f"the classical hypothesis won {r['classical_won']} times" if "classical_won" in r else "")
        lines.append(f"| {name} | {r['rot_acc_15']:.0%} | {r['rot_acc_30']:.0%} | {r['rot_median_deg']:.1f} | {note} |")
    path.write_text("\n".join(lines) + "\n")


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.cache:
        cache = dict(np.load(args.cache))
    else:
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        if classical.OPENCV_ERROR:
            raise RuntimeError(classical.OPENCV_ERROR)
        pipe = GSTPipeline.from_pretrained(args.model)
        t0 = time.time()
        cache = collect(pipe, pair_sets.pairs_of(args), args)
        log.info("sampled %d pairs in %.0f s", len(cache["truth"]), time.time() - t0)
        np.savez(out / "samples.npz", **cache)
    result = analyse(Study(cache, args.inlier_deg), args.seed)
    config = {"data": args.label or args.cache or ("real samples" if args.real else f"{args.data} ({args.split})"),
              "num_samples": int(cache["samples"].shape[1])}
    (out / "metrics.json").write_text(json.dumps({"config": config, **result}, indent=1, allow_nan=True) + "\n")
    write_report(result, config, out / "report.md")
    return result


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
