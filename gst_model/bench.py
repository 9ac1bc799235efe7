"""Inference benchmark: official-style recompute vs KV-cached torch (eager, compiled) vs ONNX Runtime.

    python -m gst_model.bench [--presets small,GPT-B] [--out bench/results.md] [--quick]

Each (preset, path) runs in its own subprocess so peak RSS is that path's alone. Weights are random
(seed 0, output head re-drawn with std dim^-0.5 so greedy decoding is not a tie) unless the preset
is "default", the shipped checkpoint. A transformer preset name (GPT-B, GPT-L, ...) is paired with
the official tokenizers (VQ-16, VQ-4) and the official vocabulary and 16x16 grid.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gst_model import geometry
from gst_model.checkpoint import BUNDLE_PRESETS, DEFAULT_MODEL_DIR, build_bundle, load_bundle
from gst_model.data.synthetic import random_scene, render, sample_cameras
from gst_model.drafting import GeometricDrafter
from gst_model.generate import DRAFT_LEN, DecodeStats, SamplingParams, generate, sample_from_logits
from gst_model.image import to_model_input
from gst_model.transformer import PRESETS

PATHS = ("nocache", "torch", "torch_compile", "ort", "ort_int8")
LABELS = {"nocache": "official-style, no KV cache", "torch": "torch eager + KV cache",
          "torch_compile": "torch.compile + KV cache",
          "ort": "onnxruntime fp32", "ort_int8": "onnxruntime int8 (dynamic)"}


# ------------------------------------------------------------------ models and machine
def make_bundle(preset: str):
    if preset == "default":
        return load_bundle(DEFAULT_MODEL_DIR)
    if preset in BUNDLE_PRESETS:
        bundle = build_bundle(preset, seed=0)
    elif preset in PRESETS:
        bundle = build_bundle("official", seed=0, **{k: PRESETS[preset][k] for k in ("dim", "n_layer", "n_head")})
    else:
        raise ValueError(f"unknown preset {preset!r}: a bundle preset {sorted(BUNDLE_PRESETS)}, a transformer "
                         f"preset {sorted(PRESETS)} or 'default'")
    head = bundle.transformer.output.weight
    torch.nn.init.normal_(head, std=bundle.transformer.config.dim ** -0.5,
                          generator=None if head.is_meta else torch.Generator().manual_seed(0))
    return bundle.eval()


def bundle_bytes(preset: str) -> int:
    """fp32 bytes of all three models, without building them (for the fits-in-memory check)."""
    if preset == "default":  # the shipped files' tensor shapes, read without loading the tensors
        from safetensors import safe_open

        numel = 0
        for file in (DEFAULT_MODEL_DIR / f"{part}.safetensors" for part in
                     ("transformer", "image_tokenizer", "camera_tokenizer")):
            with safe_open(str(file), "pt") as f:
                numel += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        return 4 * numel
    with torch.device("meta"):
        b = make_bundle(preset)
    return 4 * sum(p.numel() for m in (b.transformer, b.image_tokenizer, b.camera_tokenizer) for p in m.parameters())


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def machine() -> dict:
    """CPU name, matmul GFLOP/s (fp32, 2048^2) and memory read bandwidth (sum over 512 MB)."""
    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    flops = 2 * n ** 3 / _best(lambda: a @ b, 5)
    big = torch.ones(128 * 1024 * 1024)  # 512 MB: far beyond the caches
    bandwidth = big.numel() * 4 / _best(lambda: big.sum(), 5)
    mem = next((int(l.split()[1]) * 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "matmul_gflops": flops / 1e9, "mem_gbs": bandwidth / 1e9, "mem_total_gb": mem / 1e9,
            "torch": torch.__version__, "load_avg": os.getloadavg()[0]}


# ------------------------------------------------------------------ one path (worker process)
class _NoCache:
    """The official release's inference: the whole sequence is re-run for every new token."""

    def __init__(self, bundle):
        from gst_model.runtime.torch_runtime import TorchRuntime

        self.tok = TorchRuntime(bundle)
        self.model = bundle.transformer

    def __getattr__(self, name):  # tokenizers come from the torch runtime
        return getattr(self.tok, name)

    @torch.inference_mode()
    def step(self, seq: torch.Tensor, allowed=None) -> torch.Tensor:
        return sample_from_logits(self.model(seq)[:, -1], greedy=True, allowed=allowed)

    def step_seconds(self, prompt: torch.Tensor, n_new: int, repeats: int) -> float:
        """Mean seconds per new token over a generation of n_new: cost grows linearly with length."""
        first = _best(lambda: self.step(prompt), repeats)
        longer = torch.cat([prompt, prompt[:, : n_new - 1]], dim=1)
        last = _best(lambda: self.step(longer), repeats)
        return (first + last) / 2

    def greedy(self, prompt, n_new, allowed):  # only for short greedy checks
        seq = prompt
        for _ in range(n_new):
            seq = torch.cat([seq, self.step(seq, allowed)[:, None]], dim=1)
        return seq[:, prompt.shape[1]:]


