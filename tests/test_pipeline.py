"""GSTPipeline API, checkpoint format and input validation (random-weight 'tiny' preset)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from gst_model import GSTPipeline
from gst_model.checkpoint import build_bundle, load_bundle, save_bundle
from gst_model.geometry import rotation_angle_deg, validate_rigid
from gst_model.image import center_crop_resize, crop_resize_intrinsics
from gst_model.pose_samples import summarize


@pytest.fixture(scope="module")
def pipe():
    return GSTPipeline.from_pretrained("tiny")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (90, 120, 3), dtype=np.uint8), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)


def test_estimate_pose_outputs(pipe, images):
    est = pipe.estimate_pose(*images, num_samples=4, seed=3)
    assert est.c2w.shape == (4, 4) and est.samples.shape == (4, 4, 4)
    validate_rigid(torch.from_numpy(est.c2w))
    for s in est.samples:
        validate_rigid(torch.from_numpy(s))
    assert est.covariance.shape == (6, 6)
    np.testing.assert_allclose(est.covariance, est.covariance.T)
    assert np.all(np.linalg.eigvalsh(est.covariance) > 0)
    assert 0.0 < est.consistency <= 1.0 and np.isfinite(est.residual)


def test_likelihood_selection_builds_the_estimate_around_the_most_likely_sample(images, monkeypatch):
    pipe = GSTPipeline.from_pretrained("tiny")
    consensus = pipe.estimate_pose(*images, num_samples=4, seed=3, selection="consensus")
    assert consensus.sample_log_likelihoods is None
    np.testing.assert_allclose(consensus.c2w, summarize(consensus.samples, inlier_deg=pipe.inlier_deg).c2w)
    # Make the model "find" most probable a sample whose estimate differs from the consensus.
    best = next(i for i in range(4) if not np.allclose(
        summarize(consensus.samples, inlier_deg=pipe.inlier_deg, anchor=i).c2w, consensus.c2w))
    scores = torch.full((4,), -5.0)
    scores[best] = -1.0
    seen = []
    monkeypatch.setattr(pipe.runtime, "segment_log_likelihood", lambda seqs: seen.append(seqs) or scores)

    est = pipe.estimate_pose(*images, num_samples=4, seed=3)
    np.testing.assert_array_equal(est.samples, consensus.samples)
    np.testing.assert_array_equal(est.sample_log_likelihoods, scores.numpy())
    expected = summarize(est.samples, inlier_deg=pipe.inlier_deg, anchor=best)
    np.testing.assert_allclose(est.c2w, expected.c2w)
    assert expected.inliers[best] and est.consistency == expected.consistency
    # Scored layout: [image a][<GEN>][each fitted camera, re-encoded][image b].
    (seqs,) = seen
    T, vocab = pipe.vocab.tokens_per_view, pipe.vocab
    codes = pipe._image_codes(list(images))
    assert seqs.shape == (4, 3 * T + 1) and (seqs[:, T] == vocab.gen_token).all()
    assert torch.equal(seqs[:, :T], codes[:1].expand(4, -1)) and torch.equal(seqs[:, -T:], codes[1:].expand(4, -1))
    lo, hi = vocab.camera_range()
    assert ((seqs[:, T + 1:2 * T + 1] >= lo) & (seqs[:, T + 1:2 * T + 1] < hi)).all()

    pipe.estimate_pose(*images, num_samples=1, seed=3)
    assert len(seen) == 1  # one sample: nothing to choose between, no scoring pass
    with pytest.raises(ValueError, match="selection must be one of"):
        pipe.estimate_pose(*images, num_samples=2, selection="best")


def test_seeds_are_reproducible(pipe, images):
    a = pipe.estimate_pose(*images, num_samples=3, seed=11).samples
    b = pipe.estimate_pose(*images, num_samples=3, seed=11).samples
    c = pipe.estimate_pose(*images, num_samples=3, seed=12).samples
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_library_calls_leave_the_global_rng_alone(images):
    """A script that evaluates or trains in the same process keeps its random stream: building a preset model
    and sampling with seed=None use private generators, not torch's global one."""
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    pipe = GSTPipeline.from_pretrained("tiny")
    draws = [pipe.estimate_pose(*images, num_samples=2, seed=None).samples for _ in range(2)]
    pipe.predict_view(images[0], np.eye(4), num_samples=1, seed=None)
    pipe.sample_cameras(images[0], num_samples=1, seed=None)
    assert torch.equal(torch.get_rng_state(), state)
    assert not np.array_equal(*draws)  # seed=None still samples afresh on every call
    # the preset's weights do not depend on the global RNG's state either
    torch.manual_seed(99)
    again = GSTPipeline.from_pretrained("tiny").bundle.transformer.state_dict()
    for name, value in pipe.bundle.transformer.state_dict().items():
        assert torch.equal(again[name], value), name


