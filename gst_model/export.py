"""ONNX export of a GST bundle: the two tokenizers and the transformer as prefill + cached decode step.

    python -m gst_model.export --checkpoint PATH_OR_PRESET --out DIR [--static-batch N]

Graphs (float32 activations, int64 ids; B = batch, T = tokens per view, L = layers, S = cache slots):
    image_encoder   images [B,3,I,I]                            -> codes [B,T]
    image_decoder   codes [B,T]                                 -> images [B,3,I,I]
    camera_encoder  rays [B,6,R,R]                              -> codes [B,T]
    camera_decoder  codes [B,T]                                 -> rays [B,6,R,R]
    prefill         tokens [B,P], input_pos [P]                 -> logits [B,V] (last position),
                                                                   k_i, v_i [B,H,P,D] for each layer i
    decode          tokens [B,K], input_pos [B,K], prompt_k_i, prompt_v_i [G,H,P,D],
                    gen_k_i, gen_v_i [B,H,S,D]           -> logits [B,K,V], new_k_i, new_v_i [B,H,K,D]
    decode_step     the decode graph for plain decoding: K = 1 and one position for every row, input_pos [1,1]
                    (its masks broadcast over the rows; a step of 16 rows is ~15% faster than `decode`'s)
    prefill_p{P}_static   the prefill with a fixed batch and prompt length, for TensorRT
    decode_static   tokens [B,1], input_pos [B,1], cache_k_i, cache_v_i [B,H,S,D] (fixed B and S), same outputs
    verify_static   the same with K = the exported static draft length (speculative blocks), for TensorRT
    score           tokens [B,L]                                -> log_likelihood [B]: of the last T tokens
                                                                   given the rest (`gst_model.likelihood`)
    score_static    the score graph with a fixed batch and L = 3T + 1, for TensorRT

Decode-step contract (`decode`): a block of K tokens per row (K = 1: a plain step; K > 1: a speculative
block), at positions that may differ between rows. G prompts of P tokens, each continued by B/G rows; row b
continues prompt b // (B/G). The prompts' keys/values are passed once, not once per row, so N hypotheses read
them once per step. Row b's gen slots before its block (slot s = position P + s, s < input_pos[b,0] - P) hold
the tokens generated so far; later ones are ignored. `decode_static` / `verify_static` take one full cache
per row instead, slot = position. All return only the block's keys/values; the caller writes them into its
cache. The math is `gst_model.transformer.attend_block`, traced through the Transformer's own forward.

Weights are stored once per component: every transformer graph points into `transformer.weights`,
the tokenizer graphs into `image_tokenizer.weights` / `camera_tokenizer.weights` (initializers are
deduplicated by content, so folded copies that are equal are shared too).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper

from gst_model.generate import DRAFT_LEN
from gst_model.likelihood import segment_log_likelihood
from gst_model.manifest import EXPORT_FORMAT, bundle_digest, exporter_source, sha256_file
from gst_model.transformer import Transformer, attend_block, find_multiple

OPSET = 17
# Measured on the 2-core dev machine (tiny bundle, 8 graphs): the TorchScript exporter takes ~1 s per
# graph, the dynamo exporter ~15 s, with the same ORT parity; the TorchScript path is used.
EXPORTER = f"torch {torch.__version__} torch.onnx.export(dynamo=False)"
_EXTERNAL_MIN_BYTES = 1024  # smaller initializers stay inside the graph
_ALIGN = 64


# ------------------------------------------------------------------------------ wrapper modules
# The graphs trace the Transformer's own forward: for the trace, each layer's cache is replaced by one whose
# tensors are graph inputs and which records the new keys/values as graph outputs (ONNX has no in-place
# update, and returning whole caches would copy every cached float each step).
class _PrefillCapture:
    """Causal attention over the prompt alone; keeps the prompt's keys/values."""

    def attend(self, q, k, v, input_pos):
        self.k, self.v = k, v
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class _BlockInputs:
    """`attend_block` over caches given as graph inputs; keeps the block's keys/values."""

    def __init__(self, prompt_k, prompt_v, past_k, past_v, past_start):
        self.prompt_k, self.prompt_v, self.past_k, self.past_v, self.past_start = (
            prompt_k, prompt_v, past_k, past_v, past_start)

    def attend(self, q, k, v, input_pos):
        self.k, self.v = k, v
        return attend_block(q, k, v, input_pos, self.prompt_k, self.prompt_v, self.past_k, self.past_v,
                            self.past_start)


