"""VQ tokenizers of GST: a VQGAN-style convolutional encoder/decoder with a cosine
(l2-normalised) vector quantizer.

The module layout and parameter names follow the official GST release (LlamaGen lineage)
exactly, so the official image (``"VQ-16"``) and camera (``"VQ-4"``) checkpoints load with
``strict=True``. Architecture (see ``shared/reference/GST_REFERENCE.md`` section 3):

* encoder: ``conv_in`` 3x3 -> one level per channel multiplier, each with ``num_res_blocks``
  residual blocks (+ a single-head attention block after every residual block of the deepest
  level) and a downsampling conv except after the deepest level -> ``mid`` = res, attn, res ->
  GroupNorm, swish, ``conv_out`` 3x3 to ``z_channels``.
* decoder: ``conv_in`` 3x3 -> ``mid`` = res, attn, res -> levels deepest first, each with
  ``num_res_blocks + 1`` residual blocks (attention after each in the first, deepest level)
  and a nearest x2 upsample + 3x3 conv except after the last level -> GroupNorm, swish,
  ``conv_out`` 3x3 to ``out_channels``.
* ``quant_conv`` / ``post_quant_conv``: 1x1 convs between ``z_channels`` and ``codebook_dim``.
* quantizer: latents and codebook rows are l2-normalised, nearest neighbour (= cosine match),
  the looked-up code is the normalised row; codebook loss + beta * commitment loss and a
  straight-through estimator.

Token indices are laid out row-major over the latent grid: ``index[b, r * w + c]``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "VQConfig",
    "VQ_PRESETS",
    "VQEncoding",
    "VectorQuantizer",
    "Encoder",
    "Decoder",
    "VQModel",
]

CODEBOOK_USAGE_SLOTS = 65536  # size of the official (unused at inference) usage buffer


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclass
class VQConfig:
    """Tokenizer hyper-parameters. Defaults are the official image tokenizer (VQ-16)."""

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128  # "ch"; hard-coded to 128 in the official release
    encoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2  # per encoder level; every decoder level has num_res_blocks + 1
    z_channels: int = 256
    codebook_size: int = 16384
    codebook_dim: int = 8
    codebook_l2_norm: bool = True
    commit_beta: float = 0.25
    entropy_loss_weight: float = 0.0
    entropy_temperature: float = 0.01
    dropout: float = 0.0
    use_attention: bool = True  # attention in the deepest level + mid (official: True)
    norm_groups: int = 32
    norm_eps: float = 1e-6
    codebook_usage_slots: int = CODEBOOK_USAGE_SLOTS  # official buffer length; 0 = no buffer

    def __post_init__(self) -> None:
        self.encoder_ch_mult = tuple(int(m) for m in self.encoder_ch_mult)
        self.decoder_ch_mult = tuple(int(m) for m in self.decoder_ch_mult)
        if len(self.encoder_ch_mult) != len(self.decoder_ch_mult):
            raise ValueError("encoder_ch_mult and decoder_ch_mult must have the same length")
        if len(self.encoder_ch_mult) < 1:
            raise ValueError("at least one resolution level is required")
        widths = {self.base_channels * m for m in self.encoder_ch_mult + self.decoder_ch_mult}
        for w in sorted(widths):
            if w % self.norm_groups:
                raise ValueError(f"norm_groups={self.norm_groups} does not divide width {w}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "VQConfig":
        if name not in VQ_PRESETS:
            raise KeyError(f"unknown VQ preset {name!r}; choose from {sorted(VQ_PRESETS)}")
        return replace(VQ_PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["encoder_ch_mult"] = list(self.encoder_ch_mult)
        d["decoder_ch_mult"] = list(self.decoder_ch_mult)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VQConfig":
        return cls(**dict(d))


VQ_PRESETS: dict[str, VQConfig] = {
    # Official image tokenizer: 256x256 RGB -> 16x16 tokens, 71,883,403 parameters.
    "VQ-16": VQConfig(),
    # Official camera tokenizer: 64x64 Pluecker map (6 ch) -> 16x16 tokens, 22,902,410 parameters.
    "VQ-4": VQConfig(
        in_channels=6, out_channels=6, encoder_ch_mult=(1, 2, 2), decoder_ch_mult=(1, 2, 2),
        codebook_size=2048, codebook_dim=4,
    ),
    # CPU-trainable image tokenizer: 64x64 RGB -> 8x8 tokens. Narrow and shallow so it trains in
    # minutes on 2 CPU cores (the full-width levels at 64x64 dominate the cost).
    "image-small": VQConfig(
        base_channels=16, encoder_ch_mult=(1, 2, 4, 4), decoder_ch_mult=(1, 2, 4, 4), num_res_blocks=1,
        z_channels=64, codebook_size=1024, codebook_dim=8, norm_groups=8,
    ),
    # CPU-trainable camera tokenizer: 32x32 Pluecker map -> 8x8 tokens. Ray maps of pinhole cameras
    # are smooth and low-dimensional, so a very small network without attention suffices.
    "camera-small": VQConfig(
        in_channels=6, out_channels=6, base_channels=16, encoder_ch_mult=(1, 2, 2),
        decoder_ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=32, codebook_size=512, codebook_dim=4,
        norm_groups=8, use_attention=False,
    ),
    # The tiny camera tokenizer of the official golden vectors (section (c)): 64x64 -> 16x16.
    "camera-golden-tiny": VQConfig(
        in_channels=6, out_channels=6, base_channels=32, encoder_ch_mult=(1, 2, 2),
        decoder_ch_mult=(1, 2, 2), z_channels=32, codebook_size=64, codebook_dim=4,
    ),
}


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


def _norm(channels: int, cfg: VQConfig) -> nn.GroupNorm:
    return nn.GroupNorm(cfg.norm_groups, channels, eps=cfg.norm_eps, affine=True)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """norm, swish, conv3x3, norm, swish, dropout, conv3x3 + (1x1 shortcut if widths differ)."""

    def __init__(self, in_ch: int, out_ch: int, cfg: VQConfig):
        super().__init__()
        self.norm1 = _norm(in_ch, cfg)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch, cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 conv projections, scale 1/sqrt(C)."""

    def __init__(self, ch: int, cfg: VQConfig):
        super().__init__()
        self.norm = _norm(ch, cfg)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q = self.q(y).flatten(2).transpose(1, 2)  # [B, HW, C]
        k = self.k(y).flatten(2)  # [B, C, HW]
        v = self.v(y).flatten(2)  # [B, C, HW]
        attn = torch.softmax(torch.bmm(q, k) * (c ** -0.5), dim=-1)  # [B, HW(query), HW(key)]
        out = torch.bmm(v, attn.transpose(1, 2)).view(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Zero-pad one pixel right/bottom, then 3x3 stride-2 conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest-neighbour x2 (computed in float32), then 3x3 conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            x = F.interpolate(x.float(), scale_factor=2.0, mode="nearest").to(x.dtype)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class _Level(nn.Module):
    """One resolution level: ``res`` blocks, optional ``attn`` blocks, optional resampler."""

    def __init__(self, in_ch: int, out_ch: int, n_res: int, attn: bool, cfg: VQConfig):
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()
        for _ in range(n_res):
            self.res.append(ResnetBlock(in_ch, out_ch, cfg))
            in_ch = out_ch
            if attn:
                self.attn.append(AttnBlock(out_ch, cfg))

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.res):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
        return h


