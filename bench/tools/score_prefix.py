"""Scoring N pose hypotheses with their shared prefix computed once, against the one fused causal pass.

    python bench/tools/score_prefix.py [PRESET ...] > bench/score_prefix.md

The likelihood selection scores N view-layout sequences [image a][<GEN>][camera][image b] that share their
first T + 1 tokens. Fused (what the package does, `likelihood.segment_log_likelihood`): one causal pass over
N x (3T + 1) tokens. Shared prefix: prefill the T + 1 shared tokens once, then one block of the remaining 2T - 1
tokens per row through the decode cache (`Transformer.share_prompt_cache`, `attend_block`), logits of the last T
positions only. Both give the same scores (the table's max |difference|); the question is which is faster here.
Random tokens; the shipped weights for 'default', random ones (seed 0) for other presets; best of `repeats`.
"""
import sys
import time

import torch

from gst_model import bench
from gst_model.likelihood import log_probs_within_kind, segment_log_likelihood
from gst_model.vocab import Task

N = 16


def measure(preset: str, repeats: int) -> dict:
    bundle = bench.make_bundle(preset)
    model, vocab = bundle.transformer.eval(), bundle.vocab
    T = vocab.tokens_per_view
    g = torch.Generator().manual_seed(0)
    image_a, image_b = (torch.randint(0, vocab.image_codes, (1, T), generator=g) for _ in range(2))
    cameras = vocab.camera_offset + torch.randint(0, vocab.camera_codes, (N, T), generator=g)
    task = torch.full((N, 1), vocab.task_token(Task.VIEW))
    sequences = torch.cat([image_a.expand(N, -1), task, cameras, image_b.expand(N, -1)], dim=1)
    plen = T + 1

    def fused():
        return segment_log_likelihood(model, sequences, T, vocab)

    def shared():
        model.setup_caches(1, plen)
        try:
            model(sequences[:1, :plen], torch.arange(plen), use_cache=True, last=1)
            model.share_prompt_cache(slice(0, plen), N, 2 * T - 1)
            logits = model(sequences[:, plen:-1], torch.arange(plen, 3 * T), use_cache=True, last=T)
        finally:
            model.clear_caches()
        return log_probs_within_kind(logits, sequences[:, -T:], vocab).sum(-1)

    with torch.inference_mode():
        diff = float((fused() - shared()).abs().max())
        return {"preset": preset, "T": T, "fused_s": bench._best(fused, repeats),
                "shared_s": bench._best(shared, repeats), "max_diff": diff}


def main(presets: list[str]) -> None:
    torch.set_num_threads(2)
    print(f"# Scoring {N} hypotheses: shared prefix once vs one fused causal pass\n")
    print(f"Written by `python bench/tools/score_prefix.py {' '.join(presets)}` on {torch.get_num_threads()} threads, "
          f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}; see the script's docstring.\n")
    print("| preset | tokens fused | tokens shared | fused s | shared prefix s | shared / fused | max abs. score diff. |")
    print("|---|---|---|---|---|---|---|")
    for preset in presets:
        r = measure(preset, 3 if preset == "default" else 1)
        T = r["T"]
        print(f"| {preset} (T={T}) | {N * (3 * T + 1)} | {T + 1 + N * (2 * T - 1)} | {r['fused_s']:.3f} | "
              f"{r['shared_s']:.3f} | {r['shared_s'] / r['fused_s']:.2f} | {r['max_diff']:.1e} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["default", "GPT-B"])
