"""Train a model's partial camera-ray decoder (gst_model.partial_rays), which speculative decoding uses to
fit a camera to the accepted rows of a camera grid.

    python -m training.train_partial_decoder --model gst_model/weights/default \
        --tokens runs/generalization/tokens/plain --steps 3000 --out runs/partial_decoder
    python -m training.train_partial_decoder ... --install     # also write it into the model directory

Data: the camera code grids of a token cache's train split (made with the model's camera tokenizer).
Each step draws grids and a number of known rows k in 1..g-1 per grid; the loss is the mean squared error,
under the known rows only, between the partial decoder's rays and the full decoder's rays of the complete
grid (what the drafter would fit if it knew the whole grid). The tokenizer itself is not changed.
Validation: the same error on the validation split's grids, per k, for the partial decoder and for the
full decoder reading the grid with the unknown rows filled by the identity camera's codes (the drafter's
previous method).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from gst_model import geometry, partial_rays
from gst_model.checkpoint import load_bundle, weights_digest
from training.common import setup_logging, torch_threads
from training.data import load_tokens

log = logging.getLogger("gst.train_partial_decoder")


def known_region_error(rays: torch.Tensor, target: torch.Tensor, known_rows: torch.Tensor, grid: int) -> torch.Tensor:
    """[B] mean squared error over the ray-map rows under the known grid rows."""
    rows = partial_rays.known_ray_rows(known_rows, grid, rays.shape[-2]).to(rays.dtype)  # [B, R]
    per_row = ((rays - target) ** 2).mean(dim=(1, 3))  # [B, R]
    return (per_row * rows).sum(1) / rows.sum(1)


def identity_codes(bundle) -> torch.Tensor:
    """[T] camera codes of the identity camera at the model's default field of view (the drafter's prior)."""
    R = bundle.view.ray_size
    K = geometry.intrinsics_from_fov(bundle.view.fovy_deg, R, R).double()
    rays = geometry.plucker_rays_from_intrinsics(torch.eye(4, dtype=torch.float64)[None], K, R, R)
    return bundle.camera_tokenizer.encode_indices(rays.float())[0]


@torch.no_grad()
def validate(decoder, camera_vq, codes: torch.Tensor, grid: int, identity: torch.Tensor) -> dict:
    decoder.eval()
    full = camera_vq.decode_indices(codes)
    out = {}
    for k in range(1, grid):
        known = torch.full((len(codes),), k)
        filled = torch.where(torch.arange(codes.shape[1]) < k * grid, codes, identity)
        out[f"partial_k{k}"] = known_region_error(decoder(codes, known), full, known, grid).mean().item()
        out[f"filled_k{k}"] = known_region_error(camera_vq.decode_indices(filled), full, known, grid).mean().item()
    decoder.train()
    return out


def train(model_dir: str, tokens: str, steps: int, batch_size: int, lr: float, seed: int, out: Path) -> dict:
    bundle = load_bundle(model_dir)
    camera_vq = bundle.camera_tokenizer.eval().requires_grad_(False)
    train_codes = torch.as_tensor(load_tokens(tokens, "train")[0].camera_codes, dtype=torch.long)
    val_codes = torch.as_tensor(load_tokens(tokens, "val")[0].camera_codes[:256], dtype=torch.long)
    grid = bundle.transformer.config.grid_size
    meta = json.loads((Path(tokens) / "meta.json").read_text())
    if meta.get("tokenizers_sha256", {}).get("camera") not in (None, weights_digest(camera_vq)):
        raise ValueError(f"{tokens} was tokenized with another camera tokenizer than {model_dir}'s")
    decoder = partial_rays.PartialRayDecoder.from_tokenizer(camera_vq).train()
    decoder.codebook.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in decoder.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    identity = identity_codes(bundle)
    before = validate(decoder, camera_vq, val_codes, grid, identity)
    gen = torch.Generator().manual_seed(seed)
    t0, log_rows = time.time(), []
    for step in range(steps):
        for group in optimizer.param_groups:  # cosine decay to 10%
            group["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / steps)))
        idx = torch.randint(0, len(train_codes), (batch_size,), generator=gen)
        codes = train_codes[idx]
        known = torch.randint(1, grid, (batch_size,), generator=gen)
        with torch.no_grad():
            target = camera_vq.decode_indices(codes)
        loss = known_region_error(decoder(codes, known), target, known, grid).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 100 == 0:
            log_rows.append({"step": step + 1, "loss": loss.item()})
            log.info("step %d loss %.5f (%.0f s)", step + 1, loss.item(), time.time() - t0)
    after = validate(decoder, camera_vq, val_codes, grid, identity)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in decoder.state_dict().items()}, str(out / partial_rays.WEIGHTS_FILE))
    result = {"model": model_dir, "tokens": tokens, "grid": grid, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
              "train_seconds": time.time() - t0, "val_before": before, "val_after": after, "log": log_rows}
    (out / "partial_decoder.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gst_model/weights/default")
    p.add_argument("--tokens", required=True, help="token cache made with the model's camera tokenizer")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="runs/partial_decoder")
    p.add_argument("--install", action="store_true", help="copy the weights into the model directory")
    args = p.parse_args(argv)
    setup_logging(True)
    with torch_threads(args.threads):
        result = train(args.model, args.tokens, args.steps, args.batch_size, args.lr, args.seed, Path(args.out))
    print("| known rows | full decoder, rest filled with the identity | partial decoder before | after |")
    print("|---|---|---|---|")
    for k in range(1, result["grid"]):
        print(f"| {k} | {result['val_after'][f'filled_k{k}']:.5f} | {result['val_before'][f'partial_k{k}']:.5f} | "
              f"{result['val_after'][f'partial_k{k}']:.5f} |")
    if args.install:
        target = Path(args.model) / partial_rays.WEIGHTS_FILE
        target.write_bytes((Path(args.out) / partial_rays.WEIGHTS_FILE).read_bytes())
        print(f"installed {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
