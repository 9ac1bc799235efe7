"""Ray maps, pose recovery and pose utilities: golden parity, exact round trips, degraded rays."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gst_model.geometry import (
    cameras_from_plucker,
    camera_centre_errors,
    fov_from_intrinsics,
    intrinsics_from_fov,
    matrix_to_quaternion_xyzw,
    opencv_to_opengl,
    opengl_to_opencv,
    plucker_rays,
    plucker_rays_from_intrinsics,
    quaternion_xyzw_to_matrix,
    reference_directions,
    relative_pose,
    rotation_angle_deg,
    translation_direction_angle_deg,
    umeyama_alignment,
    validate_rigid,
)

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared/reference/official_golden.npz"
F64 = torch.float64


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN.exists():
        pytest.skip(f"official golden vectors not found at {GOLDEN}")
    z = np.load(GOLDEN)
    return {k: torch.from_numpy(z[k]) for k in z.files if k.startswith("rays.")}


def random_rotations(n: int, gen: torch.Generator) -> torch.Tensor:
    """Random proper rotations from QR of Gaussian matrices (independent of the module under test)."""
    Q, U = torch.linalg.qr(torch.randn(n, 3, 3, generator=gen, dtype=F64))
    Q = Q * torch.sign(torch.diagonal(U, dim1=-2, dim2=-1))[:, None, :]
    Q[:, :, 0] *= torch.sign(torch.det(Q))[:, None]
    return Q


def random_c2w(n: int, seed: int = 0, spread: float = 1.5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    T = torch.eye(4, dtype=F64).repeat(n, 1, 1)
    T[:, :3, :3] = random_rotations(n, gen)
    T[:, :3, 3] = spread * torch.randn(n, 3, generator=gen, dtype=F64)
    return T


def pose_errors(fit_c2w: torch.Tensor, c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rotation error in degrees, centre distance) per camera."""
    return (
        rotation_angle_deg(fit_c2w[:, :3, :3], c2w[:, :3, :3]),
        (fit_c2w[:, :3, 3] - c2w[:, :3, 3]).norm(dim=-1),
    )


# ------------------------------------------------------------------ golden parity (section d)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_plucker_rays_match_official(golden, dtype):
    rays = plucker_rays(golden["rays.c2w"].to(dtype))
    assert rays.shape == (4, 6, 64, 64) and rays.dtype == dtype
    hwc = rays.permute(0, 2, 3, 1).double()
    assert (hwc - golden["rays.plucker_hwc"].double()).abs().max() < 1e-5
    assert (hwc[..., 3:] - golden["rays.rays_d"].double()).abs().max() < 1e-5
    # The moment channels are the official origins crossed with the official directions.
    moment = torch.cross(golden["rays.rays_o"].double(), golden["rays.rays_d"].double(), dim=-1)
    assert (hwc[..., :3] - moment).abs().max() < 1e-5


def test_reference_directions_match_official(golden):
    ref = reference_directions(64, 49.1)
    assert ref.shape == (4096, 3)
    assert (ref - golden["rays.ref_dirs"][0].double()).abs().max() < 1e-6


def test_cameras_from_plucker_matches_official(golden):
    fit = cameras_from_plucker(golden["rays.plucker_hwc"].permute(0, 3, 1, 2))
    assert fit.c2w.dtype == F64 and fit.c2w.shape == (4, 4, 4)
    assert (fit.c2w - golden["rays.plucker_to_camera"].double()).abs().max() < 1e-5
    assert (fit.c2w - golden["rays.c2w"].double()).abs().max() < 1e-5
    assert fit.inlier_fraction is None


# ------------------------------------------------------------------ conventions