def test_predict_view_and_sample_cameras(pipe, images):
    views = pipe.predict_view(images[0], np.eye(4), num_samples=2, seed=0)
    assert len(views) == 2 and all(v.shape == (64, 64, 3) and v.dtype == np.uint8 for v in views)
    cams = pipe.sample_cameras(images[0], num_samples=3)
    assert cams.shape == (3, 4, 4)


def test_expected_view_is_the_mean_of_the_sampled_views(pipe, images):
    c2w = np.eye(4)
    c2w[:3, 3] = [0.2, 0.0, 0.1]
    samples = np.stack(pipe.predict_view(images[0], c2w, num_samples=3, seed=5)).astype(float)
    mean = pipe.expected_view(images[0], c2w, num_samples=3, seed=5)
    assert mean.shape == samples.shape[1:] and mean.dtype == np.uint8
    assert np.abs(mean - samples.mean(0)).max() <= 1.0  # the samples were rounded to uint8 before averaging
    assert np.abs(samples[0] - samples[1]).max() > 10  # distinct samples: the mean is not one of them
    with pytest.raises(ValueError, match="num_samples"):
        pipe.expected_view(images[0], c2w, num_samples=0)


def test_checkpoint_round_trip(tmp_path, images):
    torch.manual_seed(0)
    bundle = build_bundle("tiny")
    save_bundle(bundle, tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["format"] == "gst_ros.checkpoint/1" and cfg["view"]["image_size"] == 64
    loaded = load_bundle(tmp_path / "ckpt")
    for part in ("transformer", "image_tokenizer", "camera_tokenizer"):
        src, dst = getattr(bundle, part).state_dict(), getattr(loaded, part).state_dict()
        assert src.keys() == dst.keys()
        assert all(torch.equal(src[k], dst[k]) for k in src)
    a = GSTPipeline(bundle).estimate_pose(*images, num_samples=2, seed=5, greedy=True).c2w
    b = GSTPipeline.from_pretrained(tmp_path / "ckpt").estimate_pose(*images, num_samples=2, seed=5, greedy=True).c2w
    np.testing.assert_array_equal(a, b)


def test_bad_checkpoints_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        GSTPipeline.from_pretrained(tmp_path / "nowhere")
    save_bundle(build_bundle("tiny"), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "camera_tokenizer.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupt weights file"):
        load_bundle(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "camera_tokenizer.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing camera_tokenizer"):
        load_bundle(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt checkpoint config"):
        load_bundle(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="unknown model preset"):
        build_bundle("huge")


def test_mismatched_weights_are_rejected(tmp_path):
    save_bundle(build_bundle("tiny"), tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    cfg["transformer"]["n_layer"] = 3
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match"):
        load_bundle(tmp_path / "ckpt")


@pytest.mark.parametrize("bad, message", [
    (np.zeros((10, 10, 3), np.float32), "uint8"),
    (np.zeros((10, 10), np.uint8), "HxWx3"),
    (np.zeros((0, 10, 3), np.uint8), "empty"),
    ([[1, 2, 3]], "numpy array"),
])
def test_bad_images_rejected(pipe, images, bad, message):
    with pytest.raises(ValueError, match=message):
        pipe.estimate_pose(bad, images[1], num_samples=1)


@pytest.mark.parametrize("pose, message", [
    (np.full((4, 4), np.nan), "finite|NaN"),
    (np.diag([2.0, 1.0, 1.0, 1.0]), "orthonormal|rotation"),
    (np.diag([-1.0, 1.0, 1.0, 1.0]), "det|proper|reflection|orthonormal"),
    (np.eye(3), "shape|4x4|4, 4"),
])
def test_bad_poses_rejected(pipe, images, pose, message):
    with pytest.raises(ValueError, match=message):
        pipe.predict_view(images[0], pose)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_samples=0), "num_samples"), (dict(num_samples=10_000), "num_samples"),
    (dict(num_samples=2.5), "integer"), (dict(temperature=0.0), "temperature"),
    (dict(top_p=1.5), "top_p"), (dict(top_k=0), "top_k"),
])
def test_bad_sampling_arguments_rejected(pipe, images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe.estimate_pose(*images, **kwargs)


def test_rgba_is_composited_on_white():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:4, ..., 3] = 255  # top half opaque red-ish, bottom half fully transparent
    out = center_crop_resize(rgba, 8)
    assert (out[:4, :, 0] == 200).all() and (out[:4, :, 1] == 0).all()
    assert (out[4:] == 255).all()


