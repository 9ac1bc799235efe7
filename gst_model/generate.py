"""Autoregressive decoding for GST: one loop for every back-end, with optional speculative decoding.

A back-end supplies a `Decoder` (prefill a prompt, run a block of tokens through its KV cache); `generate`
does everything else once: classifier-free guidance, constrained id ranges, sampling and speculation.

Classifier-free guidance follows the official release: the batch is doubled with an unconditional prompt of
zeros (same length, every id including the task token set to 0) and guided = uncond + scale * (cond - uncond),
at prefill and at every step, when cfg_scale > 1.

Speculative decoding: a `Drafter` proposes the rest of each row's sequence from the tokens accepted so far
(a point-mass draft; for camera tokens `gst_model.drafting` fits a rigid camera to them). One decoder pass
runs a block of K tokens per row — the row's last token and K-1 drafted ones — and yields between 1 and K
tokens per row. Greedy decoding accepts while the arg-max equals the draft, so its tokens are those of plain
greedy decoding. Sampling accepts draft token x with probability p(x) under the same filtered distribution
(temperature, top-k, top-p, id range) and, on the first rejection, samples from p with x removed and
renormalised (speculative sampling with a point-mass draft): the samples follow the distribution of plain
sampling exactly. Without a drafter, plain decoding feeds one token per row per pass through the same
decoder, masks and samplers, without the block bookkeeping.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

IdRange = tuple[int, int]  # half-open [lo, hi) of allowed token ids
# Proposes each row's whole continuation: (tokens [B, T] with the first lengths[b] of row b accepted,
# lengths [B]) -> [B, T]; only the entries after each row's accepted prefix are read.
Drafter = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Tokens per speculative block (the row's last token + DRAFT_LEN - 1 drafts); set from bench/results.md.
DRAFT_LEN = 8


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are drawn; the defaults here are the package's defaults everywhere."""

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


class Decoder(Protocol):
    """The step interface of a back-end's transformer (see `TorchDecoder`, `runtime.graph.GraphDecoder`)."""

    max_seq_len: int

    def prefill(self, prompts: torch.Tensor, start_pos: int, copies: int, slots: int) -> torch.Tensor:
        """Run G distinct prompts [G, P] at positions start_pos..start_pos+P-1 and keep their keys/values for
        G * copies decode rows (row r continues prompt r // copies), with `slots` generated positions each.
        Returns the logits of the last prompt position, [G, V]."""

    def decode(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """Feed tokens [B, K] at positions input_pos [B, K] (increasing along a row; [1, K] when every row stands
        at the same positions) -> logits [B, K, V]. Their keys/values are stored; a row's entries after its next
        block's start are overwritten."""

    def close(self) -> None:
        """Free the caches."""


@dataclass
class DecodeStats:
    """What a generation cost: decoder passes, and drafted / accepted tokens by token index."""

    passes: int = 0
    drafted: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)

    def record(self, drafted_index: torch.Tensor, accepted: torch.Tensor, length: int) -> None:
        """drafted_index: token indices that were drafted in a pass; accepted: which of them were accepted."""
        if not self.drafted:
            self.drafted, self.accepted = [0] * length, [0] * length
        for i, ok in zip(drafted_index.tolist(), accepted.tolist()):
            self.drafted[i] += 1
            self.accepted[i] += int(ok)

    @property
    def acceptance(self) -> float:
        return sum(self.accepted) / max(sum(self.drafted), 1)