def _mid(ch: int, cfg: VQConfig) -> nn.ModuleList:
    attn = AttnBlock(ch, cfg) if cfg.use_attention else nn.Identity()
    return nn.ModuleList([ResnetBlock(ch, ch, cfg), attn, ResnetBlock(ch, ch, cfg)])


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, mult = cfg.base_channels, cfg.encoder_ch_mult
        n = len(mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        block_in = ch
        for i in range(n):
            block_out = ch * mult[i]
            level = _Level(block_in, block_out, cfg.num_res_blocks,
                           attn=cfg.use_attention and i == n - 1, cfg=cfg)
            block_in = block_out
            if i != n - 1:
                level.downsample = Downsample(block_in)
            self.conv_blocks.append(level)
        self.mid = _mid(block_in, cfg)
        self.norm_out = _norm(block_in, cfg)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level.run_blocks(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, mult = cfg.base_channels, cfg.decoder_ch_mult
        n = len(mult)
        block_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _mid(block_in, cfg)
        self.conv_blocks = nn.ModuleList()
        for i in range(n):  # deepest (lowest resolution) level first
            block_out = ch * mult[n - 1 - i]
            level = _Level(block_in, block_out, cfg.num_res_blocks + 1,
                           attn=cfg.use_attention and i == 0, cfg=cfg)
            block_in = block_out
            if i != n - 1:
                level.upsample = Upsample(block_in)
            self.conv_blocks.append(level)
        self.norm_out = _norm(block_in, cfg)
        self.conv_out = nn.Conv2d(block_in, cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level.run_blocks(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


# --------------------------------------------------------------------------------------
# Quantizer
# --------------------------------------------------------------------------------------


@dataclass
class VQEncoding:
    """Result of :meth:`VQModel.encode`.

    ``quant``: quantized latents [B, D, h, w] (straight-through: forward value = code,
    gradient flows to ``prequant``); ``indices``: [B, h*w] int64, row-major;
    ``prequant``: quant_conv output before l2 normalisation [B, D, h, w];
    ``codebook_loss``: mean ||sg(z) - e||^2; ``commitment_loss``: beta * mean ||z - sg(e)||^2;
    ``entropy_loss``: weighted entropy regulariser (0 unless enabled);
    ``perplexity`` / ``usage``: code statistics of this batch (no gradient).
    """

    quant: torch.Tensor
    indices: torch.Tensor
    prequant: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    entropy_loss: torch.Tensor
    perplexity: torch.Tensor
    usage: torch.Tensor

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.quant.shape[-2]), int(self.quant.shape[-1])

    @property
    def loss(self) -> torch.Tensor:
        """Total quantizer loss (codebook + beta * commitment + entropy)."""
        return self.codebook_loss + self.commitment_loss + self.entropy_loss


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.codebook_size = cfg.codebook_size
        self.codebook_dim = cfg.codebook_dim
        self.l2_norm = cfg.codebook_l2_norm
        self.beta = cfg.commit_beta
        self.entropy_weight = cfg.entropy_loss_weight
        self.entropy_temperature = cfg.entropy_temperature
        # pass the storage so nn.Embedding skips its own normal_ init (we re-init below)
        self.embedding = nn.Embedding(
            cfg.codebook_size, cfg.codebook_dim,
            _weight=torch.empty(cfg.codebook_size, cfg.codebook_dim))
        if not self.embedding.weight.is_meta:
            with torch.no_grad():
                self.embedding.weight.uniform_(-1.0 / cfg.codebook_size, 1.0 / cfg.codebook_size)
                if self.l2_norm:
                    self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))
        if cfg.codebook_usage_slots > 0:
            # Kept for strict compatibility with official checkpoints; never read here.
            self.register_buffer("codebook_used", torch.zeros(cfg.codebook_usage_slots))

    def codebook(self) -> torch.Tensor:
        """The codebook actually used for matching and lookup ([K, D], normalised if l2)."""
        w = self.embedding.weight
        return F.normalize(w, p=2, dim=-1) if self.l2_norm else w

    def _distances(self, flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        return (flat.pow(2).sum(dim=1, keepdim=True) + codebook.pow(2).sum(dim=1)
                - 2.0 * flat @ codebook.t())

    def forward(self, prequant: torch.Tensor) -> VQEncoding:
        b, d, h, w = prequant.shape
        if d != self.codebook_dim:
            raise ValueError(f"expected {self.codebook_dim} latent channels, got {d}")
        z = prequant.permute(0, 2, 3, 1)  # [B, h, w, D]
        if self.l2_norm:
            z = F.normalize(z, p=2, dim=-1)
        codebook = self.codebook()
        flat = z.reshape(-1, d)
        dist = self._distances(flat, codebook)
        idx = dist.argmin(dim=1)
        z_q = F.embedding(idx, codebook).view_as(z)

        codebook_loss = F.mse_loss(z_q, z.detach())
        commitment_loss = self.beta * F.mse_loss(z, z_q.detach())
        if self.entropy_weight > 0:
            entropy_loss = self.entropy_weight * self._entropy_loss(-dist)
        else:
            entropy_loss = torch.zeros((), device=z.device, dtype=z.dtype)

        z_q = z + (z_q - z).detach()  # straight-through estimator
        with torch.no_grad():
            counts = torch.bincount(idx, minlength=self.codebook_size).float()
            p = counts / counts.sum()
            perplexity = torch.exp(-(p * torch.log(p + 1e-10)).sum())
            usage = (counts > 0).float().mean()
        return VQEncoding(
            quant=z_q.permute(0, 3, 1, 2).contiguous(),
            indices=idx.view(b, h * w),
            prequant=prequant,
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            entropy_loss=entropy_loss,
            perplexity=perplexity,
            usage=usage,
        )

    def _entropy_loss(self, affinity: torch.Tensor) -> torch.Tensor:
        """Per-sample entropy minus entropy of the batch-mean code distribution."""
        logits = affinity / self.entropy_temperature
        probs = torch.softmax(logits, dim=-1)
        log_probs = torch.log_softmax(logits, dim=-1)
        sample_entropy = -(probs * log_probs).sum(dim=-1).mean()
        avg = probs.mean(dim=0)
        avg_entropy = -(avg * torch.log(avg + 1e-5)).sum()
        return sample_entropy - avg_entropy

    def lookup(self, indices: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Codes for ``indices`` [B, h*w] (or [B, h, w]) as latents [B, D, h, w]."""
        h, w = grid
        b = indices.shape[0]
        codes = F.embedding(indices.reshape(b, h * w).long(), self.codebook())
        return codes.view(b, h, w, self.codebook_dim).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------
# Full model
# --------------------------------------------------------------------------------------


class VQModel(nn.Module):
    """Encoder + cosine VQ + decoder; state_dict compatible with the official release."""

    def __init__(self, config: Optional[VQConfig] = None, **overrides: Any):
        super().__init__()
        config = config if config is not None else VQConfig()
        if overrides:
            config = replace(config, **overrides)
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.codebook_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.codebook_dim, config.z_channels, 1)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "VQModel":
        return cls(VQConfig.from_preset(name, **overrides))

    # ---- geometry ------------------------------------------------------------------
    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    def latent_grid(self, input_size: Union[int, Sequence[int]]) -> tuple[int, int]:
        """Latent (token) grid (h, w) for an input of ``input_size`` (int or (H, W))."""
        if isinstance(input_size, int):
            hw = [input_size, input_size]
        else:
            hw = [int(s) for s in input_size]
        for _ in range(len(self.config.encoder_ch_mult) - 1):
            hw = [s // 2 for s in hw]  # pad-right-bottom + 3x3 stride-2 conv halves (floor)
        return hw[0], hw[1]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- encode / decode -----------------------------------------------------------
    def encode(self, x: torch.Tensor) -> VQEncoding:
        return self.quantize(self.quant_conv(self.encoder(x)))

    @torch.no_grad()
    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        """Token indices [B, h*w] (int64, row-major over the latent grid)."""
        return self.encode(x).indices

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))

    def decode_indices(self, indices: torch.Tensor,
                       grid: Optional[tuple[int, int]] = None) -> torch.Tensor:
        """Decode indices [B, h*w] (square grid inferred) or [B, h, w] to [B, C, H, W]."""
        if grid is None:
            if indices.dim() == 3:
                grid = (int(indices.shape[1]), int(indices.shape[2]))
            elif indices.dim() == 2:
                n = int(indices.shape[1])
                side = math.isqrt(n)
                if side * side != n:
                    raise ValueError(f"cannot infer a square grid from {n} tokens; pass grid=")
                grid = (side, side)
            else:
                raise ValueError(f"indices must be [B, h*w] or [B, h, w], got {tuple(indices.shape)}")
        quant = self.quantize.lookup(indices, grid).to(self.post_quant_conv.weight.dtype)
        return self.decode(quant)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, VQEncoding]:
        enc = self.encode(x)
        return self.decode(enc.quant), enc

    # ---- checkpoints ---------------------------------------------------------------
    def load_official(self, checkpoint: Mapping[str, Any], strict: bool = True):
        """Load an official checkpoint dict (weights under ``"model"``) or a bare state_dict."""
        state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
        return self.load_state_dict(state, strict=strict)
