"""`make demo`: its scoring and report on a hand-made scene, and a shortened run over real DDS (random-weight
model, 4 frames, 1 view query)."""
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from transforms3d.axangles import axangle2mat

from gst_ros.tools.demo_report import Estimate, Record, ViewQuery, build_summary, summarize, write_report
from gst_ros.tools.demo_scene import DemoScene

REPO = Path(__file__).resolve().parents[1]


def _pose(yaw_deg: float, t) -> np.ndarray:
    c2w = np.eye(4)
    c2w[:3, :3] = axangle2mat([0.0, 1.0, 0.0], math.radians(yaw_deg))
    c2w[:3, 3] = t
    return c2w


def test_report_scores_known_estimates(tmp_path):
    # Frame 0 is the reference at the origin, so the relative ground truth is each frame's own pose.
    frames = [np.full((8, 12, 3), v, np.uint8) for v in (10, 30, 60)]
    scene = DemoScene(frames, np.stack([_pose(0, [0, 0, 0]), _pose(30, [1, 0, 0]), _pose(60, [2, 0, 0])]),
                      np.eye(3), scale=2.0, index=7)
    exact = _pose(30, [0.5, 0, 0])  # frame 1's pose in model units (metres / scale)
    record = Record(estimates={1: Estimate(exact, 0.9, False, 40.0, 100.25),
                               2: Estimate(_pose(0, [0, 0, 1]), 0.2, True, 60.0, 101.5)},
                    published_s={1: 100.0, 2: 101.0}, tf_frames={("ref", "cam")})
    # Returned at the camera's 8x12, scored on its centred 8x8 square, one grey level off the truth.
    query = ViewQuery(2, np.full((8, 12, 3), 61, np.uint8), 0.5)

    s = summarize(scene, record, [query], model_size=8)
    assert s["frames"] == [1, 2]
    np.testing.assert_allclose(s["rot_err"], [0.0, 60.0], atol=1e-6)
    np.testing.assert_allclose(s["identity_err"], [30.0, 60.0], atol=1e-6)
    np.testing.assert_allclose(s["dir_err"], [0.0, 90.0], atol=1e-6)
    np.testing.assert_allclose(s["t_est"], [[1, 0, 0], [0, 0, 2]], atol=1e-9)  # metres
    np.testing.assert_allclose(s["latency"], [[40.0, 250.0], [60.0, 500.0]])
    assert s["views"][0]["psnr_pred"] == pytest.approx(10 * math.log10(255.0 ** 2))
    assert s["views"][0]["psnr_copy"] == pytest.approx(10 * math.log10(255.0 ** 2 / 50.0 ** 2))

    summary = build_summary(scene, s, model="m", published=2, tf_frames=record.tf_frames, stream_s=3.0)
    assert summary["rot_median_deg"] == pytest.approx(30.0) and summary["rot_acc_15"] == 0.5
    assert summary["identity_rot_acc_15"] == 0.0 and summary["transl_dir_median_deg"] == pytest.approx(45.0)
    assert summary["latency_model_ms_median"] == 50.0 and summary["latency_e2e_ms_median"] == 375.0
    assert summary["confidence_median"] == pytest.approx(0.55) and summary["low_confidence_share"] == 0.5
    assert summary["per_frame"] == [{"frame": 1, "confidence": 0.9, "low_confidence": False},
                                    {"frame": 2, "confidence": 0.2, "low_confidence": True}]
    assert summary["frames_dropped"] == 0 and summary["tf_frames"] == ["ref -> cam"]

    line = write_report(tmp_path, scene, s, model="m", rate=2.0, published=2, tf_frames=record.tf_frames,
                        stream_s=3.0)
    assert "2/2 frames estimated" in line and "rotation error median 30.0°" in line
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert "| 0.55 / 50% |" in (tmp_path / "report.md").read_text()
    for name in ("trajectory.png", "errors.png", "views.png", "latency.png"):
        assert (tmp_path / name).stat().st_size > 0, name


@pytest.mark.ros
def test_short_demo_writes_report(tmp_path):
    pytest.importorskip("rclpy", reason="rclpy not installed (make setup installs the ROS 2 wheels)")
    pytest.importorskip("gst_ros.msg", reason="gst_ros interfaces not built (scripts/setup_ros.sh)")
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.randint(101, 200)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "gst_ros.tools.demo", "--model", "tiny", "--frames", "4", "--queries", "1",
                           "--rate", "2", "--param", "num_samples:=2", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("report.md", "summary.json", "trajectory.png", "errors.png", "views.png", "latency.png"):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["frames_published"] == 3
    assert 1 <= summary["frames_estimated"] <= 3  # the last frame is always waited for
    assert summary["tf_frames"] == ["gst_reference_optical -> gst_camera_optical"]
    assert summary["latency_model_ms_median"] > 0
    per_frame = summary["per_frame"]
    assert len(per_frame) == summary["frames_estimated"] and per_frame[-1]["frame"] == 3
    confidences = [p["confidence"] for p in per_frame]
    flagged = [p["low_confidence"] for p in per_frame]
    assert all(0.0 <= c <= 1.0 for c in confidences)
    assert summary["confidence_median"] == pytest.approx(float(np.median(confidences)))
    assert summary["low_confidence_share"] == pytest.approx(sum(flagged) / len(flagged))
    # One min_confidence threshold separates the flagged estimates from the others.
    assert max((c for c, f in zip(confidences, flagged) if f), default=0.0) < \
        min((c for c, f in zip(confidences, flagged) if not f), default=1.0)
    report = (tmp_path / "report.md").read_text()
    assert "rotation error" in report and "low_confidence" in report


def test_demo_refuses_a_missing_model(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gst_ros.tools.demo", "--model", str(tmp_path / "none"), "--out",
                           str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "not found" in proc.stderr
