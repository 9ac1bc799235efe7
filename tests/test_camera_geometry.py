"""Real camera geometry: images of any size, aspect and field of view resampled to the model's camera
(gst_model.image.resample_to_camera), checked against renders of the same scene with known cameras."""
import math

import numpy as np
import pytest
from PIL import Image

from gst_model import GSTPipeline
from gst_model.data.cameras import fov_to_K
from gst_model.data.synthetic import random_scene, render, sample_cameras
from gst_model.image import (center_crop_resize, crop_resize_intrinsics, implied_intrinsics, resample_to_camera,
                             validate_intrinsics)
from gst_model.metrics import psnr


def _K(fx, fy, cx, cy):
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _wide_camera(width=160, height=120, hfov_deg=90.0):
    """A 4:3 camera with a 90 degree horizontal field of view (73.7 degrees vertical)."""
    f = (width / 2) / math.tan(math.radians(hfov_deg / 2))
    return _K(f, f, width / 2, height / 2), width, height


@pytest.fixture(scope="module")
def scene_and_pose():
    rng = np.random.default_rng(3)
    scene = random_scene(rng)
    return scene, sample_cameras(scene, rng, 1)[0][0]


def test_same_camera_is_the_identity_and_a_plain_resize_is_pillows_bicubic():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    K = _K(50.0, 50.0, 40.0, 24.0)
    np.testing.assert_array_equal(resample_to_camera(image, K, K, 80, 48), image)
    # one row: the same kernel, widening and edge renormalisation as Pillow (which rounds fixed-point weights)
    row = np.repeat(image[:1], 4, axis=0)
    for width in (20, 33, 160):
        K_dst = _K(50.0 * width / 80, 50.0, 40.0 * width / 80, 2.0)  # columns resized, rows unchanged
        ours = resample_to_camera(row, _K(50.0, 50.0, 40.0, 2.0), K_dst, width, 4)
        theirs = np.asarray(Image.fromarray(row).resize((width, 4), Image.BICUBIC))
        assert np.abs(ours.astype(int) - theirs).max() <= 1


def test_downsampling_a_render_matches_pillow(scene_and_pose):
    scene, c2w = scene_and_pose
    image = render(scene, c2w, fov_to_K(55.0, 96, 128), 96, 128, supersample=1)
    K = fov_to_K(55.0, 96, 128)
    K_dst = crop_resize_intrinsics(K, 96, 128, 40)  # crop box 16..112 x 0..96 -> 40x40
    ours = resample_to_camera(image, K, K_dst, 40, 40).astype(int)
    theirs = np.asarray(Image.fromarray(image).resize((40, 40), Image.BICUBIC, box=(16, 0, 112, 96))).astype(int)
    # Pillow rounds and clips between its horizontal and vertical passes; we resample in one pass
    assert np.abs(ours - theirs).max() <= 3 and np.mean(np.abs(ours - theirs) > 1) < 0.01


def test_a_wide_4_3_camera_resampled_is_what_the_models_camera_sees(scene_and_pose):
    """The proof of the geometry: a 90 degree 4:3 render, resampled with its K, equals a render of the same
    pose with the model's square 55 degree camera; the official centre crop (no K) does not."""
    scene, c2w = scene_and_pose
    K_real, w, h = _wide_camera()
    K_model = fov_to_K(55.0, 64, 64)
    real = render(scene, c2w, K_real, h, w)
    truth = render(scene, c2w, K_model, 64, 64)
    resampled = resample_to_camera(real, K_real, K_model, 64, 64)
    assert psnr([resampled], [truth])[0] > 32.0
    assert psnr([center_crop_resize(real, 64)], [truth])[0] < 20.0


def test_a_narrow_camera_is_padded_where_it_does_not_cover_the_models_view(scene_and_pose):
    scene, c2w = scene_and_pose
    f = 60.0 / math.tan(math.radians(17.5))  # 35 degrees vertical, 160x120, principal point off centre
    K_real = _K(f, f, 84.0, 57.0)
    K_model = fov_to_K(55.0, 64, 64)
    out = resample_to_camera(render(scene, c2w, K_real, 120, 160), K_real, K_model, 64, 64, fill=(255, 0, 255))
    truth = render(scene, c2w, K_model, 64, 64)
    # pixel centres mapped into the real image: (u + 0.5 - cx_model) * f / f_model + cx_real in [0, 160]
    centres = np.arange(64) + 0.5 - 32.0
    cols = (centres * f / K_model[0, 0] + 84.0 >= 0) & (centres * f / K_model[0, 0] + 84.0 <= 160)
    rows = (centres * f / K_model[1, 1] + 57.0 >= 0) & (centres * f / K_model[1, 1] + 57.0 <= 120)
    covered = rows[:, None] & cols[None, :]
    assert 0.3 < covered.mean() < 0.7
    assert (out[~covered] == [255, 0, 255]).all()
    inner = np.zeros_like(covered)  # away from the border, where the padding blends in
    inner[np.ix_(np.flatnonzero(rows)[2:-2], np.flatnonzero(cols)[2:-2])] = True
    assert psnr([out * inner[..., None]], [truth * inner[..., None]])[0] > 30.0


