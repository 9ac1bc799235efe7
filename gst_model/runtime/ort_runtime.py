"""ONNX Runtime back-end: sessions over an export directory (`gst_model.export`), made on first use.

Sampling, CFG and speculation run in torch on the logits the graphs return, in the same generation loop as
the torch back-end (`gst_model.generate`), so greedy and seeded sampling follow the reference token for token
(up to float rounding of logits).
"""
from __future__ import annotations

from pathlib import Path

import torch

from gst_model.manifest import ensure_export, load_manifest
from gst_model.runtime.graph import GraphRuntime


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
            from gst_model.runtime.quantize import quantized_graph

            path = quantized_graph(path, self.model_dir / "int8")
        return path

    def session(self, graph: str):
        if graph not in self._sessions:  # lazy: a pose-only user never loads the image decoder
            self._sessions[graph] = self._ort.InferenceSession(str(self._graph_path(graph)), self.options,
                                                               providers=self.providers)
        return self._sessions[graph]

    def _run(self, graph: str, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        outputs = self.session(graph).run(None, {k: v.contiguous().numpy() for k, v in feeds.items()})
        return [torch.from_numpy(o) for o in outputs]
