"""Render procedural scenes to disk in the RealEstate10K layout (see `formats.py`).

    python -m gst_model.data.make_synthetic --out data/synthetic --scenes 500 --views-per-scene 24 \
        --size 128 --seed 0 --split-fractions 0.8,0.1,0.1 --workers 2

writes `<out>/<split>/<seq_id>.txt` (exact intrinsics and poses) and `<out>/<split>/<seq_id>/<timestamp>.png`,
plus `<out>/manifest.json` (arguments and the scenes of each split). Scene i is generated from the
seed pair (seed, i) alone, so the output does not depend on the number of workers, and the
split of each scene is fixed by (seed, number of scenes, fractions).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gst_model.data.cameras import fov_to_K
from gst_model.data.formats import write_re10k_sequence
from gst_model.data.synthetic import (random_scene, render, sample_cameras, sample_walk_cameras,
                                      smooth_trajectory)

SPLITS = ("train", "val", "test")
FRAME_STEP_US = 33_333  # timestamps as in a 30 fps video, in microseconds like RealEstate10K


@dataclass
class SyntheticConfig:
    out: str
    scenes: int = 100
    views_per_scene: int = 24
    size: int = 128  # image height
    width: int | None = None  # defaults to `size` (square)
    seed: int = 0
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    fov_min: float = 45.0
    fov_max: float = 65.0
    azimuth_spread: float = 120.0  # degrees; pairs are filtered by rotation later, at load time
    # "random": look-at views orbiting the scene centre; "walk": a robot near one spot turning its
    # head (sample_walk_cameras); "trajectory": a smooth look-at arc
    cameras: str = "random"
    supersample: int = 2
    shadows: bool = True
    workers: int = 1


def assign_splits(n: int, fractions, seed: int) -> list[str]:
    """Split name of each scene index: a seeded permutation cut by the fractions."""
    f = np.asarray(fractions, dtype=np.float64)
    if len(f) != 3 or (f < 0).any() or f.sum() <= 0:
        raise ValueError(f"need three non-negative split fractions, got {fractions}")
    bounds = np.round(np.cumsum(f / f.sum()) * n).astype(int)
    order = np.random.default_rng([seed, 0x5EED]).permutation(n)
    split = [""] * n
    for rank, idx in enumerate(order):
        split[idx] = SPLITS[int(np.searchsorted(bounds, rank, side="right"))]
    return split


def sequence_id(seed: int, index: int) -> str:
    return f"syn{seed:04d}_{index:06d}"


def render_scene(cfg: SyntheticConfig, index: int, split: str) -> str:
    """Generate, render and write scene `index`; returns its sequence id."""
    rng = np.random.default_rng([cfg.seed, index])
    scene = random_scene(rng)
    h, w = cfg.size, cfg.width or cfg.size
    if cfg.cameras == "random":
        c2w, fov = sample_cameras(scene, rng, cfg.views_per_scene, fov_deg=(cfg.fov_min, cfg.fov_max),
                                  azimuth_spread_deg=cfg.azimuth_spread)
    elif cfg.cameras == "walk":
        c2w, fov = sample_walk_cameras(scene, rng, cfg.views_per_scene, fov_deg=(cfg.fov_min, cfg.fov_max),
                                       yaw_spread_deg=cfg.azimuth_spread)
    elif cfg.cameras == "trajectory":
        c2w = smooth_trajectory(scene, cfg.views_per_scene, arc_deg=cfg.azimuth_spread,
                                start_azimuth_deg=float(rng.uniform(0, 360)))
        fov = np.full(cfg.views_per_scene, 0.5 * (cfg.fov_min + cfg.fov_max))
    else:
        raise ValueError(f"cameras must be 'random', 'walk' or 'trajectory', got {cfg.cameras!r}")
    K = np.stack([fov_to_K(f, h, w) for f in fov])
    images = [render(scene, c2w[i], K[i], h, w, supersample=cfg.supersample, shadows=cfg.shadows)
              for i in range(len(c2w))]
    seq = sequence_id(cfg.seed, index)
    timestamps = [(i + 1) * FRAME_STEP_US for i in range(len(c2w))]
    write_re10k_sequence(cfg.out, split, seq, timestamps, c2w, K, (h, w), images,
                         url=f"synthetic://gst_model.data.synthetic?seed={cfg.seed}&scene={index}")
    return seq


def _render_job(job):
    cfg, index, split = job
    return split, render_scene(cfg, index, split)


def make_dataset(cfg: SyntheticConfig, progress: bool = True) -> dict[str, list[str]]:
    """Write the whole dataset; returns the sequence ids of each split (also in manifest.json)."""
    splits = assign_splits(cfg.scenes, cfg.split_fractions, cfg.seed)
    jobs = [(cfg, i, splits[i]) for i in range(cfg.scenes)]
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    bar = tqdm(total=cfg.scenes, desc="scenes", unit="scene", disable=not progress)
    if cfg.workers > 1:
        with mp.get_context("spawn").Pool(cfg.workers) as pool:
            for split, seq in pool.imap_unordered(_render_job, jobs):
                out[split].append(seq)
                bar.update()
    else:
        for job in jobs:
            split, seq = _render_job(job)
            out[split].append(seq)
            bar.update()
    bar.close()
    out = {s: sorted(v) for s, v in out.items()}
    manifest = {"config": asdict(cfg), "format": "RealEstate10K (see gst_model/data/formats.py)", "splits": out}
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def parse_args(argv=None) -> SyntheticConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--scenes", type=int, default=100)
    p.add_argument("--views-per-scene", type=int, default=24)
    p.add_argument("--size", type=int, default=128, help="image height (and width unless --width)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-fractions", default="0.8,0.1,0.1", help="train,val,test fractions of the scenes")
    p.add_argument("--fov", default="45,65", help="vertical field of view range in degrees, 'min,max'")
    p.add_argument("--azimuth-spread", type=float, default=120.0,
                   help="spread of camera azimuths around the scene, or of headings with --cameras walk (degrees)")
    p.add_argument("--cameras", choices=["random", "walk", "trajectory"], default="random")
    p.add_argument("--supersample", type=int, default=2)
    p.add_argument("--no-shadows", action="store_true")
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args(argv)
    fractions = tuple(float(x) for x in a.split_fractions.split(","))
    fov_min, fov_max = (float(x) for x in a.fov.split(","))
    return SyntheticConfig(a.out, a.scenes, a.views_per_scene, a.size, a.width, a.seed, fractions, fov_min, fov_max,
                           a.azimuth_spread, a.cameras, a.supersample, not a.no_shadows, a.workers)


def main(argv=None) -> None:
    cfg = parse_args(argv)
    splits = make_dataset(cfg)
    print(" ".join(f"{s}={len(v)}" for s, v in splits.items()), "scenes written to", cfg.out)


if __name__ == "__main__":
    main()