def _outside(vocab_size: int, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """lo, hi [...] -> bool [..., vocab_size]: the ids outside [lo, hi)."""
    ids = torch.arange(vocab_size, device=lo.device)
    return (ids < lo[..., None]) | (ids >= hi[..., None])


def _mask_outside(logits: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """logits [..., V]; lo, hi broadcastable to logits[..., 0]: ids outside [lo, hi) -> -inf."""
    return logits.masked_fill(_outside(logits.shape[-1], lo, hi), float("-inf"))


def filtered_distribution(logits: torch.Tensor, sampling: SamplingParams) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits [..., V] (already restricted to allowed ids) -> (probs [..., C], ids [..., C] or None).

    The distribution sampling draws from: temperature, then the top_k best (C = top_k, sorted, best first;
    the rest have probability 0), then the smallest head of mass top_p. ids None means C = V, ids = 0..V-1.
    """
    logits = logits.float() / max(sampling.temperature, 1e-5)
    candidates = None
    if sampling.top_k is not None and 0 < sampling.top_k < logits.shape[-1]:
        # Among the k best only: the distribution of masking all others to -inf, without a softmax and a
        # multinomial over the whole vocabulary (12 ms per step for 16 rows of 18k ids on 2 cores).
        logits, candidates = torch.topk(logits, sampling.top_k, dim=-1)
    if sampling.top_p < 1.0:
        if candidates is None:
            logits, candidates = torch.sort(logits, descending=True, dim=-1)
        cum = logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token once the mass *before* it exceeds top_p: the top token always survives.
        drop = torch.zeros_like(cum, dtype=torch.bool)
        drop[..., 1:] = cum[..., :-1] > sampling.top_p
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(dim=-1), candidates


def _draw(probs: torch.Tensor, candidates: torch.Tensor | None, generator) -> torch.Tensor:
    """probs [B, C] -> token ids [B]."""
    choice = torch.multinomial(probs, num_samples=1, generator=generator)
    return (choice if candidates is None else candidates.gather(-1, choice)).squeeze(-1)


def _probability_of(probs: torch.Tensor, candidates: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor:
    """probs [..., C] over candidates; tokens [...] -> p(token) [...] (0 for ids outside the candidates)."""
    if candidates is None:
        return probs.gather(-1, tokens[..., None]).squeeze(-1)
    return (probs * (candidates == tokens[..., None])).sum(-1)


def _without(probs: torch.Tensor, candidates: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor:
    """probs [B, C] with each row's token removed and the rest renormalised (the residual after rejecting it)."""
    ids = torch.arange(probs.shape[-1], device=probs.device) if candidates is None else candidates
    rest = probs.masked_fill(ids == tokens[:, None], 0.0)
    return rest / rest.sum(-1, keepdim=True)


def sample_from_logits(logits: torch.Tensor, *, temperature: float = SamplingParams.temperature,
                       top_k: int | None = SamplingParams.top_k, top_p: float = SamplingParams.top_p,
                       greedy: bool = False, generator: torch.Generator | None = None,
                       allowed: IdRange | None = None) -> torch.Tensor:
    """logits [B, V] -> token ids [B].

    `allowed` restricts sampling to ids in [lo, hi) (constrained decoding: a camera slot can only yield
    camera codes). None keeps the official behaviour, which samples from the whole vocabulary and clamps
    ids into the codebook afterwards.
    """
    if allowed is not None:
        lo, hi = torch.tensor(allowed, device=logits.device)
        logits = _mask_outside(logits.float(), lo, hi)
    if greedy:
        return logits.argmax(dim=-1)  # top-k/top-p never remove the arg-max
    sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    return _draw(*filtered_distribution(logits, sampling), generator)


def prompt_copies(prompt: torch.Tensor) -> int:
    """Rows per distinct prompt: N when all N rows are one prompt (N hypotheses of one query), else 1."""
    return prompt.shape[0] if prompt.shape[0] > 1 and bool((prompt == prompt[:1]).all()) else 1


def allowed_schedule(segment_ranges: Sequence[tuple[int, IdRange | None]] | None,
                     num_new_tokens: int) -> list[IdRange | None]:
    """Expand [(length, (lo, hi)), ...] into one allowed range per generated token.

    Tokens past the listed segments are unconstrained.
    """
    schedule: list[IdRange | None] = []
    for length, rng in segment_ranges or ():
        schedule += [rng] * length
    if len(schedule) > num_new_tokens:
        raise ValueError(f"segment_ranges cover {len(schedule)} tokens, only {num_new_tokens} generated")
    return schedule + [None] * (num_new_tokens - len(schedule))


class TorchDecoder:
    """`Decoder` over a `Transformer`: prefill through a KVCache, decode through a shared-prompt BlockKVCache."""

    def __init__(self, model, forward=None):
        self.model = model
        self.forward = model if forward is None else forward  # e.g. a torch.compile'd model
        self.max_seq_len = model.config.max_seq_len
        self.was_training = model.training
        model.eval()  # dropout off; close() restores the mode, so generate leaves the model as it found it

    def prefill(self, prompts, start_pos, copies, slots):
        plen = prompts.shape[1]
        self.model.setup_caches(prompts.shape[0], start_pos + plen)
        input_pos = torch.arange(start_pos, start_pos + plen, device=prompts.device)
        logits = self.forward(prompts, input_pos, use_cache=True, last=1)[:, -1]  # a prefill needs no other rows
        self.model.share_prompt_cache(slice(start_pos, start_pos + plen), copies, slots)
        return logits

    def decode(self, tokens, input_pos):
        return self.forward(tokens, input_pos, use_cache=True)

    def close(self):
        self.model.clear_caches()
        self.model.train(self.was_training)


def _guided(logits: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    if cfg_scale <= 1.0:
        return logits
    cond, uncond = logits.float().chunk(2, dim=0)
    return uncond + (cond - uncond) * cfg_scale


@torch.inference_mode()
def generate(model_or_decoder, prompt: torch.Tensor, num_new_tokens: int,
             sampling: SamplingParams = SamplingParams(), *, generator: torch.Generator | None = None,
             segment_ranges: Sequence[tuple[int, IdRange | None]] | None = None, start_pos: int = 0,
             draft: Drafter | None = None, draft_len: int = DRAFT_LEN, stats: DecodeStats | None = None) -> torch.Tensor:
    """Continue prompt [B, P] (occupying positions start_pos..start_pos+P-1) by num_new_tokens.

    Returns only the new tokens, [B, num_new_tokens] int64. The prompt may be any prefix of a layout, e.g.
    [observation, <GEN>] (257 tokens) for view generation, or [observation, <EST>, target image] (513 tokens)
    to generate the 256 camera tokens at 513..768. `model_or_decoder`: a `Transformer` or a back-end's
    `Decoder`. With `draft`, each decoder pass verifies draft_len - 1 drafted tokens per row (see the module
    docstring); the result has the distribution of plain decoding (greedy: the same tokens).
    """
    decoder = model_or_decoder if hasattr(model_or_decoder, "decode") else TorchDecoder(model_or_decoder)
    if num_new_tokens < 1:
        raise ValueError("num_new_tokens must be >= 1")
    if draft is not None and draft_len < 2:
        raise ValueError(f"draft_len must be >= 2 (the row's last token plus at least one draft), got {draft_len}")
    batch, plen = prompt.shape
    first_pos = start_pos + plen
    total = first_pos + num_new_tokens
    if total - 1 > decoder.max_seq_len:  # the last new token is never fed back
        raise ValueError(f"{total} positions exceed the model's max_seq_len {decoder.max_seq_len}")
    if total > decoder.max_seq_len:
        draft = None  # block padding needs the (never fed) last position to exist; plain decoding does not
    T, device = num_new_tokens, prompt.device
    schedule = allowed_schedule(segment_ranges, T)
    lo = torch.tensor([r[0] if r else 0 for r in schedule], device=device)
    hi = torch.tensor([r[1] if r else torch.iinfo(torch.int64).max for r in schedule], device=device)
    one_range = len(set(schedule)) == 1  # the usual case: mask every entry with the same scalars
    cfg = sampling.cfg_scale > 1.0

    # N hypotheses of one query share the prompt: prefill it once, keep its keys/values once.
    copies = prompt_copies(prompt)
    prompts = prompt[::copies]
    try:
        logits = decoder.prefill(torch.cat([prompts, torch.zeros_like(prompts)]) if cfg else prompts, start_pos,
                                 copies, T)
        logits = _mask_outside(_guided(logits.float(), sampling.cfg_scale).repeat_interleave(copies, dim=0),
                               lo[0], hi[0])
        tokens = torch.zeros(batch, T, dtype=torch.long, device=device)
        tokens[:, 0] = _next_token(logits, sampling, generator)
        if stats is not None:
            stats.passes += 1
        if draft is None:
            _decode_plain(decoder, tokens, first_pos, lo, hi, sampling, generator, stats)
            return tokens
        length = torch.ones(batch, dtype=torch.long, device=device)
        rows = torch.arange(batch, device=device)
        offsets = torch.arange(draft_len, device=device)
        while bool((length < T).any()):
            need = T - length
            # Entry 0 is the row's last token; entries 1..drafts[b] are drafted, the rest padding (at the
            # never-fed last position, whose outputs are discarded).
            drafts = (need - 1).clamp(0, draft_len - 1)
            index = (length - 1)[:, None] + offsets  # token index each entry stands at
            real = offsets <= drafts[:, None]
            fed = tokens.gather(1, (length - 1)[:, None]).expand(batch, draft_len).clone()
            proposal = draft(tokens, length)
            fed[:, 1:] = torch.where(real[:, 1:], proposal.gather(1, index[:, 1:].clamp(max=T - 1)), fed[:, 1:])
            positions = torch.where(real & (need > 0)[:, None], first_pos + index, first_pos + T - 1)
            if cfg:
                fed, positions = torch.cat([fed, fed]), torch.cat([positions, positions])
            step = _guided(decoder.decode(fed, positions).float(), sampling.cfg_scale)
            predicts = (index + 1).clamp(max=T - 1)  # logits of entry j predict token index + 1
            step = _mask_outside(step, lo[0], hi[0]) if one_range else _mask_outside(step, lo[predicts], hi[predicts])
            new = _accept(step, fed[:batch], drafts, sampling, generator)
            accepted = new.accepted
            if stats is not None:
                stats.passes += 1
                drafted = real & (offsets > 0) & (need > 0)[:, None]
                stats.record(index[drafted], (offsets <= accepted[:, None])[drafted], T)
            write = (offsets <= accepted[:, None]) & (need > 0)[:, None]
            r, c = rows[:, None].expand(batch, draft_len)[write], (length[:, None] + offsets)[write]
            tokens[r, c] = new.tokens[write]
            length = length + torch.where(need > 0, accepted + 1, 0)
        return tokens
    finally:
        decoder.close()


def _next_token(logits: torch.Tensor, sampling: SamplingParams, generator) -> torch.Tensor:
    """logits [B, V] (already restricted to allowed ids) -> the next token of each row, [B]."""
    return logits.argmax(-1) if sampling.greedy else _draw(*filtered_distribution(logits, sampling), generator)


def _decode_plain(decoder: Decoder, tokens: torch.Tensor, first_pos: int, lo: torch.Tensor, hi: torch.Tensor,
                  sampling: SamplingParams, generator, stats: DecodeStats | None) -> None:
    """Plain decoding: one token per row per pass, every row at the same position; fills tokens[:, 1:].
    lo, hi [T]: each token's allowed id range.

    The same steps as a speculative block of one token without drafts, minus the block bookkeeping (0.4-0.7 ms
    per token, 10-15% of a step of the shipped model on 2 cores)."""
    batch, T = tokens.shape
    ranges = list(zip(lo.tolist(), hi.tolist()))
    hidden: dict[tuple[int, int], torch.Tensor] = {}  # per allowed range: the ids it masks, built once
    for i in range(1, T):
        fed = tokens[:, i - 1:i]
        if sampling.cfg_scale > 1.0:
            fed = torch.cat([fed, fed])
        logits = _guided(decoder.decode(fed, torch.full((1, 1), first_pos + i - 1, device=fed.device))[:, 0].float(),
                         sampling.cfg_scale)
        if ranges[i] not in hidden:
            hidden[ranges[i]] = _outside(logits.shape[-1], lo[i], hi[i])
        logits = logits.masked_fill(hidden[ranges[i]], float("-inf"))
        tokens[:, i] = _next_token(logits, sampling, generator)
        if stats is not None:
            stats.passes += 1


@dataclass
class _Accepted:
    tokens: torch.Tensor  # [B, K]: entries 0..accepted[b] are the row's new tokens
    accepted: torch.Tensor  # [B] drafted tokens accepted


def _accept(logits: torch.Tensor, fed: torch.Tensor, drafts: torch.Tensor, sampling: SamplingParams,
            generator) -> _Accepted:
    """Verify a block: logits [B, K, V] of the fed entries [B, K], of which entries 1..drafts[b] are drafts.

    Returns the accepted drafts followed by one token from the target model (a correction after a rejection,
    else the token after the last draft)."""
    batch, block, _ = logits.shape
    offsets = torch.arange(block, device=logits.device)
    drafted = fed[:, 1:]  # entry j's logits verify the draft in entry j + 1
    if sampling.greedy:
        choice = logits.argmax(-1)  # [B, K]
        ok = choice[:, :-1] == drafted
    else:
        probs, candidates = filtered_distribution(logits[:, :-1], sampling)
        p_draft = _probability_of(probs, candidates, drafted)
        ok = torch.rand(p_draft.shape, generator=generator, device=logits.device) < p_draft
    ok = ok & (offsets[:-1] < drafts[:, None])
    accepted = ok.long().cumprod(dim=1).sum(dim=1)  # leading run of accepted drafts
    out = torch.cat([drafted, fed[:, :1]], dim=1)  # accepted drafts first; entry accepted[b] is replaced
    if sampling.greedy:
        out[torch.arange(batch), accepted] = choice[torch.arange(batch), accepted]
        return _Accepted(out, accepted)
    last = logits[torch.arange(batch), accepted]  # [B, V]: the entry after the accepted drafts
    probs, candidates = filtered_distribution(last, sampling)
    rejected = accepted < drafts
    if bool(rejected.any()):
        x = drafted[torch.arange(batch), accepted.clamp(max=block - 2)]
        probs = torch.where(rejected[:, None], _without(probs, candidates, x), probs)
    out[torch.arange(batch), accepted] = _draw(probs, candidates, generator)
    return _Accepted(out, accepted)
