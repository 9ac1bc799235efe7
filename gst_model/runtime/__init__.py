"""Inference back-ends behind one interface: torch (reference), onnxruntime, tensorrt.

Every runtime offers the same six calls on token ids and tensors; `GSTPipeline` only talks to this
interface, so a back-end can be swapped without touching pose or view logic. Generation itself is one loop
(`gst_model.generate.generate`) driving each back-end's `Decoder`.
"""
from __future__ import annotations

from typing import Protocol

import torch

from gst_model.generate import Decoder, SamplingParams  # noqa: F401 - SamplingParams re-exported for back-ends


class Runtime(Protocol):
    """What a back-end must provide. Token ids here are codebook indices, not vocabulary ids."""

    def encode_images(self, images: torch.Tensor) -> torch.Tensor: ...  # [B,3,S,S] -> [B,T]

    def decode_images(self, codes: torch.Tensor) -> torch.Tensor: ...  # [B,T] -> [B,3,S,S]

    def encode_rays(self, rays: torch.Tensor) -> torch.Tensor: ...  # [B,6,R,R] -> [B,T]

    def decode_rays(self, codes: torch.Tensor) -> torch.Tensor: ...  # [B,T] -> [B,6,R,R]

    def decoder(self) -> Decoder: ...  # a fresh prefill / decode-block step interface for one generation

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
