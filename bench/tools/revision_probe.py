"""Pose latency of the checked-out revision (bench/tools/compare_revisions.sh runs it in two worktrees).

    PYTHONPATH=CHECKOUT python bench/tools/revision_probe.py PRESET [PATH]

PATH: a gst_model.bench path, torch (eager with the KV cache, the default) or ort (ONNX Runtime fp32; exports
into the revision's own cache on the first run). Prints one line 'PROBE {json}': prefill and decode seconds (gst_model.bench._micro, best of 2), pose N=1
(best of 2) and N=16 (best of 3 for the small model, else 1) seconds. The same inputs for every revision
(random images, top-k 100 sampling, seed 1); each revision's own runtime and decode loop, before or after the
one-loop rewrite (which moved SamplingParams and replaced runtime.generate with generate(decoder, ...)).
"""
import json
import sys

import torch

from gst_model import bench

try:
    from gst_model.generate import SamplingParams, generate
except ImportError:  # before the one-loop rewrite
    from gst_model.runtime import SamplingParams
    generate = None
try:
    from gst_model.manifest import ensure_export
except ImportError:  # before the export / runtime split
    from gst_model.runtime.ort_runtime import ensure_export


def main(preset: str, path: str = "torch") -> dict:
    bundle = bench.make_bundle(preset)
    rt = bench._runtime(path, bundle, "" if path.startswith("torch") else str(ensure_export(bundle)))
    vocab, view = bundle.vocab, bundle.view
    T = vocab.tokens_per_view
    g = torch.Generator().manual_seed(0)
    codes = rt.encode_images(torch.rand(2, 3, view.image_size, view.image_size, generator=g) * 2 - 1)
    prompt = torch.cat([codes[:1], torch.tensor([[vocab.est_token]]), codes[1:]], dim=1)
    sampled = SamplingParams(temperature=1.0, top_k=100)
    cam_range = [(T, vocab.camera_range())]

    def pose(n: int) -> None:
        gen = torch.Generator().manual_seed(1)
        if generate is not None:
            tokens = generate(rt.decoder(), prompt.expand(n, -1), T, sampled, segment_ranges=cam_range, generator=gen)
        else:
            tokens = rt.generate(prompt.expand(n, -1), T, sampled, cam_range, gen)
        rt.decode_rays(tokens - vocab.camera_offset)

    pose(1)  # warm-up (ORT: the first run of each graph)
    prefill, decode = min((bench._micro(path, rt, bundle, prompt, 32) for _ in range(2)), key=lambda x: x[1])
    return {"prefill_s": prefill, "decode_s": decode, "pose1_s": bench._best(lambda: pose(1), 2),
            "pose16_s": bench._best(lambda: pose(16), 3 if preset == "default" else 1)}


if __name__ == "__main__":
    print("PROBE " + json.dumps(main(*sys.argv[1:3])), flush=True)
