"""Runtime protocol on top of exported graphs (`gst_model.export`), shared by ONNX Runtime and TensorRT.

Subclasses provide `_run(graph, feeds) -> outputs`. Tensors stay torch tensors on `self.device` (the KV cache
included), so a GPU back-end keeps the cache on the device; the ONNX Runtime CPU back-end hands them to ORT as
zero-copy numpy views. Generation is `gst_model.generate.generate` driving a `GraphDecoder`.
"""
from __future__ import annotations

import torch


class GraphRuntime:
    """With `static=True` the fixed-batch transformer graphs are used (TensorRT engines are built from them):
    batches are padded to the static batch and prompts must have an exported static length."""

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
        self._cache_inputs: dict[str, list[str]] = {}  # graph -> names of its cache inputs, in order

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
    def pad(self, x: torch.Tensor) -> torch.Tensor:
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
        out = self._run(graph, {"tokens": self.pad(tokens), "input_pos": input_pos})
        return out[0][:b], [t[:b] for t in out[1:]]

    def decode_block(self, graph: str, tokens: torch.Tensor, input_pos: torch.Tensor,
                     cache: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """tokens, input_pos [B,K] over the graph's cache inputs (in its input order) -> (logits [B,K,V],
        the block's keys/values [k_0, v_0, ...] each [B,H,K,D])."""
        if graph not in self._cache_inputs:
            self._cache_inputs[graph] = [spec["name"] for spec in self.manifest["graphs"][graph]["inputs"][2:]]
        out = self._run(graph, {"tokens": tokens, "input_pos": input_pos,
                                **dict(zip(self._cache_inputs[graph], cache))})
        return out[0], out[1:]

    def segment_log_likelihood(self, tokens: torch.Tensor) -> torch.Tensor:
        """Full sequences [B, 3T+1] -> log-likelihood [B] of their last segment (the `score` graph)."""
        b = tokens.shape[0]
        graph = "score_static" if self.static else "score"
        return self._run(graph, {"tokens": self.pad(tokens.to(self.device))})[0][:b].float().cpu()

    def decoder(self) -> "GraphDecoder":
        return GraphDecoder(self)


class GraphDecoder:
    """`gst_model.generate.Decoder` over the exported graphs.

    Dynamic graphs (`decode`): the prompts' keys/values once, plus per-row caches of the generated tokens that
    grow in blocks of GROW_SLOTS (the graph reads every slot it is given, and a slice of a larger buffer would
    not be contiguous: ORT would copy it each step). Static graphs (`decode_static`, `verify_static`): one
    full cache per row of the static batch, slot = position.
    """

    GROW_SLOTS = 32

    def __init__(self, runtime: GraphRuntime):
        self.rt = runtime
        self.max_seq_len = runtime.max_seq_len

    def prefill(self, prompts, start_pos, copies, slots):
        if start_pos != 0:
            raise ValueError("the exported graphs generate after a prompt that starts at position 0")
        rt, (g, plen) = self.rt, prompts.shape
        prompts = prompts.to(rt.device, torch.long)
        if rt.static:
            rt.pad(prompts.repeat_interleave(copies, dim=0))  # raises before any work if the batch does not fit
        logits, kv = rt.prefill(prompts, torch.arange(plen, device=rt.device))
        self.plen, self.slots, self.rows = plen, slots, g * copies
        if rt.static:
            self.cache = []
            for t in kv:
                c = torch.zeros((rt.static_batch, t.shape[1], rt.manifest["cache_slots"], t.shape[3]),
                                dtype=t.dtype, device=rt.device)
                c[: self.rows, :, :plen] = t.repeat_interleave(copies, dim=0)
                self.cache.append(c)
        else:
            self.prompt_kv = kv
            self.cache = [torch.zeros((self.rows, t.shape[1], 0, t.shape[3]), dtype=t.dtype, device=rt.device)
                          for t in kv]
        return logits

    def decode(self, tokens, input_pos):
        rt = self.rt
        b, k = tokens.shape
        # Plain decoding (every row one token at the same position) has its own graph where the export has one.
        step = k == 1 and input_pos.shape[0] == 1 and not rt.static and "decode_step" in rt.manifest["graphs"]
        tokens, input_pos = tokens.to(rt.device), input_pos.to(rt.device)
        input_pos = input_pos.reshape(1, 1) if step else input_pos.expand(b, k)
        if rt.static:
            graph = "decode_static" if k == 1 else "verify_static"
            if k > 1 and k != rt.manifest.get("static_draft_len"):
                raise ValueError(f"the static graphs verify blocks of {rt.manifest.get('static_draft_len')} tokens, "
                                 f"got {k}; re-export with that draft length or use the same draft_len")
            logits, new = rt.decode_block(graph, rt.pad(tokens), rt.pad(input_pos), self.cache)
            slot = input_pos
        else:
            slot = input_pos - self.plen
            needed = int(slot.max()) + 1
            if needed > self.cache[0].shape[2]:
                grow = min(max(self.GROW_SLOTS, needed - self.cache[0].shape[2]), self.slots - self.cache[0].shape[2])
                self.cache = [torch.cat([c, c.new_zeros(*c.shape[:2], grow, c.shape[3])], dim=2) for c in self.cache]
            feeds = [t for i in range(rt.n_layer)
                     for t in (*self.prompt_kv[2 * i: 2 * i + 2], *self.cache[2 * i: 2 * i + 2])]
            logits, new = rt.decode_block("decode_step" if step else "decode", tokens, input_pos, feeds)
        for c, n in zip(self.cache, new):
            if step:
                c[:b].index_copy_(2, slot[0], n[:b])
            else:
                c[:b].scatter_(2, slot[:, None, :, None].expand(b, c.shape[1], k, c.shape[3]), n[:b])
        return logits[:b]

    def close(self):
        self.cache = self.prompt_kv = None
