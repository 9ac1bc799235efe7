"""Pose uncertainty (gst_model.pose_samples) and hybrid hypotheses (GSTPipeline.estimate_pose(hybrid=True))."""
import math

import numpy as np
import pytest
import torch
from transforms3d.axangles import axangle2mat

from gst_model import GSTPipeline, classical
from gst_model.pipeline import HYBRID_PRIOR_NATS
from gst_model.data.cameras import relative_pose
from gst_model.data.synthetic import random_scene, render, sample_pair
from gst_model.geometry import rotation_angle_deg
from gst_model.pose_samples import CONFIDENCE_TEMPERATURE, COVARIANCE_SCALE, rotation_log, summarize


def _pose(axis, deg, t=(0.0, 0.0, 0.0)):
    T = np.eye(4)
    T[:3, :3] = axangle2mat(axis, np.radians(deg))
    T[:3, 3] = t
    return T


def test_covariance_is_the_scaled_spread_of_every_sample_around_the_estimate():
    rng = np.random.default_rng(0)
    samples = np.stack([_pose(rng.normal(size=3), d, rng.normal(scale=0.3, size=3)) for d in (2, 4, 3, 60, 90)])
    s = summarize(samples, inlier_deg=15.0, anchor=0)
    assert s.inliers.tolist() == [True, True, True, False, False]
    dev = np.concatenate([samples[:, :3, 3] - s.c2w[:3, 3], rotation_log(s.c2w[:3, :3].T @ samples[:, :3, :3])], 1)
    np.testing.assert_allclose(s.covariance, COVARIANCE_SCALE * dev.T @ dev / 5 + 1e-6 * np.eye(6), atol=1e-12)
    # the two far samples are in it: an inlier-only covariance would claim a few degrees
    assert math.degrees(math.sqrt(np.linalg.eigvalsh(s.covariance[3:, 3:]).max())) > 40


def test_consistency_is_agreement_with_the_estimate_not_with_the_anchor():
    # anchor at 0 deg; five samples at +12 deg and one at -14 deg about y: all within 15 deg of the anchor,
    # but the estimate (their mean, ~+8 deg) is 22 deg from the -14 deg sample
    samples = np.stack([_pose([0, 1, 0], d) for d in (0, 12, 12, 12, 12, 12, -14)])
    s = summarize(samples, inlier_deg=15.0, anchor=0)
    assert s.inliers.all()
    angles = rotation_angle_deg(s.c2w[None], samples)
    assert angles[-1] > 15 and (angles[:-1] <= 15).all()
    assert s.consistency == pytest.approx(6 / 7) and s.confidence == pytest.approx(6 / 7)  # no likelihoods


def test_confidence_is_the_tempered_likelihood_mass_near_the_estimate():
    samples = np.stack([_pose([0, 1, 0], d) for d in (0, 3, 5, 70, 80)])
    ll = np.array([-100.0, -104.0, -101.0, -102.0, -99.0])
    s = summarize(samples, inlier_deg=15.0, anchor=0, log_likelihoods=ll)
    w = np.exp(ll / CONFIDENCE_TEMPERATURE)
    assert s.confidence == pytest.approx(w[:3].sum() / w.sum())
    # the same samples, with the likelihood piled on the far ones: low confidence
    low = summarize(samples, inlier_deg=15.0, anchor=0, log_likelihoods=np.array([-100, -120, -120, -80, -80.0]))
    assert low.confidence < 0.01 and low.consistency == s.consistency


def test_an_exact_anchor_is_the_estimate_itself():
    samples = np.stack([_pose([1, 0, 0], d, (0.1 * d, 0, 0)) for d in (0, 4, 8)])
    s = summarize(samples, anchor=2, exact_anchor=True)
    np.testing.assert_array_equal(s.c2w, samples[2])
    assert not np.allclose(summarize(samples, anchor=2).c2w, samples[2])


# ------------------------------------------------------------------------------------ hybrid
@pytest.fixture(scope="module")
def textured_pair():
    """A 320x240 pair of a synthetic room, 90 degree horizontal fov, where SIFT finds enough matches."""
    rng = np.random.default_rng(1)
    scene = random_scene(rng)
    c2w, _ = sample_pair(scene, rng, rot_range_deg=(10, 30))
    f = 160.0 / math.tan(math.radians(45))
    K = np.array([[f, 0, 160.0], [0, f, 120.0], [0, 0, 1]])
    images = [render(scene, T, K, 240, 320, supersample=1) for T in c2w]
    return images, K, relative_pose(c2w[0], c2w[1])


