"""Pose selection rules (training.selection_study) and the pose layout's own score of a hypothesis."""
import numpy as np
import pytest
import torch

from gst_model import GSTPipeline
from gst_model.data.cameras import look_at
from gst_model.geometry import rotation_angle_deg
from gst_model.vocab import Task
from training import selection_study


def _turn(deg: float) -> np.ndarray:
    """A camera turned by `deg` about its y axis."""
    c2w = np.eye(4)
    a = np.radians(deg)
    c2w[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    return c2w


@pytest.fixture
def study_data():
    """Two pairs of 4 samples turned by 0, 20, 40, 60 degrees; the truth is 40 degrees."""
    samples = np.stack([np.stack([_turn(d) for d in (0, 20, 40, 60)])] * 2)
    return {"samples": samples,
            "view_ll": np.array([[0.0, 5.0, 1.0, 2.0], [3.0, 0.0, 0.0, 0.0]]),
            "pose_ll": np.array([[0.0, -9.0, 4.0, 0.0], [0.0, 0.0, 0.0, 3.0]]),
            "residuals": np.array([[0.1, 0.9, 0.1, 0.1], [0.1, 0.1, 0.2, 0.9]]),
            "truth": np.stack([_turn(40)] * 2)}


def test_each_rule_picks_its_own_sample(study_data):
    d = {k: v[0] for k, v in study_data.items()}
    args = d["samples"], d["view_ll"], d["pose_ll"], d["residuals"]
    assert selection_study.choose("view_likelihood", *args) == 1
    assert selection_study.choose("pose_likelihood", *args) == 2
    assert selection_study.choose("joint", *args) == 2  # 1 + 4 beats 5 - 9
    # sample 1 is the most likely view but its rays are not a rigid camera: dropped
    assert selection_study.choose("low_residual_view", *args) == 3
    assert selection_study.choose("consensus", *args) is None
    with pytest.raises(ValueError, match="unknown rule"):
        selection_study.choose("mode", *args)


def test_estimates_are_built_around_the_chosen_sample_and_best_of_n_is_the_closest(study_data):
    est = selection_study.estimates(study_data, inlier_deg=5.0)  # no neighbours: the estimate is the anchor
    truth = study_data["truth"]
    np.testing.assert_allclose(rotation_angle_deg(est["view_likelihood"][:, :3, :3], truth[:, :3, :3]), [20, 40],
                               atol=1e-6)
    np.testing.assert_allclose(rotation_angle_deg(est["best_of_n"][:, :3, :3], truth[:, :3, :3]), [0, 0], atol=1e-6)
    np.testing.assert_allclose(est["identity"], np.stack([np.eye(4)] * 2))
    scores = selection_study.score(study_data)
    assert scores["best_of_n"]["rot_acc_15"] == 1.0 and scores["view_likelihood"]["rot_acc_15"] == 0.0
    assert scores["pose_likelihood"]["rot_acc_15"] == 0.5


def test_pose_log_likelihoods_score_the_camera_last_in_the_pose_layout():
    pipe = GSTPipeline.from_pretrained("tiny")
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2))
    c2w = np.stack([look_at(np.array([0.3 * i, -2.0, 0.5]), np.array([0.0, 0.0, 0.5])) for i in range(3)])
    K_ray = np.stack([pipe._ray_pixels(pipe.default_intrinsics())] * 3)
    got = pipe.pose_log_likelihoods(a, b, c2w, K_ray)
    codes = pipe._image_codes([a, b])
    cams = pipe._encode_cameras(torch.as_tensor(c2w), torch.as_tensor(K_ray))
    est = torch.full((3, 1), pipe.vocab.task_token(Task.POSE), dtype=torch.long)
    want = pipe.runtime.segment_log_likelihood(torch.cat([codes[:1].expand(3, -1), est, codes[1:].expand(3, -1),
                                                          cams], dim=1)).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # not the view layout's score of the same cameras
    view = pipe._view_log_likelihoods(codes[:1], codes[1:], torch.as_tensor(c2w), torch.as_tensor(K_ray))
    assert not np.allclose(got, view)


