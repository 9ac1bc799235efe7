"""Evaluation metrics for relative pose estimation and novel-view prediction (pure functions).

Poses: camera-to-world 4x4 matrices in OpenCV camera axes, numpy or torch, batched as ``[N, 4, 4]``
(pairs: the target camera in the observation camera's frame) or ``[S, V, 4, 4]`` (sets of V cameras).
Angles are in degrees. Images: uint8 ``[N, H, W, 3]`` arrays (or lists of HxWx3 arrays).

Undefined errors are NaN: the direction of a (near) zero translation has none. NaN counts as a miss in
`accuracy` and as worse than any error in `median` (so a method that fails often gets a large median).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from gst_model import geometry

ROTATION_THRESHOLDS_DEG = (15.0, 30.0)
CENTRE_THRESHOLD = 0.1  # RayDiffusion: fraction of the scene scale


def _poses(c2w) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(c2w, dtype=np.float64))
    if t.dim() < 2 or tuple(t.shape[-2:]) != (4, 4):
        raise ValueError(f"poses must have shape [..., 4, 4], got {tuple(t.shape)}")
    return t


# --------------------------------------------------------------------------------- pose errors


def rotation_errors_deg(pred_c2w, gt_c2w) -> np.ndarray:
    """Geodesic angle between predicted and true rotations, degrees in [0, 180], shape ``[...]``."""
    pred, gt = _poses(pred_c2w), _poses(gt_c2w)
    return geometry.rotation_angle_deg(pred[..., :3, :3], gt[..., :3, :3]).numpy()


def translation_direction_errors_deg(pred_c2w, gt_c2w, eps: float = 1e-9) -> np.ndarray:
    """Angle between predicted and true camera-centre directions, degrees in [0, 180], shape ``[...]``.

    For pairs, where monocular scale is unobservable, only the direction of the relative translation is
    scored. NaN where either translation is shorter than `eps` (no direction to compare).
    """
    pred, gt = _poses(pred_c2w)[..., :3, 3], _poses(gt_c2w)[..., :3, 3]
    err = geometry.translation_direction_angle_deg(pred, gt).numpy()
    degenerate = (pred.norm(dim=-1) < eps) | (gt.norm(dim=-1) < eps)
    return np.where(degenerate.numpy(), np.nan, err)


def accuracy(errors, threshold: float) -> float:
    """Fraction of errors strictly below `threshold` (NaN = miss); NaN for no errors."""
    e = np.asarray(errors, dtype=np.float64).ravel()
    return float(np.mean(np.nan_to_num(e, nan=np.inf) < threshold)) if e.size else math.nan


def median(errors) -> float:
    """Median with NaN ranked worst (returned as inf when it is the median); NaN for no errors."""
    e = np.asarray(errors, dtype=np.float64).ravel()
    return float(np.median(np.nan_to_num(e, nan=np.inf))) if e.size else math.nan


def pair_pose_metrics(pred_c2w, gt_c2w, thresholds=ROTATION_THRESHOLDS_DEG) -> dict:
    """Summary of relative-pose errors over N pairs ``[N, 4, 4]``.

    Keys: ``rot_acc_<t>`` (fraction of rotation errors < t degrees), ``rot_median_deg``,
    ``transl_dir_acc_<t>``, ``transl_dir_median_deg``, ``n``.
    """
    rot = rotation_errors_deg(pred_c2w, gt_c2w)
    trans = translation_direction_errors_deg(pred_c2w, gt_c2w)
    out = {}
    for t in thresholds:
        out[f"rot_acc_{t:g}"] = accuracy(rot, t)
    out["rot_median_deg"] = median(rot)
    for t in thresholds:
        out[f"transl_dir_acc_{t:g}"] = accuracy(trans, t)
    out["transl_dir_median_deg"] = median(trans)
    out["n"] = int(rot.size)
    return out


# ------------------------------------------------------------------------ pose sets (multi-view)


def camera_centre_errors(pred_c2w, gt_c2w) -> np.ndarray:
    """RayDiffusion camera-centre error of sets ``[..., V, 4, 4]`` (V >= 3): ``[..., V]``, unitless.

    Predicted centres are similarity-aligned (Umeyama, with scale) to the true ones; each camera's
    error is its distance to its true centre divided by the scene scale, the largest distance of a true
    centre from their centroid. A predicted set whose centres all coincide (e.g. the identity baseline)
    has no orientation to align: its best similarity maps it to the true centroid.
    """
    pred, gt = _poses(pred_c2w), _poses(gt_c2w)
    p, g = pred[..., :3, 3], gt[..., :3, 3]
    if p.shape[-2] < 3:
        raise ValueError("camera-centre accuracy needs sets of at least 3 cameras (2 always align exactly)")
    collapsed = (p - p.mean(-2, keepdim=True)).norm(dim=-1).amax(-1) < 1e-12
    errors = geometry.camera_centre_errors(pred, gt)
    scale = (g - g.mean(-2, keepdim=True)).norm(dim=-1).amax(-1)
    to_centroid = (g - g.mean(-2, keepdim=True)).norm(dim=-1) / scale[..., None]
    return torch.where(collapsed[..., None], to_centroid, errors).numpy()


def pairwise_rotation_errors_deg(pred_c2w, gt_c2w) -> np.ndarray:
    """Relative-rotation errors of every pair i < j within each set ``[..., V, 4, 4]``.

    Returns ``[..., V (V-1) / 2]`` degrees; the set's world frame cancels out.
    """
    pred, gt = _poses(pred_c2w), _poses(gt_c2w)
    i, j = torch.triu_indices(pred.shape[-3], pred.shape[-3], offset=1)
    rel_p = geometry.relative_pose(pred[..., i, :, :], pred[..., j, :, :])
    rel_g = geometry.relative_pose(gt[..., i, :, :], gt[..., j, :, :])
    return rotation_errors_deg(rel_p, rel_g)


def pose_set_metrics(pred_c2w, gt_c2w, thresholds=ROTATION_THRESHOLDS_DEG,
                     centre_threshold: float = CENTRE_THRESHOLD) -> dict:
    """Summary over S sets ``[S, V, 4, 4]``: ``centre_acc_<c>``, ``rot_acc_<t>`` over all pairs in the
    sets, ``rot_median_deg``, ``n_sets``, ``n_cameras``."""
    centre = camera_centre_errors(pred_c2w, gt_c2w)
    rot = pairwise_rotation_errors_deg(pred_c2w, gt_c2w)
    out = {f"centre_acc_{centre_threshold:g}": accuracy(centre, centre_threshold),
           "centre_median": median(centre)}
    for t in thresholds:
        out[f"rot_acc_{t:g}"] = accuracy(rot, t)
    out["rot_median_deg"] = median(rot)
    out["n_sets"], out["n_cameras"] = int(centre.shape[0]), int(centre.size)
    return out


# ------------------------------------------------------------------------------- image quality


def images_to_tensor(images) -> torch.Tensor:
    """uint8 images ``[N, H, W, 3]`` (array or list) -> float64 ``[N, 3, H, W]`` in [0, 1].

    float64 because SSIM's variances (E[x^2] - E[x]^2) lose ~1e-4 of the result to float32 rounding."""
    x = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {x.dtype} {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).double() / 255.0