def test_pixel_and_axis_convention_non_square():
    # Hand-built rays for a non-square map with distinct fx, fy and an off-centre principal point:
    # pixel (column i, row j) looks along R @ ((i + .5 - cx)/fx, (j + .5 - cy)/fy, 1).
    H, W, fx, fy, cx, cy = 5, 7, 6.0, 4.0, 3.0, 2.25
    K = torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=F64)
    c2w = random_c2w(1, seed=3)
    rays = plucker_rays_from_intrinsics(c2w, K, H, W)
    assert rays.shape == (1, 6, H, W)
    R, t = c2w[0, :3, :3], c2w[0, :3, 3]
    for j, i in [(0, 0), (0, W - 1), (H - 1, 2), (3, 5)]:
        d = R @ torch.tensor([(i + 0.5 - cx) / fx, (j + 0.5 - cy) / fy, 1.0], dtype=F64)
        d = d / d.norm()
        assert torch.allclose(rays[0, 3:, j, i], d, atol=1e-12)
        assert torch.allclose(rays[0, :3, j, i], torch.linalg.cross(t, d), atol=1e-12)


def test_intrinsics_fov_round_trip():
    K = intrinsics_from_fov(49.1, 64, 64)
    assert K[0, 0].item() == pytest.approx(32 / math.tan(math.radians(24.55)))
    assert K[0, 0].item() == pytest.approx(70.056, abs=1e-3)
    assert K[0, 2].item() == 32 and K[1, 2].item() == 32
    K = intrinsics_from_fov(torch.tensor([20.0, 60.0, 100.0]), 48, 80)
    fovx, fovy = fov_from_intrinsics(K, 48, 80)
    assert torch.allclose(fovy, torch.tensor([20.0, 60.0, 100.0], dtype=F64))
    assert torch.all(fovx > fovy)  # wider image, same focal
    assert torch.equal(K[:, 0, 2], torch.full((3,), 40.0, dtype=F64))


def test_opengl_opencv_conversion():
    gl = random_c2w(3, seed=4)
    cv = opengl_to_opencv(gl)
    assert torch.allclose(opencv_to_opengl(cv), gl)
    assert torch.allclose(cv[:, :, 0], gl[:, :, 0]) and torch.allclose(cv[:, :, 1:3], -gl[:, :, 1:3])
    assert torch.equal(cv[:, :3, 3], gl[:, :3, 3])
    # An OpenGL identity camera looks down world -z, so its central ray must point to -z.
    rays = plucker_rays(opengl_to_opencv(torch.eye(4, dtype=F64)[None]), size=2)
    centre_dir = rays[0, 3:].mean(dim=(-1, -2))
    assert centre_dir[2] < -0.9


# ------------------------------------------------------------------ exact round trips


def test_round_trip_fixed_intrinsics():
    c2w = random_c2w(6, seed=1)
    fit = cameras_from_plucker(plucker_rays(c2w))
    rot, centre = pose_errors(fit.c2w, c2w)
    assert rot.max() < 1e-9 and centre.max() < 1e-9
    assert fit.residual.max() < 1e-9 and fit.line_residual.max() < 1e-9
    validate_rigid(fit.c2w, tol=1e-9)
    # Non-square map with its own (known) intrinsics.
    K = torch.tensor([[30.0, 0, 25.0], [0, 33.0, 17.0], [0, 0, 1]], dtype=F64)
    fit = cameras_from_plucker(plucker_rays_from_intrinsics(c2w, K, 36, 48), K=K)
    rot, centre = pose_errors(fit.c2w, c2w)
    assert rot.max() < 1e-9 and centre.max() < 1e-9


def test_wrong_assumed_fov_is_detected_by_residual():
    c2w = random_c2w(2, seed=2)
    rays = plucker_rays(c2w, fovy_deg=60.0)
    assert cameras_from_plucker(rays, fovy_deg=60.0).residual.max() < 1e-9
    assert cameras_from_plucker(rays, fovy_deg=49.1).residual.min() > 1e-2


