"""Train a VQ tokenizer: the camera VQ-VAE on Plücker ray maps, or a small image VQGAN.

    python -m training.train_tokenizer --config training/configs/camera_tokenizer_small.yaml
    python -m training.train_tokenizer --config training/configs/image_tokenizer_small.yaml
    python -m training.train_tokenizer --config my_tokenizer.yaml --dataset mvimgnet:/data/mvimgnet

Camera: ray maps of the training pairs' relative cameras (observation = identity), as in the paper;
loss = L2 reconstruction + codebook + commitment; reports codebook usage and the pose round-trip
error of decode(encode(rays)) in degrees. Image: L2 + optional LPIPS perceptual term (offline weights)
+ optional hinge-GAN term from a small patch discriminator, started after `gan_start` steps.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from gst_model import geometry
from gst_model.data.holdout_scenes import refuse_holdout
from gst_model.tokenizer import VQConfig, VQModel
from training.common import (config_cli, CsvLog, OptimConfig, config_to_dict, load_training_state, lr_at,
                             pick_device, plot_curves, save_training_state, seed_everything, setup_logging)
from training.data import DATASET_FLAG, PairConfig, pair_cameras, pair_dataset, view_images

log = logging.getLogger("gst.train_tokenizer")


@dataclass
class TokenizerTrainConfig:
    kind: str = "camera"  # camera | image
    data: PairConfig = field(default_factory=PairConfig)
    out: str = "runs/camera_tokenizer"
    preset: str = "camera-small"
    model_overrides: dict = field(default_factory=dict)
    size: int = 32  # ray-map side (camera) or image side (image)
    batch_size: int = 32
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4, weight_decay=0.0, warmup_steps=50,
                                                                   max_steps=1500, betas=(0.9, 0.99)))
    perceptual_weight: float = 0.0  # LPIPS (image only); needs the offline weights (training.lpips)
    gan_weight: float = 0.0  # hinge GAN (image only)
    gan_start: int = 1000
    # Re-seed codebook rows unused for a while (0 = off); collapse leaves the transformer few distinct tokens.
    restart_dead_codes_every: int = 0
    dead_code_threshold: float = 0.03  # a row is dead below this running count of picks per batch
    eval_every: int = 250
    save_every: int = 500
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    resume: bool = True


class PatchDiscriminator(nn.Module):
    """A small PatchGAN (conv, stride 2, LeakyReLU) for the optional adversarial term."""

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        blocks, ch_in = [], 3
        for i in range(layers):
            ch_out = channels * 2 ** i
            blocks += [nn.Conv2d(ch_in, ch_out, 4, 2, 1), nn.GroupNorm(8, ch_out) if i else nn.Identity(),
                       nn.LeakyReLU(0.2)]
            ch_in = ch_out
        blocks.append(nn.Conv2d(ch_in, 1, 3, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DeadCodeRestarter:
    """Moves codebook rows that no latent has picked for a while onto current encoder outputs.

    Codebooks trained by straight-through VQ tend to collapse onto a few rows; rows that never win
    get no gradient and stay dead. Re-seeding them at latents of the current batch (the standard
    remedy) keeps usage high; their Adam moments are cleared so stale momentum does not drag them back.
    """

    def __init__(self, model: VQModel, optimizer: torch.optim.Optimizer, threshold: float, decay: float = 0.95):
        self.quantizer = model.quantize
        self.optimizer = optimizer
        self.threshold = threshold
        self.decay = decay
        self.counts = torch.ones(self.quantizer.codebook_size)  # optimistic start: nothing dead before evidence

    def observe(self, enc) -> None:
        batch = torch.bincount(enc.indices.flatten().cpu(), minlength=self.quantizer.codebook_size).float()
        self.counts.mul_(self.decay).add_(batch, alpha=1 - self.decay)

    @torch.no_grad()
    def restart(self, enc, rng: np.random.Generator) -> int:
        dead = torch.nonzero(self.counts < self.threshold).flatten()
        if len(dead) == 0:
            return 0
        latents = enc.prequant.detach().permute(0, 2, 3, 1).reshape(-1, enc.prequant.size(1))
        if self.quantizer.l2_norm:
            latents = F.normalize(latents, dim=-1)
        pick = torch.from_numpy(rng.integers(0, len(latents), len(dead)))
        weight = self.quantizer.embedding.weight
        weight[dead.to(weight.device)] = latents[pick.to(latents.device)] + 0.01 * latents.std() * torch.randn(
            len(dead), latents.size(1), device=latents.device)
        state = self.optimizer.state.get(weight, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][dead.to(weight.device)] = 0
        self.counts[dead] = 1.0
        return len(dead)


class RaySource:
    """Ray maps of the relative cameras of the dataset's pairs (observation = identity)."""

    def __init__(self, pairs, size: int):
        self.size = size
        self.rel_c2w, self.K = pair_cameras(pairs, size)

    def batch(self, rng: np.random.Generator, n: int) -> torch.Tensor:
        idx = rng.integers(0, len(self.rel_c2w), n)
        return geometry.plucker_rays_from_intrinsics(torch.from_numpy(self.rel_c2w[idx]),
                                                     torch.from_numpy(self.K[idx]), self.size, self.size).float()


class ImageSource:
    """Every view of the split in memory (uint8), with random horizontal flips."""

    def __init__(self, pairs, size: int):
        if pairs.size != size:
            raise ValueError(f"image tokenizer size {size} != dataset image_size {pairs.size}")
        self.images = view_images(pairs)

    def batch(self, rng: np.random.Generator, n: int) -> torch.Tensor:
        idx = rng.integers(0, len(self.images), n)
        x = torch.from_numpy(self.images[idx]).float() / 127.5 - 1.0
        return torch.where(torch.from_numpy(rng.random(n) < 0.5)[:, None, None, None], x.flip(-1), x)


