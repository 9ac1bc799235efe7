"""Training-data glue: which pairs a run uses, and the arrays each trainer consumes.

All trainers read the same dataset (`PairConfig.root`, a `gst_model.data.registry` spec: a RealEstate10K-
layout root such as `python -m gst_model.data.make_synthetic` writes, or `co3d:PATH`, `mvimgnet:PATH`, ...)
through `gst_model.data.PairDataset`, so the camera tokenizer sees exactly the relative cameras the
transformer is later trained on.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gst_model.data.pairs import PairDataset
from gst_model.data.registry import READERS, read_split
from gst_model.data.token_cache import TokenCache
from gst_model.image import crop_resize_intrinsics
from gst_model.vocab import Vocabulary


@dataclass
class PairConfig:
    root: str = "data/synthetic"  # dataset spec: NAME:PATH (gst_model.data.registry) or a RealEstate10K-layout root
    image_size: int = 64
    min_rot_deg: float = 0.0
    max_rot_deg: float = 60.0
    pairs_per_scene: int = 48
    scale_mode: str = "scene"  # see gst_model.data.pairs
    seed: int = 0
    # None: the official centre crop; a vertical field of view: each view resampled to that square camera
    # (as GSTPipeline does with real intrinsics), for data whose lenses differ from the model's
    camera_fovy_deg: float | None = None


def pair_dataset(cfg: PairConfig, split: str) -> PairDataset:
    scenes = read_split(cfg.root, split)
    return PairDataset(scenes, size=cfg.image_size, min_rot_deg=cfg.min_rot_deg, max_rot_deg=cfg.max_rot_deg,
                       pairs_per_scene=cfg.pairs_per_scene, scale_mode=cfg.scale_mode, seed=cfg.seed,
                       camera_fovy_deg=cfg.camera_fovy_deg)


# The scripts' --dataset NAME:PATH, the same as the override data.root=NAME:PATH.
DATASET_FLAG = {"dataset": dict(dest="data.root", metavar="NAME:PATH",
                                help=f"dataset to read ({', '.join(sorted(READERS))}: NAME:PATH; a bare path: "
                                     "RealEstate10K layout); sets data.root")}


def pair_cameras(ds: PairDataset, ray_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(rel_c2w [P,4,4], K_target [P,3,3] at ray_size) for every pair of the dataset's current epoch."""
    rel, K = [], []
    for i in range(len(ds)):
        s, _, target, rel_c2w, _ = ds.pair_pose(i)
        view = ds.scenes[s].views[target]
        rel.append(rel_c2w)
        K.append(crop_resize_intrinsics(view.K, *view.size, ray_size))
    return np.stack(rel), np.stack(K)


def view_images(ds: PairDataset) -> np.ndarray:
    """Every view of every scene, preprocessed to the dataset size: [V, 3, S, S] uint8."""
    views = [ds.view(s, v)[0] for s, scene in enumerate(tqdm(ds.scenes, desc="load views"))
             for v in range(len(scene.views))]
    return np.stack(views).transpose(0, 3, 1, 2).copy()


def load_token_caches(directories: list[str | Path], split: str) -> tuple[TokenCache, Vocabulary]:
    """One split of several token caches as one (e.g. the synthetic data plus a user's own); they must
    have been made with the same tokenizers."""
    loaded = [load_tokens(d, split) for d in directories]
    vocab = loaded[0][1]
    tokenizers = [_tokenizer_identity(d) for d in directories]
    for d, (_, v), names in zip(directories, loaded, tokenizers):
        if v != vocab or names != tokenizers[0]:
            raise ValueError(f"{d} was tokenized with other tokenizers ({names}, {v}) than {directories[0]} "
                             f"({tokenizers[0]}, {vocab}): token ids would mean different things")
    return TokenCache.concatenate([c for c, _ in loaded]), vocab


def _tokenizer_identity(directory: str | Path) -> dict:
    """The tokenizers' weight digests (caches older than them: the tokenizer paths they were made with)."""
    meta = json.loads((Path(directory) / "meta.json").read_text())
    if "tokenizers_sha256" in meta:
        return meta["tokenizers_sha256"]
    return {k: str(meta.get("config", {}).get(k)) for k in ("image", "camera")}


def load_tokens(directory: str | Path, split: str) -> tuple[TokenCache, Vocabulary]:
    """A split's token cache and the vocabulary recorded beside it by training.tokenize_dataset."""
    directory = Path(directory)
    meta_file = directory / "meta.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file} missing: run python -m training.tokenize_dataset first")
    meta = json.loads(meta_file.read_text())
    cache = TokenCache.load(directory / f"{split}.npz")
    vocab = Vocabulary(meta["image_codes"], meta["camera_codes"], meta["grid_size"] ** 2)
    if cache.image_codes.shape[1] != vocab.tokens_per_view or cache.camera_codes.shape[1] != vocab.tokens_per_view:
        raise ValueError(f"{directory}: token rows do not have {vocab.tokens_per_view} codes")
    return cache, vocab
