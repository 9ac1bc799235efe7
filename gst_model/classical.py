"""Classical two-view relative pose: feature matches + essential matrix (OpenCV), ROS-free.

Used as a baseline by `training.evaluate` and as an extra pose hypothesis by `GSTPipeline.estimate_pose`
(`hybrid=True`): when it has enough RANSAC inliers, its pose joins the GST samples and the model's own
likelihood chooses among all of them.

Pose: camera b in camera a's optical frame, camera-to-world 4x4, OpenCV axes, translation of unit length
(two views cannot observe scale). Needs OpenCV (`opencv-python-headless`, pinned in requirements-ros.txt);
without it `OPENCV_ERROR` says why.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

try:
    import cv2

    OPENCV_ERROR: str | None = None
except ImportError as exc:  # callers report the method unavailable instead of failing
    cv2 = None
    OPENCV_ERROR = f"OpenCV is not installed ({exc}); pip install opencv-python-headless==4.14.0.94"

DETECTORS = ("sift", "orb")
MIN_INLIERS = 15  # RANSAC inliers below which the method reports a failure


@dataclass
class TwoViewResult:
    c2w: np.ndarray | None  # None when the method failed (too few matches or inliers)
    matches: int
    inliers: int
    reason: str = ""


def _detector(kind: str):
    if kind == "sift":
        return cv2.SIFT_create(nfeatures=4000), cv2.NORM_L2
    if kind == "orb":
        return cv2.ORB_create(nfeatures=4000), cv2.NORM_HAMMING
    raise ValueError(f"detector must be one of {DETECTORS}, got {kind!r}")


def _normalised(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixel coordinates -> normalised image coordinates K^-1 [u, v, 1] (so two different Ks are fine)."""
    h = np.concatenate([points, np.ones((len(points), 1))], axis=1)
    return (np.linalg.solve(K, h.T).T)[:, :2]


def essential_matrix_pose(image_a: np.ndarray, image_b: np.ndarray, K_a: np.ndarray, K_b: np.ndarray,
                          detector: str = "sift", ratio: float = 0.8, threshold_px: float = 1.0,
                          min_inliers: int = MIN_INLIERS) -> TwoViewResult:
    """Relative pose of camera b in camera a's frame from feature matches (translation of unit length).

    `image_a`, `image_b`: HxWx3 (or 4) uint8 RGB. `K_a`, `K_b`: pixel intrinsics of the given images in
    the project convention (pixel centres at integer + 0.5, see `gst_model.geometry`).
    """
    if cv2 is None:
        raise RuntimeError(OPENCV_ERROR)
    det, norm = _detector(detector)
    gray = [cv2.cvtColor(np.ascontiguousarray(im[..., :3]), cv2.COLOR_RGB2GRAY) for im in (image_a, image_b)]
    (kp_a, des_a), (kp_b, des_b) = (det.detectAndCompute(g, None) for g in gray)
    if des_a is None or des_b is None or len(kp_a) < 5 or len(kp_b) < 5:
        return TwoViewResult(None, 0, 0, "too few keypoints")
    knn = cv2.BFMatcher(norm).knnMatch(des_a, des_b, k=2)
    # Lowe's ratio test: keep matches clearly better than the second best.
    good = [m[0] for m in knn if len(m) == 2 and m[0].distance < ratio * m[1].distance]
    if len(good) < max(8, min_inliers):
        return TwoViewResult(None, len(good), 0, "too few matches")
    # OpenCV keypoints put pixel centres at integers; ours are at integer + 0.5.
    pa = np.float64([kp_a[m.queryIdx].pt for m in good]) + 0.5
    pb = np.float64([kp_b[m.trainIdx].pt for m in good]) + 0.5
    return pose_from_matches(pa, pb, K_a, K_b, threshold_px, min_inliers)


def pose_from_matches(points_a: np.ndarray, points_b: np.ndarray, K_a: np.ndarray, K_b: np.ndarray,
                      threshold_px: float = 1.0, min_inliers: int = MIN_INLIERS) -> TwoViewResult:
    """Camera b in camera a's frame from matched pixels [M, 2]: essential matrix (RANSAC) + cheirality."""
    if cv2 is None:
        raise RuntimeError(OPENCV_ERROR)
    pa, pb = _normalised(points_a, K_a), _normalised(points_b, K_b)
    # The RANSAC threshold is in normalised coordinates: pixels over the mean focal length.
    focal = np.mean([K_a[0, 0], K_a[1, 1], K_b[0, 0], K_b[1, 1]])
    E, mask = cv2.findEssentialMat(pa, pb, np.eye(3), method=cv2.RANSAC, prob=0.999,
                                   threshold=threshold_px / focal)
    if E is None:
        return TwoViewResult(None, len(pa), 0, "no essential matrix")
    # Degenerate configurations return several solutions stacked as 3k x 3: take the best-supported first.
    inliers, R, t, _ = cv2.recoverPose(E[:3], pa, pb, np.eye(3), mask=mask)
    if inliers < min_inliers:
        return TwoViewResult(None, len(pa), int(inliers), "too few inliers")
    # recoverPose gives x_b = R x_a + t; camera b's pose in a's frame is the inverse transform.
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = -(R.T @ t).ravel()
    return TwoViewResult(c2w, len(pa), int(inliers))
