"""The evaluation pairs the studies share (training.uncertainty, selection_study, generalization_study), so
that every study scores the same pairs the same way.

Each set yields (image a, image b, K_a, K_b, true relative c2w with translations in scene scales):
  dataset_pairs  items 0..pairs-1 of a RealEstate10K-layout root (the synthetic test split, a holdout
                 renderer's scenes) as training.evaluate draws them; with `intrinsics` the images come at
                 `image_size` with their K (the pipeline resamples them to the model's camera), without it
                 as the model's own 64 px centre crops and K None;
  real_pairs     the real pairs of training.evaluate_real (same selection, sizes and seed).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from gst_model.data.cameras import relative_pose
from gst_model.data.formats import read_re10k_split, scene_scale
from gst_model.data.pairs import PairDataset


def add_arguments(p: argparse.ArgumentParser, pairs: int) -> None:
    """The command-line options of a study over these sets (`pairs`: its default number of dataset pairs)."""
    p.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model)")
    p.add_argument("--data", default=None, help="RealEstate10K-layout root (e.g. the synthetic data)")
    p.add_argument("--split", default="test")
    p.add_argument("--real", action="store_true", help="the real pairs of training.evaluate_real instead")
    p.add_argument("--pairs", type=int, default=pairs, help="pairs of --data (items 0..pairs-1, as evaluate)")
    p.add_argument("--max-rot", type=float, default=60.0, help="largest true rotation of a pair (degrees)")
    p.add_argument("--min-baseline", type=float, default=0.2, help="real pairs: smallest camera distance "
                   "(scene scales)")
    p.add_argument("--max-pairs-per-scene", type=int, default=30, help="real pairs")
    p.add_argument("--max-side", type=int, default=1024, help="real pairs: longer image side (shrunk, K scaled)")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="pair choice and sampling")
    p.add_argument("--cache", default=None, help="samples.npz of an earlier run: skip the model")
    p.add_argument("--label", default=None, help="what the pairs are, for the report")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")


def check_source(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    if args.cache is None and not args.real and args.data is None:
        p.error("give --data, --real or --cache")
    return args


def pairs_of(args):
    """The set the arguments name: the real pairs with --real, else those of --data."""
    return real_pairs(args) if args.real else dataset_pairs(args)


def dataset_pairs(args):
    scenes = read_re10k_split(args.data, args.split)
    if not scenes:
        raise FileNotFoundError(f"no sequences under {Path(args.data) / args.split}")
    intrinsics = getattr(args, "intrinsics", False)
    size = args.image_size if intrinsics else 64
    ds = PairDataset(scenes, size=size, max_rot_deg=args.max_rot, pairs_per_scene=-(-args.pairs // len(scenes)),
                     scale_mode="scene", seed=args.seed)
    for i in range(args.pairs):
        p = ds.sample(i)
        if intrinsics:
            yield p.obs_image, p.target_image, p.K_obs, p.K_target, p.rel_c2w
        else:
            yield p.obs_image, p.target_image, None, None, p.rel_c2w


def real_pairs(args):
    from gst_model.data.real_samples import evaluation_scenes
    from training.evaluate_real import limit_size, select_pairs

    rng = np.random.default_rng(args.seed)
    for scene in evaluation_scenes():
        pairs = select_pairs(scene, args.max_rot, args.min_baseline, args.max_pairs_per_scene, rng)
        views = {i: limit_size(*scene.views[i].load(), args.max_side) for i in sorted({i for p in pairs for i in p})}
        for a, b in pairs:
            rel = relative_pose(scene.views[a].c2w, scene.views[b].c2w)
            rel[:3, 3] /= scene_scale(scene)
            yield views[a][0], views[b][0], views[a][1], views[b][1], rel
