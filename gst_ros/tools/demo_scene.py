"""The demo's camera input, without ROS: a held-out synthetic test scene and a smooth camera path through it.

The scene is regenerated exactly as the dataset writer made it (same seed, same test split), so the model
has never seen it in training; the ground-truth poses are known for scoring.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from transforms3d.axangles import axangle2mat

from gst_model.data.cameras import fov_to_K
from gst_model.data.formats import Scene, View, scene_scale
from gst_model.data.make_synthetic import assign_splits
from gst_model.data.synthetic import random_scene, render, sample_cameras
from gst_model.geometry import rotation_angle_deg
from gst_model.pose_samples import rotation_log

# The default build's recipe: its synthetic-data settings regenerate a test-split scene exactly when the
# model's metadata does not record its own (preset models).
DEFAULT_BUILD_CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "default.yaml"


@dataclass
class DemoScene:
    frames: list[np.ndarray]  # uint8 HxWx3
    c2w: np.ndarray  # [N,4,4] ground truth, world frame
    K: np.ndarray  # [3,3] for the published frames
    scale: float  # metres per model translation unit
    index: int  # scene index in the synthetic dataset (a test-split scene)


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
