"""Camera geometry for GST: Plücker ray maps, pose recovery from ray maps, and pose utilities.

Conventions (those of the official release, utils/ray_utils.py, opengl=False):

* Camera axes are OpenCV / RDF: +x right, +y down, +z forward.
* Poses are camera-to-world 4x4 matrices ``c2w = [[R, t], [0, 1]]``; ``t`` is the camera centre.
* Pixel (column i, row j) has its centre at ``(u, v) = (i + 0.5, j + 0.5)`` in pixel units, so with
  the principal point at ``(W/2, H/2)`` the centres sit at integer + 0.5 from the image centre.
  Intrinsics are ``K = [[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` in these coordinates and a pixel's
  camera-space direction is ``K^-1 [u, v, 1]^T``.
* Ray maps are channels-first ``[B, 6, H, W]``, row-major pixels (index ``[row j, column i]``).
  Channels 0-2 are the moment ``m = o x d``, channels 3-5 the unit world direction ``d``; ``o`` is
  the camera centre. (The release only contains the inverse map; this sign is the one it inverts.)
* The default ray map is 64x64 with a 49.1 degree field of view; the focal length comes from the
  height, ``f = (H/2) / tan(fovy/2)``, and is used for both axes (square pixels).

Everything is batched torch. Ray maps follow the dtype of the pose; pose recovery works in float64
like the official code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import transforms3d.quaternions as t3q
from torch import Tensor

DEFAULT_SIZE = 64
DEFAULT_FOVY_DEG = 49.1

# Tuning constants of the robust losses (95 % efficiency under Gaussian noise).
_HUBER_K = 1.345
_CAUCHY_C = 2.385
# Normalises the median of absolute residuals to a Gaussian standard deviation.
_MAD_TO_SIGMA = 1.4826

# --------------------------------------------------------------------------------------------
# Intrinsics and ray maps
# --------------------------------------------------------------------------------------------


def intrinsics_from_fov(
    fovy_deg: float | Tensor,
    height: int,
    width: int,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """Pinhole intrinsics with square pixels and a centred principal point.

    ``f = (height/2) / tan(fovy/2)`` is used for fx and fy (the official convention: the focal
    comes from the height even for non-square images); ``cx = width/2``, ``cy = height/2``.

    Args:
        fovy_deg: vertical field of view in degrees, a float or a tensor of shape ``[...]``.
    Returns:
        ``K`` of shape ``[..., 3, 3]`` (``[3, 3]`` for a float).
    """
    fovy = torch.as_tensor(fovy_deg, dtype=dtype, device=device)
    f = (height / 2.0) / torch.tan(torch.deg2rad(fovy) / 2.0)
    K = torch.zeros(*f.shape, 3, 3, dtype=dtype, device=f.device)
    K[..., 0, 0] = f
    K[..., 1, 1] = f
    K[..., 0, 2] = width / 2.0
    K[..., 1, 2] = height / 2.0
    K[..., 2, 2] = 1.0
    return K


def fov_from_intrinsics(K: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Nominal fields of view ``(fovx_deg, fovy_deg)``, each of shape ``[...]``, from ``K [..., 3, 3]``.

    ``fov = 2 atan(size / (2 f))``: the angle the image would span with a centred principal point
    (an off-centre principal point makes the two half-angles unequal but not their nominal sum).
    """
    fovx = 2.0 * torch.atan(width / (2.0 * K[..., 0, 0]))
    fovy = 2.0 * torch.atan(height / (2.0 * K[..., 1, 1]))
    return torch.rad2deg(fovx), torch.rad2deg(fovy)


