"""ONNX export and the ONNX Runtime / TensorRT back-ends: manifest, parity with torch, engine cache."""
import json
import math
import shutil

import numpy as np
import onnx
import pytest
import torch

from gst_model import export
from gst_model import manifest as manifest_api
from gst_model.checkpoint import build_bundle, save_bundle
from gst_model.generate import SamplingParams, generate
from gst_model.runtime.graph import GraphDecoder
from gst_model.runtime.ort_runtime import OrtRuntime
from gst_model.runtime.torch_runtime import TorchRuntime
from gst_model.runtime.trt_runtime import (
    cached_engine_status,
    engine_key,
    import_tensorrt,
    store_engine,
)

STATIC_BATCH = 4


@pytest.fixture(scope="module")
def bundle():
    torch.manual_seed(0)
    b = build_bundle("tiny")
    # The preset's zero head makes every logit equal (greedy would trivially agree): randomise it.
    torch.nn.init.normal_(b.transformer.output.weight, std=0.5)
    return b.eval()


@pytest.fixture(scope="module")
def model_dir(bundle, tmp_path_factory):
    """Export through the CLI from a saved checkpoint (covers save -> load -> export)."""
    root = tmp_path_factory.mktemp("export")
    save_bundle(bundle, root / "ckpt")
    assert export.main(["--checkpoint", str(root / "ckpt"), "--out", str(root / "onnx"),
                        "--static-batch", str(STATIC_BATCH)]) == 0
    return root / "onnx"


@pytest.fixture(scope="module")
def ort(bundle, model_dir):
    return OrtRuntime(bundle, model_dir=model_dir, threads=1)


@pytest.fixture(scope="module")
def torch_rt(bundle):
    return TorchRuntime(bundle)


def _images(n, size, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g) * 2 - 1


# ------------------------------------------------------------------ manifest and files
def test_manifest_lists_checked_graphs_sharing_weights(bundle, model_dir):
    manifest = manifest_api.load_manifest(model_dir, verify=True)
    graphs = manifest["graphs"]
    T = bundle.transformer.config.grid_size ** 2
    assert set(graphs) == {"image_encoder", "image_decoder", "camera_encoder", "camera_decoder", "prefill",
                           "decode", "decode_step", f"prefill_p{T + 1}_static", f"prefill_p{2 * T + 1}_static", "decode_static", "verify_static",
                           "score", "score_static"}
    assert manifest["model_sha256"] == manifest_api.bundle_digest(bundle)
    assert manifest["config"]["transformer"]["n_layer"] == bundle.transformer.config.n_layer
    assert "dynamo=False" in manifest["exporter"]
    for name, g in graphs.items():
        onnx.checker.check_model(str(model_dir / g["file"]))  # path form: external data resolved
        assert g["opset"] == export.OPSET and set(g["sha256"]) == {g["file"], g["weights"]}
        proto = onnx.load(str(model_dir / g["file"]), load_external_data=False)
        assert all(i.data_location != onnx.TensorProto.EXTERNAL
                   or {e.key: e.value for e in i.external_data}["location"] == g["weights"]
                   for i in proto.graph.initializer)
    # One weights file for all eight transformer graphs, about the size of the fp32 parameters.
    assert {g["weights"] for n, g in graphs.items()
            if n.startswith(("prefill", "decode", "score"))} == {"transformer.weights"}
    params = sum(p.numel() for p in bundle.transformer.parameters()) * 4
    assert 0.98 * params <= manifest["file_bytes"]["transformer.weights"] < 1.3 * params  # norms stay inline
    decode = {s["name"]: s for s in graphs["decode"]["inputs"]}
    assert decode["gen_k_0"]["shape"][0] == "batch" and decode["tokens"]["dtype"] == "int64"
    assert decode["prompt_k_0"]["shape"][0] == "prompts"  # the prompt cache is passed once, not per row
    static = {s["name"]: s for s in graphs["decode_static"]["inputs"]}
    assert static["cache_k_0"]["shape"][0] == STATIC_BATCH
    assert static["cache_k_0"]["shape"][2] == manifest["cache_slots"]


