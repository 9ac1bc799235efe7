"""Drafts for speculative decoding: geometric ones for camera tokens, fixed token sequences for views.

Camera tokens encode a Plücker ray map, and a rigid camera is fixed by a few of its rays: once some rows of
the token grid are known, the rest are nearly determined. The drafter decodes the known rows of each row's grid
(with the model's partial ray decoder, `gst_model.partial_rays`, which reads the known rows alone; without one,
the full decoder with the unknown positions filled from the current draft), fits a camera to those rays
(least-squares centre, Procrustes rotation — `geometry.cameras_from_plucker` with per-ray weights), renders
that camera's full ray map and encodes it: the tokens after the accepted prefix are the draft. Before a full
row is known the draft is the prior camera's tokens (the identity, or the previous estimate of a tracked
camera). Drafts only decide how many tokens a transformer pass yields; the verification in
`gst_model.generate` keeps the samples' distribution exact whatever the draft.
"""
from __future__ import annotations

import torch

from gst_model import geometry, partial_rays


class GeometricDrafter:
    """A `gst_model.generate.Drafter` for one camera segment of N rows.

    runtime: encodes/decodes ray maps (`encode_rays`, `decode_rays`); camera_offset: vocabulary id of camera
    code 0; prior_c2w [4,4] or [N,4,4] and K_ray [3,3] (ray-map pixels): the camera drafted before any grid row
    is known; refit_rows: refit after every this many newly completed grid rows (0: never refit, draft the prior
    throughout — the cheap choice when the prior is already close, e.g. the previous frame's estimate);
    partial_decoder: a `partial_rays.PartialRayDecoder` for the known rows' rays (None: decode the full grid).
    """

    def __init__(self, runtime, camera_offset: int, grid_size: int, ray_size: int, K_ray: torch.Tensor,
                 prior_c2w: torch.Tensor, *, estimate_intrinsics: bool = False, refit_rows: int = 1,
                 partial_decoder=None):
        self.runtime, self.offset, self.grid, self.size = runtime, camera_offset, grid_size, ray_size
        self.K_ray = torch.as_tensor(K_ray, dtype=torch.float64)
        self.estimate_intrinsics = estimate_intrinsics
        self.refit_rows = refit_rows
        self.partial_decoder = partial_decoder
        prior = torch.as_tensor(prior_c2w, dtype=torch.float64)
        self.prior = self.encode(prior if prior.dim() == 3 else prior[None])
        self.draft: torch.Tensor | None = None  # [N, T] current full-grid draft per row
        self.fitted_rows: torch.Tensor | None = None  # [N] grid rows the current draft was fitted on
        self.fits = 0  # rows refitted, for the benchmark

    def encode(self, c2w: torch.Tensor, K: torch.Tensor | None = None) -> torch.Tensor:
        """Cameras [n,4,4] (intrinsics K [n,3,3] or the drafter's) -> camera token ids [n, T]."""
        rays = geometry.plucker_rays_from_intrinsics(c2w, self.K_ray if K is None else K, self.size, self.size)
        return self.runtime.encode_rays(rays.float()).cpu() + self.offset

    def __call__(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        tokens, lengths = tokens.cpu(), lengths.cpu()
        n, T = tokens.shape
        if self.draft is None:
            self.draft = self.prior.expand(n, -1).clone() if self.prior.shape[0] == 1 else self.prior.clone()
            self.fitted_rows = torch.zeros(n, dtype=torch.long)
        known_rows = lengths // self.grid
        if not self.refit_rows:
            return self.draft.to(tokens.device)
        refit = (known_rows >= self.fitted_rows + self.refit_rows) & (lengths < T)
        if bool(refit.any()):
            idx = refit.nonzero()[:, 0]
            if self.partial_decoder is not None:
                with torch.no_grad():
                    rays = self.partial_decoder(tokens[idx] - self.offset, known_rows[idx]).double()
            else:
                grid = torch.where(torch.arange(T) < lengths[idx, None], tokens[idx], self.draft[idx])
                rays = self.runtime.decode_rays(grid - self.offset).double().cpu()
            rows = partial_rays.known_ray_rows(known_rows[idx], self.grid, self.size)  # [n, R]
            weights = rows[:, :, None].double().expand(-1, -1, self.size)
            fit = geometry.cameras_from_plucker(rays, K=self.K_ray, estimate_intrinsics=self.estimate_intrinsics,
                                                weights=weights)
            self.draft[idx] = self.encode(fit.c2w, fit.K if self.estimate_intrinsics else None)
            self.fitted_rows[idx] = known_rows[idx]
            self.fits += len(idx)
        return self.draft.to(tokens.device)


class TokenDrafter:
    """A fixed draft: the same tokens [T] or [N, T] whatever has been accepted (e.g. the previous greedy
    prediction of a view from the same observation, for a query pose close to the previous one)."""

    def __init__(self, tokens: torch.Tensor):
        self.tokens = tokens if tokens.dim() == 2 else tokens[None]

    def __call__(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.tokens.to(tokens.device).expand(tokens.shape[0], -1)
