"""How probable a token segment is under GST: the score that ranks sampled pose hypotheses.

GST models p(image, camera | observation) jointly, so the weights that sample cameras for an image pair
can also say how well each sampled camera explains the pair: log p(target image | observation, camera),
the view-generation factorisation read backwards. Each token's probability is taken among the ids of its
own kind (image codes, camera codes), the distribution constrained decoding samples from.
"""
from __future__ import annotations

import torch

from gst_model.vocab import Vocabulary


def log_probs_within_kind(logits: torch.Tensor, targets: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
    """logits [B, n, V] predicting targets [B, n] -> log-probabilities [B, n] of the targets, each normalised
    over the ids of its own kind (image codes or camera codes; special tokens over the whole vocabulary)."""
    image_end = vocab.image_codes
    camera_end = image_end + vocab.camera_codes
    norm = torch.where(targets < image_end, logits[..., :image_end].logsumexp(-1),
                       torch.where(targets < camera_end, logits[..., image_end:camera_end].logsumexp(-1),
                                   logits.logsumexp(-1)))
    return logits.gather(-1, targets[..., None]).squeeze(-1) - norm


def segment_log_likelihood(model, tokens: torch.Tensor, length: int, vocab: Vocabulary) -> torch.Tensor:
    """Sum over the last `length` tokens of each row of tokens [B, L] of log p(token | every token before
    it), in nats -> [B] float32. One causal pass without a cache; the model should be in eval mode."""
    if not 1 <= length < tokens.shape[1]:
        raise ValueError(f"segment length {length} must be in [1, {tokens.shape[1] - 1}] for {tokens.shape[1]} tokens")
    logits = model(tokens[:, :-1], last=length)
    return log_probs_within_kind(logits, tokens[:, -length:], vocab).sum(-1)