class _CachedGraph(nn.Module):
    """Runs the model with per-layer graph caches; returns logits and each layer's new keys/values."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def _run(self, tokens, input_pos, caches, last=None):
        layers = self.model.layers
        try:
            for layer, cache in zip(layers, caches):
                layer.attention.kv_cache = cache
            logits = self.model(tokens, input_pos, use_cache=True, last=last)
        finally:
            self.model.clear_caches()
        return (logits, *[t for c in caches for t in (c.k, c.v)])


class PrefillGraph(_CachedGraph):
    """Causal pass over a prompt; returns last-position logits [B, V] and every layer's keys/values."""

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor):
        logits, *kv = self._run(tokens, input_pos, [_PrefillCapture() for _ in self.model.layers], last=1)
        return (logits[:, -1], *kv)


class SharedDecodeGraph(_CachedGraph):
    """Shared layout (see the module docstring): the prompts' cache once, per-row generated slots."""

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, *cache: torch.Tensor):
        plen = cache[0].shape[2]
        caches = [_BlockInputs(*cache[4 * i: 4 * i + 4], plen) for i in range(len(self.model.layers))]
        return self._run(tokens, input_pos, caches)


class StaticDecodeGraph(_CachedGraph):
    """Static layout: one fixed-size cache per row, slot = absolute position."""

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, *cache: torch.Tensor):
        caches = [_BlockInputs(None, None, cache[2 * i], cache[2 * i + 1], 0) for i in range(len(self.model.layers))]
        return self._run(tokens, input_pos, caches)


class ScoreGraph(nn.Module):
    """Log-likelihood of the last segment of full sequences (ranks pose hypotheses; see likelihood.py)."""

    def __init__(self, model: Transformer, vocab):
        super().__init__()
        self.model, self.vocab = model, vocab

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return segment_log_likelihood(self.model, tokens, self.model.config.grid_size ** 2, self.vocab)


class EncodeGraph(nn.Module):
    """VQ encoder + cosine nearest-code search -> row-major code indices [B, h*w]."""

    def __init__(self, vq):
        super().__init__()
        self.vq = vq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quant = self.vq.quantize
        z = self.vq.quant_conv(self.vq.encoder(x))
        b, d = z.shape[0], z.shape[1]
        z = z.permute(0, 2, 3, 1)
        if quant.l2_norm:
            z = F.normalize(z, p=2, dim=-1)
        # The quantizer's own distance expression, so ties and rounding match the torch path.
        return quant._distances(z.reshape(-1, d), quant.codebook()).argmin(dim=1).view(b, -1)


class DecodeIndicesGraph(nn.Module):
    def __init__(self, vq, grid: int):
        super().__init__()
        self.vq, self.grid = vq, grid

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.vq.decode_indices(codes, (self.grid, self.grid)).float()


# ------------------------------------------------------------------------------ helpers
def cache_slots(config) -> int:
    """Fixed cache length of the static decode graph (the torch path rounds up to 8 as well)."""
    return find_multiple(config.max_seq_len, 8)


def layer_names(prefix: str, n_layer: int) -> list[str]:
    return [f"{prefix}_{kind}_{i}" for i in range(n_layer) for kind in ("k", "v")]


def shared_cache_names(n_layer: int) -> list[str]:
    """Inputs of the `decode` graph after token and input_pos: per layer prompt k, v then gen k, v."""
    return [f"{kind}_{i}" for i in range(n_layer) for kind in ("prompt_k", "prompt_v", "gen_k", "gen_v")]