def _pixel_grid(height: int, width: int, dtype: torch.dtype, device) -> Tensor:
    """Homogeneous pixel centres ``(i + 0.5, j + 0.5, 1)`` in row-major order, ``[H*W, 3]``."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device) + 0.5,
        torch.arange(width, dtype=dtype, device=device) + 0.5,
        indexing="ij",
    )
    return torch.stack([u.reshape(-1), v.reshape(-1), torch.ones_like(u).reshape(-1)], dim=-1)


def _camera_directions(K: Tensor, height: int, width: int) -> Tensor:
    """Unit camera-space directions ``normalise(K^-1 [u, v, 1])`` for ``K [B, 3, 3]``: ``[B, H*W, 3]``."""
    pix = _pixel_grid(height, width, K.dtype, K.device).T.expand(K.shape[0], 3, -1)
    # K is upper triangular, so a triangular solve is the exact and cheap K^-1.
    dirs = torch.linalg.solve_triangular(K, pix, upper=True).transpose(1, 2)
    return dirs / dirs.norm(dim=-1, keepdim=True)


def reference_directions(
    size: int = DEFAULT_SIZE,
    fovy_deg: float = DEFAULT_FOVY_DEG,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """Unit ray directions of the identity camera on a ``size x size`` map: ``[size*size, 3]``.

    Row-major pixel order; the official pose decoder aligns decoded directions to these.
    """
    K = intrinsics_from_fov(fovy_deg, size, size, dtype=dtype, device=device)
    return _camera_directions(K[None], size, size)[0]


def _batched(x: Tensor, ndim: int, name: str) -> Tensor:
    """Adds a leading batch axis to an unbatched tensor of ``ndim`` dimensions."""
    if x.dim() == ndim:
        return x[None]
    if x.dim() != ndim + 1:
        raise ValueError(f"{name} must have {ndim} or {ndim + 1} dimensions, got shape {tuple(x.shape)}")
    return x


def plucker_rays_from_intrinsics(c2w: Tensor, K: Tensor, height: int, width: int) -> Tensor:
    """Plücker ray map of pinhole cameras with arbitrary intrinsics.

    Args:
        c2w: camera-to-world poses ``[B, 4, 4]`` (or ``[4, 4]``), OpenCV camera axes.
        K: intrinsics ``[B, 3, 3]`` or ``[3, 3]`` (shared) in pixel units of the ray map.
    Returns:
        ``[B, 6, height, width]`` in the dtype of ``c2w``: channels 0-2 moment ``o x d``,
        channels 3-5 unit world direction ``d = normalise(R K^-1 [u, v, 1])``.
    """
    c2w = _batched(c2w, 2, "c2w")
    K = _batched(K.to(c2w), 2, "K").expand(c2w.shape[0], 3, 3)
    dirs = _camera_directions(K, height, width) @ c2w[:, :3, :3].transpose(1, 2)
    # Re-normalise after the rotation, as the official code does (R is rotation only up to rounding).
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = c2w[:, None, :3, 3].expand_as(dirs)
    rays = torch.cat([torch.cross(origins, dirs, dim=-1), dirs], dim=-1)  # [B, N, 6]
    return rays.transpose(1, 2).reshape(c2w.shape[0], 6, height, width)


def plucker_rays(c2w: Tensor, size: int = DEFAULT_SIZE, fovy_deg: float = DEFAULT_FOVY_DEG) -> Tensor:
    """Official GST camera representation: ``[B, 6, size, size]`` Plücker map of ``c2w [B, 4, 4]``.

    Square map, field of view ``fovy_deg`` for both axes, principal point at the centre.
    """
    K = intrinsics_from_fov(fovy_deg, size, size, dtype=c2w.dtype, device=c2w.device)
    return plucker_rays_from_intrinsics(c2w, K, size, size)


# --------------------------------------------------------------------------------------------
# Pose (and intrinsics) recovery from ray maps
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraFit:
    """Result of :func:`cameras_from_plucker` (all float64).

    Attributes:
        c2w: ``[B, 4, 4]`` camera-to-world poses, OpenCV axes.
        K: ``[B, 3, 3]`` intrinsics in ray-map pixels: the assumed ones, or the estimated ones
            (focal lengths, principal point and a free skew term) with ``estimate_intrinsics``.
        residual: ``[B]`` weighted RMS angle, in radians, between each decoded direction and the
            fitted camera's direction for that pixel.
        line_residual: ``[B]`` weighted RMS distance, in world units, from the fitted centre to
            each decoded ray line.
        inlier_fraction: ``[B]`` share of (non-zero-weight) rays whose two residuals are both
            within ``inlier_threshold`` robust standard deviations; ``None`` without ``robust``.
    The weights in both RMS values are the final fit's (user weights times robust weights).
    """

    c2w: Tensor
    K: Tensor
    residual: Tensor
    line_residual: Tensor
    inlier_fraction: Tensor | None = None


def _weighted_sum(w: Tensor, x: Tensor) -> Tensor:
    """``sum_n w[b, n] x[b, n, ...]`` for ``w [B, N]``."""
    return torch.einsum("bn,bn...->b...", w, x)


def _fit_centre(d: Tensor, p: Tensor, w: Tensor) -> Tensor:
    """Point closest, in weighted least squares, to the lines ``p + s d`` (``d`` unit): ``[B, 3]``."""
    eye = torch.eye(3, dtype=d.dtype, device=d.device)
    # sum w (I - d d^T), written as one matmul instead of N projector matrices.
    normal = w.sum(-1)[:, None, None] * eye - (w[..., None] * d).transpose(1, 2) @ d
    # p = d x m is already orthogonal to d, so (I - d d^T) p = p.
    return torch.linalg.solve(normal, _weighted_sum(w, p))


def _procrustes(d: Tensor, ref: Tensor, w: Tensor) -> Tensor:
    """Rotation ``R [B, 3, 3]`` minimising ``sum w |d - R ref|^2`` (Kabsch, with det sign fix)."""
    cov = _weighted_sum(w, d[..., :, None] * ref[..., None, :])
    U, _, Vh = torch.linalg.svd(cov)
    fix = torch.ones_like(cov[..., 0])
    fix[..., 2] = torch.sign(torch.det(U @ Vh))
    return U @ torch.diag_embed(fix) @ Vh


def _dlt(d: Tensor, pix: Tensor, w: Tensor, K_guess: Tensor) -> Tensor:
    """Weighted DLT for ``M = R K^-1`` with ``d ∝ M [u, v, 1]``: ``M [B, 3, 3]``, ``det M > 0``.

    Args: unit directions ``d [B, N, 3]``, homogeneous pixels ``pix [N, 3]`` or ``[B, N, 3]``,
    weights ``w [B, N]``, intrinsics guess ``K_guess [B, 3, 3]``.

    Each ray gives ``d x (M x) = 0``, linear in the 9 entries of M; the weighted least-squares
    solution of unit norm is the smallest eigenvector of the 9x9 normal matrix. Pixels are first
    normalised to rays of the guessed intrinsics, ``x = K_guess^-1 [u, v, 1]``, so the unknown
    ``R K^-1 K_guess`` is close to a rotation and well conditioned (Hartley-style normalisation).
    """
    B, N = d.shape[:2]
    eye = torch.eye(3, dtype=d.dtype, device=d.device)
    x = torch.linalg.solve_triangular(K_guess, pix.transpose(-1, -2).expand(B, 3, N), upper=True)
    x = x.transpose(1, 2)
    # |d x (M x)|^2 = (M x)^T (I - d d^T) (M x) for unit d, so with vec(M) row-major the normal
    # matrix is sum_n w_n (I - d_n d_n^T) kron (x_n x_n^T): one [9, N] @ [N, 9] product per batch.
    proj = (eye - d[..., :, None] * d[..., None, :]).reshape(B, N, 9)
    outer = (x[..., :, None] * x[..., None, :]).reshape(B, N, 9)
    normal = (w[..., None] * proj).transpose(1, 2) @ outer  # [B, (r, s), (a, c)]
    normal = normal.reshape(B, 3, 3, 3, 3).permute(0, 1, 3, 2, 4).reshape(B, 9, 9)
    M_normalised = torch.linalg.eigh(normal).eigenvectors[..., 0].reshape(B, 3, 3)
    M = torch.linalg.solve_triangular(K_guess, M_normalised, upper=True, left=False)
    # The DLT fixes M only up to sign; det(M) = 1/(fx fy) > 0 for any camera with positive focals.
    return M * torch.sign(torch.det(M))[:, None, None]


def _decompose_projective(M: Tensor) -> tuple[Tensor, Tensor]:
    """Split ``M = R K^-1`` (``det M > 0``) into a proper rotation R and K with positive diagonal.

    ``K^-1`` is upper triangular, so this is exactly a QR decomposition of M.
    """
    Q, U = torch.linalg.qr(M)
    # Make diag(U) positive (flip matching columns of Q); then det(Q) = det(M)/det(U) > 0.
    signs = torch.where(torch.diagonal(U, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(U)
    Q = Q * signs[:, None, :]
    U = U * signs[:, :, None]
    K_inv = U / U[:, 2:3, 2:3]
    eye = torch.eye(3, dtype=M.dtype, device=M.device).expand_as(M)
    return Q, torch.linalg.solve_triangular(K_inv, eye, upper=True)


def _lmeds_projective(
    d: Tensor, pix: Tensor, valid: Tensor, K_guess: Tensor, hypotheses: int = 64, scored: int = 1024
) -> Tensor:
    """Outlier-resistant starting ``M [B, 3, 3]`` for the robust DLT: least median of squares.

    A least-squares DLT is ruined by a few percent of random rays (it can trade the inliers' fit for
    a nearly rank-one M), and the IRLS that follows needs a start whose residuals already separate
    inliers from outliers. So: fit M to ``hypotheses`` random minimal sets of 4 rays and keep the one
    with the smallest median angular residual on ``scored`` random rays (in principle tolerating
    up to half the rays as outliers).
    A fixed seed keeps the result deterministic.
    """
    B = d.shape[0]
    gen = torch.Generator(device=d.device).manual_seed(0)
    picks = torch.multinomial(valid.to(d.dtype), hypotheses * 4 + scored, replacement=True, generator=gen)
    sample, score_idx = picks[:, : hypotheses * 4], picks[:, hypotheses * 4 :]
    d_s = torch.gather(d, 1, sample[..., None].expand(-1, -1, 3)).reshape(B * hypotheses, 4, 3)
    pix_s = pix[sample].reshape(B * hypotheses, 4, 3)
    K_rep = K_guess.repeat_interleave(hypotheses, dim=0)
    M = _dlt(d_s, pix_s, torch.ones_like(d_s[..., 0]), K_rep).reshape(B, hypotheses, 3, 3)
    d_score = torch.gather(d, 1, score_idx[..., None].expand(-1, -1, 3))  # [B, S, 3]
    predicted = pix[score_idx][:, None] @ M.transpose(-1, -2)  # [B, hypotheses, S, 3]
    median = _angles(d_score[:, None], predicted).median(dim=-1).values
    # Degenerate samples (e.g. collinear pixels) can give NaN; never pick those.
    best = torch.nan_to_num(median, nan=math.inf).argmin(dim=-1)
    return M[torch.arange(B, device=d.device), best]


def _angles(a: Tensor, b: Tensor) -> Tensor:
    """Angle between vectors along the last axis; atan2 keeps precision near 0 and pi."""
    return torch.atan2(torch.cross(a, b, dim=-1).norm(dim=-1), (a * b).sum(-1))


def _robust_scale(r: Tensor, valid: Tensor) -> Tensor:
    """Robust spread ``1.4826 * median |r|`` over valid rays, ``[B]``, floored to stay positive."""
    med = torch.nanmedian(torch.where(valid, r, torch.nan), dim=-1).values
    return (_MAD_TO_SIGMA * med).clamp_min(1e-12)


def _robust_weights(u: Tensor, kind: str) -> Tensor:
    """IRLS weights ``psi(u)/u`` for scale-normalised residuals ``u >= 0``."""
    if kind == "huber":
        return torch.where(u <= _HUBER_K, torch.ones_like(u), _HUBER_K / u.clamp_min(1e-300))
    return 1.0 / (1.0 + (u / _CAUCHY_C) ** 2)


def cameras_from_plucker(
    rays: Tensor,
    fovy_deg: float = DEFAULT_FOVY_DEG,
    *,
    K: Tensor | None = None,
    estimate_intrinsics: bool = False,
    weights: Tensor | None = None,
    robust: str | None = None,
    iterations: int = 20,
    inlier_threshold: float = 3.0,
) -> CameraFit:
    """Recover cameras from (possibly decoded, noisy) Plücker ray maps.

    Directions are re-normalised and each ray's foot point ``p = d x m`` rebuilt. The camera centre
    is the (weighted) least-squares point closest to all lines, solving
    ``sum w (I - d d^T) c = sum w (I - d d^T) p``. The rotation is fitted in one of two modes:

    * fixed intrinsics (default; the official ``plucker_to_camera``): orthogonal Procrustes of the
      decoded world directions onto the unit directions of the identity camera with intrinsics
      ``K`` (default: ``intrinsics_from_fov(fovy_deg, H, W)``).
    * ``estimate_intrinsics=True``: DLT for ``M = R K^-1`` from pixel coordinates to directions,
      then QR into a proper rotation and an upper-triangular K with positive diagonal.
      ``fovy_deg`` / ``K`` then only normalise the DLT's pixel coordinates (exact rays give the
      exact answer whatever they are; with noise they weigh the algebraic error slightly).

    Args:
        rays: ``[B, 6, H, W]`` Plücker maps (channels moment, direction), any float dtype.
        weights: optional non-negative per-ray weights ``[B, H, W]`` or ``[H, W]``.
        robust: ``None`` (plain least squares), ``"huber"`` or ``"cauchy"``: iteratively
            reweighted least squares, ``iterations`` refits, with separate weights for the centre
            fit (line distances) and the rotation fit (direction angles), each residual scaled by
            its robust standard deviation. ``"cauchy"`` down-weights gross outliers to almost
            nothing and tolerates more of them than Huber (in tests with random lines and 0.005
            noise: the fixed-intrinsics centre held to 35 % outliers with Cauchy, 20 % with Huber;
            both fail at 50 %). With ``estimate_intrinsics`` the IRLS starts from a
            least-median-of-squares fit of random 4-ray samples (deterministic), and "cauchy" is
            the one to use: Huber keeps some influence of gross outliers, which the algebraic DLT
            error does not withstand (at a 20 degree field of view it erred by 5 degrees with 10 %
            outliers and failed with 20 %, where Cauchy stayed within about 1 degree up to 30 %).
        inlier_threshold: residual, in robust standard deviations, below which a ray counts as an
            inlier in ``CameraFit.inlier_fraction``.
    Returns:
        :class:`CameraFit` with float64 tensors.
    """
    if rays.dim() != 4 or rays.shape[1] != 6:
        raise ValueError(f"rays must have shape [B, 6, H, W], got {tuple(rays.shape)}")
    if robust not in (None, "huber", "cauchy"):
        raise ValueError(f"robust must be None, 'huber' or 'cauchy', got {robust!r}")
    B, _, H, W = rays.shape
    flat = rays.to(torch.float64).reshape(B, 6, H * W).transpose(1, 2)
    d = flat[..., 3:] / flat[..., 3:].norm(dim=-1, keepdim=True).clamp_min(1e-300)
    p = torch.cross(d, flat[..., :3], dim=-1)

    base = torch.ones(B, H * W, dtype=torch.float64, device=rays.device)
    if weights is not None:
        base = base * weights.to(base).reshape(-1, H * W)
    valid = base > 0

    if K is None:
        K = intrinsics_from_fov(fovy_deg, H, W, device=rays.device)
    K_prior = _batched(K.to(base), 2, "K").expand(B, 3, 3)
    pix = _pixel_grid(H, W, torch.float64, rays.device)
    ref = None if estimate_intrinsics else _camera_directions(K_prior, H, W)

    w_line, w_dir = base, base
    K_fit = K_prior
    if robust and estimate_intrinsics:
        M = _lmeds_projective(d, pix, valid, K_prior)
        r_dir = _angles(d, pix @ M.transpose(1, 2))
        w_dir = base * _robust_weights(r_dir / _robust_scale(r_dir, valid)[:, None], robust)
    n_fits = iterations + 1 if robust else 1
    for it in range(n_fits):
        centre = _fit_centre(d, p, w_line)
        if estimate_intrinsics:
            R, K_fit = _decompose_projective(_dlt(d, pix, w_dir, K_prior))
            predicted = _camera_directions(K_fit, H, W) @ R.transpose(1, 2)
        else:
            R = _procrustes(d, ref, w_dir)
            predicted = ref @ R.transpose(1, 2)
        r_line = torch.cross(d, centre[:, None, :] - p, dim=-1).norm(dim=-1)
        r_dir = _angles(d, predicted)
        if it == n_fits - 1:
            break
        w_line = base * _robust_weights(r_line / _robust_scale(r_line, valid)[:, None], robust)
        w_dir = base * _robust_weights(r_dir / _robust_scale(r_dir, valid)[:, None], robust)

    c2w = torch.eye(4, dtype=torch.float64, device=rays.device).repeat(B, 1, 1)
    c2w[:, :3, :3] = R
    c2w[:, :3, 3] = centre

    def rms(r: Tensor, w: Tensor) -> Tensor:
        return torch.sqrt(_weighted_sum(w, r**2) / w.sum(-1))

    inlier_fraction = None
    if robust:
        inlier = (
            valid
            & (r_line <= inlier_threshold * _robust_scale(r_line, valid)[:, None])
            & (r_dir <= inlier_threshold * _robust_scale(r_dir, valid)[:, None])
        )
        inlier_fraction = inlier.sum(-1).to(base) / valid.sum(-1).to(base)
    return CameraFit(
        c2w=c2w,
        K=K_fit.clone(),
        residual=rms(r_dir, w_dir),
        line_residual=rms(r_line, w_line),
        inlier_fraction=inlier_fraction,
    )


# --------------------------------------------------------------------------------------------
# Pose utilities
# --------------------------------------------------------------------------------------------


def invert_rigid(T: Tensor) -> Tensor:
    """Inverse of rigid transforms ``[..., 4, 4]`` via ``[R^T, -R^T t]`` (exact for rigid input)."""
    R_t = T[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(T)
    out[..., :3, :3] = R_t
    out[..., :3, 3] = -(R_t @ T[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def relative_pose(c2w_a: Tensor, c2w_b: Tensor) -> Tensor:
    """Pose of camera b in camera a's frame: ``inv(c2w_a) @ c2w_b``, ``[..., 4, 4]``."""
    return invert_rigid(c2w_a) @ c2w_b


