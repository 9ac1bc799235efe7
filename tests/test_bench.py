"""The benchmark script end to end on the tiny preset (a smoke test of its table, not a timing)."""
import math

from gst_model import bench
from gst_model.checkpoint import DEFAULT_MODEL_DIR, load_bundle


def test_bench_writes_a_table_with_greedy_parity(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "PATHS", ("nocache", "torch", "ort"))  # the driver's loop; workers are fresh
    out = tmp_path / "results.md"
    text = bench.run(["tiny"], out, quick=True, export_root=tmp_path / "exports")
    assert out.read_text() == text
    main_table, speculative = text.split("## Speculative decoding of camera tokens")
    rows = [l.split(" | ") for l in main_table.splitlines() if l.startswith("| tiny")]
    assert [r[1] for r in rows] == ["official-style, no KV cache (extrapolated)", "torch eager + KV cache",
                                    "onnxruntime fp32"]
    assert [r[-1] for r in rows] == ["yes |", "ref |", "yes |"]  # ORT's greedy tokens equal torch's
    for r in rows:
        assert all(math.isfinite(float(x)) for x in r[2:4] + r[5:7]), r  # prefill, decode, pose N=1/16 s
    assert "failed" not in text
    spec_rows = [l.split(" | ") for l in speculative.splitlines() if l.startswith("| tiny")]
    assert [(r[1], r[2]) for r in spec_rows] == [(path, draft) for path in ("torch eager + KV cache", "onnxruntime fp32")
                                                 for draft in ("geometric", "tracked")]
    for r in spec_rows:
        assert all(1 <= int(x) <= 64 for x in r[3:5]), r  # passes per pose: at most one per camera token


def test_default_bundle_size_is_read_from_the_shipped_files():
    bundle = load_bundle(DEFAULT_MODEL_DIR)
    numel = sum(p.numel() for m in (bundle.transformer, bundle.image_tokenizer, bundle.camera_tokenizer)
                for p in m.parameters())
    assert bench.bundle_bytes("default") == 4 * numel
