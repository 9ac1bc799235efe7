"""Inference back-ends behind one interface: torch (reference), onnxruntime, tensorrt.

Every runtime offers the same six calls on token ids and tensors; `GSTPipeline` only talks to this
interface, so a back-end can be swapped without touching pose or view logic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_k: int | None = 100
    top_p: float = 1.0
    cfg_scale: float = 1.0
    greedy: bool = False

    def validated(self) -> "SamplingParams":
        if not (self.temperature > 0 and self.temperature < float("inf")):
            raise ValueError(f"temperature must be a positive finite number, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 (or None for no limit), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (self.cfg_scale >= 0 and self.cfg_scale < float("inf")):
            raise ValueError(f"cfg_scale must be >= 0 and finite, got {self.cfg_scale}")
        return self


class Runtime(Protocol):
    """What a back-end must provide. Token ids here are codebook indices, not vocabulary ids."""

    def encode_images(self, images: torch.Tensor) -> torch.Tensor: ...  # [B,3,S,S] -> [B,T]

    def decode_images(self, codes: torch.Tensor) -> torch.Tensor: ...  # [B,T] -> [B,3,S,S]

    def encode_rays(self, rays: torch.Tensor) -> torch.Tensor: ...  # [B,6,R,R] -> [B,T]

    def decode_rays(self, codes: torch.Tensor) -> torch.Tensor: ...  # [B,T] -> [B,6,R,R]

    def generate(self, prompt: torch.Tensor, num_new_tokens: int, sampling: SamplingParams,
                 segment_ranges: list[tuple[int, tuple[int, int]]],
                 generator: torch.Generator | None) -> torch.Tensor: ...  # [B,P] -> [B,num_new]

    def segment_log_likelihood(self, tokens: torch.Tensor) -> torch.Tensor: ...  # [B,3T+1] vocabulary ids
    # -> [B] float32 on the CPU: log p of the last T tokens given the rest (gst_model.likelihood)


def make_runtime(bundle, backend: str = "torch", device: str = "cpu", **options) -> Runtime:
    """Build the named back-end for a loaded `ModelBundle`."""
    if backend != "torch" and options.pop("compile", False):
        raise ValueError("compile applies to backend torch only (onnxruntime and tensorrt run optimised graphs "
                         "of their own)")
    if backend == "torch":
        from gst_model.runtime.torch_runtime import TorchRuntime

        return TorchRuntime(bundle, device=device, **options)
    if backend == "onnxruntime":
        from gst_model.runtime.ort_runtime import OrtRuntime

        return OrtRuntime(bundle, device=device, **options)
    if backend == "tensorrt":
        from gst_model.runtime.trt_runtime import TensorRTRuntime

        return TensorRTRuntime(bundle, device=device, **options)
    raise ValueError(f"unknown backend {backend!r}; choose torch, onnxruntime or tensorrt")