def _runtime(path: str, bundle, model_dir: str):
    if path == "nocache":
        return _NoCache(bundle)
    if path in ("torch", "torch_compile"):
        from gst_model.runtime.torch_runtime import TorchRuntime

        return TorchRuntime(bundle, compile=path == "torch_compile", flush_denormal=True)  # a worker process
    from gst_model.runtime.ort_runtime import OrtRuntime

    return OrtRuntime(bundle, model_dir=model_dir, int8=path == "ort_int8", verify=False)


def _micro(path: str, rt, bundle, prompt: torch.Tensor, steps: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds/token) at batch 1 for a prompt of 2T+1 tokens."""
    model = bundle.transformer
    plen = prompt.shape[1]
    tokens = torch.randint(0, model.config.vocab_size, (1, steps))
    if path == "nocache":
        return _best(lambda: rt.step(prompt), 2), None
    decoder = rt.decoder()
    t = time.perf_counter()
    decoder.prefill(prompt, 0, 1, steps + 1)
    prefill = time.perf_counter() - t
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(steps):
            decoder.decode(tokens[:, i:i + 1], torch.tensor([[plen + i]]))
    decode = (time.perf_counter() - t) / steps
    decoder.close()
    return prefill, decode


def _pair_prompt(bundle, rt):
    """A pose prompt [image a, <EST>, image b] and the true relative pose of a rendered synthetic pair (the
    shipped model's own kind of scene); only the shipped model ('default') is given one."""
    view = bundle.view
    size = view.image_size
    rng = np.random.default_rng([5, 0])
    scene = random_scene(rng)
    c2w, _ = sample_cameras(scene, rng, 2, fov_deg=(view.fovy_deg, view.fovy_deg), azimuth_spread_deg=40.0)
    K = geometry.intrinsics_from_fov(view.fovy_deg, size, size).numpy()
    images = to_model_input([render(scene, c, K, size, size) for c in c2w], size)
    rel = geometry.relative_pose(torch.as_tensor(c2w[0]), torch.as_tensor(c2w[1]))
    codes = rt.encode_images(images)
    return images, torch.cat([codes[:1], torch.tensor([[bundle.vocab.est_token]]), codes[1:]], dim=1), rel


def _rotated(c2w: torch.Tensor, degrees: float) -> torch.Tensor:
    """c2w with its rotation turned by `degrees` about a fixed oblique axis: a tracked camera's last estimate."""
    axis = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) / 14 ** 0.5
    angle = math.radians(degrees)
    skew = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    out = c2w.clone()
    out[:3, :3] = torch.linalg.matrix_exp(skew * angle) @ c2w[:3, :3]
    return out


