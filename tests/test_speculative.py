"""Speculative decoding: exact greedy tokens, the exact sampling distribution, per-row blocks, caches."""
import math

import numpy as np
import pytest
import torch

from gst_model import generate as gen_module
from gst_model.checkpoint import DEFAULT_MODEL_DIR
from gst_model.data.synthetic import random_scene, render, sample_cameras
from gst_model.drafting import GeometricDrafter
from gst_model.generate import DecodeStats, SamplingParams, TorchDecoder, generate
from gst_model.image import to_model_input
from gst_model.transformer import BlockKVCache, GSTConfig, Transformer


class MarkovDecoder:
    """A Decoder whose next-token logits depend only on the generated index and the previous token, so the
    distribution of whole sequences can be written down exactly."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits  # [T, V, V]: logits of token t given token t - 1 (the prompt's last for t = 0)
        self.max_seq_len = 64

    def prefill(self, prompts, start_pos, copies, slots):
        self.first = start_pos + prompts.shape[1]
        return self.logits[0, prompts[:, -1]]

    def decode(self, tokens, input_pos):
        index = (input_pos - self.first + 1).clamp(max=self.logits.shape[0] - 1)
        return self.logits[index, tokens]

    def close(self):
        pass


def _exact_joint(logits: torch.Tensor, first: int, sampling: SamplingParams) -> np.ndarray:
    """Probabilities of every sequence under the filtered per-step distributions, computed independently of
    gst_model.generate (softmax of logits / temperature restricted to the top_k ids)."""
    T, V, _ = logits.shape

    def step(row):
        z = row.double() / sampling.temperature
        if sampling.top_k is not None:
            z = z.masked_fill(z < torch.topk(z, sampling.top_k).values[-1], -math.inf)
        return z.softmax(-1).numpy()

    joint = np.zeros((V,) * T)
    for seq in np.ndindex(*joint.shape):
        p, prev = 1.0, first
        for t, tok in enumerate(seq):
            p *= step(logits[t, prev])[tok]
            prev = tok
        joint[seq] = p
    return joint


def _chi_square_p_value(counts: np.ndarray, expected: np.ndarray) -> float:
    """Upper tail of Pearson's statistic (Wilson-Hilferty normal approximation), over cells expected >= 5."""
    keep = expected >= 5
    stat = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    dof = int(keep.sum()) - 1
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


def _markov_setup():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 4, generator=g) * 1.5
    prompt = torch.tensor([[2]]).expand(20000, 1)

    def draft(tokens, lengths):  # a deterministic draft of the prefix, often wrong
        return (tokens.sum(1, keepdim=True) + torch.arange(tokens.shape[1])) % 4

    return logits, prompt, draft


@pytest.mark.parametrize("sampling", [SamplingParams(top_k=None), SamplingParams(temperature=0.7, top_k=3)],
                         ids=["plain", "temperature-top-k"])
def test_speculative_sampling_follows_the_exact_distribution(sampling):
    logits, prompt, draft = _markov_setup()
    T = logits.shape[0]
    expected = _exact_joint(logits, 2, sampling)
    out = generate(MarkovDecoder(logits), prompt, T, sampling, generator=torch.Generator().manual_seed(1),
                   draft=draft, draft_len=3)
    counts = np.zeros_like(expected)
    np.add.at(counts, tuple(out.numpy().T), 1)
    assert _chi_square_p_value(counts, expected * len(out)) > 1e-4


def test_the_distribution_test_catches_a_broken_acceptance_rule(monkeypatch):
    """Resampling from p without removing the rejected draft (a plausible bug) biases the samples towards the
    drafts; the same test must reject it."""
    logits, prompt, draft = _markov_setup()
    sampling = SamplingParams(top_k=None)
    monkeypatch.setattr(gen_module, "_without", lambda probs, candidates, tokens: probs)
    out = generate(MarkovDecoder(logits), prompt, 3, sampling, generator=torch.Generator().manual_seed(1),
                   draft=draft, draft_len=3)
    counts = np.zeros((4, 4, 4))
    np.add.at(counts, tuple(out.numpy().T), 1)
    assert _chi_square_p_value(counts, _exact_joint(logits, 2, sampling) * len(out)) < 1e-6


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    model = Transformer(GSTConfig.from_preset("tiny", token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0))
    torch.nn.init.normal_(model.output.weight, std=0.5)
    return model.eval()


class RecordingDecoder(TorchDecoder):
    """Keeps each pass's positions and the final generated-token caches."""

    def __init__(self, model):
        super().__init__(model)
        self.positions, self.caches = [], None

    def decode(self, tokens, input_pos):
        self.positions.append(input_pos.clone())
        return super().decode(tokens, input_pos)

    def close(self):
        self.caches = [(c.k_cache.clone(), c.v_cache.clone()) for c in
                       (layer.attention.kv_cache for layer in self.model.layers)]
        assert all(isinstance(layer.attention.kv_cache, BlockKVCache) for layer in self.model.layers)
        super().close()


