"""PairDataset(camera_fovy_deg=...): views of any lens resampled to the model's camera, as inference does."""
import numpy as np

from gst_model.data.cameras import fov_to_K
from gst_model.data.formats import read_re10k_split, write_re10k_sequence
from gst_model.data.pairs import PairDataset
from gst_model.data.synthetic import random_scene, render, sample_cameras


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def test_a_wide_lens_resampled_to_the_model_camera_looks_like_a_render_through_it(tmp_path):
    rng = np.random.default_rng(3)
    scene = random_scene(rng)
    c2w, _ = sample_cameras(scene, rng, 2, fov_deg=90.0)
    wide = [render(scene, c, fov_to_K(90.0, 160, 200), 160, 200) for c in c2w]  # 4:5, wider than the model
    write_re10k_sequence(tmp_path, "test", "wide", [1, 2], c2w, np.stack([fov_to_K(90.0, 160, 200)] * 2),
                         (160, 200), wide)
    ds = PairDataset(read_re10k_split(tmp_path, "test"), size=64, camera_fovy_deg=55.0, max_rot_deg=180.0)
    pair = ds.sample(0)
    obs = pair.meta["views"][0]
    K_model = fov_to_K(55.0, 64, 64)
    np.testing.assert_allclose(pair.K_obs, K_model)
    np.testing.assert_allclose(pair.K_target, K_model)
    direct = render(scene, c2w[obs], K_model, 64, 64)
    resampled, _ = ds.view(0, obs)
    np.testing.assert_array_equal(resampled, pair.obs_image)
    assert _psnr(resampled, direct) > 24.0
    # the official centre crop of the same wide view keeps the wide field of view: far from the model's
    cropped = PairDataset(read_re10k_split(tmp_path, "test"), size=64, max_rot_deg=180.0).view(0, obs)[0]
    assert _psnr(cropped, direct) < _psnr(resampled, direct) - 6.0