@torch.no_grad()
def camera_roundtrip_error(model: VQModel, rays: torch.Tensor) -> dict[str, float]:
    """Pose error (deg, and centre distance) of decode(encode(rays)) vs the cameras the rays came from."""
    model.eval()
    rec = model.decode_indices(model.encode_indices(rays)).double()
    truth = geometry.cameras_from_plucker(rays.double()).c2w
    fit = geometry.cameras_from_plucker(rec).c2w
    model.train()
    rot = geometry.rotation_angle_deg(fit[:, :3, :3], truth[:, :3, :3])
    centre = (fit[:, :3, 3] - truth[:, :3, 3]).norm(dim=-1)
    return {"rot_err_deg": float(rot.median()), "centre_err": float(centre.median())}


def main(cfg: TokenizerTrainConfig) -> Path:
    refuse_holdout(cfg.data.root)
    setup_logging(True)
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    if cfg.kind not in ("camera", "image"):
        raise ValueError(f"kind must be camera or image, got {cfg.kind!r}")
    source_cls = RaySource if cfg.kind == "camera" else ImageSource
    train = source_cls(pair_dataset(cfg.data, "train"), cfg.size)
    val = source_cls(pair_dataset(cfg.data, "val"), cfg.size)
    model = VQModel(VQConfig.from_preset(cfg.preset, **cfg.model_overrides)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                  weight_decay=cfg.optim.weight_decay)
    perceptual = disc = disc_opt = None
    if cfg.kind == "image" and cfg.perceptual_weight > 0:
        from training.lpips import LPIPS

        perceptual = LPIPS.load().to(device).eval()
    if cfg.kind == "image" and cfg.gan_weight > 0:
        disc = PatchDiscriminator().to(device)
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas)
    out = Path(cfg.out)
    start = 0
    if cfg.resume and (out / "last" / "trainer_state.pt").exists():
        start, _ = load_training_state(out / "last", {"tokenizer": model}, optimizer)
        log.info("resumed at step %d", start)
    restarter = (DeadCodeRestarter(model, optimizer, cfg.dead_code_threshold)
                 if cfg.restart_dead_codes_every > 0 else None)
    csv = CsvLog(out / "train_log.csv", ["loss", "loss_rec", "loss_vq", "loss_lpips", "loss_gan", "usage",
                                         "val_rec", "rot_err_deg", "centre_err", "restarted"])
    val_batch = val.batch(np.random.default_rng(99), 128).to(device)
    log.info("%s tokenizer %s: %.2fM params, grid %s", cfg.kind, cfg.preset, model.num_parameters() / 1e6,
             model.latent_grid(cfg.size))
    t0 = time.time()
    for step in tqdm(range(start, cfg.optim.max_steps), initial=start, total=cfg.optim.max_steps, desc=cfg.kind):
        lr = lr_at(step, cfg.optim)
        for g in optimizer.param_groups:
            g["lr"] = lr
        rng = np.random.default_rng([cfg.seed, step])
        x = train.batch(rng, cfg.batch_size).to(device)
        rec, enc = model(x)
        loss_rec = F.mse_loss(rec, x)
        loss_vq = enc.loss
        loss = loss_rec + loss_vq
        terms = {}
        if perceptual is not None:
            terms["loss_lpips"] = perceptual(rec, x).mean()
            loss = loss + cfg.perceptual_weight * terms["loss_lpips"]
        use_gan = disc is not None and step >= cfg.gan_start
        if use_gan:
            terms["loss_gan"] = -disc(rec).mean()
            loss = loss + cfg.gan_weight * terms["loss_gan"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        restarted = {}
        if restarter is not None:
            restarter.observe(enc)
            # no restarts in the last 10% of steps: the final codebook gets time to settle
            if (step + 1) % cfg.restart_dead_codes_every == 0 and step + 1 < cfg.optim.max_steps * 0.9:
                restarted["restarted"] = restarter.restart(enc, rng)
        if use_gan:
            d_loss = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(rec.detach())).mean()
            disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            disc_opt.step()
        done = step + 1
        metrics = {}
        if done % cfg.eval_every == 0 or done == cfg.optim.max_steps:
            model.eval()
            with torch.no_grad():
                val_rec = F.mse_loss(model.decode_indices(model.encode_indices(val_batch)), val_batch).item()
                usage = model.encode_indices(val_batch).unique().numel() / model.config.codebook_size
            model.train()
            metrics = {"val_rec": val_rec, "usage": usage}
            if cfg.kind == "camera":
                metrics.update(camera_roundtrip_error(model, val_batch))
            log.info("step %d loss %.4f %s (%.0f s)", done, loss.item(), metrics, time.time() - t0)
        if done % 10 == 0 or metrics:
            csv.write(done, loss=loss.item(), loss_rec=loss_rec.item(), loss_vq=loss_vq.item(),
                      **{k: v.item() for k, v in terms.items()}, **restarted, **metrics)
        if done % cfg.save_every == 0 or done == cfg.optim.max_steps:
            save_training_state(out / "last", {"tokenizer": model}, optimizer, done, config_to_dict(cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "tokenizer.safetensors"))
    (out / "tokenizer_config.json").write_text(json.dumps(config_to_dict(model.config)))
    plot_curves(csv, out / "train_curves.png", f"{cfg.kind} tokenizer {cfg.preset}")
    return out


def cli(argv: list[str] | None = None) -> None:
    main(config_cli(TokenizerTrainConfig, __doc__, argv, DATASET_FLAG))

if __name__ == "__main__":
    cli()
