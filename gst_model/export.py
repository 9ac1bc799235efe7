"""ONNX export of a GST bundle: the two tokenizers and the transformer as prefill + cached decode step.

    python -m gst_model.export --checkpoint PATH_OR_PRESET --out DIR [--static-batch N]

Graphs (float32 activations, int64 ids; B = batch, T = tokens per view, L = layers, S = cache slots):
    image_encoder   images [B,3,I,I]                            -> codes [B,T]
    image_decoder   codes [B,T]                                 -> images [B,3,I,I]
    camera_encoder  rays [B,6,R,R]                              -> codes [B,T]
    camera_decoder  codes [B,T]                                 -> rays [B,6,R,R]
    prefill         tokens [B,P], input_pos [P]                 -> logits [B,V] (last position),
                                                                   k_i, v_i [B,H,P,D] for each layer i
    decode          token [B,1], input_pos [1], prompt_k_i, prompt_v_i [G,H,P,D],
                    gen_k_i, gen_v_i [B,H,S,D]              -> logits [B,V], new_k_i, new_v_i [B,H,1,D]
    prefill_p{P}_static   the prefill with a fixed batch and prompt length, for TensorRT
    decode_static   token [B,1], input_pos [1], cache_k_i, cache_v_i [B,H,S,D] (fixed B and S), same outputs
    score           tokens [B,L]                                -> log_likelihood [B]: of the last T tokens
                                                                   given the rest (`gst_model.likelihood`)
    score_static    the score graph with a fixed batch and L = 3T + 1, for TensorRT

Decode-step contract (`decode`): G prompts of P tokens, each continued by B/G rows; row b continues
prompt b // (B/G). The prompts' keys/values are passed once, not once per row, so N hypotheses read
them once per step. gen slots 0..input_pos-P-1 hold the tokens generated so far, later ones are
ignored. `decode_static` takes one full cache per row instead: slots 0..input_pos-1 hold the sequence.
Both return only the new key/value row; the caller writes it into its cache. ONNX has no in-place
update, so returning the whole cache would copy every cached float for every token.

Weights are stored once per component: every transformer graph points into `transformer.weights`,
the tokenizer graphs into `image_tokenizer.weights` / `camera_tokenizer.weights` (initializers are
deduplicated by content, so folded copies that are equal are shared too).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
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

from gst_model.checkpoint import hash_weights
from gst_model.likelihood import segment_log_likelihood
from gst_model.transformer import Transformer, apply_rope, find_multiple

EXPORT_FORMAT = "gst_ros.onnx/3"  # 2: decode shares the prompt cache; 3: score graphs
OPSET = 17
# Measured on the 2-core dev machine (tiny bundle, 8 graphs): the TorchScript exporter takes ~1 s per
# graph, the dynamo exporter ~15 s, with the same ORT parity; the TorchScript path is used.
EXPORTER = f"torch {torch.__version__} torch.onnx.export(dynamo=False)"
# The code the graphs are traced from: an export cached by other code is stale even at the same format.
EXPORTER_SOURCE = hashlib.sha256(b"".join((Path(__file__).parent / name).read_bytes() for name in (
    "export.py", "transformer.py", "tokenizer.py", "likelihood.py"))).hexdigest()
_EXTERNAL_MIN_BYTES = 1024  # smaller initializers stay inside the graph
_ALIGN = 64


# ------------------------------------------------------------------------------ wrapper modules
def _qkv(attn, x: torch.Tensor, rope: torch.Tensor):
    """The Attention module's projection, QK-norm and RoPE; returns q, k, v as [B, H, T, D]."""
    b, t, _ = x.shape
    q, k, v = attn.wqkv(x).view(b, t, 3, attn.n_head, attn.head_dim).unbind(2)
    if attn.qk_norm:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rope(q, rope), apply_rope(k, rope)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def _merge_heads(y: torch.Tensor) -> torch.Tensor:
    b, h, t, d = y.shape
    return y.transpose(1, 2).reshape(b, t, h * d)