def test_batched_rows_accept_different_lengths_and_leave_the_caches_of_plain_decoding():
    """16 hypotheses of one prompt: a draft that is right for even rows and wrong from the 5th token on for odd
    rows. Rows then stand at different positions in the same pass; tokens equal plain greedy decoding, and every
    cache slot that plain decoding wrote holds the same keys and values."""
    model = _tiny_model(3)
    T, cams = 16, (32, 48)
    prompt = torch.randint(0, 32, (1, 33), generator=torch.Generator().manual_seed(2)).expand(16, -1)
    greedy = SamplingParams(greedy=True)
    plain_decoder = RecordingDecoder(model)
    plain = generate(plain_decoder, prompt, T, greedy, segment_ranges=[(T, cams)])
    wrong = plain.clone()
    wrong[1::2, 4:] = cams[0] + (wrong[1::2, 4:] - cams[0] + 5) % 16
    stats, spec_decoder = DecodeStats(), RecordingDecoder(model)
    spec = generate(spec_decoder, prompt, T, greedy, segment_ranges=[(T, cams)], draft=lambda t, n: wrong,
                    draft_len=4, stats=stats)
    assert torch.equal(spec, plain)
    assert stats.passes < T and 0 < sum(stats.accepted) < sum(stats.drafted)
    assert any(len(set(p[:, 0].tolist())) > 1 for p in spec_decoder.positions)  # rows at different positions
    for (k_spec, v_spec), (k_plain, v_plain) in zip(spec_decoder.caches, plain_decoder.caches):
        # Plain decoding wrote slots 0..T-2 (the last token is never fed).
        torch.testing.assert_close(k_spec[:, :, :T - 1], k_plain[:, :, :T - 1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v_spec[:, :, :T - 1], v_plain[:, :, :T - 1], atol=1e-5, rtol=1e-5)


def test_speculative_generation_validates_its_arguments():
    model = _tiny_model()
    with pytest.raises(ValueError, match="draft_len must be >= 2"):
        generate(model, torch.zeros(1, 3, dtype=torch.long), 4, draft=lambda t, n: t, draft_len=1)


# ------------------------------------------------------------------ the shipped model
@pytest.fixture(scope="module")
def shipped():
    from gst_model.pipeline import GSTPipeline

    return GSTPipeline.from_pretrained(DEFAULT_MODEL_DIR)


def _rendered_pairs(n: int, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """n image pairs of synthetic rooms (two cameras of one scene each), rendered here."""
    pairs = []
    for i in range(n):
        rng = np.random.default_rng([11, i])
        scene = random_scene(rng)
        c2w, fov = sample_cameras(scene, rng, 2, fov_deg=(50.0, 60.0), azimuth_spread_deg=60.0)
        f = 0.5 * size / math.tan(math.radians(fov[0]) / 2)
        K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]])
        pairs.append(tuple(render(scene, c, K, size, size) for c in c2w))
    return pairs


@pytest.mark.parametrize("rays", ["full decoder", "partial decoder"])
def test_greedy_speculative_camera_tokens_equal_plain_greedy_on_the_shipped_model(shipped, rays):
    """24 image pairs decoded as one batch of distinct prompts, with geometric drafts refitted per grid row
    (the known rows' rays from the full camera decoder, or from the shipped partial ray decoder)."""
    partial = shipped.bundle.camera_partial_decoder if rays == "partial decoder" else None
    assert rays == "full decoder" or partial is not None, "the shipped model has a partial ray decoder"
    vocab, view, rt = shipped.vocab, shipped.view, shipped.runtime
    pairs = _rendered_pairs(24, view.image_size)
    codes = rt.encode_images(to_model_input([im for pair in pairs for im in pair], view.image_size))
    prompts = torch.cat([codes[0::2], torch.full((len(pairs), 1), vocab.est_token), codes[1::2]], dim=1)
    T, ranges, greedy = vocab.tokens_per_view, [(vocab.tokens_per_view, vocab.camera_range())], SamplingParams(greedy=True)
    plain = generate(rt.decoder(), prompts, T, greedy, segment_ranges=ranges)
    K_ray = torch.as_tensor(shipped.default_intrinsics()) * torch.tensor([[view.ray_size / view.image_size]] * 2 + [[1.0]])
    drafter = GeometricDrafter(rt, vocab.camera_offset, shipped.bundle.transformer.config.grid_size, view.ray_size,
                               K_ray, torch.eye(4, dtype=torch.float64), partial_decoder=partial)
    stats = DecodeStats()
    spec = generate(rt.decoder(), prompts, T, greedy, segment_ranges=ranges, draft=drafter, stats=stats)
    assert torch.equal(spec, plain)
    assert drafter.fits > 0 and sum(stats.accepted) > 0