def test_generalization_report_tabulates_every_recipe_set_and_rule(study_data, tmp_path):
    import yaml

    from training import generalization_study as g

    cfg = yaml.safe_load(open("training/configs/generalization.yaml"))
    scores = {s: selection_study.score(study_data) for s in g.SETS}
    rows = [{"recipe": "base", "step": 0, "sequences": 0, **scores}]
    rows += [{"recipe": r, "step": k, "sequences": 16 * k, **scores} for r in cfg["recipes"] for k in (500, 1000)]
    timing = {"plain": {"train_seconds": 1800, "threads": 2}, "randomized": None}
    g.write_report({"config": cfg, "command": "cmd", "hours": 0.5, "train_timing": timing, "rows": rows},
                   tmp_path / "report.md")
    g.plot_accuracy(rows, tmp_path / "accuracy.png")
    text = (tmp_path / "report.md").read_text()
    assert "| randomized | 1000 | 16000 | 0% / 50% / 30.0° |" in text  # view likelihood: 20 and 40 deg off
    assert "| identity | - | - | 0% / 0% / 40.0° |" in text
    assert "plain 0.50 h (2 torch thread(s)), randomized not recorded" in text
    # the pose table, the rotation bins (both pairs turned 40 degrees) and one rule row per set
    assert text.count("| plain | 500 |") == 2 + len(g.SETS)
    assert "| plain | 500 | - | - | 0% (2) | - | - | 0% (2) |" in text
    assert (tmp_path / "accuracy.png").stat().st_size > 0


@pytest.mark.parametrize("name", ["generalization", "generalization_gpu"])
def test_generalization_configs_are_usable_and_mistakes_fail_early(name):
    import copy

    import yaml

    from training import generalization_study as g

    cfg = yaml.safe_load(open(f"training/configs/{name}.yaml"))
    g.validate_config(cfg)
    for path, value, message in ((("recipes", "plain"), ["nope"], "not in `data`"),
                                 (("finetune", "evaluate_steps"), [cfg["finetune"]["keep_every"] + 1], "not kept"),
                                 (("finetune", "train", "batchsize"), 3, "unknown"),
                                 (("data", "plain", "synthetic", "scenez"), 3, "unknown")):
        broken = copy.deepcopy(cfg)
        node = broken
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(ValueError, match=message):
            g.validate_config(broken)


def test_ablation_config_is_usable_and_the_report_compares_every_variant_with_the_baseline(study_data, tmp_path):
    import copy

    import yaml

    from training import ablation_study as a
    from training import generalization_study as g

    ablation = yaml.safe_load(open("training/configs/ablation.yaml"))
    study = yaml.safe_load(open(ablation["study"]))
    a.validate(study, ablation)
    for key, value, message in (("data", ["nope"], "not in the study"), ("variants", {"x": {}}, "baseline"),
                                ("variants", {"baseline": {}, "x": {"pose_fractoin": 0.8}}, "variant 'x'")):
        broken = copy.deepcopy(ablation)
        broken[key] = value
        with pytest.raises(ValueError, match=message):
            a.validate(study, broken)
    cfg = a.variant_config(study, ablation, {"pose_fraction": 0.8})
    assert cfg["finetune"]["train"]["pose_fraction"] == 0.8 and cfg["finetune"]["steps"] == ablation["steps"]
    assert study["finetune"]["train"]["pose_fraction"] == 0.5  # the study's config is not modified

    good = selection_study.score(study_data)  # view likelihood: 20 and 40 degrees off -> 0% Rot@15
    better = selection_study.score({**study_data, "view_ll": np.array([[0.0, 0.0, 9.0, 0.0], [0.0] * 4])})
    rows = [{"variant": v, "settings": s, "weights": "last", "timing": None, "val_camera": 0.5,
             "camera_gap": 0.1, **{k: (better if v == "curriculum" else good) for k in g.SETS}}
            for v, s in (("baseline", {}), ("curriculum", {"curriculum_steps": 500}))]
    result = {"config": ablation, "study": study, "hours": 0.1, "command": "cmd",
              "base": {s: good for s in g.SETS}, "rows": rows}
    a.write_report(result, tmp_path / "report.md")
    text = (tmp_path / "report.md").read_text()
    assert "| baseline | current recipe | last | 0.500 | 0.100 | 0% / 50% / 30.0° |" in text
    assert "| curriculum | +50 | +50 | +50 |" in text  # one of the two pairs now within 15 degrees
    assert "Fine-tuning time: not recorded." in text