def rotation_angle(R):
    """Angle in radians, in [0, pi], of rotations ``[..., 3, 3]`` (a torch tensor or a numpy array in, the
    same kind out); of poses ``[..., 4, 4]``, their rotation part.

    ``atan2(sin, cos)``, the sine from the antisymmetric part (its axis vector has length ``2 sin``) and the
    cosine from the trace, ``(tr R - 1) / 2``. The textbook ``acos((tr R - 1) / 2)`` loses half the digits
    near 0 and 180 degrees, where the cosine is flat: in float64 it returns exactly 0 (or pi) for angles
    within ~1.5e-8 rad of them.
    """
    xp = torch if isinstance(R, Tensor) else np
    R = R[..., :3, :3]
    sin2 = ((R[..., 2, 1] - R[..., 1, 2]) ** 2 + (R[..., 0, 2] - R[..., 2, 0]) ** 2
            + (R[..., 1, 0] - R[..., 0, 1]) ** 2)
    cos = (R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1.0) / 2.0
    return xp.arctan2(xp.sqrt(sin2) / 2.0, cos)


def rotation_angle_deg(R_a, R_b):
    """Geodesic angle in degrees between rotations (or the rotations of poses) ``[..., 3|4, 3|4]``: the
    angle of ``R_a^T R_b``, broadcast over the leading axes. Torch or numpy, as `rotation_angle`."""
    R_a, R_b = R_a[..., :3, :3], R_b[..., :3, :3]
    if isinstance(R_a, Tensor):
        return torch.rad2deg(rotation_angle(R_a.transpose(-1, -2) @ R_b))
    return np.rad2deg(rotation_angle(np.swapaxes(R_a, -1, -2) @ R_b))


