"""Render procedural scenes to disk in the RealEstate10K layout (see `formats.py`).

    python -m gst_model.data.make_synthetic --out data/synthetic --scenes 500 --views-per-scene 24 \
        --size 128 --seed 0 --split-fractions 0.8,0.1,0.1 --workers 2

writes `<out>/<split>/<seq_id>.txt` (exact intrinsics and poses) and `<out>/<split>/<seq_id>/<timestamp>.png`,
plus `<out>/manifest.json` (arguments and the scenes of each split). Scene i is generated from the
seed pair (seed, i) alone, so the output does not depend on the number of workers, and the
split of each scene is fixed by (seed, number of scenes, fractions).

`--randomize` renders domain-randomised scenes instead (`synthetic.randomized_scene` and
`synthetic.camera_effects`: corridors, halls and clutter, photo textures from the training half of
`textures`' bank, random lights, colour temperature and exposure, blur, sensor noise, JPEG), with
fields of view of 40-100 degrees and orbiting or walking cameras unless --fov / --cameras say otherwise.
It needs the photos of `make real-data`.

    python -m gst_model.data.make_synthetic --bench --scenes 20 --size 64 --views-per-scene 12

prints the rendering speed (scenes/s, one process) of the plain and the randomised look as a table.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gst_model.data.cameras import fov_to_K
from gst_model.data.formats import write_re10k_sequence
from gst_model.data.synthetic import (camera_effects, random_scene, randomized_scene, render, sample_cameras,
                                      sample_mixed_cameras, sample_walk_cameras, smooth_trajectory)
from gst_model.data.textures import load_texture_bank

SPLITS = ("train", "val", "test")
FRAME_STEP_US = 33_333  # timestamps as in a 30 fps video, in microseconds like RealEstate10K
# camera settings left unset default by look: randomised data has the fields of view of real cameras and
# both walking and orbiting motion
PLAIN_CAMERAS = {"fov_min": 45.0, "fov_max": 65.0, "cameras": "random"}
RANDOMIZED_CAMERAS = {"fov_min": 40.0, "fov_max": 100.0, "cameras": "mixed"}
SCENE_TRIES = 10  # scenes drawn in turn until the cameras fit in one (a cluttered room may have no room)


@dataclass
class SyntheticConfig:
    out: str
    scenes: int = 100
    views_per_scene: int = 24
    size: int = 128  # image height
    width: int | None = None  # defaults to `size` (square)
    seed: int = 0
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    fov_min: float | None = None  # degrees; None: 45, or 40 with `randomize`
    fov_max: float | None = None  # None: 65, or 100 with `randomize`
    azimuth_spread: float = 120.0  # degrees; pairs are filtered by rotation later, at load time
    # "random": look-at views orbiting the scene centre; "walk": a robot near one spot turning its
    # head (sample_walk_cameras); "mixed": either, drawn per scene; "trajectory": a smooth look-at arc.
    # None: "random", or "mixed" with `randomize`
    cameras: str | None = None
    supersample: int = 2
    shadows: bool = True
    workers: int = 1
    # domain randomisation (randomized_scene + camera_effects, photo textures); needs `make real-data`
    randomize: bool = False

    def __post_init__(self):
        for name, value in (RANDOMIZED_CAMERAS if self.randomize else PLAIN_CAMERAS).items():
            if getattr(self, name) is None:
                setattr(self, name, value)


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


def _cameras(cfg: SyntheticConfig, scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    fov_range = (cfg.fov_min, cfg.fov_max)
    if cfg.cameras == "random":
        return sample_cameras(scene, rng, cfg.views_per_scene, fov_deg=fov_range, azimuth_spread_deg=cfg.azimuth_spread)
    if cfg.cameras == "walk":
        return sample_walk_cameras(scene, rng, cfg.views_per_scene, fov_deg=fov_range,
                                   yaw_spread_deg=cfg.azimuth_spread)
    if cfg.cameras == "mixed":
        return sample_mixed_cameras(scene, rng, cfg.views_per_scene, fov_deg=fov_range, spread_deg=cfg.azimuth_spread)
    if cfg.cameras == "trajectory":
        c2w = smooth_trajectory(scene, cfg.views_per_scene, arc_deg=cfg.azimuth_spread,
                                start_azimuth_deg=float(rng.uniform(0, 360)))
        return c2w, np.full(cfg.views_per_scene, 0.5 * (cfg.fov_min + cfg.fov_max))
    raise ValueError(f"cameras must be 'random', 'walk', 'mixed' or 'trajectory', got {cfg.cameras!r}")


def _scene_and_cameras(cfg: SyntheticConfig, rng: np.random.Generator):
    bank = load_texture_bank("train") if cfg.randomize else None  # never the holdout photos
    error = None
    for _ in range(SCENE_TRIES):
        scene = randomized_scene(rng, bank) if cfg.randomize else random_scene(rng)
        try:
            return scene, *_cameras(cfg, scene, rng)
        except RuntimeError as e:
            error = e
    raise error


def render_scene(cfg: SyntheticConfig, index: int, split: str) -> str:
    """Generate, render and write scene `index`; returns its sequence id."""
    rng = np.random.default_rng([cfg.seed, index])
    scene, c2w, fov = _scene_and_cameras(cfg, rng)
    h, w = cfg.size, cfg.width or cfg.size
    K = np.stack([fov_to_K(f, h, w) for f in fov])
    images = [render(scene, c2w[i], K[i], h, w, supersample=cfg.supersample, shadows=cfg.shadows)
              for i in range(len(c2w))]
    if cfg.randomize:
        images = [camera_effects(image, rng) for image in images]
    seq = sequence_id(cfg.seed, index)
    timestamps = [(i + 1) * FRAME_STEP_US for i in range(len(c2w))]
    url = f"synthetic://gst_model.data.synthetic?seed={cfg.seed}&scene={index}"
    if cfg.randomize:
        url += "&randomized=1"
    write_re10k_sequence(cfg.out, split, seq, timestamps, c2w, K, (h, w), images, url=url)
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


def bench(cfg: SyntheticConfig) -> str:
    """Render `cfg.scenes` scenes of `cfg.size` px and `cfg.views_per_scene` views in the plain look
    (default cameras) and the randomised one (RANDOMIZED_CAMERAS), into a temporary folder in one
    process, and return a markdown table of the speed. Each look's first scene is rendered untimed, so
    reading the texture photos is not counted."""
    rows = ["| look | scenes | size | views | s/scene | scenes/s |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="gst_bench_") as tmp:
        for randomize in (False, True):
            run = SyntheticConfig(tmp, views_per_scene=cfg.views_per_scene, size=cfg.size, width=cfg.width,
                                  seed=cfg.seed, supersample=cfg.supersample, shadows=cfg.shadows, randomize=randomize)
            render_scene(run, 0, "train")
            start = time.perf_counter()
            for index in range(1, cfg.scenes + 1):
                render_scene(run, index, "train")
            seconds = (time.perf_counter() - start) / cfg.scenes
            rows.append(f"| {'randomized' if randomize else 'plain'} | {cfg.scenes} | {cfg.size} | "
                        f"{cfg.views_per_scene} | {seconds:.3f} | {1.0 / seconds:.1f} |")
    return "\n".join(rows)


def parse_args(argv=None) -> tuple[SyntheticConfig, bool]:
    """The config and whether to benchmark instead of writing a dataset."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="output directory (not needed with --bench)")
    p.add_argument("--scenes", type=int, default=100)
    p.add_argument("--views-per-scene", type=int, default=24)
    p.add_argument("--size", type=int, default=128, help="image height (and width unless --width)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-fractions", default="0.8,0.1,0.1", help="train,val,test fractions of the scenes")
    p.add_argument("--fov", default=None,
                   help="vertical field of view range in degrees, 'min,max' (default 45,65; 40,100 with --randomize)")
    p.add_argument("--azimuth-spread", type=float, default=120.0,
                   help="spread of camera azimuths around the scene, or of headings with --cameras walk (degrees)")
    p.add_argument("--cameras", choices=["random", "walk", "mixed", "trajectory"], default=None,
                   help="default random; mixed with --randomize")
    p.add_argument("--supersample", type=int, default=2)
    p.add_argument("--no-shadows", action="store_true")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--randomize", action="store_true", help="domain-randomised scenes and camera effects")
    p.add_argument("--bench", action="store_true", help="print scenes/s of the plain and the randomised look")
    a = p.parse_args(argv)
    if a.out is None and not a.bench:
        p.error("--out is required")
    fractions = tuple(float(x) for x in a.split_fractions.split(","))
    fov_min, fov_max = (float(x) for x in a.fov.split(",")) if a.fov else (None, None)
    return SyntheticConfig(a.out, a.scenes, a.views_per_scene, a.size, a.width, a.seed, fractions, fov_min, fov_max,
                           a.azimuth_spread, a.cameras, a.supersample, not a.no_shadows, a.workers,
                           a.randomize), a.bench


def main(argv=None) -> None:
    cfg, benchmark = parse_args(argv)
    if benchmark:
        print(bench(cfg))
        return
    splits = make_dataset(cfg)
    print(" ".join(f"{s}={len(v)}" for s, v in splits.items()), "scenes written to", cfg.out)


if __name__ == "__main__":
    main()
