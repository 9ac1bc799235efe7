"""ONNX Runtime back-end, and the graph-driven generation loop it shares with the TensorRT back-end.

The graphs come from `gst_model.export` (see its docstring for the contract). Sampling and CFG run in
torch on the logits the graphs return, through the same `sample_from_logits` as the torch back-end,
so greedy and seeded sampling follow the reference token for token (up to float rounding of logits).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from gst_model.export import EXPORTER_SOURCE, bundle_digest, export_bundle, load_manifest
from gst_model.generate import allowed_schedule, prompt_copies, sample_from_logits
from gst_model.runtime import SamplingParams


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
        if manifest["model_sha256"] == digest and manifest.get("exporter_source") == EXPORTER_SOURCE:
            return path
    except (FileNotFoundError, ValueError):
        pass  # missing, foreign or damaged: export afresh
    export_bundle(bundle, path, static_batch=static_batch)
    return path


class GraphRuntime:
    """Runtime protocol on top of exported graphs; subclasses provide `_run(graph, feeds) -> outputs`.

Tensors stay torch tensors on `self.device` (the KV cache included), so a GPU back-end can keep the
cache on the device; the ONNX Runtime CPU back-end hands them to ORT as zero-copy numpy views.

    With `static=True` the fixed-batch transformer graphs are used (TensorRT engines are built from
    them): batches are padded to the static batch and prompts must have an exported static length.
    """

    GROW_SLOTS = 32  # per-row cache growth of the shared-prompt decode (see _shared_steps)

    def __init__(self, manifest: dict, static: bool = False, device: str = "cpu"):
        self.manifest = manifest
        self.device = torch.device(device)
        self.static = static
        self.n_layer = manifest["n_layer"]
        tcfg = manifest["config"]["transformer"]
        self.max_seq_len = tcfg["num_segments"] * tcfg["grid_size"] ** 2 + tcfg["special_token_num"]
        if static and not manifest.get("static_batch"):
            raise ValueError("static graphs requested but the export has none (export with --static-batch)")
        self.static_batch = manifest.get("static_batch")

    def _run(self, graph: str, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError

    # ------------------------------------------------------------------ tokenizers
    def _tokenizer(self, graph: str, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        name = "input" if graph.endswith("encoder") else "codes"
        return self._run(graph, {name: x.detach().to(self.device, dtype).contiguous()})[0]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self._tokenizer("image_encoder", images, torch.float32)

    def decode_images(self, codes: torch.Tensor) -> torch.Tensor:
        return self._tokenizer("image_decoder", codes, torch.long)

    def encode_rays(self, rays: torch.Tensor) -> torch.Tensor:
        return self._tokenizer("camera_encoder", rays, torch.float32)

    def decode_rays(self, codes: torch.Tensor) -> torch.Tensor:
        return self._tokenizer("camera_decoder", codes, torch.long)

    # ------------------------------------------------------------------ transformer
    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Static graphs: repeat row 0 up to the static batch (the extra rows are dropped after)."""
        if not self.static or x.shape[0] == self.static_batch:
            return x
        if x.shape[0] > self.static_batch:
            raise ValueError(f"batch {x.shape[0]} (x2 with CFG) exceeds the static batch {self.static_batch} "
                             "of the exported graphs/engines; re-export with a larger --static-batch")
        return torch.cat([x, x[:1].expand(self.static_batch - x.shape[0], *x.shape[1:])])

    def prefill(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """tokens [B,P] -> (last logits [B,V], [k_0, v_0, ...] each [B,H,P,D])."""
        b, p = tokens.shape
        graph = "prefill"
        if self.static:
            graph = f"prefill_p{p}_static"
            if graph not in self.manifest["graphs"]:
                raise ValueError(f"no static prefill graph for prompt length {p}; exported lengths: "
                                 f"{self.manifest['static_prompt_lengths']}")
        out = self._run(graph, {"tokens": self._pad(tokens), "input_pos": input_pos})
        return out[0][:b], [t[:b] for t in out[1:]]

    def decode(self, token: torch.Tensor, pos: int, cache: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Static graphs: token [B,1] at slot pos over full per-row caches [k_0, v_0, ...] [B,H,S,D]
        -> (logits [B,V], new rows [B,H,1,D])."""
        feeds = {"token": self._pad(token), "input_pos": torch.tensor([pos], device=self.device)}
        for i in range(self.n_layer):
            feeds[f"cache_k_{i}"], feeds[f"cache_v_{i}"] = cache[2 * i], cache[2 * i + 1]
        out = self._run("decode_static", feeds)
        return out[0], out[1:]

    def decode_shared(self, token: torch.Tensor, pos: int, prompt_kv: list[torch.Tensor],
                      generated: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """token [B,1] at position pos; prompt_kv [k_0, v_0, ...] [G,H,P,D] of G prompts (row b continues
        prompt b // (B/G)); generated [k_0, v_0, ...] [B,H,S,D], slots 0..pos-P-1 filled
        -> (logits [B,V], new rows [B,H,1,D])."""
        feeds = {"token": token, "input_pos": torch.tensor([pos], device=self.device)}
        for i in range(self.n_layer):
            feeds[f"prompt_k_{i}"], feeds[f"prompt_v_{i}"] = prompt_kv[2 * i], prompt_kv[2 * i + 1]
            feeds[f"gen_k_{i}"], feeds[f"gen_v_{i}"] = generated[2 * i], generated[2 * i + 1]
        out = self._run("decode", feeds)
        return out[0], out[1:]

    def segment_log_likelihood(self, tokens: torch.Tensor) -> torch.Tensor:
        """Full sequences [B, 3T+1] -> log-likelihood [B] of their last segment (the `score` graph)."""
        b = tokens.shape[0]
        graph = "score_static" if self.static else "score"
        return self._run(graph, {"tokens": self._pad(tokens.to(self.device))})[0][:b].float().cpu()

    def generate(self, prompt: torch.Tensor, num_new_tokens: int, sampling: SamplingParams,
                 segment_ranges, generator: torch.Generator | None) -> torch.Tensor:
        """Same contract and sampling stream as `gst_model.generate.generate` with start_pos 0."""
        if num_new_tokens < 1:
            raise ValueError("num_new_tokens must be >= 1")
        prompt = prompt.detach().to(self.device, torch.long)
        plen = prompt.shape[1]
        if plen + num_new_tokens - 1 > self.max_seq_len:
            raise ValueError(f"{plen + num_new_tokens} positions exceed the model's max_seq_len {self.max_seq_len}")
        schedule = allowed_schedule(segment_ranges, num_new_tokens)
        cfg = sampling.cfg_scale > 1.0
        rows = torch.cat([prompt, torch.zeros_like(prompt)]) if cfg else prompt
        if self.static:
            self._pad(rows)  # raises before any work if the batch does not fit the static graphs
        # N hypotheses of one query: prefill the prompt once (per CFG half) and share its cache.
        copies = prompt_copies(prompt)
        logits, kv = self.prefill(rows[::copies], torch.arange(plen, device=self.device))
        step = self._static_steps(kv, copies, plen) if self.static else self._shared_steps(kv, rows, num_new_tokens)

        def pick(step_logits: torch.Tensor, allowed) -> torch.Tensor:
            lg = step_logits[: rows.shape[0]].float()
            if cfg:
                cond, uncond = lg.chunk(2, dim=0)
                lg = uncond + (cond - uncond) * sampling.cfg_scale
            return sample_from_logits(lg, temperature=sampling.temperature, top_k=sampling.top_k,
                                      top_p=sampling.top_p, greedy=sampling.greedy, generator=generator,
                                      allowed=allowed)

        token = pick(logits.repeat_interleave(copies, dim=0), schedule[0])
        out = [token]
        for i in range(1, num_new_tokens):
            token = pick(step(torch.cat([token, token]) if cfg else token, plen + i - 1), schedule[i])
            out.append(token)
        return torch.stack(out, dim=1)

    def _shared_steps(self, prompt_kv: list[torch.Tensor], rows: torch.Tensor, num_new_tokens: int):
        """Decode step over the shared prompt cache plus per-row caches of the generated tokens.

        The per-row caches grow in blocks of GROW_SLOTS: the graph reads every slot it is given, and a
        slice of a larger buffer would not be contiguous (ORT would copy it each step).
        """
        plen = rows.shape[1]
        generated = [torch.zeros((rows.shape[0], t.shape[1], 0, t.shape[3]), dtype=t.dtype, device=self.device)
                     for t in prompt_kv]

        def step(token: torch.Tensor, pos: int) -> torch.Tensor:
            slot = pos - plen
            if slot == generated[0].shape[2]:
                grow = min(self.GROW_SLOTS, num_new_tokens - slot)
                generated[:] = [torch.cat([c, c.new_zeros(*c.shape[:2], grow, c.shape[3])], dim=2)
                                for c in generated]
            logits, new = self.decode_shared(token[:, None], pos, prompt_kv, generated)
            for c, n in zip(generated, new):
                c[:, :, slot] = n[:, :, 0]
            return logits
        return step

    def _static_steps(self, prompt_kv: list[torch.Tensor], copies: int, plen: int):
        """Decode step over full fixed-size per-row caches (the static graphs' contract)."""
        cache = []
        for t in prompt_kv:
            c = torch.zeros((self.static_batch, t.shape[1], self.manifest["cache_slots"], t.shape[3]),
                            dtype=t.dtype, device=self.device)
            c[: t.shape[0] * copies, :, :plen] = t.repeat_interleave(copies, dim=0)
            cache.append(c)

        def step(token: torch.Tensor, pos: int) -> torch.Tensor:
            logits, new = self.decode(token[:, None], pos, cache)
            for c, n in zip(cache, new):
                c[:, :, pos] = n[:, :, 0]
            return logits
        return step


def _providers(device: str, model_dir: Path) -> list:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if not str(device).startswith("cuda"):
        return ["CPUExecutionProvider"]
    wanted = []
    if "TensorrtExecutionProvider" in available:
        wanted.append(("TensorrtExecutionProvider", {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                                                     "trt_engine_cache_path": str(model_dir / "ort_trt_cache")}))
    if "CUDAExecutionProvider" in available:
        wanted.append("CUDAExecutionProvider")
    if not wanted:
        raise RuntimeError(f"device {device!r} needs onnxruntime-gpu (CUDA provider); available: {available}")
    return wanted + ["CPUExecutionProvider"]


class OrtRuntime(GraphRuntime):
    """onnxruntime sessions over an export directory (exported into a cache when model_dir is None).

    int8=True uses dynamically quantized (int8 weight) copies of the transformer graphs, made once and
    kept in <model_dir>/int8; outputs then differ from the float model.
    """

    def __init__(self, bundle, device: str = "cpu", model_dir: str | Path | None = None, providers=None,
                 cache_root: str | Path | None = None, static: bool = False, static_batch: int | None = None,
                 int8: bool = False, threads: int | None = None, verify: bool = True):
        import onnxruntime as ort

        self.model_dir = ensure_export(bundle, model_dir, cache_root, static_batch)
        manifest = load_manifest(self.model_dir, verify=verify)
        super().__init__(manifest, static=static, device="cpu")  # host tensors; ORT copies to its device
        self.providers = providers or _providers(device, self.model_dir)
        self.options = ort.SessionOptions()
        if threads:
            self.options.intra_op_num_threads = threads
        # Sampling and cache writes run in torch between graph runs; spinning ORT workers would take the
        # cores from them (2 cores, small model: pose N=1 0.37 -> 0.26 s, N=16 0.88 -> 0.52 s; GPT-B same).
        self.options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.int8 = int8
        self._sessions: dict = {}
        self._ort = ort

    def _graph_path(self, graph: str) -> Path:
        path = self.model_dir / self.manifest["graphs"][graph]["file"]
        if self.int8 and self.manifest["graphs"][graph]["weights"] == "transformer.weights":
            path = _quantized(path, self.model_dir / "int8")
        return path

    def session(self, graph: str):
        if graph not in self._sessions:  # lazy: a pose-only user never loads the image decoder
            self._sessions[graph] = self._ort.InferenceSession(str(self._graph_path(graph)), self.options,
                                                               providers=self.providers)
        return self._sessions[graph]

    def _run(self, graph: str, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        outputs = self.session(graph).run(None, {k: v.numpy() for k, v in feeds.items()})
        return [torch.from_numpy(o) for o in outputs]


def _quantized(src: Path, out_dir: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = out_dir / src.name
    if not dst.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".{src.stem}.tmp.onnx"
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, use_external_data_format=True)
        os.replace(tmp, dst)
    return dst
