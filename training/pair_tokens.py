"""Pre-tokenised training pairs on disk, so transformer training never runs a tokenizer.

Layout of a token directory:
    meta.json       vocabulary sizes, grid size, tokenizer checkpoint it was made with
    <split>.npz     image_codes [V, T] (one row per view), pairs [P, 2] (observation, target view
                    rows), camera_codes [P, T] (the target camera relative to the observation),
                    rel_c2w [P, 4, 4], scene [V] (scene id of each view)
Codes are codebook indices (not vocabulary ids); `Vocabulary` maps them into the joint vocabulary.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gst_model.vocab import Vocabulary


@dataclass
class PairTokens:
    image_codes: np.ndarray
    pairs: np.ndarray
    camera_codes: np.ndarray
    rel_c2w: np.ndarray
    scene: np.ndarray
    vocab: Vocabulary
    grid_size: int

    def save(self, directory: Path, split: str, extra_meta: dict | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / f"{split}.npz", image_codes=self.image_codes.astype(np.int32),
                 pairs=self.pairs.astype(np.int64), camera_codes=self.camera_codes.astype(np.int32),
                 rel_c2w=self.rel_c2w, scene=self.scene.astype(np.int64))
        meta = {"image_codes": self.vocab.image_codes, "camera_codes": self.vocab.camera_codes,
                "grid_size": self.grid_size, **(extra_meta or {})}
        (directory / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path, split: str) -> "PairTokens":
        meta_file, data_file = directory / "meta.json", directory / f"{split}.npz"
        for f in (meta_file, data_file):
            if not f.is_file():
                raise FileNotFoundError(f"token cache file missing: {f} (run training.tokenize_dataset)")
        meta = json.loads(meta_file.read_text())
        grid = int(meta["grid_size"])
        vocab = Vocabulary(int(meta["image_codes"]), int(meta["camera_codes"]), grid * grid)
        with np.load(data_file) as z:
            tokens = cls(z["image_codes"].astype(np.int64), z["pairs"], z["camera_codes"].astype(np.int64),
                         z["rel_c2w"], z["scene"], vocab, grid)
        tokens.check()
        return tokens

    def check(self) -> None:
        T = self.vocab.tokens_per_view
        if self.image_codes.shape[1] != T or self.camera_codes.shape[1] != T:
            raise ValueError(f"token rows must have {T} codes, got {self.image_codes.shape}, {self.camera_codes.shape}")
        if len(self.pairs) != len(self.camera_codes) or self.pairs.max(initial=0) >= len(self.image_codes):
            raise ValueError("pairs and camera_codes disagree, or a pair names a missing view")
        if self.image_codes.max(initial=0) >= self.vocab.image_codes or self.camera_codes.max(initial=0) >= self.vocab.camera_codes:
            raise ValueError("a code is outside its codebook")