@pytest.mark.skipif(classical.OPENCV_ERROR is not None, reason=str(classical.OPENCV_ERROR))
def test_classical_hypothesis_joins_the_samples_and_can_win(textured_pair, monkeypatch):
    (a, b), K, truth = textured_pair
    pipe = GSTPipeline.from_pretrained("tiny")
    seen, scores = [], {}
    monkeypatch.setattr(pipe.runtime, "segment_log_likelihood",
                        lambda seqs: seen.append(seqs) or scores["next"][: len(seqs)])
    n, kw = 4, dict(num_samples=4, seed=0, K_a=K, K_b=K, hybrid=True, hybrid_min_inliers=15)
    # the classical hypothesis (last) scores below the best sample, by less than its prior: it wins
    scores["next"] = torch.tensor([-9.0, -8.0, -7.0, -6.0, -5.0 - HYBRID_PRIOR_NATS + 4.0])
    est = pipe.estimate_pose(a, b, **kw)
    two_view = classical.essential_matrix_pose(a, b, K, K)
    assert two_view.inliers >= 15 and rotation_angle_deg(two_view.c2w, truth) < 2.0  # the premise
    assert len(seen[0]) == n + 1 and est.source == "classical"
    assert est.classical_log_likelihood == pytest.approx(-1.0 - HYBRID_PRIOR_NATS)
    np.testing.assert_allclose(est.sample_log_likelihoods, [-9, -8, -7, -6])
    assert rotation_angle_deg(est.c2w, truth) < 2.0
    np.testing.assert_allclose(est.c2w[:3, :3], two_view.c2w[:3, :3], atol=1e-9)
    # translation: the matches' direction, the samples' median length
    length = np.median(np.linalg.norm(est.samples[:, :3, 3], axis=1))
    np.testing.assert_allclose(est.c2w[:3, 3], two_view.c2w[:3, 3] * length, atol=1e-9)
    assert 0.0 < est.confidence <= 1.0 and np.all(np.linalg.eigvalsh(est.covariance) > 0)

    # below the best sample by more than the prior: the sample wins (the likelihood vetoes)
    scores["next"] = torch.tensor([-9.0, -1.0, -7.0, -6.0, -2.0 - HYBRID_PRIOR_NATS])
    est = pipe.estimate_pose(a, b, **kw)
    assert est.source == "gst" and est.classical.inliers >= 15
    expected = summarize(np.concatenate([est.samples, est.classical.c2w[None]]), anchor=1,
                         log_likelihoods=np.array([-9.0, -1, -7, -6, -2]))  # the classical score with its prior
    np.testing.assert_allclose(est.c2w, expected.c2w)
    assert est.confidence == pytest.approx(expected.confidence)

    # too few inliers for the threshold: the classical estimate does not join, nothing extra is scored
    seen.clear()
    est = pipe.estimate_pose(a, b, **{**kw, "hybrid_min_inliers": two_view.inliers + 1})
    assert est.classical.c2w is None and est.classical.reason.startswith("too few") and len(seen[0]) == n
    assert est.source == "gst" and est.classical_log_likelihood is None


def test_hybrid_needs_the_likelihood():
    pipe = GSTPipeline.from_pretrained("tiny")
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="hybrid hypotheses are chosen by the likelihood"):
        pipe.estimate_pose(image, image, num_samples=2, selection="consensus", hybrid=True)


# ---------------------------------------------------------------------------- the measurement
def test_rank_statistics_match_their_definitions():
    from training.uncertainty import auroc, ranks, spearman

    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 40).astype(float)  # many ties
    r = ranks(x)
    for v in np.unique(x):  # tied values share the mean of the positions they occupy
        below, tied = (x < v).sum(), (x == v).sum()
        np.testing.assert_allclose(r[x == v], below + (tied - 1) / 2)
    pos = rng.random(40) < 0.5
    pairs = [(a > b) + 0.5 * (a == b) for a in x[pos] for b in x[~pos]]
    assert auroc(x, pos) == pytest.approx(np.mean(pairs))
    assert spearman(x, 2 * x + 1) == pytest.approx(1.0) and spearman(x, -x) == pytest.approx(-1.0)


def test_study_scores_an_informative_confidence_and_the_hybrid(monkeypatch):
    """Synthetic hypotheses with known truth: on half the pairs the likely samples sit at the truth, on the
    other half far from it; a strong classical estimate (exact) exists on some pairs."""
    from training import uncertainty

    rng = np.random.default_rng(1)
    n, N = 40, 8
    cache = {k: [] for k in uncertainty.KEYS}
    for i in range(n):
        truth = _pose(rng.normal(size=3), 40, rng.normal(size=3))
        good = i % 2 == 0
        near = [truth @ _pose(rng.normal(size=3), 3) for _ in range(N // 2)]
        far = [truth @ _pose(rng.normal(size=3), 60 + 10 * k) for k in range(N // 2)]
        ll = np.r_[np.full(N // 2, -10.0 if good else -40.0), np.full(N // 2, -40.0 if good else -10.0)]
        cache["samples"].append(np.stack(near + far))
        cache["log_likelihoods"].append(ll + rng.normal(scale=0.1, size=N))
        cache["truth"].append(truth)
        strong = i % 4 == 1  # a bad GST pair with an exact classical estimate
        cache["classical_c2w"].append(truth if strong else np.full((4, 4), np.nan))
        cache["classical_log_likelihood"].append(-25.0 if strong else np.nan)  # below the best sample, within the prior
        cache["classical_inliers"].append(200 if strong else 0)
    study = uncertainty.Study({k: np.asarray(v) for k, v in cache.items()}, 15.0)
    result = uncertainty.analyse(study, seed=0)
    conf = result["confidence"]["likelihood mass within 15 deg, T=4"]
    for half in ("choose", "report"):
        assert conf[half]["auroc"] == pytest.approx(1.0) and conf[half]["spearman"] < -0.5
        assert conf[half]["rot_acc_15_most_confident_half"] > conf[half]["rot_acc_15_all"]
    assert result["rot_acc_15"] == pytest.approx(0.5)
    pose = result["pose"]
    assert pose["GST alone"]["rot_acc_15"] == pytest.approx(0.5)
    assert pose["hybrid"]["rot_acc_15"] == pytest.approx(0.75) and pose["hybrid"]["classical_won"] == 10
    assert pose["classical alone (identity where it fails)"]["succeeded"] == 10