def _pair(pred, gt) -> tuple[torch.Tensor, torch.Tensor]:
    p, g = images_to_tensor(pred), images_to_tensor(gt)
    if p.shape != g.shape:
        raise ValueError(f"predicted and true images differ in shape: {tuple(p.shape)} vs {tuple(g.shape)}")
    return p, g


def psnr(pred, gt) -> np.ndarray:
    """Per-image PSNR in dB over [0, 1] intensities: ``10 log10(1 / MSE)``; inf for identical images."""
    p, g = _pair(pred, gt)
    return peak_signal_noise_ratio(p, g, data_range=1.0, reduction="none", dim=(1, 2, 3)).numpy()


def ssim(pred, gt) -> np.ndarray:
    """Per-image SSIM (Gaussian window 11, sigma 1.5, data range 1; torchmetrics), 1 for identical images."""
    p, g = _pair(pred, gt)
    return structural_similarity_index_measure(p, g, data_range=1.0, reduction="none").numpy()


def lpips(pred, gt, net: torch.nn.Module, batch_size: int = 16) -> np.ndarray:
    """Per-image LPIPS distance (lower = more similar) with a module mapping two [-1, 1] batches to [B]
    distances (e.g. ``training.lpips.LPIPS.load("alex")``)."""
    p, g = _pair(pred, gt)
    out = []
    with torch.no_grad():
        for k in range(0, len(p), batch_size):
            out.append(net(p[k:k + batch_size].float() * 2 - 1, g[k:k + batch_size].float() * 2 - 1).float())
    return torch.cat(out).numpy() if out else np.zeros(0)
