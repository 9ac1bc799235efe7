"""Check this implementation against the official GST golden vectors.

    python -m gst_model.conformance ../shared/reference/official_golden.npz [--xxl] [--report FILE.md]

Rebuilds every golden model (stored weights or the deterministic recipe in official_golden.md),
runs it, and prints one line per check with its max error and tolerance. Exits 1 on any failure.
`--xxl` adds the real 1.4B GPT-XXL (about 6 GB of memory and a few minutes on CPU). `--report` also
writes the results as a markdown table (`make conformance`: bench/conformance.md, which README cites).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from gst_model import geometry
from gst_model.generate import SamplingParams, generate
from gst_model.recipe import recipe_state_dict
from gst_model.tokenizer import VQConfig, VQModel
from gst_model.transformer import GSTConfig, Transformer, build_rope_table

# Tolerances suggested by official_golden.md.
TOL_LOGITS, TOL_ROPE, TOL_RAYS, TOL_DECODED, TOL_XXL = 1e-4, 1e-6, 1e-5, 1e-3, 1e-3
MARGIN = 1e-4  # index positions whose best/second-best gap is below this may legitimately differ


@dataclass
class Check:
    name: str
    error: float
    tolerance: float
    detail: str = ""
    section: str = ""

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.error)) and self.error <= self.tolerance


def _max_abs(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _mismatch(a, b, mask=None) -> float:
    """Number of differing integer entries (restricted to mask)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return float("inf")
    diff = a != b
    return float((diff & mask).sum() if mask is not None else diff.sum())


def _prefixed(golden, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: torch.from_numpy(golden[k]) for k in golden.files if k.startswith(prefix)}


def _recipe_model(module: torch.nn.Module) -> torch.nn.Module:
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    module.load_state_dict(recipe_state_dict(shapes), strict=True, assign=True)
    return module.eval()


def check_rope(golden) -> Iterator[Check]:
    for name, grid, head_dim, special in (("rope_grid4_hd16_sp1", 4, 16, 1), ("rope_grid4_hd16_sp0", 4, 16, 0),
                                          ("rope_grid16_hd64_sp1", 16, 64, 1)):
        yield Check(name, _max_abs(build_rope_table(grid, head_dim, special), golden[name]), TOL_ROPE)


def check_tiny_gpt(golden) -> Iterator[Check]:
    model = Transformer(GSTConfig.from_preset("tiny")).eval()
    model.load_state_dict(_prefixed(golden, "tiny_gpt.sd."), strict=True)
    cond = torch.from_numpy(golden["tiny_gpt.cond_idx"])
    idx = torch.from_numpy(golden["tiny_gpt.idx"])
    full = torch.cat([cond, idx], 1)
    yield Check("tiny_gpt.freqs_cis", _max_abs(model.freqs_cis, golden["tiny_gpt.freqs_cis"]), TOL_ROPE)
    with torch.inference_mode():
        yield Check("tiny_gpt.logits_full_eval", _max_abs(model(full), golden["tiny_gpt.logits_full_eval"]), TOL_LOGITS)
        model.setup_caches(max_batch_size=2, max_seq_length=full.shape[1])
        prefill = model(cond, torch.arange(cond.shape[1]), use_cache=True)
        steps = [model(full[:, p:p + 1], torch.tensor([p]), use_cache=True) for p in range(cond.shape[1], full.shape[1])]
        model.clear_caches()
    yield Check("tiny_gpt.logits_kv_prefill", _max_abs(prefill, golden["tiny_gpt.logits_kv_prefill"]), TOL_LOGITS)
    yield Check("tiny_gpt.logits_kv_steps", _max_abs(torch.cat(steps, 1), golden["tiny_gpt.logits_kv_steps"]), TOL_LOGITS)
    for scale, key in ((1.0, "tiny_gpt.greedy_gen_cfg1"), (3.0, "tiny_gpt.greedy_gen_cfg3")):
        out = generate(model, cond, idx.shape[1], SamplingParams(cfg_scale=scale, greedy=True))
        yield Check(key, _mismatch(out.numpy(), golden[key]), 0, "differing tokens")


def _check_tokenizer(golden, prefix: str, model: VQModel, x: torch.Tensor) -> Iterator[Check]:
    with torch.inference_mode():
        enc = model.encode(x)
        decoded = model.decode_indices(torch.from_numpy(golden[f"{prefix}.indices"]))
    confident = golden[f"{prefix}.index_margin"] > MARGIN
    yield Check(f"{prefix}.prequant", _max_abs(enc.prequant, golden[f"{prefix}.prequant"]), TOL_LOGITS)
    yield Check(f"{prefix}.indices", _mismatch(enc.indices.numpy(), golden[f"{prefix}.indices"], confident), 0,
                f"differing codes where margin > {MARGIN}")
    yield Check(f"{prefix}.decoded", _max_abs(decoded, golden[f"{prefix}.decoded"]), TOL_DECODED)


def check_camera_tokenizers(golden) -> Iterator[Check]:
    x = torch.from_numpy(golden["cam.input"])
    tiny = VQModel(VQConfig.from_preset("camera-golden-tiny")).eval()
    tiny.load_state_dict(_prefixed(golden, "tiny_cam.sd."), strict=False)  # usage buffer is not stored
    yield from _check_tokenizer(golden, "tiny_cam", tiny, x)
    with torch.device("meta"):
        real = VQModel(VQConfig.from_preset("VQ-4"))
    yield from _check_tokenizer(golden, "cam_real", _recipe_model(real), x)