def worker(preset: str, path: str, model_dir: str, quick: bool) -> dict:
    bundle = make_bundle(preset)
    rt = _runtime(path, bundle, model_dir)
    vocab, view = bundle.vocab, bundle.view
    T = vocab.tokens_per_view
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, view.image_size, view.image_size, generator=g) * 2 - 1
    rays = torch.rand(1, 6, view.ray_size, view.ray_size, generator=g) * 2 - 1
    greedy = SamplingParams(greedy=True)
    sampled = SamplingParams(temperature=1.0, top_k=100)
    codes = rt.encode_images(images)
    cams = rt.encode_rays(rays) + vocab.camera_offset
    pose_prompt = torch.cat([codes[:1], torch.tensor([[vocab.est_token]]), codes[1:]], dim=1)
    view_prompt = torch.cat([codes[:1], torch.tensor([[vocab.gen_token]]), cams], dim=1)
    scored = torch.cat([view_prompt, codes[1:]], dim=1).expand(16, -1)  # [obs, <GEN>, camera, image b]
    cam_range, img_range = [(T, vocab.camera_range())], [(T, vocab.image_range())]
    check_len = 8 if quick else 32
    steps = 8 if quick else 32
    result = {"preset": preset, "path": path, "T": T}
    check_range = [(check_len, vocab.camera_range())]
    if path == "nocache":
        result["check_tokens"] = rt.greedy(pose_prompt, check_len, vocab.camera_range())[0].tolist()
    else:
        result["check_tokens"] = generate(rt.decoder(), pose_prompt, check_len, greedy,
                                          segment_ranges=check_range)[0].tolist()

    def pose(n, draft=None, stats=None):
        rt.encode_images(images)
        toks = generate(rt.decoder(), pose_prompt.expand(n, -1), T, sampled, segment_ranges=cam_range,
                        generator=torch.Generator().manual_seed(1), draft=draft() if draft else None, stats=stats)
        rt.decode_rays(toks - vocab.camera_offset)

    def view_fn():
        rt.encode_images(images[:1])
        rt.encode_rays(rays)
        toks = generate(rt.decoder(), view_prompt, T, sampled, segment_ranges=img_range,
                        generator=torch.Generator().manual_seed(1))
        rt.decode_images(toks)

    def score16():  # estimate_pose's likelihood selection: re-encode 16 fitted cameras, one causal pass
        rt.encode_rays(rays.expand(16, -1, -1, -1))
        rt.segment_log_likelihood(scored)

    truth = torch.eye(4, dtype=torch.float64)
    if preset == "default":  # a real pair of the model's own kind of scene (speculation needs one)
        images, pose_prompt, truth = _pair_prompt(bundle, rt)
    if path == "torch_compile":  # compile every shape first: warm-up is reported, not timed
        t = time.perf_counter()
        _micro(path, rt, bundle, pose_prompt, steps)
        pose(1)
        pose(16)
        view_fn()
        score16()
        result["warmup_s"] = time.perf_counter() - t
    result["prefill_s"], result["decode_s"] = _micro(path, rt, bundle, pose_prompt, steps)
    result["score16_s"] = _best(score16, 1 if quick else 2)
    if path == "nocache":  # measured steps, extrapolated to T tokens
        def extrapolated(fn_tok, prompt, n):
            t = time.perf_counter()
            fn_tok()
            return time.perf_counter() - t + T * rt.step_seconds(prompt.expand(n, -1), T, 1)
        tok_pose = lambda: (rt.encode_images(images), rt.decode_rays(cams - vocab.camera_offset))
        tok_view = lambda: (rt.encode_images(images[:1]), rt.encode_rays(rays), rt.decode_images(codes[:1]))
        result["decode_s"] = rt.step_seconds(pose_prompt, T, 1)
        result["pose1_s"] = extrapolated(tok_pose, pose_prompt, 1)
        result["pose16_s"] = None if quick and T > 64 else extrapolated(tok_pose, pose_prompt, 16)
        result["view_s"] = extrapolated(tok_view, view_prompt, 1)
        result["extrapolated"] = True
    else:
        result["pose1_s"] = _best(lambda: pose(1), 1 if quick else 2)
        result["pose16_s"] = _best(lambda: pose(16), 1)
        result["view_s"] = _best(view_fn, 1 if quick else 2)
        result["extrapolated"] = False
        result["speculative"] = _speculative(bundle, rt, truth, pose)
    # VmHWM is this process image's own peak; ru_maxrss would carry the parent's peak across exec.
    result["peak_rss_mb"] = next(int(l.split()[1]) / 1024 for l in open("/proc/self/status")
                                 if l.startswith("VmHWM"))
    return result


def _speculative(bundle, rt, truth: torch.Tensor, pose) -> dict:
    """Sequential transformer passes and latency per pose with speculative decoding, for each draft kind:
    'geometric' refits the identity to every new grid row; 'tracked' drafts a prior 3 degrees from the truth
    (the localize node's previous estimate of a slowly moving camera), never refitted."""
    view, vocab = bundle.view, bundle.vocab
    K_ray = geometry.intrinsics_from_fov(view.fovy_deg, view.ray_size, view.ray_size).double()
    grid = bundle.transformer.config.grid_size
    drafts = {"geometric": lambda: GeometricDrafter(rt, vocab.camera_offset, grid, view.ray_size, K_ray,
                                                    torch.eye(4, dtype=torch.float64),
                                                    partial_decoder=bundle.camera_partial_decoder),
              "tracked": lambda: GeometricDrafter(rt, vocab.camera_offset, grid, view.ray_size, K_ray,
                                                  _rotated(truth, 3.0), refit_rows=0)}
    out = {}
    for name, make in drafts.items():
        entry = {}
        for n in (1, 16):
            stats = DecodeStats()
            entry[f"pose{n}_s"] = _best(lambda: pose(n, make, stats), 1)
            entry[f"passes{n}"] = stats.passes
            entry[f"accepted{n}"], entry[f"drafted{n}"] = stats.accepted, stats.drafted
        out[name] = entry
    return out


