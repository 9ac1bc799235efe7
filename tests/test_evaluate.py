"""End-to-end `training.evaluate` on a tiny synthetic RealEstate10K-layout dataset with a random model."""
import json

import numpy as np
import pytest

from gst_model import metrics
from gst_model.data.formats import read_re10k_split
from gst_model.data.make_synthetic import SyntheticConfig, make_dataset
from training import evaluate


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    make_dataset(SyntheticConfig(out=str(data), scenes=2, views_per_scene=4, size=64, split_fractions=(0, 0, 1),
                                 supersample=1, shadows=False, azimuth_spread=40.0), progress=False)
    out = tmp_path_factory.mktemp("eval")
    evaluate.main(["--model", "tiny", "--data", str(data), "--split", "test", "--pairs", "2", "--num-samples", "2",
                   "--out", str(out), "--seed", "3", "--sets", "1", "--set-views", "3", "--image-size", "128",
                   "--threads", "1", "--grid-pairs", "2", "--mean-view-samples", "2"])
    return data, out, json.loads((out / "metrics.json").read_text())


def test_outputs_exist(result):
    _, out, _ = result
    for name in ("metrics.json", "report.md", "rotation_errors.png", "views.png"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    for row in ("| GST |", "| GST, consensus of the same samples |", "| identity |", "| essential matrix |", "| GST expected view (mean of samples) |", "| copy observation |", "| tokenizer upper bound |"):
        assert row in report
    assert "Rot@15" in report and "LPIPS" in report


def test_metrics_json_has_the_expected_keys_and_sane_values(result):
    _, _, m = result
    assert set(m) >= {"config", "lpips", "methods", "self_consistency", "pose_sets", "pairs", "elapsed_s"}
    methods = m["methods"]
    assert set(methods) == {"gst", "gst_consensus", "identity", "essential_matrix", "gst_expected",
                            "copy_observation", "tokenizer_upper_bound"}
    assert m["config"]["pose_selection"] == "likelihood"
    for name in ("gst", "gst_consensus", "identity", "essential_matrix"):
        r = methods[name]
        assert r["n"] == 2
        assert 0 <= r["rot_acc_15"] <= r["rot_acc_30"] <= 1
        assert 0 <= r["rot_median_deg"] <= 180
    for name in ("gst", "gst_expected", "copy_observation", "tokenizer_upper_bound"):
        r = methods[name]
        assert r["n_views"] == 2 and 0 < r["psnr"] < 100 and -1 <= r["ssim"] <= 1
        assert r["lpips"] is None or r["lpips"] >= 0
    assert m["methods"]["identity"]["transl_dir_median_deg"] is None  # no translation, no direction
    assert len(m["pairs"]) == 2 and 0 <= m["self_consistency"]["rot_median_deg"] <= 180
    sets = m["pose_sets"]
    assert len(sets["sets"]) == 1 and sets["gst"]["n_cameras"] == sets["gst_consensus"]["n_cameras"] == 3
    assert 0 <= sets["gst"]["centre_acc_0.1"] <= 1


def test_pairs_are_reproducible_and_the_identity_error_is_the_true_rotation(result):
    data, _, m = result
    scenes = {s.name: s for s in read_re10k_split(data, "test")}
    for rec in m["pairs"]:
        a, b = (scenes[rec["scene"]].views[k].c2w for k in rec["views"])
        true_angle = float(metrics.rotation_errors_deg(a, b))
        assert rec["gt_rotation_deg"] == pytest.approx(true_angle, abs=1e-6)
        assert rec["identity_rot_err_deg"] == pytest.approx(true_angle, abs=1e-6)
    assert np.isfinite([rec["gst_psnr"] for rec in m["pairs"]]).all()