class _WeightFile:
    """Append-only external-data file that stores each distinct initializer payload once."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "wb")
        self.offsets: dict[bytes, tuple[int, int]] = {}

    def externalize(self, model: onnx.ModelProto) -> None:
        for tensor in model.graph.initializer:
            array = numpy_helper.to_array(tensor)
            if array.nbytes < _EXTERNAL_MIN_BYTES:
                continue
            raw = np.ascontiguousarray(array).tobytes()
            key = hashlib.sha256(raw).digest()
            if key not in self.offsets:
                pad = -self.file.tell() % _ALIGN
                self.file.write(b"\0" * pad)
                self.offsets[key] = (self.file.tell(), len(raw))
                self.file.write(raw)
            offset, length = self.offsets[key]
            dims, dtype, name = list(tensor.dims), tensor.data_type, tensor.name
            tensor.Clear()
            tensor.name, tensor.data_type = name, dtype
            tensor.dims.extend(dims)
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for k, v in (("location", self.path.name), ("offset", str(offset)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = k, v

    def close(self) -> None:
        self.file.close()


def _io_spec(values) -> list[dict]:
    out = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None)
                 for d in t.shape.dim]
        out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                    "shape": shape})
    return out


# ------------------------------------------------------------------------------ export
def _graph_specs(bundle, static_batch: int | None, prompt_lengths: list[int], static_draft_len: int):
    """(name, component, module, example args, input names, output names, dynamic axes) per graph."""
    model = bundle.transformer
    cfg = model.config
    T = cfg.grid_size ** 2
    L = cfg.n_layer
    view = bundle.view
    batch = {0: "batch"}
    specs = []
    for comp, vq, size, ch in (("image", bundle.image_tokenizer, view.image_size, 3),
                               ("camera", bundle.camera_tokenizer, view.ray_size, 6)):
        x = torch.zeros(2, ch, size, size)
        specs.append((f"{comp}_encoder", f"{comp}_tokenizer", EncodeGraph(vq), (x,), ["input"], ["codes"],
                      {"input": batch, "codes": batch}))
        codes = torch.zeros(2, T, dtype=torch.long)
        specs.append((f"{comp}_decoder", f"{comp}_tokenizer", DecodeIndicesGraph(vq, cfg.grid_size), (codes,),
                      ["codes"], ["output"], {"codes": batch, "output": batch}))

    kv_out, cache_in, new_out = layer_names("present", L), layer_names("cache", L), layer_names("new", L)
    H, D, S = cfg.n_head, cfg.head_dim, cache_slots(cfg)
    prefill, static_decode, shared = PrefillGraph(model), StaticDecodeGraph(model), SharedDecodeGraph(model)
    shared_in = shared_cache_names(L)

    def prefill_args(b, p):
        return (torch.zeros(b, p, dtype=torch.long), torch.arange(p))

    def static_args(b, k, s):
        return (torch.zeros(b, k, dtype=torch.long), torch.arange(s // 2, s // 2 + k).expand(b, k),
                *[torch.zeros(b, H, s, D) for _ in range(2 * L)])

    specs.append(("prefill", "transformer", prefill, prefill_args(2, 2 * T + 1), ["tokens", "input_pos"],
                  ["logits", *kv_out],
                  {"tokens": {0: "batch", 1: "prompt"}, "input_pos": {0: "prompt"}, "logits": batch,
                   **{n: {0: "batch", 2: "prompt"} for n in kv_out}}))
    P, n_gen, k = 2 * T + 1, 8, 3
    shared_args = (torch.zeros(4, k, dtype=torch.long), torch.arange(P + 3, P + 3 + k).expand(4, k),
                   *[torch.zeros(2, H, P, D) if "prompt" in n else torch.zeros(4, H, n_gen, D) for n in shared_in])
    block = {0: "batch", 1: "block"}
    shared_cache_axes = {n: ({0: "prompts", 2: "prompt"} if "prompt" in n else {0: "batch", 2: "generated"})
                         for n in shared_in}
    specs.append(("decode", "transformer", shared, shared_args, ["tokens", "input_pos", *shared_in],
                  ["logits", *new_out],
                  {"tokens": block, "input_pos": block, "logits": block, **{n: {0: "batch", 2: "block"} for n in new_out},
                   **shared_cache_axes}))
    step_args = (torch.zeros(4, 1, dtype=torch.long), torch.tensor([[P + 3]]), *shared_args[2:])
    specs.append(("decode_step", "transformer", shared, step_args, ["tokens", "input_pos", *shared_in],
                  ["logits", *new_out], {"tokens": batch, "logits": batch, **{n: batch for n in new_out},
                                         **shared_cache_axes}))
    if static_batch:
        for p in prompt_lengths:
            specs.append((f"prefill_p{p}_static", "transformer", prefill, prefill_args(static_batch, p),
                          ["tokens", "input_pos"], ["logits", *kv_out], None))
        for name, k in (("decode_static", 1), ("verify_static", static_draft_len)):
            specs.append((name, "transformer", static_decode, static_args(static_batch, k, S),
                          ["tokens", "input_pos", *cache_in], ["logits", *new_out], None))
    score = ScoreGraph(model, bundle.vocab)
    sequence = 3 * T + 1
    specs.append(("score", "transformer", score, (torch.zeros(2, sequence, dtype=torch.long),), ["tokens"],
                  ["log_likelihood"], {"tokens": {0: "batch", 1: "sequence"}, "log_likelihood": batch}))
    if static_batch:
        specs.append(("score_static", "transformer", score, (torch.zeros(static_batch, sequence, dtype=torch.long),),
                      ["tokens"], ["log_likelihood"], None))
    return specs


def export_bundle(bundle, out_dir: str | Path, static_batch: int | None = None,
                  prompt_lengths: list[int] | None = None, static_draft_len: int = DRAFT_LEN) -> dict:
    """Write every graph, the shared weight files and manifest.json to out_dir; return the manifest.

    The directory is assembled under a temporary name and renamed at the end, so a crash never leaves
    a half-written export behind that a later run would take for a finished one.
    """
    bundle.eval()
    out_dir = Path(out_dir)
    T = bundle.transformer.config.grid_size ** 2
    prompt_lengths = sorted(set(prompt_lengths or [T + 1, 2 * T + 1]))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    weight_files: dict[str, _WeightFile] = {}
    graphs = {}
    t0 = time.perf_counter()
    try:
        for name, comp, module, args, in_names, out_names, axes in _graph_specs(bundle, static_batch,
                                                                               prompt_lengths, static_draft_len):
            raw_path = work / f"{name}.raw.onnx"
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation/tracer notes
                torch.onnx.export(module.eval(), args, str(raw_path), input_names=in_names,
                                  output_names=out_names, dynamic_axes=axes, opset_version=OPSET,
                                  do_constant_folding=True, dynamo=False)
            proto = onnx.load(str(raw_path))
            for f in work.glob(f"{name}.raw.onnx*"):
                f.unlink()
            if comp not in weight_files:
                weight_files[comp] = _WeightFile(work / f"{comp}.weights")
            store = weight_files[comp]
            store.externalize(proto)
            onnx.save(proto, str(work / f"{name}.onnx"))
            graphs[name] = {"file": f"{name}.onnx", "weights": store.path.name,
                            "inputs": _io_spec(proto.graph.input), "outputs": _io_spec(proto.graph.output),
                            "opset": OPSET, "static": axes is None}
        for store in weight_files.values():
            store.close()
        for name, g in graphs.items():
            onnx.checker.check_model(str(work / g["file"]))  # path form: resolves external data
        hashes = {p.name: sha256_file(p) for p in sorted(work.iterdir()) if p.suffix in (".onnx", ".weights")}
        for g in graphs.values():
            g["sha256"] = {g["file"]: hashes[g["file"]], g["weights"]: hashes[g["weights"]]}
        cfg = bundle.transformer.config
        manifest = {
            "format": EXPORT_FORMAT,
            "exporter": EXPORTER,
            "exporter_source": exporter_source(),
            "onnx_version": onnx.__version__,
            "model_sha256": bundle_digest(bundle),
            "config": bundle.config_dict(),
            "static_batch": static_batch,
            "static_prompt_lengths": prompt_lengths if static_batch else [],
            "static_draft_len": static_draft_len if static_batch else None,
            "cache_slots": cache_slots(cfg),
            "n_layer": cfg.n_layer,
            "graphs": graphs,
            "file_bytes": {n: (work / n).stat().st_size for n in hashes},
            "export_seconds": round(time.perf_counter() - t0, 2),
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(work, out_dir)
        return manifest
    finally:
        for store in weight_files.values():
            store.file.close()
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    from gst_model.checkpoint import BUNDLE_PRESETS, build_bundle, load_bundle

    parser = argparse.ArgumentParser(description="Export a GST checkpoint to ONNX graphs + manifest.json.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory or a bundle preset name "
                        f"({', '.join(sorted(BUNDLE_PRESETS))}: random weights, seed 0)")
    parser.add_argument("--out", required=True, help="output directory (replaced if it exists)")
    parser.add_argument("--static-batch", type=int, default=None,
                        help="also export fixed-batch transformer graphs (TensorRT); include the x2 of CFG")
    args = parser.parse_args(argv)
    if args.checkpoint in BUNDLE_PRESETS and not Path(args.checkpoint).exists():
        bundle = build_bundle(args.checkpoint, seed=0)
    else:
        bundle = load_bundle(args.checkpoint)
    manifest = export_bundle(bundle, args.out, static_batch=args.static_batch)
    for name, size in manifest["file_bytes"].items():
        print(f"{size / 1e6:10.2f} MB  {name}")
    print(f"exported {len(manifest['graphs'])} graphs to {args.out} in {manifest['export_seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
