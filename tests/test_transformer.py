"""Transformer and decoding: official key/shape compatibility, golden parity, cache and sampling."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gst_model.generate import SamplingParams, allowed_schedule, generate, sample_from_logits
from gst_model.likelihood import log_probs_within_kind, segment_log_likelihood
from gst_model.transformer import PRESETS, GSTConfig, Transformer, attend_block, build_rope_table
from gst_model.vocab import Vocabulary

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared/reference"
GOLDEN = REFERENCE / "official_golden.npz"
STATE_DICTS = REFERENCE / "official_state_dicts.json"


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN.exists():
        pytest.skip(f"golden vectors not found at {GOLDEN}")
    return np.load(GOLDEN)


@pytest.fixture(scope="module")
def tiny_golden_model(golden):
    model = Transformer(GSTConfig.from_preset("tiny")).eval()
    prefix = "tiny_gpt.sd."
    sd = {k[len(prefix):]: torch.from_numpy(golden[k]) for k in golden.files if k.startswith(prefix)}
    model.load_state_dict(sd, strict=True)
    return model


def tiny_random_model(seed=0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(GSTConfig.from_preset("tiny", **overrides))
    # The official init zeroes the head, which would make every logit 0; randomise it.
    torch.nn.init.normal_(model.output.weight, std=0.5)
    return model.eval()


# -- (1) official checkpoint layout ---------------------------------------------------------

def test_gpt_xxl_matches_official_state_dict():
    if not STATE_DICTS.exists():
        pytest.skip(f"official state-dict listing not found at {STATE_DICTS}")
    official = json.loads(STATE_DICTS.read_text())["gpt"]
    config = GSTConfig.from_preset("GPT-XXL", vocab_size=Vocabulary().size)
    assert (config.head_dim, config.ffn_hidden, config.max_seq_len) == (64, 4096, 769)
    with torch.device("meta"):
        model = Transformer(config)
    expected = {k: tuple(v["shape"]) for k, v in official["state_dict"].items()}
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert model.num_parameters() == official["total_parameters"] == 1_415_745_024
    assert tuple(model.freqs_cis.shape) == tuple(official["freqs_cis_shape_not_in_state_dict"])
    model.setup_caches(max_batch_size=2, max_seq_length=769)
    assert model.layers[0].attention.kv_cache.k_cache.shape == (2, 24, 776, 64)  # rounded up to 8s
    assert set(model.state_dict()) == set(expected)  # caches are not checkpointed either


def test_presets_construct():
    for name in PRESETS:
        config = GSTConfig.from_preset(name)
        assert config.max_seq_len == 3 * config.grid_size**2 + 1
    with pytest.raises(KeyError):
        GSTConfig.from_preset("GPT-nope")


# -- (2) golden parity with the official tiny GPT ------------------------------------------

def test_tiny_logits_match_official(golden, tiny_golden_model):
    model = tiny_golden_model
    cond = torch.from_numpy(golden["tiny_gpt.cond_idx"])
    idx = torch.from_numpy(golden["tiny_gpt.idx"])
    seq = torch.cat([cond, idx], dim=1)
    with torch.no_grad():
        full = model(seq)
        np.testing.assert_allclose(full.numpy(), golden["tiny_gpt.logits_full_eval"], atol=1e-4, rtol=0)

        model.setup_caches(max_batch_size=2, max_seq_length=seq.shape[1])
        try:
            prefill = model(cond, torch.arange(cond.shape[1]), use_cache=True)
            steps = [model(seq[:, t:t + 1], torch.tensor([t]), use_cache=True)
                     for t in range(cond.shape[1], seq.shape[1])]
        finally:
            model.clear_caches()
    np.testing.assert_allclose(prefill.numpy(), golden["tiny_gpt.logits_kv_prefill"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(torch.cat(steps, 1).numpy(), golden["tiny_gpt.logits_kv_steps"],
                               atol=1e-4, rtol=0)
    np.testing.assert_allclose(model.freqs_cis.numpy(), golden["tiny_gpt.freqs_cis"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("cfg_scale", [1, 3])
def test_tiny_greedy_generation_matches_official(golden, tiny_golden_model, cfg_scale):
    cond = torch.from_numpy(golden["tiny_gpt.cond_idx"])
    out = generate(tiny_golden_model, cond, 32, SamplingParams(cfg_scale=float(cfg_scale), greedy=True))
    np.testing.assert_array_equal(out.numpy(), golden[f"tiny_gpt.greedy_gen_cfg{cfg_scale}"])
    assert all(layer.attention.kv_cache is None for layer in tiny_golden_model.layers)


# -- (3) RoPE tables --------------------------------------------------------------------------

@pytest.mark.parametrize("name, grid, head_dim, special", [
    ("rope_grid4_hd16_sp1", 4, 16, 1),
    ("rope_grid4_hd16_sp0", 4, 16, 0),
    ("rope_grid16_hd64_sp1", 16, 64, 1),
])
def test_rope_table_matches_official(golden, name, grid, head_dim, special):
    table = build_rope_table(grid, head_dim, special_token_num=special)
    np.testing.assert_allclose(table.numpy(), golden[name], atol=1e-6, rtol=0)


def test_rope_table_stays_float32_and_out_of_state_dict():
    model = tiny_random_model().to(torch.bfloat16)
    assert model.freqs_cis.dtype == torch.float32
    torch.testing.assert_close(model.freqs_cis, build_rope_table(4, 16))
    assert "freqs_cis" not in model.state_dict()


def test_meta_built_model_loads_with_assign(golden, tiny_golden_model):
    """The memory-light path for big checkpoints: build on meta, load with assign=True."""
    with torch.device("meta"):
        model = Transformer(GSTConfig.from_preset("tiny"))
    model.load_state_dict(tiny_golden_model.state_dict(), strict=True, assign=True)
    assert not model.freqs_cis.is_meta
    seq = torch.from_numpy(golden["tiny_gpt.cond_idx"])
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(seq), tiny_golden_model(seq), atol=0, rtol=0)


# -- (4) cached decoding equals the full forward ---------------------------------------------

@pytest.mark.parametrize("special", [1, 0])
def test_cached_decode_matches_full_forward(special):
    model = tiny_random_model(special_token_num=special)
    seq = torch.randint(0, 50, (3, model.config.max_seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(seq)
        model.setup_caches(max_batch_size=4, max_seq_length=seq.shape[1])  # larger batch is fine
        try:
            parts = [model(seq[:, :20], torch.arange(20), use_cache=True)]
            parts += [model(seq[:, t:t + 1], torch.tensor([t]), use_cache=True)
                      for t in range(20, seq.shape[1] - 5)]
            parts.append(model(seq[:, -5:], torch.arange(seq.shape[1] - 5, seq.shape[1]), use_cache=True))
        finally:
            model.clear_caches()
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)


def test_generate_continues_long_prompt_like_cached_greedy():
    """Pose-estimation layout: a 33-token prompt [obs, <EST>, target] then 16 camera tokens."""
    model = tiny_random_model(seed=3)
    prompt = torch.randint(0, 32, (2, 33), generator=torch.Generator().manual_seed(2))
    prompt[:, 16] = 49
    cams = (32, 48)
    out = generate(model, prompt, 16, SamplingParams(greedy=True), segment_ranges=[(16, cams)])
    assert out.shape == (2, 16) and out.dtype == torch.int64
    assert ((out >= cams[0]) & (out < cams[1])).all()
    # Re-derive each token with a plain full forward over the growing sequence.
    seq = prompt
    with torch.no_grad():
        for _ in range(16):
            logits = model(seq)[:, -1]
            logits[:, :cams[0]] = logits[:, cams[1]:] = float("-inf")
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
    torch.testing.assert_close(out, seq[:, 33:])


def test_generate_rejects_overlong_sequences():
    model = tiny_random_model()
    with pytest.raises(ValueError):
        generate(model, torch.zeros(1, 40, dtype=torch.long), 20)
    with pytest.raises(ValueError):
        allowed_schedule([(5, (0, 1))], 4)


# -- (5) sampling -----------------------------------------------------------------------------

def test_sampling_masks_and_determinism():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731

    assert torch.equal(sample_from_logits(logits, greedy=True), logits.argmax(-1))
    lo, hi = 32, 48
    greedy_in_range = sample_from_logits(logits, greedy=True, allowed=(lo, hi))
    assert torch.equal(greedy_in_range, logits[:, lo:hi].argmax(-1) + lo)

    top3 = logits.topk(3, dim=-1).indices
    for _ in range(20):
        s = sample_from_logits(logits, top_k=3, generator=gen())
        assert (s[:, None] == top3).any(-1).all()
        r = sample_from_logits(logits, top_k=100, allowed=(lo, hi))
        assert ((r >= lo) & (r < hi)).all()

    # top_p small enough to keep only the most likely token -> equals greedy.
    assert torch.equal(sample_from_logits(logits, top_p=1e-6), logits.argmax(-1))
    # top_p keeps the smallest prefix whose mass reaches p.
    peaked = torch.tensor([[4.0, 3.0, 0.0, -1.0]])
    probs = peaked.softmax(-1)[0]
    p = float(probs[0] + probs[1] / 2)
    draws = torch.stack([sample_from_logits(peaked, top_p=p) for _ in range(50)])
    assert set(draws.flatten().tolist()) <= {0, 1}

    a = sample_from_logits(logits, temperature=2.0, generator=gen())
    b = sample_from_logits(logits, temperature=2.0, generator=gen())
    assert torch.equal(a, b)


def test_top_k_and_top_p_sample_the_renormalised_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, 3.0]])
    gen = torch.Generator().manual_seed(3)
    n = 6000
    for kwargs, keep in (({"top_k": 3}, [5, 0, 1]), ({"top_k": 4, "top_p": 0.8}, [5, 0]),
                         ({"top_p": 0.95}, [5, 0, 1, 2])):
        draws = torch.stack([sample_from_logits(logits.expand(n, -1), generator=gen, **kwargs)]).flatten()
        freq = torch.bincount(draws, minlength=6).double() / n
        expected = torch.zeros(6, dtype=torch.float64)
        expected[keep] = logits[0, keep].double().softmax(-1)
        assert (freq - expected).abs().max() < 0.025, (kwargs, freq, expected)


def test_generate_seeded_is_reproducible():
    model = tiny_random_model(seed=5)
    prompt = torch.randint(0, 32, (2, 17), generator=torch.Generator().manual_seed(0))
    run = lambda: generate(model, prompt, 8, SamplingParams(cfg_scale=2.0, top_k=10),  # noqa: E731
                           generator=torch.Generator().manual_seed(1))
    assert torch.equal(run(), run())


# -- (6) training ------------------------------------------------------------------------------

def test_training_forward_with_dropout_and_gradients():
    model = tiny_random_model(seed=4).train()
    seq = torch.randint(0, 50, (2, 49), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 48)
    mask[:, 16:] = 1  # only the generated part counts, as in training on the VIEW layout
    loss = model.loss(seq[:, :-1], seq[:, 1:], mask)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
    assert model.layers[0].attention.q_norm.weight.grad.abs().sum() > 0
    with torch.no_grad():  # dropout active: two passes differ
        assert not torch.equal(model(seq), model(seq))
    opt = model.configure_optimizers(weight_decay=0.05, lr=1e-4, betas=(0.9, 0.95))
    decayed, plain = opt.param_groups
    assert all(p.dim() == 2 for p in decayed["params"]) and plain["weight_decay"] == 0.0
    opt.step()


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_shared_prompt_prefilled_once_matches_single_prompt(cfg_scale):
    """N hypotheses of one prompt reuse one prefill; greedy rows equal the single-prompt result."""
    model = tiny_random_model(seed=3)
    prompt = torch.randint(0, 48, (1, 17))
    single = generate(model, prompt, 8, SamplingParams(cfg_scale=cfg_scale, greedy=True))
    shared = generate(model, prompt.expand(3, -1), 8, SamplingParams(cfg_scale=cfg_scale, greedy=True))
    assert torch.equal(shared, single.expand(3, -1))
    gen = torch.Generator().manual_seed(0)
    sampled = generate(model, prompt.expand(4, -1), 8, SamplingParams(cfg_scale=cfg_scale, temperature=2.0, top_k=None),
                       generator=gen)
    assert len({tuple(r) for r in sampled.tolist()}) > 1  # independent samples, not copies


@pytest.mark.parametrize("copies", [1, 3])
def test_shared_prompt_cache_decode_matches_full_forward(copies):
    """Rows decoding different tokens after shared prompts see exactly their own sequences."""
    model = tiny_random_model(seed=5)
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, 48, (2, 17), generator=gen)
    rows = prompts.repeat_interleave(copies, dim=0)  # row r continues prompt r // copies
    new = torch.randint(0, 48, (2 * copies, 6), generator=gen)
    model.setup_caches(2, 17)
    try:
        with torch.no_grad():
            model(prompts, torch.arange(17), use_cache=True)
            model.share_prompt_cache(slice(0, 17), copies, max_new_tokens=6)
            for i in range(6):
                cached = model(new[:, i:i + 1], torch.tensor([17 + i]), use_cache=True)[:, -1]
                full = model(torch.cat([rows, new[:, :i + 1]], dim=1))[:, -1]
                torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
            with pytest.raises((RuntimeError, IndexError), match="out of bounds"):  # past the slots it was made for
                model(new[:, :1], torch.tensor([23]), use_cache=True)
    finally:
        model.clear_caches()


@pytest.mark.parametrize("block", [1, 3])
@pytest.mark.parametrize("shared_prompt", [True, False])
def test_attend_block_written_and_kept_apart_equal_explicit_attention(shared_prompt, block):
    """Both ways of giving attend_block the block (apart from the past: the ONNX graphs; already written into
    it: the torch cache) equal attention computed query by query over exactly what each query may see: its
    prompt, its row's accepted past and the block up to itself. Slots past a row's accepted tokens hold
    garbage (rejected drafts), which must stay invisible."""
    gen = torch.Generator().manual_seed(0)
    g, copies, heads, d, plen, slots = 2, 2, 2, 8, 5, 12
    b = g * copies
    accepted = torch.tensor([2, 5, 0, 7])  # per-row slots holding accepted tokens
    start = plen if shared_prompt else 0
    input_pos = start + accepted[:, None] + torch.arange(block)  # [B, K]
    q, k, v = (torch.randn(b, heads, block, d, generator=gen) for _ in range(3))
    past_k, past_v = (torch.randn(b, heads, slots, d, generator=gen) for _ in range(2))
    prompt_k, prompt_v = (torch.randn(g, heads, plen, d, generator=gen) if shared_prompt else None for _ in range(2))

    apart = attend_block(q, k, v, input_pos, prompt_k, prompt_v, past_k, past_v, start)
    index = (input_pos - start)[:, None, :, None].expand(b, heads, block, d)
    written = attend_block(q, None, None, input_pos, prompt_k, prompt_v, past_k.scatter(2, index, k),
                           past_v.scatter(2, index, v), start)

    expected = torch.empty_like(q)
    for row in range(b):
        for j in range(block):
            seen_k = [past_k[row, :, :accepted[row]], k[row, :, :j + 1]]
            seen_v = [past_v[row, :, :accepted[row]], v[row, :, :j + 1]]
            if shared_prompt:
                seen_k.insert(0, prompt_k[row // copies])
                seen_v.insert(0, prompt_v[row // copies])
            weights = (q[row, :, j:j + 1] @ torch.cat(seen_k, 1).transpose(-1, -2) * d ** -0.5).softmax(-1)
            expected[row, :, j] = (weights @ torch.cat(seen_v, 1))[:, 0]
    torch.testing.assert_close(apart, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(written, expected, atol=1e-5, rtol=1e-5)


# -- (5) segment log-likelihood (hypothesis scoring) -----------------------------------------

def test_segment_log_likelihood_equals_stepwise_cached_decoding():
    """The one-pass score equals summing, step by step through the KV cache, log-softmax over the
    target token's own kind (image or camera ids), as constrained sampling draws it."""
    vocab = Vocabulary(image_codes=30, camera_codes=16, tokens_per_view=16)
    model = tiny_random_model(vocab_size=vocab.size, grid_size=4)
    T, g = vocab.tokens_per_view, torch.Generator().manual_seed(3)
    obs, target = torch.randint(0, 30, (2, 1, T), generator=g)
    cams = torch.randint(vocab.camera_offset, vocab.camera_offset + 16, (3, T), generator=g)
    seqs = torch.cat([obs.expand(3, -1), torch.full((3, 1), vocab.gen_token), cams, target.expand(3, -1)], 1)
    with torch.no_grad():
        got = segment_log_likelihood(model, seqs, T, vocab)
        model.setup_caches(3, seqs.shape[1])
        try:
            P = seqs.shape[1] - T
            logits = [model(seqs[:, :P], torch.arange(P), use_cache=True)[:, -1]]
            logits += [model(seqs[:, t:t + 1], torch.tensor([t]), use_cache=True)[:, -1] for t in range(P, P + T - 1)]
        finally:
            model.clear_caches()
    ref = sum(logits[i][:, :30].log_softmax(-1).gather(1, seqs[:, P + i, None])[:, 0] for i in range(T))
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    assert got.unique().numel() == 3  # the camera changes how probable the same target image is
    # Camera ids are normalised over camera ids only: one logit row scored at every camera id sums to one.
    row = torch.randn(1, 1, vocab.size).expand(1, 16, -1)
    all_cameras = torch.arange(vocab.camera_offset, vocab.camera_offset + 16)[None]
    torch.testing.assert_close(log_probs_within_kind(row, all_cameras, vocab).exp().sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="segment length"):
        segment_log_likelihood(model, seqs, seqs.shape[1], vocab)
