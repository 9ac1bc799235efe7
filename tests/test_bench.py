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


def _results(machine: str, rows: dict[str, str]) -> str:
    """A results file in the bench's layout with one row per preset in each table."""
    lines = ["# GST inference benchmark", "", f"Machine: {machine}.", "",
             "| preset | path | prefill ms | decode ms/tok |", "|---|---|---|---|"]
    lines += [f"| {p} (T=64) | torch eager + KV cache | {v} | {v} |" for p, v in rows.items()]
    lines += ["", "Targets: decode >= 60% of roofline."]
    lines += [f"- {p} / torch eager + KV cache: roofline >= 60%: MISSED ({v})" for p, v in rows.items()]
    lines += ["", "## Speculative decoding of camera tokens", "", "Blocks of 8.", "",
              "| preset | path | draft | passes N=1 | passes N=16 | pose N=1 s (plain) | pose N=16 s (plain) |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {p} (T=64) | torch eager + KV cache | geometric | {v} | {v} | {v} | {v} |" for p, v in rows.items()]
    return "\n".join(lines) + "\n"


def test_update_keeps_the_rows_of_presets_not_run_and_says_where_they_come_from():
    previous = _results("old box", {"default": "1.0", "GPT-B": "9.0"})
    now = _results("new box", {"default": "2.0"})
    merged = bench.merge_previous(now, previous, ["default"])
    assert "Machine: new box." in merged and "Rows of GPT-B: carried over" in merged and "(Machine: old box)" in merged
    main, targets_and_spec = merged.split("Targets:")
    targets, spec = targets_and_spec.split("## Speculative")
    assert [l for l in main.splitlines() if l.startswith("| d") or l.startswith("| G")] == [
        "| default (T=64) | torch eager + KV cache | 2.0 | 2.0 |", "| GPT-B (T=64) | torch eager + KV cache | 9.0 | 9.0 |"]
    assert [l[-5:] for l in targets.splitlines() if l.startswith("- ")] == ["(2.0)", "(9.0)"]
    assert [l.split(" | ")[3] for l in spec.splitlines() if l.startswith("| d") or l.startswith("| G")] == ["2.0", "9.0"]
    assert bench.merge_previous(now, _results("old box", {"default": "1.0"}), ["default"]) == now  # nothing to carry
    # a run of GPT-B alone keeps the shipped model's rows, including its speculative ones
    merged = bench.merge_previous(_results("new box", {"GPT-B": "8.0"}), previous, ["GPT-B"])
    assert [l.split(" | ")[3] for l in merged.split("## Speculative")[1].splitlines() if l.startswith("| d")] == ["1.0"]