def translation_direction_angle_deg(t_a: Tensor, t_b: Tensor) -> Tensor:
    """Angle in degrees between translation vectors ``[..., 3]``, ignoring their lengths.

    Scale-free, so usable for monocular poses known only up to scale. A zero vector gives 0.
    """
    return torch.rad2deg(_angles(t_a, t_b))


def umeyama_alignment(src: Tensor, dst: Tensor, with_scale: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Similarity ``(s, R, t)`` minimising ``sum |dst_n - (s R src_n + t)|^2`` (Umeyama 1991).

    Args:
        src, dst: corresponding points ``[..., N, 3]``; N >= 3 non-collinear for a unique R.
        with_scale: if False, ``s = 1`` (rigid alignment).
    Returns:
        ``s [...]``, ``R [..., 3, 3]`` (proper rotation), ``t [..., 3]``.
    """
    mu_s, mu_d = src.mean(-2), dst.mean(-2)
    src_c, dst_c = src - mu_s[..., None, :], dst - mu_d[..., None, :]
    cov = dst_c.transpose(-1, -2) @ src_c / src.shape[-2]
    U, S, Vh = torch.linalg.svd(cov)
    fix = torch.ones_like(S)
    fix[..., 2] = torch.sign(torch.det(U @ Vh))  # forbid reflections
    R = U @ torch.diag_embed(fix) @ Vh
    if with_scale:
        s = (S * fix).sum(-1) / (src_c**2).sum((-1, -2)) * src.shape[-2]
    else:
        s = torch.ones_like(S[..., 0])
    t = mu_d - s[..., None] * (R @ mu_s[..., None])[..., 0]
    return s, R, t


def camera_centre_errors(pred_c2w: Tensor, gt_c2w: Tensor) -> Tensor:
    """Per-camera centre errors after similarity alignment, relative to the scene scale.

    Predicted centres ``[..., N]`` (from ``pred_c2w [..., N, 4, 4]``) are aligned to the ground truth
    ones by :func:`umeyama_alignment` with scale; the error of each camera is its distance to the
    ground-truth centre divided by the scene scale, the largest distance of a ground-truth centre
    from their centroid (RayDiffusion's camera-centre metric; accuracy there = share below 0.1).
    Returns ``[..., N]``.
    """
    pred, gt = pred_c2w[..., :3, 3], gt_c2w[..., :3, 3]
    s, R, t = umeyama_alignment(pred, gt, with_scale=True)
    aligned = s[..., None, None] * pred @ R.transpose(-1, -2) + t[..., None, :]
    scale = (gt - gt.mean(-2, keepdim=True)).norm(dim=-1).amax(-1)
    return (aligned - gt).norm(dim=-1) / scale[..., None]


def matrix_to_quaternion_xyzw(R: Tensor) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` to unit quaternions ``[..., 4]`` in ROS order (x, y, z, w).

    Uses transforms3d's eigenvector method (tolerant of slightly non-orthogonal input); w >= 0.
    """
    mats = R.detach().cpu().double().numpy().reshape(-1, 3, 3)
    wxyz = np.stack([t3q.mat2quat(m) for m in mats]) if len(mats) else np.zeros((0, 4))
    return torch.as_tensor(wxyz[:, [1, 2, 3, 0]].reshape(*R.shape[:-2], 4), dtype=R.dtype, device=R.device)


def quaternion_xyzw_to_matrix(q: Tensor) -> Tensor:
    """Quaternions ``[..., 4]`` in ROS order (x, y, z, w) to rotation matrices ``[..., 3, 3]``.

    Non-unit quaternions are normalised; zero or non-finite ones raise ValueError (transforms3d
    would silently return the identity for zero).
    """
    qs = q.detach().cpu().double().numpy().reshape(-1, 4)
    norms = np.linalg.norm(qs, axis=-1)
    if not np.all(np.isfinite(qs)) or np.any(norms < 1e-12):
        raise ValueError("quaternions must be finite and non-zero")
    mats = np.stack([t3q.quat2mat(x[[3, 0, 1, 2]]) for x in qs]) if len(qs) else np.zeros((0, 3, 3))
    return torch.as_tensor(mats.reshape(*q.shape[:-1], 3, 3), dtype=q.dtype, device=q.device)


def validate_rigid(c2w: Tensor, tol: float = 1e-5) -> None:
    """Raise ValueError unless ``c2w [..., 4, 4]`` holds finite proper rigid transforms.

    Checks, in order: shape, finiteness, last row ``[0, 0, 0, 1]``, ``R^T R = I`` and ``det R = +1``,
    each to absolute tolerance ``tol``. The message names the first offending matrix.
    """
    c2w = torch.as_tensor(c2w)
    if c2w.dim() < 2 or tuple(c2w.shape[-2:]) != (4, 4):
        raise ValueError(f"pose must have shape [..., 4, 4], got {tuple(c2w.shape)}")
    T = c2w.detach().double().reshape(-1, 4, 4)

    def fail(bad: Tensor, what: str) -> None:
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0, 0])
            raise ValueError(f"pose {i} of {T.shape[0]} (flattened batch): {what}")

    fail(~torch.isfinite(T).all(dim=(-1, -2)), "contains NaN or inf")
    last = T.new_tensor([0.0, 0.0, 0.0, 1.0])
    fail((T[:, 3] - last).abs().amax(-1) > tol, "last row is not [0, 0, 0, 1]")
    R = T[:, :3, :3]
    ortho = (R.transpose(1, 2) @ R - torch.eye(3, dtype=R.dtype)).abs().amax((-1, -2))
    fail(ortho > tol, "rotation block is not orthonormal")
    fail((torch.det(R) - 1.0).abs() > tol, "rotation determinant is not +1 (reflection)")


_CV_GL_FLIP = (1.0, -1.0, -1.0, 1.0)


def opengl_to_opencv(c2w: Tensor) -> Tensor:
    """Camera-to-world ``[..., 4, 4]`` with OpenGL camera axes (x right, y up, z back) to OpenCV ones.

    Flipping the camera's y and z axes is a right-multiplication by ``diag(1, -1, -1, 1)``; the centre
    is unchanged. The map is its own inverse.
    """
    return c2w * c2w.new_tensor(_CV_GL_FLIP)


def opencv_to_opengl(c2w: Tensor) -> Tensor:
    """Camera-to-world ``[..., 4, 4]`` with OpenCV camera axes to OpenGL ones (see opengl_to_opencv)."""
    return c2w * c2w.new_tensor(_CV_GL_FLIP)
