"""What an ONNX export directory is: its format, its manifest, and the digests that key it to a model.

Read by the runtimes (which must not pay for the exporter's imports) and written by `gst_model.export`.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

from gst_model.checkpoint import hash_weights

# 2: decode shares the prompt cache; 3: score graphs; 4: decode graphs take a block of K tokens per row at
# per-row positions and return logits for each (speculative verification), traced from the torch modules.
EXPORT_FORMAT = "gst_ros.onnx/4"
# The modules the graphs are traced from: an export made by other code is stale even at the same format.
EXPORTER_MODULES = ("export.py", "transformer.py", "tokenizer.py", "likelihood.py")


@functools.cache
def exporter_source() -> str:
    """sha256 over the source of the modules the graphs are traced from."""
    root = Path(__file__).parent
    return hashlib.sha256(b"".join((root / name).read_bytes() for name in EXPORTER_MODULES)).hexdigest()


def bundle_digest(bundle) -> str:
    """sha256 over the bundle's configuration and every weight: the key of exported artefacts."""
    h = hashlib.sha256(json.dumps(bundle.config_dict(), sort_keys=True, default=str).encode())
    for part in ("transformer", "image_tokenizer", "camera_tokenizer"):
        hash_weights(h, getattr(bundle, part), f"{part}.")
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(model_dir: str | Path, verify: bool = True) -> dict:
    """Read manifest.json; with verify, raise ValueError if any listed file's sha256 differs."""
    model_dir = Path(model_dir)
    path = model_dir / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} has no manifest.json (not a gst_model.export directory)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path}: unsupported export format {manifest.get('format')!r} (expected {EXPORT_FORMAT})")
    if verify:
        expected = {}
        for g in manifest["graphs"].values():
            expected.update(g["sha256"])
        for name, digest in expected.items():
            f = model_dir / name
            if not f.is_file():
                raise ValueError(f"{model_dir}: {name} listed in the manifest is missing")
            if sha256_file(f) != digest:
                raise ValueError(f"{model_dir}: {name} does not match its sha256 in manifest.json")
    return manifest


def default_cache_root() -> Path:
    return Path(os.environ.get("GST_ONNX_CACHE", Path.home() / ".cache" / "gst_ros" / "onnx"))


def ensure_export(bundle, model_dir: str | Path | None = None, cache_root: str | Path | None = None,
                  static_batch: int | None = None) -> Path:
    """model_dir as given, else <cache_root>/<model sha256>[-b<static batch>], exported if missing, damaged
    or made by other exporter code."""
    if model_dir is not None:
        return Path(model_dir)
    digest = bundle_digest(bundle)
    name = digest[:32] + (f"-b{static_batch}" if static_batch else "")
    path = Path(cache_root or default_cache_root()) / name
    try:
        manifest = load_manifest(path, verify=True)
        if manifest["model_sha256"] == digest and manifest.get("exporter_source") == exporter_source():
            return path
    except (FileNotFoundError, ValueError):
        pass  # missing, foreign or damaged: export afresh
    from gst_model.export import export_bundle  # the exporter (and onnx) only when an export is needed

    export_bundle(bundle, path, static_batch=static_batch)
    return path