def test_manifest_hash_detects_tampering(model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    with open(copy / "transformer.weights", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ValueError, match="transformer.weights does not match its sha256"):
        manifest_api.load_manifest(copy)
    (copy / "transformer.weights").unlink()
    with pytest.raises(ValueError, match="missing"):
        manifest_api.load_manifest(copy)


# ------------------------------------------------------------------ numeric parity
def test_tokenizer_graphs_match_torch(bundle, ort, torch_rt):
    view = bundle.view
    images, rays = _images(2, view.image_size), _images(2, view.ray_size, 6, seed=1)
    codes, ray_codes = torch_rt.encode_images(images), torch_rt.encode_rays(rays)
    assert torch.equal(ort.encode_images(images), codes)
    assert torch.equal(ort.encode_rays(rays), ray_codes)
    assert (ort.decode_images(codes) - torch_rt.decode_images(codes)).abs().max() < 1e-4
    assert (ort.decode_rays(ray_codes) - torch_rt.decode_rays(ray_codes)).abs().max() < 1e-4


def _decoder(bundle, model_dir, which):
    if which == "torch":
        return TorchRuntime(bundle).decoder()
    return OrtRuntime(bundle, model_dir=model_dir, static=which == "ort-static", threads=1, verify=False).decoder()


@pytest.mark.parametrize("which", ["torch", "ort", "ort-static"])
def test_block_decoding_matches_the_full_forward(bundle, model_dir, which):
    """2 prompts x 2 rows: plain steps (one position for all rows), then speculative blocks of 3 whose rows keep different numbers of
    tokens (the rest is overwritten by the next block), each row's logits equal to a full forward pass over its
    own sequence. Static graphs run blocks of their exported draft length."""
    decoder = _decoder(bundle, model_dir, which)
    model = bundle.transformer
    T = model.config.grid_size ** 2
    P, copies = 2 * T + 1, 2
    k = 3 if which != "ort-static" else decoder.rt.manifest["static_draft_len"]
    g = torch.Generator().manual_seed(2)
    prompts = torch.randint(0, model.config.vocab_size, (2, P), generator=g)
    rows = prompts.repeat_interleave(copies, dim=0)
    stream = torch.randint(0, model.config.vocab_size, (4, 40), generator=g)  # each row's candidate tokens

    with torch.inference_mode():
        ref = model(prompts)[:, -1]
    logits = decoder.prefill(prompts, 0, copies, slots=T)
    assert (logits - ref).abs().max() < 1e-4
    accepted = [0] * 4  # tokens of each row whose keys/values are final
    keep = [[0, 0, 0, 0], [0, 2, 1, 0], [1, 0, 2, 0]]  # tokens kept after each speculative block
    steps = [1, 1] + [k] * len(keep)
    for i, block in enumerate(steps):
        fed = torch.stack([stream[r, accepted[r]: accepted[r] + block] for r in range(4)])
        pos = torch.stack([torch.arange(P + accepted[r], P + accepted[r] + block) for r in range(4)])
        if block == 1:  # plain steps: every row at the same position, given once (the decode_step graph)
            pos = pos[:1]
        got = decoder.decode(fed, pos)
        for r in range(4):
            with torch.inference_mode():
                full = model(torch.cat([rows[r], stream[r, :accepted[r] + block]])[None])[0, -block:]
            assert (got[r] - full).abs().max() < 1e-4, (which, i, r)
        kept = keep[i - 2] if i >= 2 else [0] * 4
        accepted = [a + 1 + kept[r] if block > 1 else a + 1 for r, a in enumerate(accepted)]
    decoder.close()


def test_score_graphs_match_torch(bundle, model_dir, ort, torch_rt):
    """Log-likelihood of a target image under 3 cameras: dynamic and static (padded batch) graphs."""
    vocab, T = bundle.vocab, bundle.vocab.tokens_per_view
    g = torch.Generator().manual_seed(5)
    obs, target = torch.randint(0, vocab.image_codes, (2, 1, T), generator=g)
    cams = torch.randint(vocab.camera_offset, vocab.camera_offset + vocab.camera_codes, (3, T), generator=g)
    seqs = torch.cat([obs.expand(3, -1), torch.full((3, 1), vocab.gen_token), cams, target.expand(3, -1)], 1)
    ref = torch_rt.segment_log_likelihood(seqs)
    assert ref.shape == (3,) and ref.unique().numel() == 3
    static = OrtRuntime(bundle, model_dir=model_dir, static=True, threads=1, verify=False)
    for rt in (ort, static):
        torch.testing.assert_close(rt.segment_log_likelihood(seqs), ref, atol=1e-4 * T, rtol=1e-5)


def _prompts(bundle, torch_rt):
    """Pose layout [obs, <EST>, target] and view layout [obs, <GEN>, camera], 3 hypotheses each."""
    vocab = bundle.vocab
    codes = torch_rt.encode_images(_images(2, bundle.view.image_size, seed=3))
    cams = torch_rt.encode_rays(_images(1, bundle.view.ray_size, 6, seed=4)) + vocab.camera_offset
    pose = torch.cat([codes[:1], torch.tensor([[vocab.est_token]]), codes[1:]], dim=1)
    view = torch.cat([codes[:1], torch.tensor([[vocab.gen_token]]), cams], dim=1)
    T = vocab.tokens_per_view
    return [(pose.expand(3, -1), [(T, vocab.camera_range())]), (view.expand(3, -1), [(T, vocab.image_range())])]


@pytest.mark.parametrize("sampling", [SamplingParams(greedy=True), SamplingParams(greedy=True, cfg_scale=2.0),
                                      SamplingParams(top_k=50, top_p=0.9, cfg_scale=1.5)],
                         ids=["greedy", "greedy-cfg", "seeded-sampling-cfg"])
def test_generation_matches_torch_for_both_layouts(bundle, ort, torch_rt, sampling, monkeypatch):
    monkeypatch.setattr(GraphDecoder, "GROW_SLOTS", 5)  # the per-row caches grow several times, by an odd block
    T = bundle.vocab.tokens_per_view
    for prompt, ranges in _prompts(bundle, torch_rt):
        for draft in (None, _noisy_drafter(torch_rt, prompt, ranges)):
            ref = generate(torch_rt.decoder(), prompt, T, sampling, segment_ranges=ranges, draft=draft, draft_len=3,
                           generator=torch.Generator().manual_seed(7))
            got = generate(ort.decoder(), prompt, T, sampling, segment_ranges=ranges, draft=draft, draft_len=3,
                           generator=torch.Generator().manual_seed(7))
            lo, hi = ranges[0][1]
            assert torch.equal(got, ref)
            assert ((ref >= lo) & (ref < hi)).all()


def test_plain_decoding_uses_the_step_graph_and_exports_without_it_still_decode(bundle, model_dir, torch_rt):
    """Plain steps run `decode_step`; an export made before that graph existed runs them on the block graph,
    with the same tokens."""
    T = bundle.vocab.tokens_per_view
    for has_step in (True, False):
        rt = OrtRuntime(bundle, model_dir=model_dir, threads=1, verify=False)
        if not has_step:
            del rt.manifest["graphs"]["decode_step"]
        used, run = [], rt.decode_block
        rt.decode_block = lambda graph, *args: (used.append(graph), run(graph, *args))[1]
        for prompt, ranges in _prompts(bundle, torch_rt):
            ref = generate(torch_rt.decoder(), prompt, T, SamplingParams(greedy=True), segment_ranges=ranges)
            assert torch.equal(generate(rt.decoder(), prompt, T, SamplingParams(greedy=True), segment_ranges=ranges),
                               ref)
        assert set(used) == ({"decode_step"} if has_step else {"decode"})


def _noisy_drafter(torch_rt, prompt, ranges):
    """Drafts the greedy continuation with every third token replaced: some blocks are accepted, some not."""
    T = ranges[0][0]
    greedy = generate(torch_rt.decoder(), prompt, T, SamplingParams(greedy=True), segment_ranges=ranges)
    noisy = greedy.clone()
    noisy[:, ::3] = ranges[0][1][0] + (noisy[:, ::3] - ranges[0][1][0] + 1) % (ranges[0][1][1] - ranges[0][1][0])
    return lambda tokens, lengths: noisy


def test_static_graphs_generate_like_torch_and_reject_oversized_batches(bundle, model_dir, torch_rt):
    rt = OrtRuntime(bundle, model_dir=model_dir, static=True, threads=1, verify=False)
    prompt, ranges = _prompts(bundle, torch_rt)[0]
    T = bundle.vocab.tokens_per_view
    sampling = SamplingParams(greedy=True)
    ref = generate(torch_rt.decoder(), prompt, T, sampling, segment_ranges=ranges)
    assert torch.equal(generate(rt.decoder(), prompt, T, sampling, segment_ranges=ranges), ref)
    k = rt.manifest["static_draft_len"]
    draft = _noisy_drafter(torch_rt, prompt, ranges)
    assert torch.equal(generate(rt.decoder(), prompt, T, sampling, segment_ranges=ranges, draft=draft, draft_len=k), ref)
    with pytest.raises(ValueError, match="verify blocks of"):
        generate(rt.decoder(), prompt, T, sampling, segment_ranges=ranges, draft=draft, draft_len=k + 1)
    with pytest.raises(ValueError, match="exceeds the static batch"):
        generate(rt.decoder(), prompt[:1].expand(STATIC_BATCH + 1, -1).clone(), 4, sampling)
    with pytest.raises(ValueError, match="no static prefill graph for prompt length"):
        generate(rt.decoder(), prompt[:, :5], 4, sampling)


def test_export_cache_is_keyed_by_model_content(bundle, model_dir, tmp_path, monkeypatch):
    from gst_model import manifest as ort_runtime

    cached = tmp_path / f"{ort_runtime.bundle_digest(bundle)[:32]}-b{STATIC_BATCH}"
    shutil.copytree(model_dir, cached)
    calls = []
    monkeypatch.setattr(export, "export_bundle", lambda b, path, static_batch: calls.append(path))
    rt = OrtRuntime(bundle, cache_root=tmp_path, static_batch=STATIC_BATCH, threads=1)
    assert rt.model_dir == cached and calls == []  # found by content hash, not re-exported
    manifest = json.loads((cached / "manifest.json").read_text())
    (cached / "manifest.json").write_text(json.dumps({**manifest, "exporter_source": "older code"}))
    ort_runtime.ensure_export(bundle, None, tmp_path, STATIC_BATCH)
    assert calls == [cached]  # traced by other code: re-exported
    (cached / "manifest.json").write_text(json.dumps(manifest))
    (cached / "decode.onnx").write_bytes(b"damaged")
    ort_runtime.ensure_export(bundle, None, tmp_path, STATIC_BATCH)
    assert calls == [cached, cached]  # a damaged export is replaced, never used


def test_pipeline_onnxruntime_matches_torch(bundle, model_dir):
    from gst_model.pipeline import GSTPipeline

    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(2))
    torch_pipe = GSTPipeline(bundle, backend="torch")
    ort_pipe = GSTPipeline(bundle, backend="onnxruntime", model_dir=model_dir, threads=1)
    ref = torch_pipe.estimate_pose(a, b, num_samples=2, greedy=True)
    got = ort_pipe.estimate_pose(a, b, num_samples=2, greedy=True)
    # Same camera tokens; the two ray decoders round differently (~1e-5), which moves the fitted
    # poses by < 1e-6, so poses are compared to 1e-5 rather than bit for bit.
    np.testing.assert_allclose(got.samples, ref.samples, atol=1e-5)
    np.testing.assert_allclose(got.c2w, ref.c2w, atol=1e-5)
    np.testing.assert_allclose(got.sample_log_likelihoods, ref.sample_log_likelihoods, rtol=1e-5)
    c2w = np.eye(4)
    c2w[:3, 3] = [0.1, 0.0, 0.0]
    ref_views = torch_pipe.predict_view(a, c2w, greedy=True)
    got_views = ort_pipe.predict_view(a, c2w, greedy=True)
    assert len(got_views) == len(ref_views) == 1
    diff = np.abs(got_views[0].astype(int) - ref_views[0].astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # same tokens; uint8 rounding of ~1e-5 decoder noise


# ------------------------------------------------------------------ TensorRT
def _graph(sha="a" * 64):
    return {"sha256": {"decode_static.onnx": sha, "transformer.weights": "b" * 64}}


def test_trt_engine_cache_key_and_stale_detection(tmp_path):
    key = engine_key(_graph(), "10.3.0", "NVIDIA H100")
    assert cached_engine_status(tmp_path, "decode_static", key) == (False, "no cached engine")
    store_engine(tmp_path, "decode_static", key, b"engine-bytes")
    assert cached_engine_status(tmp_path, "decode_static", key) == (True, "cached engine matches")
    for other, what in ((engine_key(_graph(), "10.4.0", "NVIDIA H100"), "tensorrt"),
                        (engine_key(_graph(), "10.3.0", "NVIDIA H200"), "gpu"),
                        (engine_key(_graph("c" * 64), "10.3.0", "NVIDIA H100"), "onnx_sha256"),
                        (engine_key(_graph(), "10.3.0", "NVIDIA H100", precision="fp32"), "precision")):
        usable, reason = cached_engine_status(tmp_path, "decode_static", other)
        assert not usable and reason == f"stale engine: {what} changed"
    (tmp_path / "decode_static.engine").write_bytes(b"engine-bytez")  # same size, different bytes
    assert cached_engine_status(tmp_path, "decode_static", key) == (
        False, "engine file does not match its recorded sha256")
    store_engine(tmp_path, "decode_static", key, b"rebuilt")
    assert cached_engine_status(tmp_path, "decode_static", key)[0]
    (tmp_path / "decode_static.key.json").unlink()
    assert cached_engine_status(tmp_path, "decode_static", key) == (False, "cached engine has no key file")
    (tmp_path / "decode_static.key.json").write_text("{not json")
    assert cached_engine_status(tmp_path, "decode_static", key) == (False, "key file is corrupt")
    # The key is plain JSON next to the engine, readable by a person debugging a rebuild.
    store_engine(tmp_path, "decode_static", key, b"x")
    assert json.loads((tmp_path / "decode_static.key.json").read_text())["gpu"] == "NVIDIA H100"


def _tensorrt_missing_reason():
    try:
        import_tensorrt()
    except RuntimeError as exc:
        return str(exc)
    return "" if torch.cuda.is_available() else "no CUDA GPU"


def test_tensorrt_backend_raises_a_clear_error_when_unavailable(bundle):
    reason = _tensorrt_missing_reason()
    if not reason:
        pytest.skip("TensorRT and a GPU are present: the error path cannot be exercised")
    from gst_model.runtime import make_runtime

    with pytest.raises(RuntimeError, match="TensorRT|CUDA"):
        make_runtime(bundle, backend="tensorrt", device="cuda")


def test_tensorrt_generation_matches_torch(bundle, model_dir, torch_rt, tmp_path):
    reason = _tensorrt_missing_reason()
    if reason:
        pytest.skip(f"TensorRT engine build/run not verifiable here: {reason}")
    from gst_model.runtime.trt_runtime import TensorRTRuntime

    rt = TensorRTRuntime(bundle, model_dir=model_dir, engine_dir=tmp_path, static_batch=STATIC_BATCH)
    prompt, ranges = _prompts(bundle, torch_rt)[0]
    T = bundle.vocab.tokens_per_view
    got = generate(rt.decoder(), prompt, T, SamplingParams(greedy=True), segment_ranges=ranges)
    ref = generate(torch_rt.decoder(), prompt, T, SamplingParams(greedy=True), segment_ranges=ranges)
    # FP16 engines: a near-tie may flip a token, so agreement rather than identity is asserted.
    assert (got == ref).float().mean() > 0.9
    again = TensorRTRuntime(bundle, model_dir=model_dir, engine_dir=tmp_path, static_batch=STATIC_BATCH)
    generate(again.decoder(), prompt, 2, SamplingParams(greedy=True))
    assert again.rebuilt == {}  # loaded from the engine cache
    assert math.isfinite(float(rt.decode_images(got[:1] % bundle.vocab.image_codes).abs().max()))
    seqs = torch.cat([prompt, got], dim=1)  # [obs, <EST>, target, camera]: scores the camera segment
    torch.testing.assert_close(rt.segment_log_likelihood(seqs), torch_rt.segment_log_likelihood(seqs),
                               atol=0.05 * T, rtol=0.01)