def check_image_tokenizer(golden) -> Iterator[Check]:
    with torch.device("meta"):
        model = VQModel(VQConfig.from_preset("VQ-16"))
    yield from _check_tokenizer(golden, "img_real", _recipe_model(model), torch.from_numpy(golden["img_real.input"]))


def check_rays(golden) -> Iterator[Check]:
    c2w = torch.from_numpy(golden["rays.c2w"]).double()
    rays = geometry.plucker_rays(c2w, size=64)
    hwc = rays.permute(0, 2, 3, 1).numpy()
    yield Check("rays.plucker_hwc", _max_abs(hwc, golden["rays.plucker_hwc"]), TOL_RAYS)
    yield Check("rays.rays_d", _max_abs(hwc[..., 3:], golden["rays.rays_d"]), TOL_RAYS)
    yield Check("rays.ref_dirs", _max_abs(geometry.reference_directions(64)[None], golden["rays.ref_dirs"]), TOL_RAYS)
    official_maps = torch.from_numpy(golden["rays.plucker_hwc"]).double().permute(0, 3, 1, 2)
    fit = geometry.cameras_from_plucker(official_maps)
    yield Check("rays.plucker_to_camera", _max_abs(fit.c2w, golden["rays.plucker_to_camera"]), TOL_RAYS)
    yield Check("rays.c2w_roundtrip", _max_abs(geometry.cameras_from_plucker(rays).c2w, c2w), TOL_RAYS)


def check_xxl(golden) -> Iterator[Check]:
    with torch.device("meta"):
        model = Transformer(GSTConfig.from_preset("GPT-XXL"))
    _recipe_model(model)
    seq = torch.cat([torch.from_numpy(golden["xxl.cond_idx"]), torch.from_numpy(golden["xxl.idx"])], 1)
    with torch.inference_mode():
        logits = model(seq)[0]
    positions = torch.from_numpy(golden["xxl.logit_positions"])
    subset = torch.from_numpy(golden["xxl.vocab_subset_ids"])
    yield Check("xxl.logits_at_positions", _max_abs(logits[positions], golden["xxl.logits_at_positions"]), TOL_XXL)
    yield Check("xxl.logits_vocab_subset", _max_abs(logits[:, subset], golden["xxl.logits_vocab_subset"]), TOL_XXL)
    yield Check("xxl.logsumexp", _max_abs(logits.logsumexp(-1), golden["xxl.logsumexp"]), TOL_XXL)
    yield Check("xxl.argmax", _mismatch(logits.argmax(-1).numpy(), golden["xxl.argmax"]), 0, "differing positions")


SECTIONS: dict[str, Callable] = {
    "rope": check_rope,
    "tiny_gpt": check_tiny_gpt,
    "camera_tokenizers": check_camera_tokenizers,
    "image_tokenizer": check_image_tokenizer,
    "rays": check_rays,
}


def run(golden_path: str, xxl: bool = False, out=sys.stdout) -> list[Check]:
    golden = np.load(golden_path)
    sections = dict(SECTIONS, **({"xxl": check_xxl} if xxl else {}))
    results = []
    for section, fn in sections.items():
        t0 = time.perf_counter()
        try:
            checks = list(fn(golden))
        except Exception as exc:  # a crash in one section is a failed check, not a lost report
            checks = [Check(f"{section}: {type(exc).__name__}: {exc}", float("inf"), 0.0)]
        for c in checks:
            c.section = section
            status = "PASS" if c.passed else "FAIL"
            print(f"{status}  {c.name:<32} max error {c.error:.3g} (tolerance {c.tolerance:g})"
                  f"{'  ' + c.detail if c.detail else ''}", file=out)
        print(f"      [{section}: {time.perf_counter() - t0:.1f} s]", file=out)
        results += checks
    failed = [c for c in results if not c.passed]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed", file=out)
    return results


def write_report(results: list[Check], command: str, path: str | Path) -> None:
    """The checks as a markdown table: the figures README quotes, written by the run that measured them."""
    failed = sum(not c.passed for c in results)
    lines = ["# Conformance with the official GST golden vectors", "",
             f"`{command}` (torch {torch.__version__}, {torch.get_num_threads()} threads): "
             f"{len(results) - failed} passed, {failed} failed.", "",
             "| section | check | max error | tolerance | result |", "|---|---|---|---|---|"]
    for c in results:
        detail = f" ({c.detail})" if c.detail else ""
        lines.append(f"| {c.section} | `{c.name}`{detail} | {c.error:.3g} | {c.tolerance:g} | "
                     f"{'pass' if c.passed else '**FAIL**'} |")
    Path(path).write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("golden", help="path to official_golden.npz")
    parser.add_argument("--xxl", action="store_true", help="also check the 1.4B GPT-XXL (~6 GB RAM, minutes)")
    parser.add_argument("--report", help="also write the results to this markdown file")
    args = parser.parse_args(argv)
    results = run(args.golden, xxl=args.xxl)
    if args.report:
        command = f"python -m gst_model.conformance {args.golden}" + (" --xxl" if args.xxl else "")
        write_report(results, command, args.report)
    return 0 if all(c.passed for c in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
