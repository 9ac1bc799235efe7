"""The short reliability matrix (`python -m gst_ros.tools.reliability --short`) over real DDS: every malformed
input answered as expected, SIGINT with queued requests answered, lifecycle transitions under load."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="rclpy not installed (make setup installs the ROS 2 wheels)")
pytest.importorskip("gst_ros.msg", reason="gst_ros interfaces not built (scripts/setup_ros.sh)")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.ros
def test_short_reliability_matrix(tmp_path):
    out = tmp_path / "reliability.md"
    proc = subprocess.run([sys.executable, "-m", "gst_ros.tools.reliability", "--short", "--out", str(out)],
                          cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600)
    rows = json.loads(out.with_suffix(".json").read_text())
    bad = [f"[{r['section']}] {r['case']}: {r['answer']}" for r in rows if not r["ok"]]
    assert proc.returncode == 0 and not bad, "\n".join(bad) + proc.stdout[-2000:] + proc.stderr[-2000:]
    matrix = [r for r in rows if r["section"] == "matrix"]
    assert len(matrix) >= 25
    cases = {r["case"]: r for r in rows}
    assert "image too small: 1x1" in cases["frame: 1x1"]["answer"]
    assert cases["frame: empty Image()"]["answer"] == "dropped image: empty image: 0x0, encoding '', 0 data bytes"
    assert "unanswered" in cases["SIGINT with 40 predict_view requests sent"]["answer"]
    assert {r["section"] for r in rows} == {"matrix", "lifecycle", "shutdown"}
    assert "| frame: 1x1 |" in out.read_text()
