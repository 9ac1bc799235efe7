"""TensorRT back-end: FP16 engines built from the static ONNX graphs of `gst_model.export`.

UNVERIFIED: TensorRT and a CUDA GPU were not available where this was written; only the engine-cache
logic (pure functions below) is tested. The generation loop (`GraphDecoder`, including speculative blocks
through `verify_static`) is the one the ONNX Runtime back-end runs and tests on the same static graphs
(`OrtRuntime(static=True)`).

Engine cache: <engine_dir>/<graph>.engine with <graph>.key.json beside it. The key holds the
TensorRT version, the GPU name, the ONNX graph's and weights' sha256 (from the manifest), the
precision and the build shapes. An engine is used only if its key file matches the wanted key
exactly and the engine bytes match the sha256 recorded in it; otherwise it is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from gst_model.manifest import default_cache_root, ensure_export, load_manifest
from gst_model.runtime.graph import GraphRuntime

KEY_VERSION = 1


# ------------------------------------------------------------------ engine cache (pure functions)
def engine_key(graph: dict, trt_version: str, gpu_name: str, precision: str = "fp16",
               profile: dict | None = None) -> dict:
    """Everything an engine depends on; `graph` is the manifest entry of the ONNX graph."""
    return {"key_version": KEY_VERSION, "tensorrt": trt_version, "gpu": gpu_name, "precision": precision,
            "onnx_sha256": dict(sorted(graph["sha256"].items())), "profile": profile or {}}


def engine_paths(engine_dir: str | Path, graph_name: str) -> tuple[Path, Path]:
    engine_dir = Path(engine_dir)
    return engine_dir / f"{graph_name}.engine", engine_dir / f"{graph_name}.key.json"


def cached_engine_status(engine_dir: str | Path, graph_name: str, key: dict) -> tuple[bool, str]:
    """(usable, reason). Usable only if the stored key equals `key` and the engine bytes are intact."""
    engine, key_file = engine_paths(engine_dir, graph_name)
    if not engine.is_file():
        return False, "no cached engine"
    if not key_file.is_file():
        return False, "cached engine has no key file"
    try:
        stored = json.loads(key_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False, "key file is corrupt"
    recorded = stored.pop("engine_sha256", None)
    if stored != key:
        changed = sorted(k for k in set(stored) | set(key) if stored.get(k) != key.get(k))
        return False, f"stale engine: {', '.join(changed)} changed"
    if recorded != hashlib.sha256(engine.read_bytes()).hexdigest():
        return False, "engine file does not match its recorded sha256"
    return True, "cached engine matches"


def store_engine(engine_dir: str | Path, graph_name: str, key: dict, engine_bytes: bytes) -> Path:
    """Write the engine, then its key (with the engine's sha256): a crash in between leaves no key."""
    engine, key_file = engine_paths(engine_dir, graph_name)
    engine.parent.mkdir(parents=True, exist_ok=True)
    key_file.unlink(missing_ok=True)
    tmp = engine.with_suffix(".engine.tmp")
    tmp.write_bytes(engine_bytes)
    os.replace(tmp, engine)
    record = {**key, "engine_sha256": hashlib.sha256(engine_bytes).hexdigest()}
    key_file.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return engine


def import_tensorrt():
    """The tensorrt module, or a RuntimeError that says what is missing."""
    try:
        import tensorrt as trt  # noqa: PLC0415 - optional dependency, imported only when used
    except ImportError as exc:
        raise RuntimeError("the tensorrt backend needs NVIDIA TensorRT (Python package `tensorrt` >= 10, with its "
                           "native libraries) and a CUDA GPU; it is not installed here. Use backend='onnxruntime' "
                           "or 'torch'.") from exc
    if not hasattr(trt, "Builder"):
        raise RuntimeError("the installed `tensorrt` package is a stub without the TensorRT libraries "
                           "(pip's tensorrt wheel downloads them from NVIDIA at install time)")
    return trt


# ------------------------------------------------------------------ runtime
class TensorRTRuntime(GraphRuntime):
    """FP16 TensorRT engines on one CUDA GPU, with the KV cache kept on the device.

    static_batch: engine batch for the transformer (N hypotheses, x2 when cfg_scale > 1); prompts
    must have one of the exported static lengths (T + 1 or 2T + 1).
    """

    def __init__(self, bundle, device: str = "cuda", model_dir: str | Path | None = None,
                 cache_root: str | Path | None = None, engine_dir: str | Path | None = None,
                 static_batch: int = 16, force_rebuild: bool = False, workspace_gib: float = 4.0,
                 verify: bool = True):
        self.trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise RuntimeError("the tensorrt backend needs a CUDA GPU visible to torch (torch.cuda.is_available())")
        if not str(device).startswith("cuda"):
            raise ValueError(f"the tensorrt backend runs on a CUDA device, got device={device!r}")
        self.model_dir = ensure_export(bundle, model_dir, cache_root, static_batch)
        manifest = load_manifest(self.model_dir, verify=verify)
        super().__init__(manifest, static=True, device=device)
        self.gpu_name = torch.cuda.get_device_name(self.device)
        self.engine_dir = Path(engine_dir or default_cache_root() / "trt" / self.model_dir.name)
        self.force_rebuild = force_rebuild
        self.workspace = int(workspace_gib * (1 << 30))
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.runtime = self.trt.Runtime(self.logger)
        self.rebuilt: dict[str, str] = {}  # graph -> why it was built (for logs/tests)
        self._contexts: dict = {}

    def _profile(self, graph_name: str) -> dict:
        """Shape ranges for the dynamic-batch tokenizer graphs: batch 1 .. static batch (>= 2 images)."""
        graph = self.manifest["graphs"][graph_name]
        if graph["static"]:
            return {}
        top = max(self.static_batch, 2)
        profile = {}
        for spec in graph["inputs"]:
            fixed = list(spec["shape"][1:])
            profile[spec["name"]] = [[1, *fixed], [top, *fixed], [top, *fixed]]
        return profile

    def _build(self, graph_name: str, profile: dict) -> bytes:
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, self.logger)
        path = self.model_dir / self.manifest["graphs"][graph_name]["file"]
        if not parser.parse_from_file(str(path)):  # resolves the external weights next to the file
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {path}: {errors}")
        config = builder.create_builder_config()
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace)
        if profile:
            opt = builder.create_optimization_profile()
            for name, (lo, mid, hi) in profile.items():
                opt.set_shape(name, lo, mid, hi)
            config.add_optimization_profile(opt)
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise RuntimeError(f"TensorRT failed to build an engine for {path}")
        return bytes(engine)

    def _context(self, graph_name: str):
        if graph_name in self._contexts:
            return self._contexts[graph_name]
        profile = self._profile(graph_name)
        key = engine_key(self.manifest["graphs"][graph_name], self.trt.__version__, self.gpu_name,
                         profile=profile)
        usable, reason = cached_engine_status(self.engine_dir, graph_name, key)
        if self.force_rebuild or not usable:
            self.rebuilt[graph_name] = "force_rebuild" if self.force_rebuild else reason
            store_engine(self.engine_dir, graph_name, key, self._build(graph_name, profile))
        engine_file, _ = engine_paths(self.engine_dir, graph_name)
        engine = self.runtime.deserialize_cuda_engine(engine_file.read_bytes())
        if engine is None:
            raise RuntimeError(f"TensorRT could not load {engine_file}; rerun with force_rebuild=True")
        self._contexts[graph_name] = (engine, engine.create_execution_context())
        return self._contexts[graph_name]

    def _run(self, graph: str, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        trt = self.trt
        engine, context = self._context(graph)
        keep = []  # inputs converted here must live until the stream has run
        for name, value in feeds.items():
            value = value.to(self.device).contiguous()
            keep.append(value)
            context.set_input_shape(name, tuple(value.shape))
            context.set_tensor_address(name, value.data_ptr())
        outputs = []
        for spec in self.manifest["graphs"][graph]["outputs"]:
            name = spec["name"]
            dtype = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                     trt.DataType.INT64: torch.int64, trt.DataType.INT32: torch.int32}[engine.get_tensor_dtype(name)]
            out = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device=self.device)
            context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        stream = torch.cuda.current_stream(self.device)
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of {graph} failed")
        stream.synchronize()
        return [o.long() if o.dtype == torch.int32 else o for o in outputs]
