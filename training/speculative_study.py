"""Where speculative decoding's transformer passes go, on held-out synthetic test pairs.

    python -m training.speculative_study --out docs/speculative [--pairs 10] [--accuracy-pairs 100]

Writes report.md + metrics.json with, for the model (default: the shipped one):
  passes      transformer passes per pose (plain decoding: T) with geometric drafts, greedy N=1 (and whether
              the tokens equal plain greedy's) and sampled N=16, and the share of drafted tokens accepted by
              grid row;
  drafts      how well a camera fitted to the first k known grid rows predicts the next 8 tokens of a sample:
              from the decoded full grid (the known rows' rays undisturbed) and from the partial grid with the
              unknown rows filled from the identity draft (what the drafter can do while decoding);
  ceiling     passes per sampled pose when every draft is the model's own most probable continuation of the
              row (its greedy decoding from the accepted prefix, by a second copy of the model): each drafted
              token is then accepted with the highest probability a point-mass draft can have after the drafts
              before it, an approximate ceiling for drafters of this kind, geometric or not;
  tracked     greedy poses of a target camera turning 2 degrees a frame, drafted by the previous frame's
              greedy camera tokens, against plain greedy decoding;
  refit cost  one decode + fit + encode of 16 ray maps, against one plain decode step;
  accuracy    pose accuracy of estimate_pose (16 samples, likelihood selection) with and without speculation, on
              the shipped evaluation's 100 test pairs (training.evaluate's selection);
  views       view prediction with the drafts that exist for it: the observation's own image tokens (a query
              pose near the observation's) and the previous prediction (a query moving 2 degrees a step);
              passes per view, greedy and sampled, against plain decoding's T.
The test split is rendered into --data from the default build's synthetic settings when it is missing.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from transforms3d.axangles import axangle2mat

from gst_model import geometry, metrics
from gst_model.data.make_synthetic import SyntheticConfig, assign_splits, render_scene
from gst_model.data.pairs import PairDataset
from gst_model.data.registry import read_split
from gst_model.data.synthetic import random_scene, render, sample_cameras
from gst_model.drafting import GeometricDrafter, TokenDrafter
from gst_model.partial_rays import known_ray_rows
from gst_model.generate import DRAFT_LEN, DecodeStats, SamplingParams, generate
from gst_model.image import to_model_input
from gst_model.pipeline import GSTPipeline
from training import evaluate
from training.common import torch_threads

DEFAULT_BUILD = Path(__file__).parent / "configs" / "default.yaml"


def ensure_test_split(root: Path) -> None:
    """Render the default build's test-split scenes into root (RealEstate10K layout) unless they are there."""
    if (root / "test").is_dir():
        return
    syn = yaml.safe_load(DEFAULT_BUILD.read_text())["synthetic"]
    cfg = SyntheticConfig(out=str(root), scenes=syn["scenes"], views_per_scene=syn["views_per_scene"], size=syn["size"],
                          seed=syn["seed"], split_fractions=tuple(syn["split_fractions"]), fov_min=syn["fov_min"],
                          fov_max=syn["fov_max"], azimuth_spread=syn["azimuth_spread"])
    for index, split in enumerate(assign_splits(cfg.scenes, cfg.split_fractions, cfg.seed)):
        if split == "test":
            render_scene(cfg, index, split)


