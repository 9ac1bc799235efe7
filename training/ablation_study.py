"""Training ablations: one setting of the current fine-tuning recipe changed at a time, same data, budget and
schedule, measured by the validation camera-loss gap and by pose accuracy on the generalization study's
evaluation sets (in domain, a renderer no training data comes from, real pairs).

    python -m training.ablation_study --config training/configs/ablation.yaml --out docs/ablation
    python -m training.ablation_study --only curriculum --threads 1   # one variant (e.g. two at once), no report

Every variant starts from the shipped transformer; outputs are cached under the config's `runs`, so a rerun
only trains and evaluates what is missing, then writes report.md and metrics.json.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import time
from pathlib import Path

import yaml

from training import generalization_study as study
from training import train_gst
from training.common import _build, setup_logging, torch_threads

log = logging.getLogger("gst.ablation")


def variant_config(study_cfg: dict, ablation: dict, overrides: dict) -> dict:
    """The study's config with the ablation's budget and one variant's training settings."""
    cfg = copy.deepcopy(study_cfg)
    ft = cfg["finetune"]
    ft["train"] = {**ft["train"], **overrides}
    ft.update(steps=ablation["steps"], keep_every=ablation["steps"], evaluate_steps=[ablation["steps"]])
    return cfg


def validate(study_cfg: dict, ablation: dict) -> None:
    study.validate_config(study_cfg)
    unknown = set(ablation["data"]) - set(study_cfg["data"])
    if unknown:
        raise ValueError(f"data {sorted(unknown)} not in the study's `data`")
    if "baseline" not in ablation["variants"] or ablation["variants"]["baseline"]:
        raise ValueError("variants must include `baseline: {}` (the current recipe, unchanged)")
    for name, overrides in ablation["variants"].items():
        ft = variant_config(study_cfg, ablation, overrides)["finetune"]
        try:
            _build(train_gst.GSTTrainConfig, {**ft["train"], "optim": {**ft["train"]["optim"], "max_steps": ft["steps"]}})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"variant {name!r}: {exc}") from exc


