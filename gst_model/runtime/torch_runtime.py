"""The reference back-end: eager PyTorch with a preallocated KV cache."""
from __future__ import annotations

import torch

from gst_model.generate import generate
from gst_model.likelihood import segment_log_likelihood
from gst_model.runtime import SamplingParams


class TorchRuntime:
    def __init__(self, bundle, device: str = "cpu", dtype: torch.dtype | None = None, compile: bool = False):
        self.device = torch.device(device)
        if self.device.type == "cpu":
            # Sharp attention leaves subnormal floats in the activations, and x86 cores take ~100x longer per
            # subnormal operation: the GPU-trained default model's pose estimate took 1.15 s instead of 0.9 s
            # on real images. Flushing them to zero (process-wide) changes no result that matters.
            torch.set_flush_denormal(True)
        self.transformer = bundle.transformer.to(self.device).eval()
        if dtype is not None:
            self.transformer = self.transformer.to(dtype)
        self.image_tokenizer = bundle.image_tokenizer.to(self.device).eval()
        self.camera_tokenizer = bundle.camera_tokenizer.to(self.device).eval()
        self.vocab = bundle.vocab
        if compile:
            # One graph per input shape (prefill, decode step, scoring; each sample count is a new shape); the
            # decode cache keeps its shapes from step to step, so a generation compiles once, not per token.
            # Sampling and the generation loop stay in Python.
            self.transformer.forward = torch.compile(self.transformer.forward, dynamic=False)

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
        return segment_log_likelihood(self.transformer, tokens.to(self.device), self.vocab.tokens_per_view,
                                      self.vocab).float().cpu()

    def generate(self, prompt, num_new_tokens, sampling: SamplingParams, segment_ranges, generator):
        return generate(self.transformer, prompt.to(self.device), num_new_tokens,
                        cfg_scale=sampling.cfg_scale, temperature=sampling.temperature,
                        top_k=sampling.top_k, top_p=sampling.top_p, greedy=sampling.greedy,
                        generator=generator, segment_ranges=segment_ranges)