class PrefillGraph(nn.Module):
    """Causal pass over a prompt; returns last-position logits and every layer's keys/values."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor):
        m = self.model
        rope = m.freqs_cis[input_pos]
        h = m.tok_embeddings(tokens)
        kv = []
        for layer in m.layers:
            q, k, v = _qkv(layer.attention, layer.attention_norm(h), rope)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            h = h + layer.attention.wo(_merge_heads(y))
            h = h + layer.feed_forward(layer.ffn_norm(h))
            kv += [k, v]
        # Norm and head are per position: computing them for the last one only saves a [P, V] matmul.
        return (m.output(m.norm(h[:, -1])).float(), *kv)


class _DecodeStepGraph(nn.Module):
    """One token per row through every block; subclasses supply the attention over their cache layout.
    Returns the logits and each layer's key/value rows of the token."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model
        self.scale = 1.0 / math.sqrt(model.config.head_dim)

    def forward(self, token: torch.Tensor, input_pos: torch.Tensor, *cache: torch.Tensor):
        m = self.model
        rope = m.freqs_cis[input_pos]
        h = m.tok_embeddings(token)
        hidden = self.hidden_slots(input_pos, cache)
        new = []
        for i, layer in enumerate(m.layers):
            q, k, v = _qkv(layer.attention, layer.attention_norm(h), rope)
            y = self.attend(q, k, v, cache, i, hidden)
            h = h + layer.attention.wo(_merge_heads(y))
            h = h + layer.feed_forward(layer.ffn_norm(h))
            new += [k, v]
        return (m.output(m.norm(h[:, -1])).float(), *new)


class DecodeGraph(_DecodeStepGraph):
    """Static layout: one fixed-size cache per row, slots 0..input_pos-1 filled."""

    def hidden_slots(self, input_pos, cache):
        slots = torch.arange(cache[0].shape[2], device=input_pos.device)
        return (slots >= input_pos).view(1, 1, 1, -1)  # not yet written (or a stale row)

    def attend(self, q, k, v, cache, i, hidden):
        k_cache, v_cache = cache[2 * i], cache[2 * i + 1]
        # Scores against the cache and against the new key, one softmax over both: the same
        # attention as writing k into slot input_pos first, without copying the cache.
        s_past = torch.matmul(q, k_cache.transpose(-1, -2)).masked_fill(hidden, float("-inf"))
        s_new = (q * k).sum(-1, keepdim=True)
        p = (torch.cat([s_past, s_new], dim=-1) * self.scale).softmax(dim=-1)
        return torch.matmul(p[..., :-1], v_cache) + p[..., -1:] * v


