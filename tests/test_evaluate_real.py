"""`training.evaluate_real` end to end on a tiny synthetic scene written as kapture (not the real samples),
with a random preset model: outputs, pair selection, rotation bins and the identity's known errors."""
import json

import numpy as np
import pytest
from PIL import Image
from transforms3d.quaternions import mat2quat

from gst_model import metrics
from gst_model.data.cameras import fov_to_K
from gst_model.data.formats import scene_scale
from gst_model.data.kapture import read_kapture
from gst_model.data.synthetic import random_scene, render, sample_cameras
from training import evaluate_real


def _write_kapture(root, c2ws, K, images):
    sensors = root / "sensors"
    (sensors / "records_data").mkdir(parents=True)
    h, w = images[0].shape[:2]
    header = "# kapture format: 1.1\n"
    (sensors / "sensors.txt").write_text(header + "cam, , camera, PINHOLE, " + ", ".join(
        repr(float(v)) for v in (w, h, K[0, 0], K[1, 1], K[0, 2], K[1, 2])) + "\n")
    rows, records = [], []
    for i, (c2w, image) in enumerate(zip(c2ws, images)):
        w2c = np.linalg.inv(c2w)
        rows.append(f"{i}, cam, " + ", ".join(repr(float(v)) for v in (*mat2quat(w2c[:3, :3]), *w2c[:3, 3])))
        records.append(f"{i}, cam, {i:03d}.png")
        Image.fromarray(image).save(sensors / "records_data" / f"{i:03d}.png")
    (sensors / "trajectories.txt").write_text(header + "\n".join(rows) + "\n")
    (sensors / "records_camera.txt").write_text(header + "\n".join(records) + "\n")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = tmp_path_factory.mktemp("kapture_room")
    rng = np.random.default_rng(5)
    room = random_scene(rng)
    c2ws, _ = sample_cameras(room, rng, 4, fov_deg=(60.0, 60.0), azimuth_spread_deg=70.0)
    h, w = 60, 80  # 4:3 like a real camera
    K = fov_to_K(60.0, h, w)
    _write_kapture(root, c2ws, K, [render(room, c, K, h, w, supersample=1, shadows=False) for c in c2ws])
    out = tmp_path_factory.mktemp("eval_real")
    evaluate_real.main(["--model", "tiny", "--scene", f"kapture:{root}", "--out", str(out), "--num-samples", "2",
                        "--mean-view-samples", "2", "--max-pairs-per-scene", "5", "--max-rot", "90",
                        "--bins", "0", "30", "90", "--threads", "1", "--grid-pairs", "2", "--seed", "1"])
    return root, out, json.loads((out / "metrics.json").read_text())


def test_outputs_and_report_rows(result):
    _, out, _ = result
    for name in ("metrics.json", "report.md", "rotation_errors.png", "accuracy_by_bin.png", "views.png"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    for label in evaluate_real.LABELS.values():
        assert f"| {label} |" in report, label
    assert "| GST view sample |" in report and "**all pairs** (5 pairs)" in report


def test_pairs_bins_and_identity_errors_follow_the_ground_truth(result):
    root, _, m = result
    scene = read_kapture(root)
    pairs = m["pairs"]
    assert len(pairs) == 5 and m["scenes"] == {root.name: 5}
    bins = {"0-30": 0, "30-90": 0}
    for r in pairs:
        a, b = (scene.views[k].c2w for k in r["views"])
        angle = float(metrics.rotation_errors_deg(a, b))
        assert r["gt_rotation_deg"] == pytest.approx(angle, abs=1e-6)
        assert r["identity_rot_err_deg"] == pytest.approx(angle, abs=1e-6)
        assert r["bin"] == ("0-30" if angle < 30 else "30-90")
        bins[r["bin"]] += 1
        assert np.linalg.norm(a[:3, 3] - b[:3, 3]) >= 0.2 * scene_scale(scene)
    pose = m["summary"]["pose"]
    for method in evaluate_real.POSE_METHODS:
        assert pose[method]["all"]["n"] == 5
        assert {b: pose[method][b]["n"] for b in bins} == bins
        assert 0 <= pose[method]["all"]["rot_acc_15"] <= pose[method]["all"]["rot_acc_30"] <= 1
    assert pose["identity"]["all"]["transl_dir_median_deg"] is None
    assert pose["identity"]["all"]["rot_median_deg"] == pytest.approx(
        float(np.median([r["gt_rotation_deg"] for r in pairs])))
    views = m["summary"]["views"]
    assert set(views) == {"gst", "gst_expected", "copy_observation", "tokenizer_upper_bound"}
    assert all(0 < v["psnr"] < 100 for v in views.values())


def test_pair_selection_limits():
    scene = type("S", (), {})()
    c2ws = [np.eye(4) for _ in range(3)]
    c2ws[1] = c2ws[1].copy()
    c2ws[1][0, 3] = 1.0
    c2ws[2] = c2ws[2].copy()
    c2ws[2][0, 3] = 0.01  # a near-duplicate of view 0
    scene.views = [type("V", (), {"c2w": c})() for c in c2ws]
    got = evaluate_real.select_pairs(scene, 60.0, 0.2, 10, np.random.default_rng(0))
    assert got == [(0, 1), (1, 0), (1, 2), (2, 1)]
    assert len(evaluate_real.select_pairs(scene, 60.0, 0.2, 3, np.random.default_rng(0))) == 3
    assert evaluate_real.bin_label(60.0, [0, 15, 30, 60]) == "30-60"
    assert evaluate_real.bin_label(61.0, [0, 15, 30, 60]) is None


def test_bad_scene_spec_is_a_clear_error():
    with pytest.raises(Exception, match="FORMAT:PATH"):
        evaluate_real.parse_scene("nope:/x")
