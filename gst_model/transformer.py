"""GST's decoder-only transformer over the joint image + camera vocabulary.

LlamaGen/gpt-fast lineage: pre-norm blocks (RMSNorm -> attention with QK-LayerNorm and 2-D RoPE,
RMSNorm -> SwiGLU), no biases, untied output head. Parameter names and shapes equal the official
checkpoint, so `load_state_dict(official["model"], strict=True)` works for the GPT-XXL preset.

Unlike the official module, `forward` has no hidden state: positions come from the caller, the KV
cache is used only when asked for, and train/eval only switches dropout.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from gst_model.vocab import Vocabulary


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


@dataclass
class GSTConfig:
    dim: int = 1536
    n_layer: int = 48
    n_head: int = 24
    vocab_size: int = field(default_factory=lambda: Vocabulary().size)
    grid_size: int = 16  # a segment (image or camera) is grid_size x grid_size tokens
    special_token_num: int = 1  # RoPE rows for the <GEN>/<EST> slot
    num_segments: int = 3  # observation, camera, target image
    qk_norm: bool = True
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    initializer_range: float = 0.02

    def __post_init__(self):
        assert self.dim % self.n_head == 0, "dim must be divisible by n_head"
        assert self.head_dim % 4 == 0, "2-D RoPE needs head_dim divisible by 4"

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return find_multiple(hidden, self.multiple_of)

    @property
    def tokens_per_segment(self) -> int:
        return self.grid_size**2

    @property
    def max_seq_len(self) -> int:
        return self.num_segments * self.tokens_per_segment + self.special_token_num

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GSTConfig":
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict] = {
    # Same shapes as the golden tiny model (official_golden.md (a)); for tests.
    "tiny": dict(dim=64, n_layer=2, n_head=4, vocab_size=50, grid_size=4),
    # CPU-trainable (the shipped model): 8x8 token grids, 2.65M parameters in the blocks
    # (+ 2*192*vocab for embedding and head); about 1.35 s per 16-sequence training step on 2 cores.
    "small": dict(dim=192, n_layer=6, n_head=6, grid_size=8),
    # LlamaGen sizes; GPT-XXL with the default vocabulary and grid is the released GST model.
    "GPT-B": dict(dim=768, n_layer=12, n_head=12),
    "GPT-L": dict(dim=1024, n_layer=24, n_head=16),
    "GPT-XL": dict(dim=1280, n_layer=36, n_head=20),
    "GPT-XXL": dict(dim=1536, n_layer=48, n_head=24),
}


def build_rope_table(
    grid_size: int,
    head_dim: int,
    special_token_num: int = 1,
    num_segments: int = 3,
    base: float = 10000.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Official 2-D RoPE table, [rows, head_dim/2, 2] with (cos, sin) in the last axis.

    Pair k < head_dim/4 rotates by the token's grid row, the rest by its column, with
    w_k = base^(-4k/head_dim). Rows: one grid, `special_token_num` rows of ones (cos = sin = 1,
    which is NOT the identity; kept for checkpoint compatibility), then the grid again for each
    remaining segment, so every segment reuses the same 2-D positions.
    """
    half = head_dim // 2
    # Computed exactly as the official code so the float32 table matches bit for bit.
    freqs = 1.0 / (base ** (torch.arange(0, half, 2, device=device)[: half // 2].float() / half))
    angles = torch.outer(torch.arange(grid_size, device=device), freqs)  # [G, head_dim/4]
    grid = torch.cat(
        [
            angles[:, None, :].expand(-1, grid_size, -1),  # row angle
            angles[None, :, :].expand(grid_size, -1, -1),  # column angle
        ],
        dim=-1,
    ).flatten(0, 1)  # [G*G, head_dim/2], row-major cells
    grid = torch.stack([grid.cos(), grid.sin()], dim=-1)
    special = torch.ones(special_token_num, half, 2, device=device)
    return torch.cat([grid, special] + [grid] * (num_segments - 1), dim=0)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """x: [B, T, H, D]; rope: [T, D/2, 2] (positions shared by the batch) or [B, T, D/2, 2] (per row).
    Rotates adjacent pairs (2k, 2k+1) in float32."""
    xp = x.float().reshape(*x.shape[:-1], -1, 2)
    rope = (rope if rope.dim() == 4 else rope[None]).unsqueeze(2)  # [1 or B, T, 1, D/2, 2]
    a, b = xp[..., 0], xp[..., 1]
    cos, sin = rope[..., 0], rope[..., 1]
    out = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1)
    return out.flatten(3).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 for bf16 stability, as the official model does.
        xf = x.float()
        xf = xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


class KVCache(nn.Module):
    """Preallocated keys/values [B, H, S, D], written in place at absolute positions (the official cache).

    Used for prefills: every row has its own prompt, all rows are at the same positions.
    """

    def __init__(self, max_batch_size: int, max_seq_length: int, n_head: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None = None):
        super().__init__()
        shape = (max_batch_size, n_head, max_seq_length, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        # Which slots hold real entries: lets a sequence start at a position > 0.
        self.register_buffer("filled", torch.zeros(max_seq_length, dtype=torch.bool, device=device),
                             persistent=False)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """q, k, v [B, H, T, D] of tokens at input_pos [T]: write k, v, attend to every filled slot at or
        before each token's position -> [B, H, T, D]."""
        b = k.shape[0]
        self.k_cache[:b, :, input_pos] = k
        self.v_cache[:b, :, input_pos] = v
        self.filled[input_pos] = True
        slots = torch.arange(self.k_cache.shape[2], device=q.device)
        mask = (slots[None, :] <= input_pos[:, None]) & self.filled[None, :]  # [T, S]
        return F.scaled_dot_product_attention(q, self.k_cache[:b], self.v_cache[:b], attn_mask=mask)


def _by_prompt(x: torch.Tensor, prompts: int) -> torch.Tensor:
    """[B, H, K, E] of B rows, B/prompts rows per prompt -> [G, H, (B/G)*K, E]: a prompt's rows as one matrix."""
    _, h, _, e = x.shape
    return x.reshape(prompts, -1, h, x.shape[2], e).transpose(1, 2).reshape(prompts, h, -1, e)


def _by_row(x: torch.Tensor, rows: int, block: int) -> torch.Tensor:
    """Inverse of _by_prompt: [G, H, (B/G)*K, E] -> [B, H, K, E]."""
    g, h, _, e = x.shape
    return x.reshape(g, h, -1, block, e).transpose(1, 2).reshape(rows, h, block, e)


def attend_block(q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor | None, input_pos: torch.Tensor,
                 prompt_k: torch.Tensor | None, prompt_v: torch.Tensor | None,
                 past_k: torch.Tensor, past_v: torch.Tensor, past_start: int | torch.Tensor) -> torch.Tensor:
    """Attention of a block of K new tokens per row over shared prompts, each row's own past and the block.

    q [B, H, K, D]: the block's queries, at positions input_pos [B, K] (increasing along each row; rows may
    stand at different positions; [1, K] when every row stands at the same ones). prompt_k, prompt_v [G, H, P, D] or None: G prompts seen in full by every
    query; row b continues prompt b // (B/G), so the B/G rows of a prompt read its keys in one matmul.
    past_k, past_v [B, H, S, D]: per-row entries, slot s holding position past_start + s.
    k, v [B, H, K, D]: the block's keys/values, kept apart from the past (the exported graphs, whose caches are
    read-only inputs): a query sees the past slots before its row's block (later ones are stale or unwritten)
    and the block's entries at or before its own position. k, v None: the caller has already written the
    block into the past at its positions (the torch cache), and a query sees every slot at or before its own
    position. Both are the same attention; the second needs one matmul and no concatenation per layer, which
    is 8-11% of a decode step of the shipped model. One softmax over all of it (float32) -> [B, H, K, D].

    This is the one definition of decode-time attention: the torch cache calls it after writing the block,
    the exported ONNX graphs trace it with the caches as inputs and return the block's keys and values.
    """
    b, heads, block, d = q.shape
    scale = d ** -0.5
    n_past = past_k.shape[2]
    slot_pos = torch.arange(n_past, device=q.device) + past_start
    if k is None:
        past_hidden = slot_pos[None, None, None, :] > input_pos[:, None, :, None]  # [B, 1, K, S]
        s_rows = torch.matmul(q, past_k.transpose(-1, -2)).masked_fill(past_hidden, float("-inf"))
    else:
        past_hidden = slot_pos[None, None, None, :] >= input_pos[:, None, :1, None]  # [B, 1, 1, S]
        if block == 1:  # the block is the query's own token: one dot product per row, nothing to mask
            s_block = (q * k).sum(-1, keepdim=True)
        else:
            block_hidden = input_pos[:, None, None, :] > input_pos[:, None, :, None]  # [B, 1, K, K]
            s_block = torch.matmul(q, k.transpose(-1, -2)).masked_fill(block_hidden, float("-inf"))
        s_rows = torch.cat([torch.matmul(q, past_k.transpose(-1, -2)).masked_fill(past_hidden, float("-inf")),
                            s_block], dim=-1)
    if prompt_k is None:
        p = (s_rows * scale).float().softmax(dim=-1).to(q.dtype)
        p_rows, y = p, 0
    else:
        g, plen = prompt_k.shape[0], prompt_k.shape[2]
        s_prompt = torch.matmul(_by_prompt(q, g), prompt_k.transpose(-1, -2))  # [G, H, (B/G)*K, P]
        p = (torch.cat([s_prompt, _by_prompt(s_rows, g)], dim=-1) * scale).float().softmax(dim=-1).to(q.dtype)
        y = _by_row(torch.matmul(p[..., :plen], prompt_v), b, block)
        p_rows = _by_row(p[..., plen:], b, block)
    if k is None:
        return y + torch.matmul(p_rows, past_v)
    p_block = p_rows[..., n_past:]
    return y + torch.matmul(p_rows[..., :n_past], past_v) + (p_block * v if block == 1 else torch.matmul(p_block, v))


class BlockKVCache(nn.Module):
    """Decode-time cache for rows that continue shared prompts (N hypotheses of one query).

    The prompts' keys/values are kept once, [G, H, P, D]; each of the B = G * copies rows has slots for the
    tokens it generates. A step feeds K tokens per row (K = 1: plain decoding; K > 1: a speculative block
    to verify) at per-row positions; their keys/values are written to the row's slots and then attended to
    (`attend_block`), so slots of rejected tokens are simply overwritten by the row's next block. Shapes stay the same from step
    to step (the write position is a tensor), so a compiled decode step is traced once per block size.
    """

    def __init__(self, prompt_k: torch.Tensor, prompt_v: torch.Tensor, copies: int, slots: int, prompt_start: int):
        super().__init__()
        g, h, plen, d = prompt_k.shape
        self.first_generated_pos = prompt_start + plen
        self.register_buffer("prompt_k", prompt_k.contiguous(), persistent=False)
        self.register_buffer("prompt_v", prompt_v.contiguous(), persistent=False)
        shape = (g * copies, h, slots, d)
        self.register_buffer("k_cache", prompt_k.new_zeros(shape), persistent=False)
        self.register_buffer("v_cache", prompt_k.new_zeros(shape), persistent=False)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """q, k, v [B, H, K, D] at input_pos [B, K] (or [1, K] / [K]: every row at the same positions) -> [B, H, K, D]."""
        b, h, block, d = k.shape
        input_pos = input_pos.reshape(-1, block)
        slot = input_pos - self.first_generated_pos  # index_copy_ / scatter_ refuse slots outside the cache
        if input_pos.shape[0] == 1:  # plain decoding: one write for all rows, masks broadcast over them
            self.k_cache.index_copy_(2, slot[0], k)
            self.v_cache.index_copy_(2, slot[0], v)
        else:
            index = slot[:, None, :, None].expand(b, h, block, d)
            self.k_cache.scatter_(2, index, k)
            self.v_cache.scatter_(2, index, v)
        return attend_block(q, None, None, input_pos, self.prompt_k, self.prompt_v, self.k_cache, self.v_cache,
                            self.first_generated_pos)


class Attention(nn.Module):
    def __init__(self, config: GSTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.dim = config.dim
        self.wqkv = nn.Linear(config.dim, 3 * config.dim, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)
        self.qk_norm = config.qk_norm
        if config.qk_norm:
            # One LayerNorm over the head vector, shared by all heads (official eps 1e-5).
            self.q_norm = nn.LayerNorm(config.head_dim)
            self.k_norm = nn.LayerNorm(config.head_dim)
        self.attn_dropout_p = config.attn_dropout_p
        self.resid_dropout = nn.Dropout(config.resid_dropout_p)
        # Anything with attend(q, k, v, input_pos): KVCache, BlockKVCache, or an export graph's cache inputs.
        self.kv_cache = None

    def forward(self, x: torch.Tensor, rope: torch.Tensor, input_pos: torch.Tensor | None,
                use_cache: bool = False) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        q, k, v = self.wqkv(x).view(bsz, seqlen, 3, self.n_head, self.head_dim).unbind(2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]

        if use_cache:
            y = self.kv_cache.attend(q, k, v, input_pos)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=self.attn_dropout_p if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(bsz, seqlen, self.dim)
        return self.resid_dropout(self.wo(y))


class FeedForward(nn.Module):
    def __init__(self, config: GSTConfig):
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.ffn_hidden, bias=False)  # gate
        self.w3 = nn.Linear(config.dim, config.ffn_hidden, bias=False)  # up
        self.w2 = nn.Linear(config.ffn_hidden, config.dim, bias=False)  # down
        self.ffn_dropout = nn.Dropout(config.ffn_dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class TransformerBlock(nn.Module):
    def __init__(self, config: GSTConfig):
        super().__init__()
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config)
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)

    def forward(self, x, rope, input_pos, use_cache=False):
        h = x + self.attention(self.attention_norm(x), rope, input_pos, use_cache)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, config: GSTConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.tok_dropout = nn.Dropout(config.token_dropout_p)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        # Derived from the config, so kept out of the state_dict (the official checkpoint has no table).
        self.register_buffer("freqs_cis", self._rope_table(), persistent=False)
        # Meta-built model + load_state_dict(assign=True) leaves the table on meta: rebuild it.
        self.register_load_state_dict_post_hook(
            lambda module, _: module._refresh_rope(module.tok_embeddings.weight.device))
        self.init_weights()

    def _rope_table(self, device=None) -> torch.Tensor:
        c = self.config
        return build_rope_table(c.grid_size, c.head_dim, c.special_token_num, c.num_segments,
                                c.rope_base, device=device)

    def _refresh_rope(self, device):
        self.freqs_cis = self._rope_table(device)

    def _apply(self, fn, recurse=True):
        # .to(bfloat16) would round the RoPE table and .to_empty() would leave it uninitialised;
        # rebuild it in float32 on the new device (the official keeps it as a float32 attribute).
        super()._apply(fn, recurse)
        self._refresh_rope(self.freqs_cis.device)
        return self

    def init_weights(self):
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)
        # Zero head: every token starts equally likely (official init).
        nn.init.zeros_(self.output.weight)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def setup_caches(self, max_batch_size: int, max_seq_length: int, dtype: torch.dtype | None = None):
        """Allocate one KV cache per layer; the length is rounded up to a multiple of 8 as official."""
        max_seq_length = find_multiple(max_seq_length, 8)
        weight = self.tok_embeddings.weight
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(max_batch_size, max_seq_length, self.config.n_head,
                                               self.config.head_dim, dtype or weight.dtype, weight.device)

    def share_prompt_cache(self, prompt_slots: slice, copies: int, max_new_tokens: int):
        """Switch every layer from the prefill cache to a BlockKVCache for decoding.

        The prefill cache's rows are the distinct prompts, its `prompt_slots` their tokens; decode
        row r continues prompt row r // copies (so CFG's [cond..., uncond...] halves stay in order).
        """
        for layer in self.layers:
            cache = layer.attention.kv_cache
            layer.attention.kv_cache = BlockKVCache(
                cache.k_cache[:, :, prompt_slots], cache.v_cache[:, :, prompt_slots], copies, max_new_tokens,
                prompt_slots.start)

    def clear_caches(self):
        for layer in self.layers:
            layer.attention.kv_cache = None

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor | None = None, *,
                use_cache: bool = False, last: int | None = None) -> torch.Tensor:
        """tokens [B, T] -> float32 logits [B, T, V]; logits at t predict token t + 1.

        input_pos [T] (or [B, T]: rows at different positions, for the decode cache) holds the absolute
        positions (RoPE rows) of the tokens; None means 0..T-1. With use_cache each layer's cache
        (`setup_caches`, `share_prompt_cache`) stores the keys/values and does the attention.
        `last`: logits of the last `last` positions only, [B, last, V] (the output head is the largest
        matrix at the official vocabulary size; scoring a segment needs no other rows).
        """
        seqlen = tokens.shape[1]
        if input_pos is None:
            if use_cache:
                raise ValueError("use_cache needs explicit input_pos")
            input_pos = torch.arange(seqlen, device=tokens.device)
        if use_cache and self.layers[0].attention.kv_cache is None:
            raise RuntimeError("call setup_caches() before forward(use_cache=True)")

        rope = self.freqs_cis[input_pos]
        h = self.tok_dropout(self.tok_embeddings(tokens))
        for layer in self.layers:
            h = layer(h, rope, input_pos, use_cache)
        if last is not None:
            h = h[:, -last:]
        return self.output(self.norm(h)).float()

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor,
             loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean next-token cross-entropy; loss_mask [B, T] selects which targets count."""
        logits = self(tokens)
        ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        if loss_mask is None:
            return ce.mean()
        w = loss_mask.flatten().to(ce.dtype)
        return (ce * w).sum() / w.sum().clamp(min=1.0)

    def configure_optimizers(self, weight_decay: float, lr: float, betas: tuple[float, float],
                             **adamw_kwargs) -> torch.optim.AdamW:
        """AdamW with decay on matrices (linears, embeddings) only, not on norm scales/biases."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, **adamw_kwargs)
