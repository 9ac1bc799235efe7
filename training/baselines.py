"""Reference methods GST is compared against in `training.evaluate`.

Pose (camera b in camera a's optical frame, camera-to-world 4x4, OpenCV axes):
  identity_pose          no motion: identity rotation, zero translation (scores the rotation prior).
  essential_matrix_pose  classical two-view geometry (gst_model.classical): SIFT or ORB matches,
                         essential matrix with RANSAC, cheirality check. Unit-length translation.
                         Needs OpenCV; without it `OPENCV_ERROR` says why and the baseline is
                         reported unavailable.
View (image at the model's output size):
  copy_observation         the observation itself: what a model ignoring the camera would score.
  tokenizer_reconstruction decode(encode(target)): the best any token prediction can reach.
"""
from __future__ import annotations

import numpy as np

from gst_model.classical import (OPENCV_ERROR, TwoViewResult, essential_matrix_pose,  # noqa: F401 (re-exported)
                                 pose_from_matches)
from gst_model.image import center_crop_resize, to_model_input, to_uint8


def identity_pose() -> np.ndarray:
    return np.eye(4)


def copy_observation(observation: np.ndarray, size: int) -> np.ndarray:
    """The observation, preprocessed like a model output (square crop, size x size)."""
    return center_crop_resize(observation, size)


def tokenizer_reconstruction(pipe, image: np.ndarray) -> np.ndarray:
    """decode(encode(image)) with the pipeline's image tokenizer: the upper bound of view prediction."""
    codes = pipe.runtime.encode_images(to_model_input([image], pipe.view.image_size))
    return to_uint8(pipe.runtime.decode_images(codes))[0]