def test_pipeline_speculative_option_keeps_greedy_poses(shipped):
    from gst_model.pipeline import GSTPipeline

    a, b = _rendered_pairs(1, shipped.view.image_size)[0]
    spec = GSTPipeline(shipped.bundle, speculative=True, draft_len=4)
    for prior in (None, np.eye(4)):
        got = spec.estimate_pose(a, b, num_samples=2, greedy=True, prior_c2w=prior)
        ref = shipped.estimate_pose(a, b, num_samples=2, greedy=True)
        np.testing.assert_array_equal(got.samples, ref.samples)
    with pytest.raises(ValueError, match="draft_len"):
        GSTPipeline(shipped.bundle, speculative=True, draft_len=1)



def test_greedy_views_draft_the_previous_view_of_the_same_observation(shipped, monkeypatch):
    """With speculative on, a greedy view drafts the previous greedy view of the same observation; the images
    equal plain greedy's, the drafted calls take fewer passes, and another observation is never drafted from."""
    import gst_model.pipeline as pipeline_module
    from gst_model.generate import DecodeStats, generate as plain_generate
    from gst_model.pipeline import GSTPipeline
    from training.speculative_study import yaw

    passes, drafted = [], []

    def counting_generate(*args, **kwargs):
        stats = DecodeStats()
        drafted.append(kwargs.get("draft") is not None)
        out = plain_generate(*args, **kwargs, stats=stats)
        passes.append(stats.passes)
        return out

    monkeypatch.setattr(pipeline_module, "generate", counting_generate)
    (a, _), (c, _) = _rendered_pairs(2, shipped.view.image_size)
    spec = GSTPipeline(shipped.bundle, speculative=True)
    turns = [yaw(d).numpy() for d in (0, 2, 4)]
    for c2w in turns:
        got = spec.predict_view(a, c2w, greedy=True)[0]
        np.testing.assert_array_equal(got, shipped.predict_view(a, c2w, greedy=True)[0])
    spec_calls = drafted[0::2], passes[0::2]  # calls alternate: speculative pipeline, then the plain one
    assert spec_calls[0] == [False, True, True] and not any(drafted[1::2])
    T = shipped.vocab.tokens_per_view
    assert spec_calls[1][0] == T and max(spec_calls[1][1:]) < T, spec_calls[1]
    spec.predict_view(c, np.eye(4), greedy=True)  # another observation: nothing to draft from
    spec.predict_view(c, np.eye(4), seed=0)  # sampled views are never drafted
    assert drafted[-2:] == [False, False]


def test_greedy_poses_draft_the_previous_pose_against_the_same_image(shipped, monkeypatch):
    """With speculative on, a greedy pose drafts the previous greedy pose's camera tokens against the same image a
    (a robot localizing consecutive frames against one keyframe): the samples equal plain greedy's, the drafted
    calls take fewer passes, and another image a or sampling gets the geometric drafter."""
    import gst_model.pipeline as pipeline_module
    from gst_model.generate import DecodeStats, generate as plain_generate
    from gst_model.pipeline import GSTPipeline
    from training.speculative_study import turning_target

    drafts, passes = [], []

    def counting_generate(*args, **kwargs):
        stats = DecodeStats()
        drafts.append(type(kwargs.get("draft")).__name__)
        out = plain_generate(*args, **kwargs, stats=stats)
        passes.append(stats.passes)
        return out

    monkeypatch.setattr(pipeline_module, "generate", counting_generate)
    observation, targets = turning_target([12, 0], shipped.view.image_size, shipped.view.fovy_deg, (0, 2, 4))
    spec = GSTPipeline(shipped.bundle, speculative=True)
    for target in targets:
        got = spec.estimate_pose(observation, target, num_samples=1, greedy=True)
        np.testing.assert_array_equal(got.samples, shipped.estimate_pose(observation, target, num_samples=1,
                                                                         greedy=True).samples)
    assert drafts[0::2] == ["GeometricDrafter", "TokenDrafter", "TokenDrafter"]  # calls alternate: spec, plain
    assert set(drafts[1::2]) == {"NoneType"}
    T = shipped.vocab.tokens_per_view
    assert passes[1::2] == [T] * 3 and max(passes[2::2]) < T, passes
    spec.estimate_pose(targets[0], observation, num_samples=1, greedy=True)  # another image a
    spec.estimate_pose(observation, targets[1], num_samples=2, seed=0)  # sampled: the previous greedy tokens are no draft
    assert drafts[-2:] == ["GeometricDrafter", "GeometricDrafter"]
