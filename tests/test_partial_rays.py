"""The partial camera-ray decoder that speculative drafts fit cameras to (gst_model.partial_rays)."""
import torch

from gst_model import partial_rays
from gst_model.checkpoint import build_bundle, load_bundle, save_bundle
from training.train_partial_decoder import known_region_error


def _decoder(seed: int = 0):
    bundle = build_bundle("tiny", seed=seed)
    decoder = partial_rays.PartialRayDecoder.from_tokenizer(bundle.camera_tokenizer).eval()
    with torch.no_grad():
        decoder.mask_code.normal_(generator=torch.Generator().manual_seed(seed))
    return bundle, decoder


def test_known_rows_alone_decide_the_rays_and_a_full_grid_decodes_as_the_tokenizer():
    bundle, decoder = _decoder()
    g = bundle.transformer.config.grid_size
    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(0, bundle.camera_tokenizer.config.codebook_size, (3, g * g), generator=gen)
    known = torch.tensor([1, 2, g - 1])
    other = codes.clone()
    for b, k in enumerate(known.tolist()):
        other[b, k * g:] = torch.randint(0, bundle.camera_tokenizer.config.codebook_size, ((g - k) * g,), generator=gen)
    with torch.no_grad():
        assert torch.equal(decoder(codes, known), decoder(other, known))  # unknown rows are never read
        assert not torch.equal(decoder(codes, known), decoder(codes, known + 1))
        full = decoder(codes, torch.full((3,), g))
        assert torch.allclose(full, bundle.camera_tokenizer.decode_indices(codes), atol=1e-6)


def test_the_error_counts_only_the_ray_rows_under_known_grid_rows():
    rays, target = torch.zeros(2, 6, 8, 8), torch.zeros(2, 6, 8, 8)
    target[:, :, 4:] = 1.0  # wrong only below the first two of four grid rows
    err = known_region_error(rays, target, torch.tensor([2, 3]), grid=4)
    assert err[0] == 0.0 and abs(err[1].item() - 1 / 3) < 1e-6


def test_bundles_save_and_load_their_partial_decoder(tmp_path):
    bundle, decoder = _decoder(seed=2)
    save_bundle(bundle, tmp_path / "without")
    assert load_bundle(tmp_path / "without").camera_partial_decoder is None
    bundle.camera_partial_decoder = decoder
    save_bundle(bundle, tmp_path / "with")
    loaded = load_bundle(tmp_path / "with").camera_partial_decoder
    assert all(torch.equal(v, decoder.state_dict()[k]) for k, v in loaded.state_dict().items())
