"""Turn N sampled relative poses into one estimate with an uncertainty.

GST is generative: each sample is a plausible camera. Around an anchor sample (the most likely one, or the
rotation medoid) we take the inliers within `inlier_deg` of it, the chordal mean of their rotations, the
mean of their translations, and a 6x6 covariance in ROS order (x, y, z, rot_x, rot_y, rot_z; rotations as
the rotation vector of R_mean^T R_i, in radians, in the estimate's frame).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gst_model.geometry import rotation_angle, rotation_angle_deg

# Variance reported for an axis we cannot measure (a single inlier sample): large but finite,
# so downstream filters treat the estimate as weak rather than exact.
UNKNOWN_TRANSLATION_VAR = 1.0
UNKNOWN_ROTATION_VAR = 0.25
# Added to the sample covariance so it stays positive definite (identical or few samples).
MIN_VAR = 1e-6


@dataclass
class PoseSummary:
    c2w: np.ndarray  # (4,4) consensus pose
    covariance: np.ndarray  # (6,6)
    inliers: np.ndarray  # (N,) bool
    consistency: float  # inlier fraction in [0,1]
    rotation_spread_deg: float  # RMS angle of inlier rotations around the consensus


def rotation_log(R: np.ndarray) -> np.ndarray:
    """Rotation vectors (axis * angle) of rotation matrices [..., 3, 3]."""
    angle = rotation_angle(R)
    skew = np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    sin = np.sin(angle)
    small = sin < 1e-6
    scale = np.where(small, 0.5, angle / (2.0 * np.where(small, 1.0, sin)))
    out = skew * scale[..., None]
    # Near pi the skew part vanishes: recover the axis from the symmetric part instead.
    near_pi = small & (angle > np.pi / 2)
    if np.any(near_pi):
        for idx in zip(*np.nonzero(near_pi)) if R.ndim > 2 else [()]:
            M = (R[idx] + np.eye(3)) / 2.0
            axis = M[np.argmax(np.diag(M))]
            out[idx] = axis / np.linalg.norm(axis) * angle[idx]
    return out


def project_to_rotation(M: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def summarize(samples: np.ndarray, inlier_deg: float = 15.0, anchor: int | None = None) -> PoseSummary:
    """samples: (N,4,4) float c2w poses (all finite, rigid).

    anchor: index of the sample the estimate is built around (e.g. the most likely one); None = the
    rotation medoid, the sample closest to all others.
    """
    samples = np.asarray(samples, dtype=np.float64)
    R, t = samples[:, :3, :3], samples[:, :3, 3]
    pairwise = rotation_angle_deg(R[:, None], R[None, :])
    if anchor is None:
        anchor = int(np.argmin(pairwise.sum(1)))
    inliers = pairwise[anchor] <= inlier_deg
    R_mean = project_to_rotation(R[inliers].sum(0))
    t_mean = t[inliers].mean(0)
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = R_mean, t_mean
    rot_dev = rotation_log(R_mean.T @ R[inliers])
    cov = np.zeros((6, 6))
    if inliers.sum() >= 2:
        dev = np.concatenate([t[inliers] - t_mean, rot_dev], axis=1)
        # Fewer than 7 inliers give a rank-deficient sample covariance: adding MIN_VAR (not flooring the
        # diagonal) keeps every eigenvalue >= MIN_VAR, so filters can invert it.
        cov = dev.T @ dev / (len(dev) - 1) + MIN_VAR * np.eye(6)
    else:
        cov[np.diag_indices(6)] = [UNKNOWN_TRANSLATION_VAR] * 3 + [UNKNOWN_ROTATION_VAR] * 3
    spread = float(np.degrees(np.sqrt(np.mean(np.sum(rot_dev ** 2, axis=1)))))
    return PoseSummary(c2w, cov, inliers, float(inliers.mean()), spread)