def test_round_trip_estimated_intrinsics():
    # One batch mixing fields of view from 20 to 100 degrees, non-square, fx != fy, off-centre pp.
    B, H, W = 9, 40, 56
    gen = torch.Generator().manual_seed(5)
    K = intrinsics_from_fov(torch.linspace(20.0, 100.0, B, dtype=F64), H, W)
    K[:, 0, 0] *= 1 + 0.1 * (torch.rand(B, generator=gen, dtype=F64) - 0.5)
    K[:, 0, 2] += 6 * (torch.rand(B, generator=gen, dtype=F64) - 0.5)
    K[:, 1, 2] += 6 * (torch.rand(B, generator=gen, dtype=F64) - 0.5)
    c2w = random_c2w(B, seed=6)
    fit = cameras_from_plucker(plucker_rays_from_intrinsics(c2w, K, H, W), estimate_intrinsics=True)
    rot, centre = pose_errors(fit.c2w, c2w)
    assert rot.max() < 1e-8 and centre.max() < 1e-9
    assert ((fit.K - K).abs() / K[:, :1, :1]).max() < 1e-9
    validate_rigid(fit.c2w, tol=1e-9)
    # The official square map, too.
    fit = cameras_from_plucker(plucker_rays(c2w[:3]), estimate_intrinsics=True)
    assert torch.allclose(fit.K, intrinsics_from_fov(49.1, 64, 64).expand(3, 3, 3), atol=1e-8)


# ------------------------------------------------------------------ degraded rays


