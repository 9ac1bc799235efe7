"""Rays of the first rows of a camera token grid, decoded from those rows alone.

Speculative decoding drafts the rest of a camera grid from a rigid camera fitted to the rows already
accepted (`gst_model.drafting`). The camera tokenizer's decoder cannot give those rows' rays on its own: its
convolutions and group norms mix the whole grid, so whatever fills the unknown rows corrupts the known rows'
rays (measured: a camera fitted to one known row of a fully decoded sample predicts the next 8 tokens 94% of
the time greedy, after decoding the partial grid filled with a draft 31%; docs/speculative/report.md).

`PartialRayDecoder` is a copy of that decoder that reads a learned mask code in every unknown row and is
trained (training.train_partial_decoder) to reproduce, under the known rows, the rays the full decoder gives
for the complete grid. Its output under the known rows depends on the known codes only. It only drafts:
the verification keeps the samples' distribution exact whatever it returns.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gst_model.tokenizer import Decoder, VQConfig, VQModel

WEIGHTS_FILE = "camera_partial_decoder.safetensors"


class PartialRayDecoder(nn.Module):
    def __init__(self, config: VQConfig, codebook: torch.Tensor):
        super().__init__()
        self.config = config
        self.register_buffer("codebook", codebook.detach().clone())  # [K, D], as the tokenizer looks codes up
        self.mask_code = nn.Parameter(torch.zeros(config.codebook_dim))
        self.post_quant_conv = nn.Conv2d(config.codebook_dim, config.z_channels, 1)
        self.decoder = Decoder(config)

    @classmethod
    def from_tokenizer(cls, camera_vq: VQModel) -> "PartialRayDecoder":
        """Starts as the tokenizer's own decoder (and codebook), mask code zero."""
        module = cls(camera_vq.config, camera_vq.quantize.codebook())
        module.post_quant_conv.load_state_dict(camera_vq.post_quant_conv.state_dict())
        module.decoder.load_state_dict(camera_vq.decoder.state_dict())
        return module

    def forward(self, codes: torch.Tensor, known_rows: torch.Tensor) -> torch.Tensor:
        """codes [B, g*g] camera code indices (rows from known_rows on are ignored), known_rows [B] ->
        rays [B, 6, R, R]; only the ray-map rows under the known grid rows are meaningful."""
        b, n = codes.shape
        g = int(round(n ** 0.5))
        latents = self.codebook[codes.clamp(0, len(self.codebook) - 1)].view(b, g, g, -1)
        unknown = torch.arange(g, device=codes.device)[None, :] >= known_rows.to(codes.device)[:, None]  # [B, g]
        latents = torch.where(unknown[:, :, None, None], self.mask_code.to(latents.dtype), latents)
        return self.decoder(self.post_quant_conv(latents.permute(0, 3, 1, 2).contiguous()))


def known_ray_rows(known_rows: torch.Tensor, grid: int, ray_size: int) -> torch.Tensor:
    """[B, R] True for the ray-map rows under the first known_rows[b] grid rows."""
    return (torch.arange(ray_size) * grid // ray_size)[None, :] < known_rows[:, None]


def load(model_dir: str | Path, camera_vq: VQModel) -> PartialRayDecoder | None:
    """The model directory's partial decoder, or None when it has none (drafts then decode the full grid)."""
    from gst_model.checkpoint import load_weights

    path = Path(model_dir) / WEIGHTS_FILE
    if not path.is_file():
        return None
    with torch.device("meta"):
        module = PartialRayDecoder(camera_vq.config, torch.empty(camera_vq.config.codebook_size,
                                                                 camera_vq.config.codebook_dim))
    return load_weights(module, path, "cpu").eval().requires_grad_(False)
