"""The conformance command passes every golden section (without the 1.4B XXL model)."""
import subprocess
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared/reference/official_golden.npz"


@pytest.mark.slow
def test_conformance_command_passes(tmp_path):
    if not GOLDEN.exists():
        pytest.skip(f"golden vectors not found at {GOLDEN}")
    proc = subprocess.run([sys.executable, "-m", "gst_model.conformance", str(GOLDEN), "--report",
                           str(tmp_path / "conformance.md")], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [l for l in proc.stdout.splitlines() if l.startswith(("PASS", "FAIL"))]
    assert len(lines) >= 23 and all(l.startswith("PASS") for l in lines), proc.stdout
    assert "0 failed" in proc.stdout
    rows = [r for r in (tmp_path / "conformance.md").read_text().splitlines() if r.startswith("| ") and "`" in r]
    assert len(rows) == len(lines)
    for line, row in zip(lines, rows):  # the report holds the printed figures, check by check
        name, error = line.split()[1], line.split("max error ")[1].split()[0]
        assert f"`{name}`" in row and f"| {error} |" in row, (line, row)


def test_conformance_reports_failures(tmp_path):
    """A corrupted golden value must be reported as FAIL with a non-zero exit, not hidden."""
    if not GOLDEN.exists():
        pytest.skip(f"golden vectors not found at {GOLDEN}")
    import numpy as np

    from gst_model import conformance

    golden = dict(np.load(GOLDEN))
    golden["rope_grid4_hd16_sp1"] = golden["rope_grid4_hd16_sp1"] + 1e-3
    broken = tmp_path / "broken.npz"
    np.savez(broken, **{k: v for k, v in golden.items() if not k.startswith(("xxl.", "img_real", "cam_real"))})
    checks = list(conformance.check_rope(np.load(broken)))
    assert [c.passed for c in checks] == [False, True, True]
    conformance.write_report(checks, "conformance broken.npz", tmp_path / "report.md")
    report = (tmp_path / "report.md").read_text()
    assert "2 passed, 1 failed" in report
    assert f"`rope_grid4_hd16_sp1` | {checks[0].error:.3g} | 1e-06 | **FAIL** |" in report
