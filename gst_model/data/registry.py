"""The posed datasets that training and evaluation can read, by name: one table, one spec syntax.

    scenes = read_split("co3d:/data/co3d", "train")      # --dataset co3d:/data/co3d, data.root=co3d:...

A spec is `NAME:PATH`, NAME a key of `READERS`, or a bare PATH in the RealEstate10K layout (what
`make_synthetic` writes, so `root: data/synthetic` in the configs means what it always did):

realestate10k, synthetic   `<PATH>/<split>/<seq_id>.txt` + frames (`formats.read_re10k_split`)
co3d                       CO3D v2: PATH is the dataset root (every `<category>/frame_annotations.jgz`
                           under it) or one category directory; scenes are named `<category>/<sequence>`
mvimgnet                   every `<category>/<object>/sparse/0` COLMAP model under PATH
objaverse                  Zero-1-to-3 renders: every `<uid>/` of NNN.png + NNN.npy under PATH
7scenes                    every `<scene>/seq-XX` under a 7-Scenes root (or one scene folder), one scene each
tum                        every TUM RGB-D sequence folder under PATH (or PATH itself)
kapture                    every kapture folder (`sensors/records_camera.txt` + poses) under PATH

Splits: RealEstate10K-layout data carry theirs as directories. The other datasets have none that this
package reads, so their scenes are split by name (`split_by_name`): a hash of the scene name puts each
scene in train / val / test with `SPLIT_FRACTIONS`, the same on every machine and unchanged for the
scenes already there when more are added.

A reader joins with one entry in `READERS`: a function (path, split) -> list[Scene]; `split_by_name`
turns a function reading every scene under a path into one.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable

from gst_model.data.colmap import read_mvimgnet_root
from gst_model.data.formats import Scene, read_co3d_category, read_re10k_split, read_zero123_root
from gst_model.data.kapture import read_kapture_root
from gst_model.data.rgbd import read_7scenes_root, read_tum_root
from gst_model.data.make_synthetic import SPLITS

Reader = Callable[[Path, str], list[Scene]]

# Shares of train / val / test for datasets split by scene name.
SPLIT_FRACTIONS = (0.9, 0.05, 0.05)


def name_split(name: str) -> str:
    """The split a scene of this name falls in: its name's sha256 read as a number in [0, 1), cut by
    SPLIT_FRACTIONS."""
    u = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64
    bound = 0.0
    for split, fraction in zip(SPLITS, SPLIT_FRACTIONS):
        bound += fraction
        if u < bound:
            return split
    return SPLITS[-1]


def split_by_name(read_all: Callable[[Path], list[Scene]]) -> Reader:
    """A reader of one split from a reader of every scene under a path (see `name_split`)."""
    def read(path: Path, split: str) -> list[Scene]:
        return [scene for scene in read_all(path) if name_split(scene.name) == split]
    return read


def read_co3d(path: Path) -> list[Scene]:
    """Every sequence of a CO3D v2 root (or of one category directory), named `<category>/<sequence>`."""
    path = Path(path)
    categories = [path] if (path / "frame_annotations.jgz").is_file() else \
        sorted(p.parent for p in path.glob("*/frame_annotations.jgz"))
    scenes = []
    for category in categories:
        for scene in read_co3d_category(category):
            scene.name = f"{category.name}/{scene.name}"
            scenes.append(scene)
    return scenes


READERS: dict[str, Reader] = {
    "realestate10k": read_re10k_split,
    "synthetic": read_re10k_split,
    "co3d": split_by_name(read_co3d),
    "mvimgnet": split_by_name(read_mvimgnet_root),
    "objaverse": split_by_name(read_zero123_root),
    "7scenes": split_by_name(read_7scenes_root),  # its relocalisation Train/TestSplit is not used
    "tum": split_by_name(read_tum_root),
    "kapture": split_by_name(read_kapture_root),
}
DEFAULT_READER = "realestate10k"  # for a spec without NAME:


def parse_spec(spec: str | Path) -> tuple[str, Path]:
    """`NAME:PATH` -> (NAME, PATH); a bare path -> ("realestate10k", PATH)."""
    name, colon, path = str(spec).partition(":")
    if colon and name in READERS:
        if not path:
            raise ValueError(f"dataset spec {spec!r} has no path after '{name}:'")
        return name, Path(path)
    # A word before a colon is meant as a dataset name (a path rarely starts so; a drive letter is one letter).
    if colon and re.fullmatch(r"[A-Za-z0-9_-]{2,}", name):
        raise ValueError(f"unknown dataset {name!r} in {spec!r}; known: {', '.join(sorted(READERS))} "
                         "(or a bare path in the RealEstate10K layout)")
    return DEFAULT_READER, Path(spec)


def read_split(spec: str | Path, split: str) -> list[Scene]:
    """The scenes of one split of a dataset spec; an error names what is missing instead of returning none."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    name, path = parse_spec(spec)
    if not path.exists():
        raise FileNotFoundError(f"dataset {name} not found: {path} does not exist")
    scenes = READERS[name](path, split)
    if not scenes:
        hint = " (run python -m gst_model.data.make_synthetic)" if name in ("realestate10k", "synthetic") else ""
        raise FileNotFoundError(f"no {split} scenes in {name}:{path}{hint}")
    return scenes
