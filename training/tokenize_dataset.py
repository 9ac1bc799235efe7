"""Pre-tokenise a dataset's pairs with trained tokenizers (so GST training never runs them).

    python -m training.tokenize_dataset camera=runs/camera_tokenizer image=runs/image_tokenizer \
        out=runs/tokens data.root=data/synthetic data.image_size=64 ray_size=32
    python -m training.tokenize_dataset --dataset co3d:/data/co3d camera=... image=... out=runs/co3d_tokens

Writes <out>/{train,val,test}.npz (gst_model.data.TokenCache) and <out>/meta.json with the
vocabulary sizes and grid the transformer must use.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from gst_model import geometry
from gst_model.checkpoint import load_part, weights_digest
from gst_model.data.holdout_scenes import refuse_holdout
from gst_model.data.token_cache import TokenCache
from gst_model.tokenizer import VQConfig, VQModel
from training.common import config_cli, config_to_dict, pick_device, setup_logging
from training.data import DATASET_FLAG, PairConfig, pair_dataset

log = logging.getLogger("gst.tokenize")


@dataclass
class TokenizeConfig:
    camera: str = "runs/camera_tokenizer"  # output dir of training.train_tokenizer (kind=camera), or a model dir
    image: str = "runs/image_tokenizer"
    out: str = "runs/tokens"
    data: PairConfig = field(default_factory=PairConfig)
    ray_size: int = 32
    splits: tuple[str, ...] = ("train", "val", "test")
    batch_size: int = 64
    device: str = "auto"  # the tokenizers run here (CUDA when present); codes are stored on the host


def load_trained_tokenizer(directory: str | Path, kind: str) -> VQModel:
    """The `kind` ("image" or "camera") tokenizer of a training.train_tokenizer output directory (config
    JSON + safetensors weights) or of a model directory (config.json + <kind>_tokenizer.safetensors)."""
    directory = Path(directory)
    if (directory / "config.json").is_file():  # a model bundle, e.g. gst_model/weights/default
        return load_part(directory, f"{kind}_tokenizer")
    cfg_file, weights = directory / "tokenizer_config.json", directory / "tokenizer.safetensors"
    for f in (cfg_file, weights):
        if not f.is_file():
            raise FileNotFoundError(f"{f} missing: train the tokenizer first (training.train_tokenizer) "
                                    "or pass a model directory")
    model = VQModel(VQConfig(**json.loads(cfg_file.read_text())))
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval()


def camera_rays(rel_c2w: torch.Tensor, K_target: torch.Tensor, image_size: int, ray_size: int) -> torch.Tensor:
    """The float32 Plücker maps [B, 6, R, R] the camera tokens of pairs encode: the target camera at rel_c2w
    [B, 4, 4], its intrinsics K_target [B, 3, 3] given for the dataset's image size, scaled to the ray map's."""
    K = torch.as_tensor(K_target, dtype=torch.float64).clone()
    K[:, :2] *= ray_size / image_size
    return geometry.plucker_rays_from_intrinsics(torch.as_tensor(rel_c2w, dtype=torch.float64), K, ray_size,
                                                 ray_size).float()


def main(cfg: TokenizeConfig) -> Path:
    refuse_holdout(cfg.data.root)
    setup_logging(True)
    image_vq, camera_vq = load_trained_tokenizer(cfg.image, "image"), load_trained_tokenizer(cfg.camera, "camera")
    digests = {"image": weights_digest(image_vq), "camera": weights_digest(camera_vq)}
    device = pick_device(cfg.device)
    image_vq, camera_vq = image_vq.to(device), camera_vq.to(device)
    grid = image_vq.latent_grid(cfg.data.image_size)
    if camera_vq.latent_grid(cfg.ray_size) != grid:
        raise ValueError(f"image grid {grid} != camera grid {camera_vq.latent_grid(cfg.ray_size)}")

    def encode_camera(rel_c2w: torch.Tensor, K_target: torch.Tensor) -> torch.Tensor:
        rays = camera_rays(rel_c2w, K_target, cfg.data.image_size, cfg.ray_size)
        return camera_vq.encode_indices(rays.to(device))

    def encode_image(images: torch.Tensor) -> torch.Tensor:
        return image_vq.encode_indices(images.to(device))

    out = Path(cfg.out)
    meta = {"image_codes": image_vq.config.codebook_size, "camera_codes": camera_vq.config.codebook_size,
            "grid_size": grid[0], "ray_size": cfg.ray_size, "config": config_to_dict(cfg),
            "tokenizers_sha256": digests}
    for split in cfg.splits:
        ds = pair_dataset(cfg.data, split)
        cache = TokenCache.build(ds, encode_image, encode_camera, out / f"{split}.npz",
                                 batch_size=cfg.batch_size, meta=meta)
        log.info("%s: %d views, %d pairs", split, cache.num_views, cache.num_pairs)
    return out


def cli(argv: list[str] | None = None) -> None:
    main(config_cli(TokenizeConfig, __doc__, argv, DATASET_FLAG))

if __name__ == "__main__":
    cli()