def final_validation(run: Path) -> dict:
    """val_camera and the camera-loss gap (mismatched - matched target image) at the last evaluated step."""
    with open(run / "train_log.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["val_camera"] not in ("", "nan")]
    last = rows[-1]
    camera, mismatched = float(last["val_camera"]), float(last["val_camera_mismatched"])
    return {"step": int(last["step"]), "val_camera": camera, "camera_gap": mismatched - camera}


def run_variant(cfg: dict, ablation: dict, name: str, tokens: dict, runs: Path) -> dict:
    run_dir = study.finetune(cfg, name, ablation["data"], tokens, runs)
    ema = cfg["finetune"]["train"].get("ema_decay", 0) > 0
    model = study.model_at(cfg, run_dir, ablation["steps"], ema=ema)
    return {"variant": name, "settings": ablation["variants"][name], "weights": "EMA" if ema else "last",
            "timing": study.train_timing(run_dir), **final_validation(run_dir),
            **study.evaluate_model(cfg, str(model), runs / "eval" / name)}


def run(config_path: str, out: Path | None, only: list[str] | None, threads: int | None) -> dict | None:
    ablation = yaml.safe_load(Path(config_path).read_text())
    study_cfg = yaml.safe_load(Path(ablation["study"]).read_text())
    if threads:
        study_cfg["threads"] = threads
    validate(study_cfg, ablation)
    names = only or list(ablation["variants"])
    missing = set(names) - set(ablation["variants"])
    if missing:
        raise ValueError(f"no variants {sorted(missing)} in {config_path}")
    runs, start = Path(ablation["runs"]), time.time()
    with torch_threads(study_cfg["threads"]):
        data_cfg = {**study_cfg, "data": {d: study_cfg["data"][d] for d in ablation["data"]}}
        tokens = study.prepare_data(data_cfg, Path(study_cfg["runs"]))  # shared with the generalization study
        study.ensure_other_renderer(study_cfg)
        rows = [run_variant(variant_config(study_cfg, ablation, ablation["variants"][n]), ablation, n, tokens, runs)
                for n in names]
        if only:
            return None
        base = study.evaluate_model(study_cfg, study_cfg["base_model"], Path(study_cfg["runs"]) / "eval" / "base")
    result = {"config": ablation, "study": study_cfg, "hours": (time.time() - start) / 3600,
              "command": f"python -m training.ablation_study --config {config_path} --out {out}",
              "base": base, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    write_report(result, out / "report.md")
    return result


def _cell(m: dict) -> str:
    return f"{100 * m['rot_acc_15']:.0f}% / {100 * m['rot_acc_30']:.0f}% / {m['rot_median_deg']:.1f}°"


def write_report(result: dict, path: Path) -> None:
    ablation, study_cfg, rows = result["config"], result["study"], result["rows"]
    train = study_cfg["finetune"]["train"]
    sets = study.SETS
    rule = "view_likelihood"
    n = {s: rows[0][s][rule]["n"] for s in sets}
    lines = ["# Training ablations", "",
             f"Written by `{result['command']}` (this run {result['hours']:.2f} h; cached work skipped). Each "
             f"variant fine-tunes `{study_cfg['base_model']}` for {ablation['steps']} steps of "
             f"{train['batch_size']} sequences on {', '.join(ablation['data'])} "
             f"(lr {train['optim']['lr']:g}, cosine to {train['optim']['min_lr_ratio']:g}x, pose share "
             f"{train['pose_fraction']:g}, camera loss weight {train['camera_loss_weight']:g}) with one setting "
             "changed; the evaluation sets and settings are the generalization study's "
             f"(`{ablation['study']}`).", "",
             "Validation: the camera-token loss of pose sequences on the in-domain validation split, and its gap "
             "to the same loss with another pair's target image (what the model reads from the image pair; "
             "larger is better). Pose: Rot@15 / Rot@30 / median rotation error with the pipeline's defaults "
             "(16 samples, likelihood selection). Two standard errors of a Rot@15 near 50%: " + ", ".join(
                 f"±{200 * (0.25 / n[s]) ** 0.5:.0f} points on {s} ({n[s]} pairs)" for s in sets) + ".", "",
             "| variant | setting | weights | val camera loss | camera gap | " + " | ".join(sets) + " |",
             "|---|---|---|---|---|" + "---|" * len(sets),
             "| shipped model | - | - | - | - | " + " | ".join(_cell(result["base"][s][rule]) for s in sets) + " |"]
    for row in rows:
        setting = ", ".join(f"{k}={v}" for k, v in row["settings"].items()) or "current recipe"
        lines.append(f"| {row['variant']} | {setting} | {row['weights']} | {row['val_camera']:.3f} | "
                     f"{row['camera_gap']:.3f} | " + " | ".join(_cell(row[s][rule]) for s in sets) + " |")
    lines.append("| identity | - | - | - | - | " + " | ".join(_cell(result["base"][s]["identity"]) for s in sets)
                 + " |")
    base_row = next(r for r in rows if r["variant"] == "baseline")
    lines += ["", "Rot@15 change against the baseline variant, in points:", "",
              "| variant | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for row in rows:
        if row is not base_row:
            lines.append(f"| {row['variant']} | " + " | ".join(
                f"{100 * (row[s][rule]['rot_acc_15'] - base_row[s][rule]['rot_acc_15']):+.0f}" for s in sets) + " |")
    times = [f"{r['variant']} {r['timing']['train_seconds'] / 60:.0f} min ({r['timing']['threads']} thread(s))"
             for r in rows if r["timing"]]
    if any(r["weights"] == "EMA" for r in rows):
        lines += ["", "Validation losses are logged during training for the trained weights; for an EMA variant "
                  "they are those of its raw weights, its pose accuracy that of the EMA weights."]
    lines += ["", "Fine-tuning time: " + (", ".join(times) or "not recorded") + ".", ""]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="training/configs/ablation.yaml")
    p.add_argument("--out", default="docs/ablation")
    p.add_argument("--only", nargs="+", help="train and evaluate only these variants; no report")
    p.add_argument("--threads", type=int, help="torch threads (overrides the study's)")
    args = p.parse_args(argv)
    setup_logging(True)
    run(args.config, Path(args.out), args.only, args.threads)
    if not args.only:
        print((Path(args.out) / "report.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
