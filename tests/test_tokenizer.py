"""Tests for gst_model.tokenizer (VQ tokenizers) and gst_model.recipe.

Golden vectors come from the official GST code (shared/reference/official_golden.*).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gst_model.recipe import recipe_state_dict
from gst_model.tokenizer import VQ_PRESETS, VQConfig, VQEncoding, VQModel

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared/reference"
GOLDEN = REFERENCE / "official_golden.npz"
STATE_DICTS = REFERENCE / "official_state_dicts.json"

needs_golden = pytest.mark.skipif(not GOLDEN.exists(), reason=f"golden vectors absent: {GOLDEN}")


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN)


@pytest.fixture(scope="module")
def official_state_dicts():
    return json.loads(STATE_DICTS.read_text())


def _meta_model(name: str) -> VQModel:
    with torch.device("meta"):
        return VQModel.from_preset(name)


def _recipe_model(name: str) -> VQModel:
    """Official-size model with recipe weights, built without a random init."""
    model = _meta_model(name)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(recipe_state_dict(shapes), strict=True, assign=True)
    return model.eval()


def _check_golden(model: VQModel, golden, tag: str, x: np.ndarray, n: int | None = None) -> None:
    """Compare against the golden arrays; ``n`` limits the batch (samples are independent)."""
    sl = slice(0, n)
    ref = {k: golden[f"{tag}.{k}"][sl] for k in ("prequant", "indices", "index_margin", "decoded")}
    with torch.no_grad():
        enc = model.encode(torch.from_numpy(x[sl]))
        decoded = model.decode_indices(torch.from_numpy(ref["indices"]))
    np.testing.assert_allclose(enc.prequant.numpy(), ref["prequant"], rtol=0, atol=1e-4)
    confident = ref["index_margin"] > 1e-4
    ours = enc.indices.numpy()
    assert ours.dtype == np.int64 and ours.shape == ref["indices"].shape
    np.testing.assert_array_equal(ours[confident], ref["indices"][confident])
    np.testing.assert_allclose(decoded.numpy(), ref["decoded"], rtol=0, atol=1e-3)


# --------------------------------------------------------------------------------------
# (1) official key sets / shapes / parameter counts
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(not STATE_DICTS.exists(), reason=f"reference absent: {STATE_DICTS}")
@pytest.mark.parametrize(
    "preset, ref_key, n_params",
    [("VQ-16", "image_tokenizer", 71_883_403), ("VQ-4", "camera_tokenizer", 22_902_410)],
)
def test_official_state_dict_layout(preset, ref_key, n_params, official_state_dicts):
    ref = official_state_dicts[ref_key]
    model = _meta_model(preset)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: v["shape"] for k, v in ref["state_dict"].items()}
    assert set(ours) == set(theirs)
    assert {k: s for k, s in ours.items() if theirs[k] != s} == {}
    assert model.num_parameters() == n_params == ref["total_parameters"]
    assert model.quantize.codebook_used.shape == (65536,)
    assert model.latent_grid(256 if preset == "VQ-16" else 64) == (16, 16)


# --------------------------------------------------------------------------------------
# recipe weights
# --------------------------------------------------------------------------------------


@needs_golden
def test_recipe_matches_stored_weights(golden):
    prefix = "tiny_cam.sd."
    stored = {k[len(prefix):]: golden[k] for k in golden.files if k.startswith(prefix)}
    rebuilt = recipe_state_dict({k: v.shape for k, v in stored.items()})
    assert set(rebuilt) == set(stored)
    for k, v in stored.items():
        assert rebuilt[k].dtype == torch.float32
        np.testing.assert_array_equal(rebuilt[k].numpy(), v, err_msg=k)
    used = recipe_state_dict({"quantize.codebook_used": (65536,)})["quantize.codebook_used"]
    assert used.shape == (65536,) and not used.any()


# --------------------------------------------------------------------------------------
# (2)-(4) golden parity
# --------------------------------------------------------------------------------------


@needs_golden
def test_golden_tiny_camera_tokenizer(golden):
    model = VQModel.from_preset("camera-golden-tiny").eval()
    prefix = "tiny_cam.sd."
    state = {k[len(prefix):]: torch.from_numpy(golden[k]) for k in golden.files if k.startswith(prefix)}
    state["quantize.codebook_used"] = torch.zeros(65536)
    model.load_official({"model": state})
    assert model.num_parameters() == 1_404_266
    _check_golden(model, golden, "tiny_cam", golden["cam.input"])


@needs_golden
def test_golden_real_camera_tokenizer(golden):
    # first two of the four maps keep this fast; GroupNorm/attention never mix samples
    _check_golden(_recipe_model("VQ-4"), golden, "cam_real", golden["cam.input"], n=2)


@needs_golden
@pytest.mark.slow
def test_golden_real_image_tokenizer(golden):
    # 72M parameters, one 256x256 encode + decode: ~9 s on 2 idle CPU cores, ~30 s when shared.
    _check_golden(_recipe_model("VQ-16"), golden, "img_real", golden["img_real.input"])


# --------------------------------------------------------------------------------------
# (5) behaviour
# --------------------------------------------------------------------------------------


def test_presets_and_config():
    assert {"VQ-16", "VQ-4", "image-small", "camera-small"} <= set(VQ_PRESETS)
    cfg = VQConfig.from_preset("VQ-4", codebook_size=512)
    assert cfg.codebook_size == 512 and VQ_PRESETS["VQ-4"].codebook_size == 2048
    assert VQConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(KeyError):
        VQConfig.from_preset("nope")
    with pytest.raises(ValueError):
        VQConfig(base_channels=24, norm_groups=32)


@pytest.mark.parametrize("preset, size, channels", [("image-small", 64, 3), ("camera-small", 32, 6)])
def test_small_presets_round_trip(preset, size, channels):
    torch.manual_seed(0)
    model = VQModel.from_preset(preset).eval()
    assert model.latent_grid(size) == (8, 8)
    assert size // model.downsample_factor == 8
    x = torch.randn(2, channels, size, size)
    idx = model.encode_indices(x)
    assert idx.shape == (2, 64) and idx.dtype == torch.int64
    assert int(idx.min()) >= 0 and int(idx.max()) < model.config.codebook_size
    with torch.no_grad():
        out = model.decode_indices(idx)
        recon, enc = model(x)
    assert out.shape == x.shape and recon.shape == x.shape
    # forward's reconstruction equals decoding its own indices (eval: quant == code)
    torch.testing.assert_close(recon, out, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(model.decode_indices(idx.view(2, 8, 8)), out)


def test_quantizer_picks_nearest_normalised_code():
    torch.manual_seed(1)
    model = VQModel.from_preset("camera-golden-tiny", codebook_size=32)
    q = model.quantize
    with torch.no_grad():
        q.embedding.weight.normal_()  # non-unit rows: the quantizer must normalise on use
        prequant = torch.randn(3, 4, 5, 6)
        enc = q(prequant)
    z = torch.nn.functional.normalize(prequant.permute(0, 2, 3, 1).reshape(-1, 4), dim=-1)
    e = torch.nn.functional.normalize(q.embedding.weight.detach(), dim=-1)
    brute = torch.cdist(z.double(), e.double()).argmin(dim=1)
    cosine = (z @ e.t()).argmax(dim=1)
    assert torch.equal(enc.indices.reshape(-1), brute)
    assert torch.equal(brute, cosine)
    # row-major [B, h*w] and the looked-up code is the normalised codebook row
    assert enc.indices.shape == (3, 30)
    torch.testing.assert_close(enc.quant.permute(0, 2, 3, 1).reshape(-1, 4), e[brute])
    torch.testing.assert_close(q.lookup(enc.indices, (5, 6)), enc.quant)
    # losses: codebook = mean||e - z||^2, commitment = beta * the same value
    mse = ((e[brute] - z) ** 2).mean()
    torch.testing.assert_close(enc.codebook_loss, mse)
    torch.testing.assert_close(enc.commitment_loss, 0.25 * mse)
    assert 1.0 <= float(enc.perplexity) <= 32.0 and 0.0 < float(enc.usage) <= 1.0


def test_straight_through_gradients_reach_encoder():
    torch.manual_seed(2)
    model = VQModel.from_preset("camera-small").train()
    x = torch.randn(2, 6, 32, 32)
    recon, enc = model(x)
    assert isinstance(enc, VQEncoding)
    loss = torch.nn.functional.mse_loss(recon, x) + enc.loss
    loss.backward()
    for name in ("encoder.conv_in.weight", "quant_conv.weight", "quantize.embedding.weight",
                 "post_quant_conv.weight", "decoder.conv_out.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    # the reconstruction term alone reaches the encoder only through the straight-through path
    model.zero_grad()
    recon, _ = model(x)
    torch.nn.functional.mse_loss(recon, x).backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quantize.embedding.weight.grad is None or not model.quantize.embedding.weight.grad.any()


def test_attention_can_be_disabled():
    model = VQModel.from_preset("camera-small", use_attention=False)
    assert not any(".attn." in k or ".q." in k for k in model.state_dict())
    with torch.no_grad():
        recon, enc = model(torch.randn(1, 6, 32, 32))
    assert recon.shape == (1, 6, 32, 32) and enc.indices.shape == (1, 64)


def test_entropy_loss_enabled():
    torch.manual_seed(3)
    model = VQModel.from_preset("camera-small", entropy_loss_weight=0.1)
    _, enc = model(torch.randn(2, 6, 32, 32))
    assert enc.entropy_loss.requires_grad and torch.isfinite(enc.entropy_loss)