class Study:
    def __init__(self, pipe: GSTPipeline, pairs: PairDataset):
        self.pipe, self.pairs = pipe, pairs
        self.rt, self.vocab, self.view = pipe.runtime, pipe.vocab, pipe.view
        self.T = self.vocab.tokens_per_view
        self.grid = pipe.bundle.transformer.config.grid_size
        self.K_ray = torch.as_tensor(pipe._ray_pixels(pipe.default_intrinsics()))
        self.ranges = [(self.T, self.vocab.camera_range())]

    def prompt(self, i: int, n: int) -> torch.Tensor:
        p = self.pairs.sample(i)
        codes = self.rt.encode_images(to_model_input([p.obs_image, p.target_image], self.view.image_size))
        return torch.cat([codes[:1], torch.tensor([[self.vocab.est_token]]), codes[1:]], dim=1).expand(n, -1)

    def drafter(self) -> GeometricDrafter:
        return GeometricDrafter(self.rt, self.vocab.camera_offset, self.grid, self.view.ray_size, self.K_ray,
                                torch.eye(4, dtype=torch.float64),
                                partial_decoder=self.pipe.bundle.camera_partial_decoder)

    def encode(self, c2w: torch.Tensor) -> torch.Tensor:
        rays = geometry.plucker_rays_from_intrinsics(c2w, self.K_ray, self.view.ray_size, self.view.ray_size)
        return self.rt.encode_rays(rays.float()) + self.vocab.camera_offset

    def passes(self, n_pairs: int, n: int, sampling: SamplingParams) -> dict:
        runs, identical = [], 0
        for i in range(n_pairs):
            prompt = self.prompt(i, n)
            runs.append(DecodeStats())
            spec = generate(self.rt.decoder(), prompt, self.T, sampling, segment_ranges=self.ranges, draft=self.drafter(),
                            stats=runs[-1], generator=torch.Generator().manual_seed(i))
            if sampling.greedy:
                plain = generate(self.rt.decoder(), prompt, self.T, sampling, segment_ranges=self.ranges)
                identical += int(torch.equal(spec, plain))
        return {**self.pass_summary(runs, n), "identical_to_plain": identical if sampling.greedy else None}

    def pass_summary(self, runs: list[DecodeStats], n: int) -> dict:
        """Mean passes per pose and the share of drafted tokens accepted by grid row, over runs of N = n rows."""
        accepted, drafted = np.sum([r.accepted for r in runs], axis=0), np.sum([r.drafted for r in runs], axis=0)
        g = self.grid
        by_row = [float(accepted[r * g:(r + 1) * g].sum() / max(drafted[r * g:(r + 1) * g].sum(), 1)) for r in range(g)]
        return {"pairs": len(runs), "samples": n, "mean_passes": float(np.mean([r.passes for r in runs])),
                "plain_passes": self.T, "acceptance_by_row": by_row}

    def ceiling(self, n_pairs: int, n: int) -> dict:
        """Sampled poses (default sampling) drafted by the model's own greedy continuation of each row."""
        oracle = copy.deepcopy(self.pipe.bundle.transformer)  # its own KV caches: the decode in flight keeps its own
        greedy, camera = SamplingParams(greedy=True), self.vocab.camera_range()
        runs = []
        for i in range(n_pairs):
            prompt = self.prompt(i, n)

            def most_probable(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
                out = tokens.clone()
                for row, known in enumerate(lengths.tolist()):
                    k = min(DRAFT_LEN - 1, self.T - known)
                    if k > 0:
                        context = torch.cat([prompt[row:row + 1], tokens[row:row + 1, :known]], dim=1)
                        out[row, known:known + k] = generate(oracle, context, k, greedy,
                                                             segment_ranges=[(k, camera)])[0]
                return out

            runs.append(DecodeStats())
            generate(self.rt.decoder(), prompt, self.T, SamplingParams(), segment_ranges=self.ranges,
                     draft=most_probable, stats=runs[-1], generator=torch.Generator().manual_seed(i))
        return self.pass_summary(runs, n)

    def draft_agreement(self, n_pairs: int, rows=(1, 2, 4)) -> dict:
        """Share of the 8 tokens after k known rows that a camera fitted to those rows predicts."""
        out: dict[str, list[float]] = {}
        R, g, T = self.view.ray_size, self.grid, self.T
        identity = self.encode(torch.eye(4, dtype=torch.float64)[None])
        for i in range(n_pairs):
            prompt = self.prompt(i, 4)
            for mode, sampling in (("sampled", SamplingParams()), ("greedy", SamplingParams(greedy=True))):
                tokens = generate(self.rt.decoder(), prompt, T, sampling, segment_ranges=self.ranges,
                                  generator=torch.Generator().manual_seed(i))
                full = self.rt.decode_rays(tokens - self.vocab.camera_offset).double()
                for k in rows:
                    known = k * g
                    known_rows = torch.full((len(tokens),), k)
                    weights = known_ray_rows(known_rows, g, R)[:, :, None].double().expand(-1, -1, R)
                    partial_grid = torch.where(torch.arange(T) < known, tokens, identity)
                    partial = self.rt.decode_rays(partial_grid - self.vocab.camera_offset).double()
                    sources = [("full", full), ("partial", partial)]
                    decoder = self.pipe.bundle.camera_partial_decoder
                    if decoder is not None:
                        with torch.no_grad():
                            sources.append(("partial decoder", decoder(tokens - self.vocab.camera_offset,
                                                                       known_rows).double()))
                    for source, rays in sources:
                        fit = geometry.cameras_from_plucker(rays, K=self.K_ray, weights=weights)
                        draft = self.encode(fit.c2w)
                        out.setdefault(f"{mode} {k} rows {source}", []).append(agreement(draft, tokens, known))
                        if source == "partial decoder":  # fill the unknown rows from that draft, decode, refit
                            grid = torch.where(torch.arange(T) < known, tokens, draft)
                            rays = self.rt.decode_rays(grid - self.vocab.camera_offset).double()
                            fit = geometry.cameras_from_plucker(rays, K=self.K_ray, weights=weights)
                            out.setdefault(f"{mode} {k} rows partial decoder, refilled once", []).append(
                                agreement(self.encode(fit.c2w), tokens, known))
        return {key: float(np.mean(v)) for key, v in out.items()}

    @torch.inference_mode()
    def refit_cost(self, repeats: int = 5) -> dict:
        tokens = generate(self.rt.decoder(), self.prompt(0, 16), self.T, SamplingParams(), segment_ranges=self.ranges,
                          generator=torch.Generator().manual_seed(0))
        drafter, lengths = self.drafter(), torch.full((16,), self.grid)
        times = []
        for _ in range(repeats):
            drafter.draft = drafter.fitted_rows = None  # a fresh first refit each time
            t = time.perf_counter()
            drafter(tokens, lengths)
            times.append(time.perf_counter() - t)
        decoder = self.rt.decoder()
        decoder.prefill(self.prompt(0, 1)[:1], 0, 16, self.T)
        step = []
        pos = torch.full((16, 1), self.prompt(0, 1).shape[1])
        for _ in range(repeats):
            t = time.perf_counter()
            decoder.decode(tokens[:, :1], pos)
            step.append(time.perf_counter() - t)
        decoder.close()
        return {"refit_16_maps_s": min(times), "decode_step_16_rows_s": min(step)}

    def view_prompt(self, obs_codes: torch.Tensor, c2w: torch.Tensor, n: int) -> torch.Tensor:
        cam = self.encode(c2w[None])
        return torch.cat([obs_codes, torch.tensor([[self.vocab.gen_token]]), cam], dim=1).expand(n, -1)

    def views(self, n_pairs: int, angles=(0.0, 5.0, 10.0, 20.0), step_deg: float = 2.0) -> dict:
        """Passes and seconds per predicted view with a fixed draft: 'observation' drafts the observation's image
        tokens for a query turned `angle` degrees (yaw) from it; 'previous prediction' drafts the prediction one
        step of step_deg earlier along that turn (what a planner sweeping a query pose has)."""
        passes: dict[str, list[float]] = {}
        seconds: dict[str, list[float]] = {}
        identical, runs = 0, 0
        image_range = [(self.T, self.vocab.image_range())]

        def run(key, obs, query, sampling, seed, draft_tokens=None):
            stats = DecodeStats()
            draft = None if draft_tokens is None else TokenDrafter(draft_tokens)
            t = time.perf_counter()
            tokens = generate(self.rt.decoder(), self.view_prompt(obs, query, 1), self.T, sampling,
                              segment_ranges=image_range, draft=draft, stats=stats,
                              generator=torch.Generator().manual_seed(seed))
            seconds.setdefault(key, []).append(time.perf_counter() - t)
            passes.setdefault(key, []).append(stats.passes)
            return tokens

        for i in range(n_pairs):
            obs = self.rt.encode_images(to_model_input([self.pairs.sample(i).obs_image], self.view.image_size))
            for mode, sampling in (("greedy", SamplingParams(greedy=True)), ("sampled", SamplingParams())):
                for angle in angles:
                    plain = run(f"{mode}, plain, {angle:g} deg", obs, yaw(angle), sampling, i)
                    spec = run(f"{mode}, observation, {angle:g} deg", obs, yaw(angle), sampling, i, obs)
                    previous = run(f"{mode}, (previous query)", obs, yaw(angle - step_deg), sampling, i + 1000)
                    run(f"{mode}, previous prediction, {angle:g} deg", obs, yaw(angle), sampling, i, previous)
                    if sampling.greedy:
                        identical += int(torch.equal(spec, plain))
                        runs += 1
        rows = {k: {"passes": float(np.mean(passes[k])), "seconds": float(np.mean(seconds[k]))}
                for k in passes if "(previous query)" not in k}
        return {"pairs": n_pairs, "plain_passes": self.T, "step_deg": step_deg, "identical_to_plain": identical,
                "greedy_runs": runs, "by_draft": rows}

    def tracked_poses(self, n_scenes: int, frames: int = 6, step_deg: float = 2.0) -> dict:
        """Greedy poses of a target camera that turns step_deg (yaw) per frame against a fixed observation (a robot
        localizing each frame against its keyframe): plain decoding, and drafting the previous frame's greedy
        camera tokens (drafting.TokenDrafter). Newly rendered scenes of the training renderer (unseen seeds)."""
        size = self.view.image_size
        greedy = SamplingParams(greedy=True)
        plain_passes, spec_passes, plain_s, spec_s = [], [], [], []
        identical, runs = 0, 0
        for s in range(n_scenes):
            observation, targets = turning_target([11, s], size, self.view.fovy_deg,
                                                  [f * step_deg for f in range(frames)])
            previous = None
            for target in targets:
                codes = self.rt.encode_images(to_model_input([observation, target], size))
                prompt = torch.cat([codes[:1], torch.tensor([[self.vocab.est_token]]), codes[1:]], dim=1)
                t = time.perf_counter()
                plain = generate(self.rt.decoder(), prompt, self.T, greedy, segment_ranges=self.ranges)
                seconds = time.perf_counter() - t
                if previous is not None:
                    stats = DecodeStats()
                    t = time.perf_counter()
                    spec = generate(self.rt.decoder(), prompt, self.T, greedy, segment_ranges=self.ranges,
                                    draft=TokenDrafter(previous), stats=stats)
                    spec_s.append(time.perf_counter() - t)
                    plain_s.append(seconds)
                    spec_passes.append(stats.passes)
                    plain_passes.append(self.T)
                    identical += int(torch.equal(spec, plain))
                    runs += 1
                previous = plain[0]
        return {"scenes": n_scenes, "frames": frames, "step_deg": step_deg, "runs": runs,
                "identical_to_plain": identical, "mean_passes": float(np.mean(spec_passes)),
                "plain_passes": self.T, "seconds": float(np.mean(spec_s)), "plain_seconds": float(np.mean(plain_s))}

    def accuracy(self, data: str, n_pairs: int) -> dict:
        """On the shipped evaluation's test pairs (training.evaluate's selection and defaults)."""
        chosen = evaluate.PAIRS
        pairs = evaluate.evaluation_pairs(data, "test", n_pairs, chosen.image_size, chosen.min_rot, chosen.max_rot,
                                          self.pipe.bundle.metadata.get("scale_mode", "scene"), chosen.seed)
        spec = GSTPipeline(self.pipe.bundle, speculative=True)
        poses = {"plain": [], "speculative": []}
        seconds = {"plain": 0.0, "speculative": 0.0}
        truth = []
        for i in range(n_pairs):
            p = pairs.sample(i)
            truth.append(p.rel_c2w)
            for name, pipe in (("plain", self.pipe), ("speculative", spec)):
                t = time.perf_counter()
                poses[name].append(pipe.estimate_pose(p.obs_image, p.target_image, num_samples=16, seed=i).c2w)
                seconds[name] += time.perf_counter() - t
        out = {}
        for name, estimates in poses.items():
            e = metrics.rotation_errors_deg(np.stack(estimates), np.stack(truth))
            out[name] = {"rot_acc_15": float(np.mean(e <= 15)), "rot_acc_30": float(np.mean(e <= 30)),
                         "rot_median_deg": float(np.median(e)), "seconds_per_pose": seconds[name] / n_pairs}
        return {"pairs": n_pairs, **out}


def agreement(draft: torch.Tensor, tokens: torch.Tensor, known: int) -> float:
    """Share of the 8 tokens after the first `known` that the draft predicts."""
    return (draft == tokens)[:, known:known + 8].float().mean().item()


def yaw(angle_deg: float) -> torch.Tensor:
    """A camera turned angle_deg about its own y axis, at the same centre."""
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = torch.from_numpy(axangle2mat([0.0, 1.0, 0.0], np.radians(angle_deg)))
    return c2w


def turning_target(seed, size: int, fov_deg: float, turns_deg) -> tuple[np.ndarray, list[np.ndarray]]:
    """A newly rendered synthetic room (training renderer): an observation, and a target camera turned (yaw) by
    each of turns_deg, square size x size images at fov_deg."""
    rng = np.random.default_rng(seed)
    scene = random_scene(rng)
    c2w, _ = sample_cameras(scene, rng, 2, fov_deg=(fov_deg, fov_deg), azimuth_spread_deg=40.0)
    K = geometry.intrinsics_from_fov(fov_deg, size, size).numpy()
    return (render(scene, c2w[0], K, size, size),
            [render(scene, c2w[1] @ yaw(t).numpy(), K, size, size) for t in turns_deg])


def write_report(result: dict, path: Path) -> None:
    cfg = result["config"]
    lines = [f"# Speculative decoding of camera tokens: `{cfg['model']}` on `{cfg['data']}` (test)", "",
             f"Written by `python -m training.speculative_study` ({cfg['threads']} threads, load average "
             f"{cfg['load_avg']:.1f} at start). Blocks of {DRAFT_LEN} tokens; geometric drafts (identity, refitted "
             "to every newly completed grid row, as GSTPipeline(speculative=True) drafts).", "", "## Transformer passes per pose", "",
             "| decoding | pairs | mean passes (plain) | tokens equal plain greedy | acceptance by grid row |",
             "|---|---|---|---|---|"]
    for name, r in result["passes"].items():
        same = "-" if r["identical_to_plain"] is None else f"{r['identical_to_plain']}/{r['pairs']}"
        lines.append(f"| {name} | {r['pairs']} | {r['mean_passes']:.1f} ({r['plain_passes']}) | {same} | "
                     + " ".join(f"{a:.2f}" for a in r["acceptance_by_row"]) + " |")
    if "ceiling" in result:
        r = result["ceiling"]
        lines += ["", "## Ceiling for sampled poses: the most probable continuation as the draft", "",
                  f"Sampled, N={r['samples']}, default sampling, {r['pairs']} pairs; every draft is the model's own greedy "
                  "continuation of the row's accepted tokens (a second copy of the model, so this measures passes, not "
                  "time). Each drafted token is accepted with its probability under the sampling distribution, the highest a "
                  "point-mass draft can have after the drafts before it: an approximate ceiling for drafters of this "
                  "kind (one could do better only by drafting less probable tokens that make the later ones far more "
                  "certain).", "",
                  "| draft | mean passes (plain) | acceptance by grid row |", "|---|---|---|",
                  f"| most probable continuation | {r['mean_passes']:.1f} ({r['plain_passes']}) | "
                  + " ".join(f"{a:.2f}" for a in r["acceptance_by_row"]) + " |"]
    if "tracked" in result:
        r = result["tracked"]
        lines += ["", "## Greedy poses drafted by the previous frame's tokens", "",
                  f"A target camera turns {r['step_deg']:g} degrees (yaw) per frame against a fixed observation, "
                  f"{r['frames']} frames in each of {r['scenes']} newly rendered scenes of the training renderer; from "
                  "the second frame on, the previous frame's greedy camera tokens are the draft (drafting.TokenDrafter). "
                  f"Tokens equal plain greedy's in {r['identical_to_plain']}/{r['runs']} runs.", "",
                  "| decoding | passes per pose | s per pose (N=1, camera tokens only) |", "|---|---|---|",
                  f"| plain greedy | {r['plain_passes']} | {r['plain_seconds']:.3f} |",
                  f"| previous frame's tokens as the draft | {r['mean_passes']:.1f} | {r['seconds']:.3f} |"]
    lines += ["", "## Drafts from k known grid rows: share of the next 8 tokens predicted", "",
              "'full': the camera fitted to the known rows of the fully decoded sample (undisturbed rays); "
              "'partial': fitted after decoding the partial grid with the unknown rows filled from the identity "
              "draft, the drafter's method without a partial decoder; 'partial decoder': the rays of the known rows "
              "from the model's partial ray decoder (gst_model.partial_rays), the drafter's method with one; 'refilled once': "
              "that camera's tokens fill the unknown rows, the grid is decoded whole and the camera refitted. 'full' is "
              "no ceiling a drafter can reach: the decoder mixes the grid, so the known rows' rays of a fully decoded "
              "sample carry information from the rows not yet generated.", "",
              f"Partial ray decoder: {'yes' if cfg.get('partial_decoder') else 'none in this model'}.", "", "| sample, rows known, decode | agreement |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in result["drafts"].items()]
    c = result["cost"]
    lines += ["", "## Cost", "", f"One refit of 16 rows (decode + fit + encode): {c['refit_16_maps_s'] * 1e3:.0f} ms; "
              f"one plain decode step of 16 rows: {c['decode_step_16_rows_s'] * 1e3:.1f} ms.", "",
              "## Pose accuracy with and without speculation (16 samples, likelihood selection; training.evaluate's test pairs)", "",
              "| decoding | Rot@15 | Rot@30 | median rot err | s per pose | pairs |", "|---|---|---|---|---|---|"]
    acc = result["accuracy"]
    for name in ("plain", "speculative"):
        r = acc[name]
        lines.append(f"| {name} | {r['rot_acc_15']:.0%} | {r['rot_acc_30']:.0%} | {r['rot_median_deg']:.1f}° | "
                     f"{r['seconds_per_pose']:.2f} | {acc['pairs']} |")
    if "views" in result:
        v = result["views"]
        lines += ["", "## View prediction with drafts", "",
                  f"A fixed draft per view, verified in blocks of {DRAFT_LEN}: 'observation' drafts the observation's "
                  "own image tokens for a query turned the given angle (yaw) from it; 'previous prediction' drafts "
                  f"the prediction at a query {v['step_deg']:g} degrees before it on the same turn (another seed). "
                  f"Plain decoding: {v['plain_passes']} passes per view. Greedy speculative tokens equal plain "
                  f"greedy's in {v['identical_to_plain']}/{v['greedy_runs']} runs.", "",
                  "| decoding, draft, query turn | passes per view | s per view |", "|---|---|---|"]
        lines += [f"| {k} | {r['passes']:.1f} | {r['seconds']:.3f} |" for k, r in v["by_draft"].items()]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model)")
    p.add_argument("--data", default="data/synthetic", help="RealEstate10K-layout root holding the test split")
    p.add_argument("--out", required=True)
    p.add_argument("--pairs", type=int, default=10, help="pairs for the pass counts and draft agreement")
    p.add_argument("--accuracy-pairs", type=int, default=evaluate.PAIRS.pairs,
                   help="test pairs for the accuracy with and without speculation (training.evaluate's selection)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    with torch_threads(args.threads):
        data = Path(args.data)
        ensure_test_split(data)
        pipe = GSTPipeline.from_pretrained(args.model, flush_denormal=True)
        study = Study(pipe, PairDataset(read_split(str(data), "test"), size=pipe.view.image_size, pairs_per_scene=48))
        result = {"config": {"model": args.model or "shipped default", "data": str(data),
                             "threads": torch.get_num_threads(), "load_avg": os.getloadavg()[0],
                             "partial_decoder": pipe.bundle.camera_partial_decoder is not None},
                  "passes": {"greedy, N=1": study.passes(args.pairs, 1, SamplingParams(greedy=True)),
                             "sampled, N=16": study.passes(args.pairs, 16, SamplingParams())},
                  "ceiling": study.ceiling(args.pairs, 16),
                  "tracked": study.tracked_poses(args.pairs),
                  "drafts": study.draft_agreement(min(args.pairs, 6)),
                  "cost": study.refit_cost(),
                  "accuracy": study.accuracy(str(data), args.accuracy_pairs),
                  "views": study.views(min(args.pairs, 6))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    write_report(result, out / "report.md")
    print((out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
