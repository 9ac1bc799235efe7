"""The localize node's decisions, without ROS: which image is the keyframe, when to re-key, and where the
camera is in the reference frame. The node (gst_ros.localize_node) and the offline replay
(gst_ros.tools.replay) both run `Localizer.localize` on every frame they process.

Frames:
- the *reference* frame is the camera of the first image, or of the image given to `set_reference`; TF's
  `reference_frame` and every published pose are expressed in it;
- the *keyframe* is the image each new frame is estimated against. It starts as the reference; re-keying
  (confidence below a threshold for some frames) makes the current frame the keyframe, with its pose in the
  reference frame taken from the estimate that triggered it. Poses are chained through the keyframes, so
  re-keying changes what the model compares, not the frame the answers are in: TF users see no jump.
  Translations are chained in each estimate's own scene-normalised units (monocular: the scale between
  keyframes is not observable), and the covariance is that of the last link only.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Keyframe:
    image: np.ndarray  # HxWx3 uint8 RGB
    stamp_ns: int
    id: int  # reference_id on the wire: +1 on every set_reference or re-key
    pose: np.ndarray  # (4,4) keyframe camera in the reference frame
    origin: int  # which set_reference made the reference frame this pose is in


@dataclass(frozen=True)
class RekeyPolicy:
    min_confidence: float = 0.0  # 0 = never re-key
    after_frames: int = 3


@dataclass
class Localized:
    """What `Localizer.localize` made of one frame: `pose` is None when the frame became the reference."""
    keyframe: Keyframe  # the keyframe the frame was compared with (or the new reference)
    estimate: object = None  # gst_model.pipeline.PoseEstimate against `keyframe`
    pose: np.ndarray | None = None  # (4,4) camera in the reference frame
    covariance: np.ndarray | None = None  # (6,6) of `pose`, ROS order (x, y, z, rx, ry, rz)
    rekeyed_to: int | None = None  # id of the new keyframe when this frame became one
    stale: bool = False  # set_reference ran meanwhile: the pose is in a reference frame no longer current


def chain(keyframe_pose: np.ndarray, estimate_c2w: np.ndarray, covariance: np.ndarray):
    """Camera pose and covariance in the reference frame from the keyframe's pose and the estimate in it.

    The covariance's translation block is in the parent frame (rotated by the keyframe's rotation); its
    rotation block is a perturbation in the camera's own frame (gst_model.pose_samples), which chaining
    leaves unchanged.
    """
    pose = keyframe_pose @ estimate_c2w
    J = np.eye(6)
    J[:3, :3] = keyframe_pose[:3, :3]
    return pose, J @ covariance @ J.T


class Localizer:
    """Reference and keyframe state; thread-safe (the node's worker and its set_reference service)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._keyframe: Keyframe | None = None
        self._next_id = 1
        self._origin = 0
        self._low = 0  # consecutive frames below the re-key threshold
        self._last_estimate: tuple[int, np.ndarray] | None = None  # (keyframe id, latest c2w against it)
        self.rekeys = 0

    @property
    def keyframe(self) -> Keyframe | None:
        return self._keyframe

    def temporal_prior(self) -> np.ndarray | None:
        """The latest estimate against the current keyframe (consecutive frames of a robot move little: the
        draft of speculative decoding), or None when the keyframe has none yet."""
        with self._lock:
            last, keyframe = self._last_estimate, self._keyframe
            return last[1].copy() if last is not None and keyframe is not None and last[0] == keyframe.id else None

    def set_reference(self, image: np.ndarray, stamp_ns: int) -> Keyframe:
        """`image` becomes the reference (a new reference frame) and the keyframe."""
        with self._lock:
            self._origin += 1
            return self._new_keyframe(image, stamp_ns, np.eye(4))

    def _new_keyframe(self, image, stamp_ns: int, pose: np.ndarray) -> Keyframe:
        self._keyframe = Keyframe(image, int(stamp_ns), self._next_id, pose, self._origin)
        self._next_id += 1
        self._low = 0
        return self._keyframe

    def localize(self, image: np.ndarray, stamp_ns: int, estimate: Callable[[np.ndarray, np.ndarray], object],
                 rekey: RekeyPolicy = RekeyPolicy()) -> Localized:
        """One frame: the first becomes the reference; any other is estimated against the keyframe by
        `estimate(keyframe image, image)` (a GSTPipeline.estimate_pose call), chained into the reference
        frame, and may become the next keyframe."""
        with self._lock:
            keyframe = self._keyframe
            if keyframe is None:
                self._origin += 1
                return Localized(self._new_keyframe(image, stamp_ns, np.eye(4)))
        est = estimate(keyframe.image, image)  # the model runs outside the lock: set_reference stays quick
        pose, cov = chain(keyframe.pose, est.c2w, est.covariance)
        out = Localized(keyframe, est, pose, cov)
        with self._lock:
            if self._keyframe.origin != keyframe.origin:
                out.stale = True
                return out
            if self._keyframe.id != keyframe.id:
                return out
            self._last_estimate = (keyframe.id, np.array(est.c2w, dtype=np.float64))
            if rekey.min_confidence <= 0:
                return out
            self._low = self._low + 1 if est.confidence < rekey.min_confidence else 0
            if self._low >= rekey.after_frames:
                self.rekeys += 1
                out.rekeyed_to = self._new_keyframe(image, stamp_ns, pose).id
        return out
