"""(observation, target) pairs from posed scenes of any source, preprocessed like official GST.

Preprocessing: centred square crop of the short side (offset = integer half of the difference),
then a Pillow bicubic resize to `size`; K follows exactly (crop shifts the principal point, resize
scales the first two rows, on the continuous pixel plane).

Scale normalisation (`scale_mode`), applied to the relative translation:
  "scene" (default)  divide by the scene's camera spread (`formats.scene_scale`): one length unit
                     per scene, so pairs of a scene stay mutually consistent;
  "pair"             make the observation-to-target distance 1 (left alone when it is ~0);
  "none"             the dataset's own units.
"""
from __future__ import annotations

import numpy as np
import torch

from gst_model import image as image_ops
from gst_model.geometry import intrinsics_from_fov, rotation_angle_deg

from gst_model.data.cameras import relative_pose
from gst_model.data.formats import PairSample, Scene, make_pair, scene_scale

SCALE_MODES = ("scene", "pair", "none")


def center_crop_resize(image: np.ndarray, K: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Square centre crop of the short side, bicubic resize to size x size, and the matching K."""
    return (image_ops.center_crop_resize(image, size),
            image_ops.crop_resize_intrinsics(K, image.shape[0], image.shape[1], size))


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float32 3xHxW in [-1, 1], the official normalisation."""
    # arrays viewed from PIL images are read-only, which torch warns about: copy only those
    return torch.from_numpy(np.require(image, requirements="W")).permute(2, 0, 1).float().div(127.5).sub(1.0)


class PairDataset(torch.utils.data.Dataset):
    """Random pairs within scenes whose relative rotation lies in [min_rot_deg, max_rot_deg].

    Item `i` is deterministic given (seed, epoch, i): scene `i % len(scenes)`, a random observation
    view and a random target among the views in the rotation range (never the observation itself).
    Returns a dict of tensors: obs, target (3xSxS in [-1, 1]), rel_c2w (4x4 float64), K_obs,
    K_target (3x3 float64, for the SxS images), scene and views (indices).
    """

    def __init__(self, scenes: list[Scene], size: int = 256, min_rot_deg: float = 0.0, max_rot_deg: float = 60.0,
                 pairs_per_scene: int = 100, scale_mode: str = "scene", seed: int = 0,
                 camera_fovy_deg: float | None = None):
        if scale_mode not in SCALE_MODES:
            raise ValueError(f"scale_mode must be one of {SCALE_MODES}, got {scale_mode!r}")
        self.scenes = [s for s in scenes if len(s.views) >= 2]
        if not self.scenes:
            raise ValueError("PairDataset needs at least one scene with two or more views")
        self.size, self.min_rot, self.max_rot = size, min_rot_deg, max_rot_deg
        self.pairs_per_scene, self.scale_mode, self.seed, self.epoch = pairs_per_scene, scale_mode, seed, 0
        # None: the official centre crop. A field of view: every view resampled to that square camera, as
        # GSTPipeline does with real intrinsics, so wide lenses train what inference will see.
        self.camera_K = (None if camera_fovy_deg is None
                         else intrinsics_from_fov(camera_fovy_deg, size, size).numpy().astype(np.float64))
        self._poses = [np.stack([v.c2w for v in s.views]) for s in self.scenes]
        self._scales = [scene_scale(s) if scale_mode == "scene" else 1.0 for s in self.scenes]

    def __len__(self) -> int:
        return len(self.scenes) * self.pairs_per_scene

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def pair_indices(self, index: int) -> tuple[int, int, int]:
        """(scene, observation view, target view) of an item."""
        s = index % len(self.scenes)
        rng = np.random.default_rng((self.seed, self.epoch, index))
        poses = self._poses[s]
        for obs in rng.permutation(len(poses)):
            angles = rotation_angle_deg(poses[obs], poses)
            ok = np.flatnonzero((angles >= self.min_rot) & (angles <= self.max_rot))
            ok = ok[ok != obs]
            if len(ok):
                return s, int(obs), int(rng.choice(ok))
        raise ValueError(f"scene {self.scenes[s].name!r} has no pair with rotation in "
                         f"[{self.min_rot}, {self.max_rot}] degrees")

    def pair_pose(self, index: int) -> tuple[int, int, int, np.ndarray, float]:
        """(scene, observation, target, normalised rel_c2w, scale divided out), without images."""
        s, obs, target = self.pair_indices(index)
        rel = relative_pose(self._poses[s][obs], self._poses[s][target])
        scale = self._scales[s]
        if self.scale_mode == "pair":
            dist = float(np.linalg.norm(rel[:3, 3]))
            scale = dist if dist > 1e-9 else 1.0
        rel[:3, 3] /= scale
        return s, obs, target, rel, scale

    def sample(self, index: int) -> PairSample:
        """The pair as uint8 images at `size` with its normalised relative pose and intrinsics."""
        s, obs, target, rel, scale = self.pair_pose(index)
        pair = make_pair(self.scenes[s], obs, target, scale)
        pair.meta["scene_index"] = s
        obs_image, K_obs = self._to_model_view(pair.obs_image, pair.K_obs)
        target_image, K_target = self._to_model_view(pair.target_image, pair.K_target)
        return PairSample(obs_image, target_image, rel, K_obs, K_target, pair.meta)

    def _to_model_view(self, image: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.camera_K is None:
            return center_crop_resize(image, K, self.size)
        return image_ops.to_model_camera(image, K, self.camera_K, self.size), self.camera_K.copy()

    def view(self, scene: int, view: int) -> tuple[np.ndarray, np.ndarray]:
        """One preprocessed view: (uint8 image at `size`, K for it)."""
        return self._to_model_view(*self.scenes[scene].views[view].load())

    def __getitem__(self, index: int) -> dict:
        p = self.sample(index)
        return {"obs": to_tensor(p.obs_image), "target": to_tensor(p.target_image),
                "rel_c2w": torch.from_numpy(p.rel_c2w), "K_obs": torch.from_numpy(p.K_obs),
                "K_target": torch.from_numpy(p.K_target), "scene": p.meta["scene_index"],
                "views": torch.tensor(p.meta["views"])}