def test_crop_intrinsics_follow_the_pixels():
    # A pixel-centre point at (u, v) in a 100x60 image lands at the predicted place after the crop+resize.
    K = np.array([[50.0, 0, 50], [0, 50.0, 30], [0, 0, 1]])
    K2 = crop_resize_intrinsics(K, 60, 100, 30)
    X = np.array([0.3, -0.1, 2.0])
    u, v = (K @ X)[:2] / X[2]
    u2, v2 = (K2 @ X)[:2] / X[2]
    top, left, side = 0, 20, 60
    np.testing.assert_allclose([u2, v2], [(u - left) * 30 / side, (v - top) * 30 / side])


def test_summary_rejects_outliers_and_measures_spread():
    rng = np.random.default_rng(0)
    from transforms3d.axangles import axangle2mat

    base = axangle2mat([0, 1, 0], np.radians(30))
    samples = []
    for i in range(10):
        T = np.eye(4)
        T[:3, :3] = base @ axangle2mat(rng.normal(size=3), np.radians(2.0))
        T[:3, 3] = [1.0, 0.0, 0.2] + rng.normal(scale=0.01, size=3)
        samples.append(T)
    flipped = np.eye(4)
    flipped[:3, :3] = axangle2mat([0, 1, 0], np.radians(-120))
    samples += [flipped, flipped]
    s = summarize(np.array(samples), inlier_deg=15)
    assert s.inliers.sum() == 10 and abs(s.consistency - 10 / 12) < 1e-12
    R_err = rotation_angle_deg(base, s.c2w)
    assert R_err < 2.0 and 0.5 < s.rotation_spread_deg < 4.0
    assert np.allclose(s.c2w[:3, 3], [1.0, 0.0, 0.2], atol=0.02)
    # every sample counts in the covariance: the flipped pair dominates it, along their rotation axis (y)
    rot_var = np.diag(s.covariance)[3:]
    assert rot_var[1] > 100 * max(rot_var[0], rot_var[2]) and rot_var[1] > np.diag(s.covariance)[:3].max()


def test_single_sample_gets_wide_prior_covariance():
    s = summarize(np.eye(4)[None])
    assert s.consistency == 1.0 and np.all(np.diag(s.covariance) >= 0.25)


def test_few_inliers_still_give_a_positive_definite_covariance():
    """2-6 inliers make a rank-deficient sample covariance; filters must still be able to invert it."""
    from transforms3d.axangles import axangle2mat

    rng = np.random.default_rng(4)
    for n in (2, 3, 6):
        samples = np.repeat(np.eye(4)[None], n, axis=0)
        for T in samples:
            T[:3, :3] = axangle2mat(rng.normal(size=3), np.radians(3.0))
            T[:3, 3] = rng.normal(scale=0.05, size=3)
        cov = summarize(samples).covariance
        assert np.linalg.eigvalsh(cov).min() > 0.5e-6
        np.linalg.cholesky(cov)


def test_cpu_torch_runtime_flushes_subnormals_only_when_asked():
    """Subnormal activations cost ~100x per operation on x86; flushing them is process-wide, so the back-end
    does it only as an explicit option (checked in a fresh interpreter, since the flag is global)."""
    code = ("import torch\n"
            "from gst_model.checkpoint import build_bundle\n"
            "from gst_model.runtime.torch_runtime import TorchRuntime\n"
            "tiny = torch.tensor([1e-39])\n"
            "TorchRuntime(build_bundle('tiny'))\n"
            "untouched = (tiny * 1.0).item() > 0\n"
            "TorchRuntime(build_bundle('tiny'), flush_denormal=True)\n"
            "print(untouched, (tiny * 1.0).item() == 0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]


def test_warm_up_runs_the_requested_shapes(pipe, monkeypatch):
    calls = []
    monkeypatch.setattr(pipe, "estimate_pose", lambda a, b, num_samples: calls.append(("pose", num_samples)))
    monkeypatch.setattr(pipe, "predict_view", lambda image, c2w, num_samples: calls.append(("view", num_samples)))
    assert pipe.warm_up(pose_samples=16) >= 0 and calls == [("pose", 16)]
    calls.clear()
    pipe.warm_up(view_samples=2)
    assert calls == [("view", 2)]


@pytest.mark.slow
def test_compiled_torch_runtime_samples_what_eager_samples(pipe, images):
    """torch.compile (about 30 s here) must not change a result: same seed, same sampled poses and views;
    a second sample count compiles once more and still agrees."""
    compiled = GSTPipeline.from_pretrained("tiny", compile=True)
    for n in (4, 2):
        np.testing.assert_array_equal(compiled.estimate_pose(*images, num_samples=n, seed=3).samples,
                                      pipe.estimate_pose(*images, num_samples=n, seed=3).samples)
    np.testing.assert_array_equal(compiled.predict_view(images[0], np.eye(4), num_samples=2, seed=1),
                                  pipe.predict_view(images[0], np.eye(4), num_samples=2, seed=1))
