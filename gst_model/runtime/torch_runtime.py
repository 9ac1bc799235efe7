"""The reference back-end: eager (or torch.compile'd) PyTorch with the package's KV caches."""
from __future__ import annotations

import torch

from gst_model.generate import TorchDecoder
from gst_model.likelihood import segment_log_likelihood

class TorchRuntime:
    """flush_denormal: flush subnormal floats to zero — process-wide (torch's flag lives in each CPU thread's
    floating-point state and is inherited by threads created later, so it cannot be scoped to a call), hence
    an explicit option for programs that own their process (the ROS nodes, the benchmark, the evaluation).
    Sharp attention leaves subnormal floats in the activations, and x86 cores take ~100x longer per subnormal
    operation: the GPU-trained default model's pose estimate took 1.15 s instead of 0.9 s on real images."""

    def __init__(self, bundle, device: str = "cpu", dtype: torch.dtype | None = None, compile: bool = False,
                 flush_denormal: bool = False):
        self.device = torch.device(device)
        if flush_denormal:
            torch.set_flush_denormal(True)
        self.transformer = bundle.transformer.to(self.device).eval()
        if dtype is not None:
            self.transformer = self.transformer.to(dtype)
        self.image_tokenizer = bundle.image_tokenizer.to(self.device).eval()
        self.camera_tokenizer = bundle.camera_tokenizer.to(self.device).eval()
        self.vocab = bundle.vocab
        # One graph per input shape (prefill, decode step, verify block, scoring; each sample count is a new
        # shape); the decode cache keeps its shapes from step to step, so a generation compiles once, not per
        # token. Sampling and the generation loop stay in Python. The module itself is left as it is.
        self._forward = torch.compile(self.transformer, dynamic=False) if compile else self.transformer

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_tokenizer.encode_indices(images.to(self.device))

    @torch.inference_mode()
    def decode_images(self, codes: torch.Tensor) -> torch.Tensor:
        return self.image_tokenizer.decode_indices(codes.to(self.device)).float()

    @torch.inference_mode()
    def encode_rays(self, rays: torch.Tensor) -> torch.Tensor:
        return self.camera_tokenizer.encode_indices(rays.to(self.device, torch.float32))

    @torch.inference_mode()
    def decode_rays(self, codes: torch.Tensor) -> torch.Tensor:
        return self.camera_tokenizer.decode_indices(codes.to(self.device)).float()

    @torch.inference_mode()
    def segment_log_likelihood(self, tokens: torch.Tensor) -> torch.Tensor:
        return segment_log_likelihood(self._forward, tokens.to(self.device), self.vocab.tokens_per_view,
                                          self.vocab).float().cpu()

    def decoder(self) -> TorchDecoder:
        return TorchDecoder(self.transformer, forward=self._forward)
