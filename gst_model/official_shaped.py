"""The official model size end to end, without the official weights: official-shaped checkpoints -> converter
-> GSTPipeline at 256 px, one pose estimate and one view, each stage timed with its peak memory.

    python -m gst_model.official_shaped --work /tmp/gst_official [--device cuda] [--report bench/official_shaped.md]

1. write   deterministic weights with exactly the keys, shapes and dtypes of the official GPT-XXL, VQ-16 and
           VQ-4 state dicts (the listing `official_state_dicts.json` of the reference notes), saved as the
           release's inference script reads them: `torch.save({"model": state_dict}, file)`; the GPT in
           bfloat16 (the script casts it to bf16 before loading), the tokenizers in float32 with their
           `quantize.codebook_used` buffers;
2. convert `gst_model.checkpoint.convert_official` -> a gst_ros checkpoint directory;
3. run     `GSTPipeline.from_pretrained(dir)`, `estimate_pose` of two 320x240 renders with their K and
           `predict_view` at a known pose: the model's 256 px, 16x16 tokens per view.
Each stage runs in its own process, so its peak resident memory (and peak CUDA memory) is its own.
The weights are random: this proves shapes, format, conversion and run time, not accuracy.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

LISTING = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official_state_dicts.json"
FILES = {"gpt": "GPT-XXL.pt", "image_tokenizer": "VQ-16.pt", "camera_tokenizer": "VQ-4.pt"}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def deterministic_tensor(key: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """float32 values for one state-dict entry that keep a random network's activations finite: norm scales
    1, biases and usage counters 0, other weights N(0, 1/fan_in); the same (key, shape, seed) always gives
    the same values."""
    name = key.rsplit(".", 1)[-1]
    if key.endswith("codebook_used") or (len(shape) == 1 and name == "bias"):
        return torch.zeros(shape)
    if len(shape) == 1:
        return torch.ones(shape) if "norm" in key else torch.zeros(shape)
    gen = torch.Generator().manual_seed(seed ^ int.from_bytes(hashlib.sha256(key.encode()).digest()[:7], "big"))
    fan_in = int(np.prod(shape[1:]))
    return torch.randn(shape, generator=gen) / fan_in ** 0.5


def official_state(listing: dict, dtype: torch.dtype | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the listed keys and shapes (listed dtypes unless `dtype` is given)."""
    return {k: deterministic_tensor(k, tuple(v["shape"]), seed).to(dtype or _DTYPES[v["dtype"]])
            for k, v in listing["state_dict"].items()}


def _peak() -> dict:
    """The process's peak memory, CPU seconds so far and the machine's load (a shared CPU is slower)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = {"peak_rss_gib": usage.ru_maxrss / 2**20, "cpu_seconds": usage.ru_utime + usage.ru_stime,
           "load_average_1min": os.getloadavg()[0]}
    if torch.cuda.is_available():
        out["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def stage_write(work: Path, listing_path: Path, seed: int) -> dict:
    listing = json.loads(Path(listing_path).read_text())
    t0 = time.perf_counter()
    sizes = {}
    for part, dtype in (("image_tokenizer", None), ("camera_tokenizer", None), ("gpt", torch.bfloat16)):
        state = official_state(listing[part], dtype, seed)
        torch.save({"model": state}, work / FILES[part])
        sizes[FILES[part]] = (work / FILES[part]).stat().st_size / 2**30
        del state
    return {"seconds": time.perf_counter() - t0, "file_gib": sizes, **_peak()}


def stage_convert(work: Path) -> dict:
    from gst_model.checkpoint import convert_official

    t0 = time.perf_counter()
    out = convert_official(work / FILES["gpt"], work / FILES["image_tokenizer"], work / FILES["camera_tokenizer"],
                           work / "converted")
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**30
    return {"seconds": time.perf_counter() - t0, "checkpoint_gib": size, **_peak()}


def _test_images(size=(240, 320)):
    """Two renders of one synthetic room, with their K and the relative pose."""
    from gst_model.data.cameras import fov_to_K, relative_pose
    from gst_model.data.synthetic import random_scene, render, sample_cameras

    rng = np.random.default_rng(0)
    room = random_scene(rng)
    (a, b), _ = sample_cameras(room, rng, 2, fov_deg=(60.0, 60.0), azimuth_spread_deg=30.0)
    K = fov_to_K(60.0, *size)
    return [render(room, c, K, *size, supersample=1) for c in (a, b)], K, relative_pose(a, b)


def stage_run(work: Path, device: str, num_samples: int, seed: int) -> dict:
    from gst_model.pipeline import GSTPipeline

    (img_a, img_b), K, rel = _test_images()
    t0 = time.perf_counter()
    pipe = GSTPipeline.from_pretrained(work / "converted", device=device)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    est = pipe.estimate_pose(img_a, img_b, num_samples=num_samples, seed=seed, K_a=K, K_b=K)
    pose_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    view = pipe.predict_view(img_a, rel, num_samples=1, seed=seed, K_image=K)[0]
    view_s = time.perf_counter() - t0
    R = est.c2w[:3, :3]
    return {"load_seconds": load_s, "pose_seconds": pose_s, "view_seconds": view_s,
            "model_image_size": pipe.view.image_size, "tokens_per_view": pipe.vocab.tokens_per_view,
            "transformer_parameters": int(pipe.bundle.transformer.num_parameters()),
            "pose_is_rigid": bool(np.allclose(R.T @ R, np.eye(3), atol=1e-6) and np.isfinite(est.c2w).all()),
            "view_shape": list(view.shape), "view_dtype": str(view.dtype), "device": device,
            "threads": torch.get_num_threads(), **_peak()}


def _child(fn, args, queue):
    try:
        queue.put(("ok", fn(*args)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def _in_process(fn, *args) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    status, value = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{fn.__name__} failed: {value}")
    return value


def run(work: Path, device: str = "cpu", num_samples: int = 1, listing: Path = LISTING, seed: int = 0,
        keep: bool = False) -> dict:
    """All three stages (writing and converting skipped with `keep` when their outputs exist)."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    if not Path(listing).is_file():
        raise FileNotFoundError(f"official state-dict listing not found: {listing}")
    result = {}
    if not (keep and all((work / f).is_file() for f in FILES.values())):
        result["write"] = _in_process(stage_write, work, Path(listing), seed)
    if not (keep and (work / "converted" / "config.json").is_file()):
        result["convert"] = _in_process(stage_convert, work)
    result["run"] = _in_process(stage_run, work, device, num_samples, seed)
    return result


