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


def shared_prefix_log_likelihood(decoder, tokens: torch.Tensor, prefix: int, length: int,
                                 vocab: Vocabulary) -> torch.Tensor:
    """`segment_log_likelihood` for rows that share their first `prefix` tokens (N hypotheses scored against
    one observation): the prefix runs once through the decoder's prefill and its keys/values are shared, the
    rest of every row runs as one block (`gst_model.generate.Decoder`) -> [B] float32."""
    rows, total = tokens.shape
    if not 1 <= length <= total - prefix:
        raise ValueError(f"segment length {length} must be in [1, {total - prefix}] after a {prefix}-token prefix")
    rest = tokens[:, prefix:]
    try:
        decoder.prefill(tokens[:1, :prefix], 0, rows, rest.shape[1])
        positions = torch.arange(prefix, total, device=tokens.device).expand(rows, -1)
        logits = decoder.decode(rest, positions)  # entry j predicts token prefix + j + 1
    finally:
        decoder.close()
    return log_probs_within_kind(logits[:, -length - 1:-1].float(), rest[:, -length:], vocab).sum(-1)