class SharedDecodeGraph(_DecodeStepGraph):
    """Shared layout (see the module docstring): the prompts' cache once, per-row generated slots."""

    def hidden_slots(self, input_pos, cache):
        slots = torch.arange(cache[2].shape[2], device=input_pos.device)
        return (slots >= input_pos - cache[0].shape[2]).view(1, 1, 1, -1)  # not generated yet

    def attend(self, q, k, v, cache, i, hidden):
        prompt_k, prompt_v, gen_k, gen_v = cache[4 * i: 4 * i + 4]
        b, (g, heads, plen, d), n_gen = q.shape[0], prompt_k.shape, gen_k.shape[2]
        # The rows of one prompt are the query rows of one matmul against its keys: [G, H, B/G, P].
        s_prompt = torch.matmul(q.reshape(g, -1, heads, d).transpose(1, 2), prompt_k.transpose(-1, -2))
        s_gen = torch.matmul(q, gen_k.transpose(-1, -2)).masked_fill(hidden, float("-inf"))
        s_new = (q * k).sum(-1, keepdim=True)
        s_rows = torch.cat([s_gen, s_new], dim=-1).reshape(g, -1, heads, n_gen + 1).transpose(1, 2)
        p = (torch.cat([s_prompt, s_rows], dim=-1) * self.scale).softmax(dim=-1)
        y_prompt = torch.matmul(p[..., :plen], prompt_v).transpose(1, 2).reshape(b, heads, 1, d)
        p_rows = p[..., plen:].transpose(1, 2).reshape(b, heads, 1, -1)
        return y_prompt + torch.matmul(p_rows[..., :-1], gen_v) + p_rows[..., -1:] * v


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
def _graph_specs(bundle, static_batch: int | None, prompt_lengths: list[int]):
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
    prefill, decode, shared = PrefillGraph(model), DecodeGraph(model), SharedDecodeGraph(model)
    shared_in = shared_cache_names(L)

    def prefill_args(b, p):
        return (torch.zeros(b, p, dtype=torch.long), torch.arange(p))

    def decode_args(b, s):
        return (torch.zeros(b, 1, dtype=torch.long), torch.tensor([s // 2]),
                *[torch.zeros(b, H, s, D) for _ in range(2 * L)])

    specs.append(("prefill", "transformer", prefill, prefill_args(2, 2 * T + 1), ["tokens", "input_pos"],
                  ["logits", *kv_out],
                  {"tokens": {0: "batch", 1: "prompt"}, "input_pos": {0: "prompt"}, "logits": batch,
                   **{n: {0: "batch", 2: "prompt"} for n in kv_out}}))
    P, n_gen = 2 * T + 1, 8
    shared_args = (torch.zeros(4, 1, dtype=torch.long), torch.tensor([P + 3]),
                   *[torch.zeros(2, H, P, D) if "prompt" in n else torch.zeros(4, H, n_gen, D) for n in shared_in])
    specs.append(("decode", "transformer", shared, shared_args, ["token", "input_pos", *shared_in],
                  ["logits", *new_out],
                  {"token": batch, "logits": batch, **{n: batch for n in new_out},
                   **{n: ({0: "prompts", 2: "prompt"} if "prompt" in n else {0: "batch", 2: "generated"})
                      for n in shared_in}}))
    if static_batch:
        for p in prompt_lengths:
            specs.append((f"prefill_p{p}_static", "transformer", prefill, prefill_args(static_batch, p),
                          ["tokens", "input_pos"], ["logits", *kv_out], None))
        specs.append(("decode_static", "transformer", decode, decode_args(static_batch, S),
                      ["token", "input_pos", *cache_in], ["logits", *new_out], None))
    score = ScoreGraph(model, bundle.vocab)
    sequence = 3 * T + 1
    specs.append(("score", "transformer", score, (torch.zeros(2, sequence, dtype=torch.long),), ["tokens"],
                  ["log_likelihood"], {"tokens": {0: "batch", 1: "sequence"}, "log_likelihood": batch}))
    if static_batch:
        specs.append(("score_static", "transformer", score, (torch.zeros(static_batch, sequence, dtype=torch.long),),
                      ["tokens"], ["log_likelihood"], None))
    return specs


def export_bundle(bundle, out_dir: str | Path, static_batch: int | None = None,
                  prompt_lengths: list[int] | None = None) -> dict:
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
                                                                               prompt_lengths):
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
            "exporter_source": EXPORTER_SOURCE,
            "onnx_version": onnx.__version__,
            "model_sha256": bundle_digest(bundle),
            "config": bundle.config_dict(),
            "static_batch": static_batch,
            "static_prompt_lengths": prompt_lengths if static_batch else [],
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
        torch.manual_seed(0)
        bundle = build_bundle(args.checkpoint)
    else:
        bundle = load_bundle(args.checkpoint)
    manifest = export_bundle(bundle, args.out, static_batch=args.static_batch)
    for name, size in manifest["file_bytes"].items():
        print(f"{size / 1e6:10.2f} MB  {name}")
    print(f"exported {len(manifest['graphs'])} graphs to {args.out} in {manifest['export_seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