def add_outliers(rays: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Replace a random `fraction` of rays by random lines (random direction and origin)."""
    gen = torch.Generator().manual_seed(seed)
    B, _, H, W = rays.shape
    mask = torch.rand(B, 1, H, W, generator=gen) < fraction
    d = torch.randn(B, 3, H, W, generator=gen, dtype=F64)
    d = d / d.norm(dim=1, keepdim=True)
    o = 3.0 * torch.randn(B, 3, H, W, generator=gen, dtype=F64)
    return torch.where(mask, torch.cat([torch.cross(o, d, dim=1), d], dim=1), rays)


@pytest.mark.parametrize("estimate", [False, True])
def test_gaussian_noise_degrades_gracefully(estimate):
    c2w = random_c2w(4, seed=7)
    rays = plucker_rays(c2w)
    gen = torch.Generator().manual_seed(8)
    noise = torch.randn(rays.shape, generator=gen, dtype=F64)
    errors = []
    for sigma in (1e-3, 1e-2, 3e-2):
        fit = cameras_from_plucker(rays + sigma * noise, estimate_intrinsics=estimate)
        rot, centre = pose_errors(fit.c2w, c2w)
        # Bounds are about twice the errors observed (rotation ~6 sigma degrees with the official
        # fixed focal, ~28 sigma when the focal is free; centre 0.1-1.1 sigma).
        assert rot.max() < (60 if estimate else 12) * sigma, (sigma, rot)
        assert centre.max() < 3 * sigma, (sigma, centre)
        assert fit.residual.mean() == pytest.approx(math.sqrt(2) * sigma, rel=0.2)
        errors.append(rot.mean() + centre.mean())
    assert errors[0] < errors[1] < errors[2]


@pytest.mark.parametrize("estimate", [False, True])
def test_robust_fit_rejects_outliers(estimate):
    c2w = random_c2w(4, seed=9)
    gen = torch.Generator().manual_seed(10)
    clean = plucker_rays(c2w)
    rays = add_outliers(clean + 5e-3 * torch.randn(clean.shape, generator=gen, dtype=F64), 0.08, seed=11)
    plain = cameras_from_plucker(rays, estimate_intrinsics=estimate)
    robust = cameras_from_plucker(rays, estimate_intrinsics=estimate, robust="cauchy")
    rot_p, centre_p = pose_errors(plain.c2w, c2w)
    rot_r, centre_r = pose_errors(robust.c2w, c2w)
    assert rot_r.max() < 0.2 and centre_r.max() < 0.02, (rot_r, centre_r)
    assert centre_p.mean() > 0.2 and centre_p.mean() > 10 * centre_r.mean(), (centre_p, centre_r)
    assert rot_p.mean() > 10 * rot_r.mean(), (rot_p, rot_r)
    if estimate:
        assert rot_p.mean() > 5.0, rot_p
        assert ((robust.K - intrinsics_from_fov(49.1, 64, 64)).abs().max()) < 0.5
    assert robust.inlier_fraction is not None
    assert torch.all((robust.inlier_fraction > 0.88) & (robust.inlier_fraction < 0.95))


@pytest.mark.parametrize("fovy", [20.0, 100.0])
def test_robust_intrinsics_far_from_the_prior(fovy):
    # The DLT is normalised with the default 49.1 degree guess, far from the true field of view.
    c2w = random_c2w(2, seed=22)
    gen = torch.Generator().manual_seed(23)
    clean = plucker_rays(c2w, fovy_deg=fovy)
    rays = add_outliers(clean + 2e-3 * torch.randn(clean.shape, generator=gen, dtype=F64), 0.15, seed=24)
    fit = cameras_from_plucker(rays, estimate_intrinsics=True, robust="cauchy")
    rot, centre = pose_errors(fit.c2w, c2w)
    assert rot.max() < 1.0 and centre.max() < 0.02, (rot, centre)
    fovx, fovy_hat = fov_from_intrinsics(fit.K, 64, 64)
    assert torch.allclose(fovy_hat, torch.full_like(fovy_hat, fovy), atol=0.5), fovy_hat
    assert torch.allclose(fovx, torch.full_like(fovx, fovy), atol=0.5), fovx
    plain = cameras_from_plucker(rays, estimate_intrinsics=True)
    plain_rot, _ = pose_errors(plain.c2w, c2w)
    assert plain_rot.min() > 1.0 and plain_rot.min() > 10 * rot.max(), (plain_rot, rot)
    assert (fov_from_intrinsics(plain.K, 64, 64)[1] - fovy).abs().min() > 4.0


def test_huber_and_weights_handle_outliers():
    c2w = random_c2w(3, seed=12)
    clean = plucker_rays(c2w)
    rays = add_outliers(clean, 0.05, seed=13)
    rot, centre = pose_errors(cameras_from_plucker(rays, robust="huber").c2w, c2w)
    assert rot.max() < 1e-6 and centre.max() < 1e-6
    # Zero weights on the corrupted rays make the plain fit exact again.
    weights = (rays == clean).all(dim=1).to(F64)
    assert 0.9 < weights.mean() < 0.99
    rot, centre = pose_errors(cameras_from_plucker(rays, weights=weights).c2w, c2w)
    assert rot.max() < 1e-9 and centre.max() < 1e-9


def test_cameras_from_plucker_rejects_bad_arguments():
    with pytest.raises(ValueError, match="B, 6, H, W"):
        cameras_from_plucker(torch.zeros(6, 8, 8))
    with pytest.raises(ValueError, match="robust"):
        cameras_from_plucker(plucker_rays(random_c2w(1), size=8), robust="tukey")


# ------------------------------------------------------------------ pose utilities


def test_relative_pose_identities():
    a, b = random_c2w(5, seed=14), random_c2w(5, seed=15)
    eye = torch.eye(4, dtype=F64).expand(5, 4, 4)
    assert torch.allclose(relative_pose(a, a), eye, atol=1e-12)
    assert torch.allclose(a @ relative_pose(a, b), b, atol=1e-12)
    assert torch.allclose(relative_pose(a, b) @ relative_pose(b, a), eye, atol=1e-12)
    assert torch.allclose(relative_pose(eye, b), b)


def axis_angle(axis, angle_rad: float) -> torch.Tensor:
    k = torch.tensor(axis, dtype=F64)
    k = k / k.norm()
    Kx = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=F64)
    return torch.eye(3, dtype=F64) + math.sin(angle_rad) * Kx + (1 - math.cos(angle_rad)) * Kx @ Kx


def test_rotation_angle():
    R = random_rotations(1, torch.Generator().manual_seed(16))[0]
    for deg in (37.0, 179.9, 180.0):
        angle = rotation_angle_deg(R, R @ axis_angle([1, 2, -1], math.radians(deg)))
        assert angle.item() == pytest.approx(deg)
    assert rotation_angle_deg(R, R).item() == pytest.approx(0.0, abs=1e-10)


def _acos_angle(R_a: torch.Tensor, R_b: torch.Tensor) -> float:
    """The textbook formula, acos((tr(R_a^T R_b) - 1) / 2), as the five copies of it computed the angle."""
    return math.acos(max(-1.0, min(1.0, (torch.trace(R_a.T @ R_b).item() - 1.0) / 2.0)))


@pytest.mark.parametrize("angle", [1e-9, 1e-7, 1e-3, 1.0, math.pi - 1e-3, math.pi - 1e-7, math.pi - 1e-9])
def test_rotation_angle_keeps_full_precision_near_0_and_180_degrees(angle):
    """Known angles, read back from a rotated (so rounded) product: the atan2 form is exact to ~1e-16 rad
    everywhere, while acos of the trace is off by up to 1e-9 rad (all of a 1e-9 rad angle) near 0 and pi."""
    R = random_rotations(1, torch.Generator().manual_seed(16))[0]
    R_b = R @ axis_angle([1, 2, -1], angle)
    got = math.radians(rotation_angle_deg(R, R_b).item())
    assert abs(got - angle) < 1e-15
    if angle < 1e-6 or math.pi - angle < 1e-6:
        assert abs(_acos_angle(R, R_b) - angle) > 1e-10  # what the acos copies lost here
    # numpy in, numpy out, the same numbers; poses [4, 4] give the angle of their rotations
    T_a, T_b = np.eye(4), np.eye(4)
    T_a[:3, :3], T_b[:3, :3] = R.numpy(), R_b.numpy()
    got_np = rotation_angle_deg(T_a, T_b)
    assert isinstance(got_np, np.floating) and float(got_np) == rotation_angle_deg(R, R_b).item()


def test_rotation_angle_broadcasts_and_keeps_the_array_kind():
    gen = torch.Generator().manual_seed(3)
    R = random_rotations(5, gen)
    pairwise = rotation_angle_deg(R[:, None], R[None, :])
    assert pairwise.shape == (5, 5) and torch.allclose(pairwise, pairwise.T) and pairwise.diagonal().max() < 1e-6
    one_to_all = rotation_angle_deg(R[0].numpy(), R.numpy())
    assert isinstance(one_to_all, np.ndarray) and one_to_all.shape == (5,)
    np.testing.assert_allclose(one_to_all, pairwise[0].numpy(), rtol=1e-14)
    f32 = rotation_angle_deg(R.float(), R.flip(0).float())
    assert f32.dtype == torch.float32 and torch.allclose(f32.double(), rotation_angle_deg(R, R.flip(0)), atol=1e-3)


def test_translation_direction_angle():
    a = torch.tensor([[1.0, 0, 0], [1.0, 1.0, 0], [0, 0, 2.0]], dtype=F64)
    b = torch.tensor([[0, 3.0, 0], [2.0, 2.0, 0], [0, 0, -0.5]], dtype=F64)
    assert torch.allclose(translation_direction_angle_deg(a, b), torch.tensor([90.0, 0.0, 180.0], dtype=F64))


def test_umeyama_recovers_similarity():
    gen = torch.Generator().manual_seed(17)
    src = torch.randn(2, 10, 3, generator=gen, dtype=F64)
    R = random_rotations(2, gen)
    s = torch.tensor([0.3, 4.0], dtype=F64)
    t = torch.randn(2, 3, generator=gen, dtype=F64)
    dst = s[:, None, None] * src @ R.transpose(1, 2) + t[:, None, :]
    s_hat, R_hat, t_hat = umeyama_alignment(src, dst)
    assert torch.allclose(s_hat, s, atol=1e-12)
    assert torch.allclose(R_hat, R, atol=1e-12)
    assert torch.allclose(t_hat, t, atol=1e-12)
    s1, R1, t1 = umeyama_alignment(src, dst, with_scale=False)
    assert torch.equal(s1, torch.ones(2, dtype=F64)) and torch.allclose(R1, R, atol=1e-12)
    # A mirrored target must still give a proper rotation.
    _, R_m, _ = umeyama_alignment(src[0], src[0] * torch.tensor([1.0, 1.0, -1.0], dtype=F64))
    assert torch.det(R_m).item() == pytest.approx(1.0)


def test_camera_centre_errors():
    gt = random_c2w(6, seed=18, spread=2.0)
    # A similarity transform of the whole trajectory is not an error.
    sim = random_c2w(1, seed=19)[0]
    pred = sim @ gt
    pred[:, :3, 3] *= 3.0
    assert camera_centre_errors(pred, gt).max() < 1e-10
    # Hand-checkable case: gt on a unit square (scale = sqrt 2), prediction already aligned except
    # that the Umeyama fit spreads one camera's offset; the error is normalised by sqrt 2.
    square = torch.eye(4, dtype=F64).repeat(4, 1, 1)
    square[:, :3, 3] = torch.tensor([[1.0, 1, 0], [-1, 1, 0], [-1, -1, 0], [1, -1, 0]], dtype=F64)
    moved = square.clone()
    moved[0, 2, 3] = 0.4  # lift one corner out of the plane
    err = camera_centre_errors(moved, square)
    s, R, t = umeyama_alignment(moved[:, :3, 3], square[:, :3, 3])
    expected = ((s * moved[:, :3, 3] @ R.T + t) - square[:, :3, 3]).norm(dim=-1) / math.sqrt(2)
    assert torch.allclose(err, expected) and err.max() > 0.05
    # Errors are relative: scaling the whole scene leaves them unchanged.
    big, big_pred = square.clone(), moved.clone()
    big[:, :3, 3] *= 10
    big_pred[:, :3, 3] *= 10
    assert torch.allclose(camera_centre_errors(big_pred, big), err)


def test_quaternion_round_trip():
    # 90 degrees about z: q = (0, 0, sin 45, cos 45) in ROS (x, y, z, w) order.
    q = torch.tensor([0.0, 0.0, math.sqrt(0.5), math.sqrt(0.5)], dtype=F64)
    Rz = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=F64)
    assert torch.allclose(quaternion_xyzw_to_matrix(q), Rz, atol=1e-12)
    assert torch.allclose(matrix_to_quaternion_xyzw(Rz), q, atol=1e-12)
    R = random_rotations(12, torch.Generator().manual_seed(20)).reshape(3, 4, 3, 3)
    q = matrix_to_quaternion_xyzw(R)
    assert q.shape == (3, 4, 4) and torch.all(q[..., 3] >= 0)
    assert torch.allclose(q.norm(dim=-1), torch.ones(3, 4, dtype=F64))
    assert torch.allclose(quaternion_xyzw_to_matrix(q), R, atol=1e-12)
    assert torch.allclose(quaternion_xyzw_to_matrix(-3.0 * q), R, atol=1e-12)  # sign and scale free
    with pytest.raises(ValueError):
        quaternion_xyzw_to_matrix(torch.zeros(4))


def test_validate_rigid_rejects_each_bad_case():
    good = random_c2w(3, seed=21)
    validate_rigid(good)
    validate_rigid(good[0])
    nearly = good.clone()
    nearly[1, 0, 0] += 1e-7
    validate_rigid(nearly, tol=1e-5)
    cases = {}
    cases["shape"] = good[:, :3, :]
    cases["NaN or inf"] = good.clone()
    cases["NaN or inf"][2, 0, 3] = float("nan")
    inf = good.clone()
    inf[0, 1, 1] = float("inf")
    cases["last row"] = good.clone()
    cases["last row"][1, 3, 0] = 0.1
    cases["orthonormal"] = good.clone()
    cases["orthonormal"][1, :3, :3] *= 1.01
    cases["determinant"] = good.clone()
    cases["determinant"][2, :3, 0] *= -1
    for what, bad in cases.items():
        with pytest.raises(ValueError, match=what):
            validate_rigid(bad)
    with pytest.raises(ValueError, match="NaN or inf"):
        validate_rigid(inf)
    with pytest.raises(ValueError, match="pose 2 of 3"):
        validate_rigid(cases["determinant"])