def test_implied_intrinsics_invert_the_official_crop():
    K_model = fov_to_K(55.0, 64, 64)
    for h, w in ((480, 640), (720, 1280), (64, 64), (101, 77)):
        K = implied_intrinsics(h, w, K_model, 64)
        np.testing.assert_allclose(crop_resize_intrinsics(K, h, w, 64), K_model, atol=1e-12)


@pytest.mark.parametrize("K, message", [
    (np.eye(2), "3x3"),
    (np.full((3, 3), np.nan), "finite"),
    (_K(-1.0, 1.0, 1.0, 1.0), "positive focal"),
    (np.array([[50.0, 3.0, 32.0], [0, 50.0, 32.0], [0, 0, 1]]), "zero-skew"),
    (np.array([[50.0, 0, 32.0], [0, 50.0, 32.0], [0, 0, 2.0]]), "zero-skew"),
    ("not a matrix", "3x3 numeric"),
])
def test_bad_intrinsics_are_rejected(K, message):
    with pytest.raises(ValueError, match=message):
        validate_intrinsics(K)


# ------------------------------------------------------------------------------------- pipeline
@pytest.fixture(scope="module")
def pipe():
    return GSTPipeline.from_pretrained("tiny")


def test_pipeline_feeds_the_model_its_own_camera(pipe, scene_and_pose, monkeypatch):
    """estimate_pose / predict_view / sample_cameras with K: the model's input is the model-camera render."""
    scene, c2w = scene_and_pose
    K_real, w, h = _wide_camera()
    real = render(scene, c2w, K_real, h, w)
    truth = render(scene, c2w, pipe.default_intrinsics(), 64, 64)
    seen = []
    encode = pipe.runtime.encode_images
    monkeypatch.setattr(pipe.runtime, "encode_images", lambda x: seen.append(x) or encode(x))
    pipe.estimate_pose(real, real, num_samples=1, K_a=K_real, K_b=K_real)
    pipe.predict_view(real, np.eye(4), K_image=K_real)
    pipe.sample_cameras(real, num_samples=1, K=K_real)
    pipe.estimate_pose(real, real, num_samples=1)  # no K: the official centre crop
    model_inputs = [((x + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy() for x in seen]
    for batch in model_inputs[:3]:
        assert all(psnr([im], [truth])[0] > 32.0 for im in batch)
    assert psnr([model_inputs[3][0]], [truth])[0] < 20.0


def test_predicted_views_come_back_at_the_cameras_resolution(pipe):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    K_real, w, h = _wide_camera()
    views = pipe.predict_view(image, np.eye(4), num_samples=2, K_image=K_real, output_K=K_real)
    assert [v.shape for v in views] == [(120, 160, 3)] * 2
    # the model's 55 degree view covers the middle of the 90 degree camera; the rest is black
    assert (views[0][:, :30] == 0).all() and (views[0][:, -30:] == 0).all() and views[0][40:80, 60:100].any()
    square = pipe.predict_view(image, np.eye(4), num_samples=2, K_image=K_real)
    np.testing.assert_array_equal(resample_to_camera(square[1], pipe.default_intrinsics(), K_real, 160, 120),
                                  views[1])
    mean = pipe.expected_view(image, np.eye(4), num_samples=2, K_image=K_real, output_K=K_real / 2 + np.diag(
        [0, 0, 0.5]), output_size=(80, 60))
    assert mean.shape == (60, 80, 3)
    with pytest.raises(ValueError, match="output_size needs output_K"):
        pipe.predict_view(image, np.eye(4), output_size=(80, 60))


def test_intrinsics_must_fit_the_image(pipe):
    image = np.zeros((120, 160, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="principal point .* outside"):
        pipe.estimate_pose(image, image, num_samples=1, K_a=_K(100.0, 100.0, 320.0, 240.0))
    with pytest.raises(ValueError, match="K_b must have positive focal"):
        pipe.estimate_pose(image, image, num_samples=1, K_b=_K(0.0, 100.0, 80.0, 60.0))
