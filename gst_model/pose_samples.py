"""Turn N sampled relative poses into one estimate with an uncertainty.

GST is generative: each sample is a plausible camera. Around an anchor sample (the most likely one, or the
rotation medoid) we take the inliers within `inlier_deg` of it, the chordal mean of their rotations and the
mean of their translations. Its uncertainty, chosen by measurement on held-out synthetic test pairs (README
"Uncertainty"; `python -m training.uncertainty` re-measures it):
  covariance  6x6 in ROS order (x, y, z, rot_x, rot_y, rot_z; rotations as the rotation vector of
              R_est^T R_i, in radians, in the estimate's frame): the second moment of ALL samples around the
              estimate, times COVARIANCE_SCALE. Samples that disagree are the model saying it is unsure; the
              inliers alone (the previous definition) made the covariance smallest exactly when the estimate
              was wrong, so the true rotation lay inside its 95% region on only ~30% of the pairs.
  confidence  the likelihood-weighted share of the samples within `inlier_deg` of the estimate: with
              weights softmax(log p(image b | image a, sample) / CONFIDENCE_TEMPERATURE), the model's own
              (tempered) probability that the pose is within `inlier_deg`. Without likelihoods (consensus
              selection), the plain share.
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
# Measured on the shipped model (see the module docstring): the factor that puts 95% of the held-out
# rotation errors inside the covariance's 95% region, and the temperature (nats) of the confidence weights.
COVARIANCE_SCALE = 2.25
CONFIDENCE_TEMPERATURE = 4.0


@dataclass
class PoseSummary:
    c2w: np.ndarray  # (4,4) the estimate
    covariance: np.ndarray  # (6,6)
    inliers: np.ndarray  # (N,) bool: the samples averaged into the estimate (within inlier_deg of the anchor)
    consistency: float  # share of the samples within inlier_deg of the estimate, in [0,1]
    rotation_spread_deg: float  # RMS angle of the inlier rotations around the estimate
    confidence: float  # likelihood-weighted share of the samples within inlier_deg of the estimate, in [0,1]


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


def summarize(samples: np.ndarray, inlier_deg: float = 15.0, anchor: int | None = None,
              log_likelihoods: np.ndarray | None = None, exact_anchor: bool = False) -> PoseSummary:
    """samples: (N,4,4) float c2w poses (all finite, rigid).

    anchor: index of the sample the estimate is built around (e.g. the most likely one); None = the
      rotation medoid, the sample closest to all others.
    log_likelihoods: (N,) log p(image b | image a, sample) of the samples, for `confidence`.
    exact_anchor: the estimate is the anchor itself, not the mean of the samples near it (a hypothesis
      more precise than the samples, such as the classical two-view pose; the others then describe its
      uncertainty).
    """
    samples = np.asarray(samples, dtype=np.float64)
    R, t = samples[:, :3, :3], samples[:, :3, 3]
    if anchor is None:
        anchor = int(np.argmin(rotation_angle_deg(R[:, None], R[None, :]).sum(1)))
    inliers = rotation_angle_deg(R[anchor][None], R) <= inlier_deg
    c2w = np.eye(4)
    if exact_anchor:
        c2w[:] = samples[anchor]
    else:
        c2w[:3, :3], c2w[:3, 3] = project_to_rotation(R[inliers].sum(0)), t[inliers].mean(0)
    rot_dev = rotation_log(c2w[:3, :3].T @ R)
    near = np.degrees(np.linalg.norm(rot_dev, axis=1)) <= inlier_deg
    if len(samples) >= 2:
        dev = np.concatenate([t - c2w[:3, 3], rot_dev], axis=1)
        # MIN_VAR added (not a floor on the diagonal) keeps every eigenvalue >= MIN_VAR even when the samples
        # span fewer than 6 dimensions, so filters can invert it.
        cov = COVARIANCE_SCALE * dev.T @ dev / len(dev) + MIN_VAR * np.eye(6)
    else:
        cov = np.diag([UNKNOWN_TRANSLATION_VAR] * 3 + [UNKNOWN_ROTATION_VAR] * 3)
    if log_likelihoods is None:
        confidence = float(near.mean())
    else:
        z = np.asarray(log_likelihoods, dtype=np.float64) / CONFIDENCE_TEMPERATURE
        w = np.exp(z - z.max())
        confidence = float(w[near].sum() / w.sum())
    spread = float(np.degrees(np.sqrt(np.mean(np.sum(rot_dev[inliers] ** 2, axis=1)))))
    return PoseSummary(c2w, cov, inliers, float(near.mean()), spread, confidence)