# ------------------------------------------------------------------ driver
def decode_bytes(bundle, path: str, pos: int) -> float:
    """Bytes one batch-1 decode step must read: every weight except the embedding table (only one
    row is gathered), at 1 byte for int8-quantized matrices, plus the keys/values up to pos."""
    m = bundle.transformer
    cfg = m.config
    embed = m.tok_embeddings.weight.numel()
    matrices = sum(p.numel() for p in m.parameters() if p.dim() == 2) - embed
    vectors = sum(p.numel() for p in m.parameters() if p.dim() < 2)
    weights = matrices * (1 if path == "ort_int8" else 4) + vectors * 4
    return weights + 2 * cfg.n_layer * pos * cfg.dim * 4


def _fmt(x, scale=1.0, digits=1):
    return "-" if x is None else f"{x * scale:.{digits}f}"


def run(presets: list[str], out: Path, quick: bool, export_root: Path, update: bool = False) -> str:
    from gst_model.manifest import ensure_export

    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, matmul {info['matmul_gflops']:.0f} GFLOP/s, "
          f"memory read {info['mem_gbs']:.1f} GB/s", flush=True)
    avail = next((int(l.split()[1]) * 1024 for l in open("/proc/meminfo") if l.startswith("MemAvailable")), 0)
    rows, notes = [], []
    for preset in presets:
        need = bundle_bytes(preset)
        if 4 * need > avail:  # torch model + export copy + ORT session + int8 copy
            notes.append(f"{preset}: skipped, ~{4 * need / 1e9:.1f} GB needed, {avail / 1e9:.1f} GB available")
            continue
        bundle = make_bundle(preset)
        t = time.perf_counter()
        model_dir = ensure_export(bundle, cache_root=export_root)
        print(f"{preset}: ONNX export ready in {time.perf_counter() - t:.0f} s ({model_dir})", flush=True)
        results = {}
        for path in PATHS:
            t = time.perf_counter()
            cmd = [sys.executable, "-m", "gst_model.bench", "--worker", preset, path, str(model_dir)]
            proc = subprocess.run(cmd + (["--quick"] if quick else []), capture_output=True, text=True)
            line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode or not line:
                notes.append(f"{preset}/{path}: failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            results[path] = json.loads(line[-1][7:])
            print(f"  {path}: done in {time.perf_counter() - t:.0f} s", flush=True)
        ref = results.get("torch", {}).get("check_tokens")
        base = results.get("nocache", {})
        for path, r in results.items():
            T = r["T"]
            roof = decode_bytes(bundle, path, 2 * T + 1 + T // 2) / (info["mem_gbs"] * 1e9)
            r["roofline"] = roof / r["decode_s"] if r["decode_s"] else None
            r["n16_ratio"] = r["pose16_s"] / r["pose1_s"] if r["pose16_s"] else None
            r["speedup"] = base["pose1_s"] / r["pose1_s"] if base.get("pose1_s") else None
            r["greedy"] = "ref" if path == "torch" else ("yes" if r["check_tokens"] == ref else "NO")
            if "warmup_s" in r:
                notes.append(f"{preset} / {LABELS[path]}: {r['warmup_s']:.0f} s of compiling before the timings "
                             "(once per input shape: prefill, decode at batch 1 and 16, scoring)")
            rows.append((preset, path, r))
        del bundle

    lines = [
        "# GST inference benchmark",
        "",
        f"Machine: {info['cpu']}, {info['cores']} logical cores (1-min load average {info['load_avg']:.1f} at start), "
        f"{info['mem_total_gb']:.0f} GB RAM, torch {info['torch']} ({info['torch_threads']} threads). "
        f"Measured: fp32 matmul {info['matmul_gflops']:.0f} GFLOP/s, memory read {info['mem_gbs']:.1f} GB/s.",
        "",
        "Weights: the shipped model for 'default', random (seed 0) for the other presets. "
        "Pose = encode 2 images + generate T camera tokens (top-k 100 sampling) for "
        "N hypotheses + decode N ray maps; view = encode image + camera, generate T image tokens, decode. "
        "Decode ms/token at batch 1 after a 2T+1-token prompt; roofline = (non-embedding weights + KV read "
        "per token) / measured memory bandwidth, as a fraction of the measured step. "
        "Score N=16: the likelihood selection `estimate_pose` adds by default (re-encode 16 cameras, one "
        "causal pass over 16 sequences of 3T+1 tokens; no KV cache involved, so the no-cache path runs the "
        "same pass). 'greedy = torch': the first greedy tokens of a pose estimate equal the torch path's."
        + (" Quick mode: fewer repeats and steps." if quick else ""),
        "",
        "| preset | path | prefill ms | decode ms/tok | % of roofline | pose N=1 s | pose N=16 s | N16/N1 "
        "| score N=16 s | view s | speed-up vs no-cache (pose N=1) | peak RSS MB | greedy = torch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for preset, path, r in rows:
        star = " (extrapolated)" if r["extrapolated"] else ""
        lines.append(
            f"| {preset} (T={r['T']}) | {LABELS[path]}{star} | {_fmt(r['prefill_s'], 1e3)} | "
            f"{_fmt(r['decode_s'], 1e3, 2)} | {_fmt(r['roofline'], 100, 0)} | {_fmt(r['pose1_s'], 1, 2)} | "
            f"{_fmt(r['pose16_s'], 1, 2)} | {_fmt(r['n16_ratio'], 1, 2)} | {_fmt(r['score16_s'], 1, 2)} | "
            f"{_fmt(r['view_s'], 1, 2)} | "
            f"{_fmt(r['speedup'], 1, 1)} | {r['peak_rss_mb']:.0f} | {r['greedy']} |")
    lines += ["", "Targets: decode >= 60% of roofline at batch 1; pose N=16 <= 2.5x N=1; >= 25x end-to-end "
              "over no-cache."]
    for preset, path, r in rows:
        if path == "nocache":
            continue
        checks = [("roofline >= 60%", r["roofline"] is not None and r["roofline"] >= 0.6),
                  ("N16 <= 2.5x N1", r["n16_ratio"] is not None and r["n16_ratio"] <= 2.5),
                  (">= 25x vs no-cache", r["speedup"] is not None and r["speedup"] >= 25)]
        lines.append(f"- {preset} / {LABELS[path]}: " + ", ".join(f"{n}: {'met' if ok else 'MISSED'}"
                                                                 for n, ok in checks))
    lines += [f"- {n}" for n in notes]
    lines += _speculative_section(rows)
    text = "\n".join(lines) + "\n"
    if update and out.is_file():
        text = merge_previous(text, out.read_text(), presets)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def _line_preset(line: str) -> str | None:
    """The preset a results line belongs to: a table row '| P (T=..' or a target/note line '- P / ..', '- P: ..'."""
    match = re.match(r"^\| (\S+) \(T=\d+\) \|", line) or re.match(r"^- (\S+?)(?: / |: |/)", line)
    return match.group(1) if match else None


def merge_previous(text: str, previous: str, presets_run: list[str]) -> str:
    """`text` (this run) plus the rows, targets and notes of the presets of `previous` (an earlier results file)
    that this run did not measure, each in its table, with a line naming the run they come from."""
    def sections(doc: str) -> dict[str, list[str]]:
        part, out = "head", {"head": [], "main": [], "targets": [], "spec": [], "tail": []}
        for line in doc.splitlines():
            if line.startswith("| preset | path | prefill"):
                part = "main"
            elif line.startswith("Targets:"):
                part = "targets"
            elif line.startswith("## Speculative"):
                part = "spec"
            elif line.startswith("Acceptance of drafted tokens"):
                part = "tail"
            out[part].append(line)
        return out

    old, new = sections(previous), sections(text)
    carried = {k: [l for l in old[k] if _line_preset(l) not in (None, *presets_run)] for k in ("main", "targets", "spec")}
    names = sorted({_line_preset(l) for lines in carried.values() for l in lines})
    if not names:
        return text

    def insert(lines: list[str], extra: list[str]) -> list[str]:  # after the last row or item of the block
        last = max((i for i, l in enumerate(lines) if l.startswith(("|", "- "))), default=len(lines) - 1)
        return lines[:last + 1] + extra + lines[last + 1:]

    machine_line = next((l for l in old["head"] if l.startswith("Machine:")), "Machine: unknown")
    head = new["head"] + [f"Rows of {', '.join(names)}: carried over from an earlier run of this command, not "
                          f"measured now ({machine_line.rstrip('.')}).", ""]
    if new["spec"]:
        spec = insert(new["spec"], carried["spec"])
    elif carried["spec"]:  # this run drafted nothing: the earlier section's text and header, with its rows
        header = [l for l in old["spec"] if not l.startswith("| ") or l.startswith("| preset")]
        spec = insert(header, carried["spec"]) + [""]
    else:
        spec = []
    tail = new["tail"] or (old["tail"] if "default" not in presets_run else [])
    body = head + insert(new["main"], carried["main"]) + insert(new["targets"], carried["targets"]) + spec + tail
    return "\n".join(body).rstrip("\n") + "\n"


def _speculative_section(rows) -> list[str]:
    spec_rows = [(preset, path, r) for preset, path, r in rows if r.get("speculative")]
    if not spec_rows:
        return []
    lines = ["", "## Speculative decoding of camera tokens", "",
             f"Blocks of {DRAFT_LEN} tokens (the row's last token + {DRAFT_LEN - 1} drafts) verified per transformer "
             "pass, top-k 100 sampling; passes include the prefill (plain decoding: T). 'geometric': the identity "
             "camera, refitted to the rays of every newly completed grid row (decode the known rows — with the "
             "model's partial ray decoder when it has one — fit, re-encode); "
             "'tracked': a prior 3 degrees from the true pose, as the localize node's previous estimate of a slowly "
             "moving camera, never refitted. The shipped model ('default') runs a rendered pair of its own kind "
             "of scene; random-weight presets accept almost nothing, so their rows show the cost of the "
             "machinery, and their speed-up with the shipped model's acceptance is passes x decode time.", "",
             "| preset | path | draft | passes N=1 | passes N=16 | pose N=1 s (plain) | pose N=16 s (plain) |",
             "|---|---|---|---|---|---|---|"]
    for preset, path, r in spec_rows:
        for draft, e in r["speculative"].items():
            lines.append(f"| {preset} (T={r['T']}) | {LABELS[path]} | {draft} | {e['passes1']} | {e['passes16']} | "
                         f"{e['pose1_s']:.2f} ({r['pose1_s']:.2f}) | {e['pose16_s']:.2f} ({r['pose16_s']:.2f}) |")
    for preset, path, r in spec_rows:
        if path != "torch" or preset != "default":
            continue
        grid = int(round(r["T"] ** 0.5))
        lines += ["", f"Acceptance of drafted tokens by grid row, {preset}, N=16 (accepted / drafted):", "",
                  "| draft | " + " | ".join(f"row {i}" for i in range(grid)) + " | all |",
                  "|---|" + "---|" * (grid + 1)]
        for draft, e in r["speculative"].items():
            acc, dr = e["accepted16"], e["drafted16"]
            cells = [sum(acc[i * grid:(i + 1) * grid]) / max(sum(dr[i * grid:(i + 1) * grid]), 1) for i in range(grid)]
            lines.append(f"| {draft} | " + " | ".join(f"{c:.2f}" for c in cells)
                         + f" | {sum(acc) / max(sum(dr), 1):.2f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark GST inference paths side by side.")
    default = "default" if DEFAULT_MODEL_DIR.is_dir() else "small"
    parser.add_argument("--presets", default=default, help=f"comma-separated (default: {default})")
    parser.add_argument("--out", default="bench/results.md")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps")
    parser.add_argument("--export-root", default=None, help="ONNX export cache (default: the runtime's)")
    parser.add_argument("--update", action="store_true",
                        help="keep the rows of presets not run now from the existing --out file (e.g. re-measure the "
                             "shipped model without the hour-long GPT-B run); the file says which rows are older")
    parser.add_argument("--worker", nargs=3, metavar=("PRESET", "PATH", "MODEL_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(*args.worker, quick=args.quick)), flush=True)
        return 0
    from gst_model.manifest import default_cache_root

    text = run(args.presets.split(","), Path(args.out), args.quick, Path(args.export_root or default_cache_root()),
               update=args.update)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
