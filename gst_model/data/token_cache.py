"""Pre-tokenised views and pairs on disk, so transformer training never reruns the tokenizers.

One `.npz` per split holds:
    image_codes   [V, T] int32    codes of every view of every scene (preprocessed like the dataset)
    scene         [V]    int64    scene index of each view row
    view_c2w      [V, 4, 4]       absolute OpenCV poses;  view_K [V, 3, 3] intrinsics at the cached size
    pairs         [P, 2] int64    (observation, target) view rows
    rel_c2w       [P, 4, 4]       target relative to the observation, scale-normalised as the dataset does
    camera_codes  [P, T] int32    codes of the target camera of each pair
    scene_names   [S]             names, with view_offsets [S + 1] (rows of scene s: offsets[s]:offsets[s+1])
The keys image_codes, pairs, camera_codes, rel_c2w, scene are what `training.pair_tokens` reads.

It is tokenizer-agnostic: `encode_image_fn(images [B, 3, S, S] float in [-1, 1]) -> [B, T]` and
`encode_camera_fn(rel_c2w [B, 4, 4] float64, K_target [B, 3, 3] float64) -> [B, T]` are callables.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from gst_model.data.pairs import PairDataset, to_tensor

_ARRAYS = ("image_codes", "scene", "view_c2w", "view_K", "pairs", "rel_c2w", "camera_codes", "scene_names",
           "view_offsets")


def _codes(x) -> np.ndarray:
    return (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(np.int32)


def _batches(n: int, batch_size: int):
    return (range(i, min(n, i + batch_size)) for i in range(0, n, batch_size))


@dataclass
class TokenCache:
    image_codes: np.ndarray
    scene: np.ndarray
    view_c2w: np.ndarray
    view_K: np.ndarray
    pairs: np.ndarray
    rel_c2w: np.ndarray
    camera_codes: np.ndarray
    scene_names: np.ndarray
    view_offsets: np.ndarray

    @property
    def num_views(self) -> int:
        return len(self.image_codes)

    @property
    def num_pairs(self) -> int:
        return len(self.pairs)

    def views_of(self, name: str) -> range:
        """View rows of a scene, by name."""
        s = int(np.flatnonzero(self.scene_names == name)[0])
        return range(int(self.view_offsets[s]), int(self.view_offsets[s + 1]))

    @classmethod
    def build(cls, dataset: PairDataset, encode_image_fn: Callable, encode_camera_fn: Callable, out_path: Path,
              batch_size: int = 16, meta: dict | None = None, progress: bool = True) -> "TokenCache":
        """Encode every view once and the camera of every pair of `dataset` (its current epoch).

        `meta` (tokenizer sizes, checkpoint names, ...) is merged into `meta.json` next to the file.
        """
        offsets = np.cumsum([0] + [len(s.views) for s in dataset.scenes])
        index = [(s, v) for s, scene in enumerate(dataset.scenes) for v in range(len(scene.views))]
        image_codes, view_K = [], []
        with torch.no_grad():
            for rows in tqdm(list(_batches(len(index), batch_size)), desc="views", disable=not progress):
                loaded = [dataset.view(*index[r]) for r in rows]
                view_K.extend(K for _, K in loaded)
                image_codes.append(_codes(encode_image_fn(torch.stack([to_tensor(im) for im, _ in loaded]))))
            poses = [dataset.pair_pose(i) for i in range(len(dataset))]
            pairs = np.array([(offsets[s] + o, offsets[s] + t) for s, o, t, _, _ in poses], dtype=np.int64)
            rel = np.stack([p[3] for p in poses])
            view_K = np.stack(view_K)
            camera_codes = []
            for rows in tqdm(list(_batches(len(poses), batch_size)), desc="cameras", disable=not progress):
                rows = list(rows)
                camera_codes.append(_codes(encode_camera_fn(torch.from_numpy(rel[rows]),
                                                            torch.from_numpy(view_K[pairs[rows, 1]]))))
        cache = cls(np.concatenate(image_codes), np.array([s for s, _ in index], dtype=np.int64),
                    np.stack([dataset.scenes[s].views[v].c2w for s, v in index]), view_K, pairs, rel,
                    np.concatenate(camera_codes), np.array([s.name for s in dataset.scenes]), offsets.astype(np.int64))
        cache.save(out_path, meta)
        return cache

    @classmethod
    def concatenate(cls, caches: list["TokenCache"]) -> "TokenCache":
        """One cache holding the scenes of all `caches` (made with the same tokenizers), rows renumbered."""
        if not caches:
            raise ValueError("nothing to concatenate")
        view_base = np.cumsum([0] + [c.num_views for c in caches])
        scene_base = np.cumsum([0] + [len(c.scene_names) for c in caches])
        return cls(
            np.concatenate([c.image_codes for c in caches]),
            np.concatenate([c.scene + b for c, b in zip(caches, scene_base)]),
            np.concatenate([c.view_c2w for c in caches]), np.concatenate([c.view_K for c in caches]),
            np.concatenate([c.pairs + b for c, b in zip(caches, view_base)]),
            np.concatenate([c.rel_c2w for c in caches]), np.concatenate([c.camera_codes for c in caches]),
            np.concatenate([c.scene_names for c in caches]),
            np.concatenate([caches[0].view_offsets[:1]] + [c.view_offsets[1:] + b for c, b in zip(caches, view_base)]))

    def save(self, out_path: Path, meta: dict | None = None) -> None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out_path, **{k: getattr(self, k) for k in _ARRAYS})
        if meta:
            meta_file = out_path.parent / "meta.json"
            merged = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
            meta_file.write_text(json.dumps({**merged, **meta}, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "TokenCache":
        with np.load(Path(path)) as z:
            missing = [k for k in _ARRAYS if k not in z]
            if missing:
                raise ValueError(f"{path} is not a token cache: missing {missing}")
            cache = cls(**{k: z[k] for k in _ARRAYS})
        if cache.pairs.size and cache.pairs.max() >= cache.num_views:
            raise ValueError(f"{path}: a pair names a view row that is not in the cache")
        return cache