def report(result: dict, num_samples: int) -> str:
    lines = ["# Official-size GST end to end (deterministic official-shaped weights)", "",
             "`python -m gst_model.official_shaped`: GPT-XXL + VQ-16 + VQ-4 state dicts with the official keys, "
             "shapes and dtypes, written as official `.pt` checkpoints, converted by `gst_model.checkpoint`, "
             f"then one pose estimate ({num_samples} sample(s)) and one view at 256 px through `GSTPipeline`. "
             "Each stage in its own process (peak memory is the stage's own).", "",
             "| stage | seconds | peak RSS (GiB) | peak CUDA (GiB) | notes |", "|---|---|---|---|---|"]
    r = result.get("write")
    if r:
        lines.append(f"| write official .pt files | {r['seconds']:.0f} | {r['peak_rss_gib']:.1f} | — | "
                     + ", ".join(f"{k} {v:.2f} GiB" for k, v in r["file_gib"].items()) + " |")
    r = result.get("convert")
    if r:
        lines.append(f"| convert (checkpoint.convert_official) | {r['seconds']:.0f} | {r['peak_rss_gib']:.1f} | — | "
                     f"gst_ros checkpoint {r['checkpoint_gib']:.2f} GiB (float32) |")
    r = result["run"]
    cuda = f"{r['peak_cuda_gib']:.1f}" if "peak_cuda_gib" in r else "—"
    lines += [f"| load GSTPipeline | {r['load_seconds']:.0f} | {r['peak_rss_gib']:.1f} | {cuda} | "
              f"{r['transformer_parameters']:,} transformer parameters, {r['device']}, {r['threads']} threads |",
              f"| estimate_pose (256 tokens per sample) | {r['pose_seconds']:.0f} | (same process) | | "
              f"rigid finite pose: {r['pose_is_rigid']} |",
              f"| predict_view (256 tokens + VQ-16 decode) | {r['view_seconds']:.0f} | (same process) | | "
              f"view {r['view_shape']} {r['view_dtype']} |", "",
              f"The run stage used {r['cpu_seconds']:.0f} CPU seconds in "
              f"{r['load_seconds'] + r['pose_seconds'] + r['view_seconds']:.0f} s; load average at its end "
              f"{r['load_average_1min']:.1f} on {os.cpu_count()} cores.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="folder for the ~3 GiB of .pt files and the ~5.7 GiB checkpoint")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-samples", type=int, default=1, help="pose samples (1: no likelihood pass)")
    p.add_argument("--listing", default=str(LISTING), help="official_state_dicts.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="reuse the .pt files and the converted checkpoint in --work")
    p.add_argument("--report", default=None, help="also write the markdown table here")
    args = p.parse_args(argv)
    result = run(Path(args.work), args.device, args.num_samples, Path(args.listing), args.seed, args.keep)
    text = report(result, args.num_samples)
    print(text)
    print(json.dumps(result, indent=1))
    if args.report:
        Path(args.report).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
