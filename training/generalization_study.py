"""Does a data recipe make the model generalize? Accuracy against training sequences, per recipe.

    python -m training.generalization_study --config training/configs/generalization.yaml --out docs/generalization

Each recipe fine-tunes the same base model's transformer (tokenizers frozen) on its own mix of rendered
data for the same number of steps and batch size, keeping the weights every `keep_every` steps. Every
kept model (and the base, at 0 sequences) is then evaluated on held-out sets that play different roles:
  in_domain       the training renderer's test split (what must not get worse);
  other_renderer  scenes of gst_model.data.holdout_scenes, a renderer no recipe trains on;
  real            the real posed pairs of training.evaluate_real.
with the pipeline's defaults (16 samples, likelihood selection), next to the identity guess, and with
every selection rule of training.selection_study on the same samples. Nothing is chosen on these sets
here: the recipes and their settings are fixed in the config before the run.

Steps skip finished outputs (data, tokens, training runs, evaluations), so an interrupted run resumes.
Outputs in `--out`: report.md, metrics.json, accuracy.png.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from gst_model.checkpoint import load_bundle, save_bundle  # noqa: E402
from gst_model.data import holdout_scenes  # noqa: E402
from gst_model.data.make_synthetic import SyntheticConfig  # noqa: E402
from gst_model.pipeline import GSTPipeline  # noqa: E402
from training import pair_sets, selection_study, tokenize_dataset, train_gst  # noqa: E402
from training.build_default import render_unless_present, tokens_present  # noqa: E402
from training.common import _build, setup_logging, torch_threads  # noqa: E402
from training.data import PairConfig  # noqa: E402

log = logging.getLogger("gst.generalization")
SETS = ("in_domain", "other_renderer", "real")
TIMING_FILE = "timing.json"


def validate_config(cfg: dict) -> None:
    """Fail before hours of work: every dataset, recipe, training and evaluation setting must be usable."""
    for entry in cfg["data"].values():
        _build(SyntheticConfig, entry["synthetic"])
        _build(PairConfig, {**cfg["pairs"], **entry.get("pairs", {})})
    for recipe, datasets in cfg["recipes"].items():
        unknown = set(datasets) - set(cfg["data"])
        if unknown:
            raise ValueError(f"recipe {recipe!r} names datasets not in `data`: {sorted(unknown)}")
        if "val" not in _splits(cfg["data"][datasets[0]]):
            raise ValueError(f"recipe {recipe!r}: its first dataset validates, so it needs a val split")
    ft = cfg["finetune"]
    _build(train_gst.GSTTrainConfig, {**ft["train"], "optim": {**ft["train"]["optim"], "max_steps": ft["steps"]}})
    bad = [s for s in ft["evaluate_steps"] if s % ft["keep_every"] or not 0 < s <= ft["steps"]]
    if bad:
        raise ValueError(f"evaluate_steps {bad} are not kept: multiples of keep_every up to steps")
    if set(cfg["evaluate"]["sets"]) != set(SETS):
        raise ValueError(f"evaluate.sets must be {SETS}")


def _splits(entry: dict) -> tuple[str, ...]:
    fractions = entry["synthetic"].get("split_fractions", SyntheticConfig.split_fractions)
    return tuple(s for s, f in zip(("train", "val", "test"), fractions) if f > 0)


def prepare_data(cfg: dict, runs: Path) -> dict[str, Path]:
    """Render every dataset of the config and tokenise it with the base model's tokenizers (each dataset's
    `pairs` entries override the shared pair settings, e.g. a camera to resample wide lenses to)."""
    tokens = {}
    for name, entry in cfg["data"].items():
        syn = _build(SyntheticConfig, entry["synthetic"])
        render_unless_present(syn)
        out = runs / "tokens" / name
        splits = _splits(entry)
        if not tokens_present(out, syn.out, splits):
            tokenize_dataset.main(_build(tokenize_dataset.TokenizeConfig, {
                "camera": cfg["base_model"], "image": cfg["base_model"], "out": str(out), "splits": list(splits),
                "ray_size": cfg["ray_size"], "data": {**cfg["pairs"], **entry.get("pairs", {}), "root": syn.out}}))
        tokens[name] = out
    return tokens


def finetune(cfg: dict, recipe: str, datasets: list[str], tokens: dict[str, Path], runs: Path) -> Path:
    """Fine-tune the base transformer on the recipe's datasets (the first one's val split validates)."""
    out = runs / "finetune" / recipe
    ft = cfg["finetune"]
    if (out / f"step_{ft['steps']:06d}" / "transformer.safetensors").is_file():
        log.info("%s: trained, skipped", recipe)
        return out
    start = time.time()
    base = json.loads((Path(cfg["base_model"]) / "config.json").read_text())["transformer"]
    overrides = {k: base[k] for k in ("token_dropout_p", "attn_dropout_p", "resid_dropout_p", "ffn_dropout_p")}
    train_gst.main(_build(train_gst.GSTTrainConfig, {
        **ft["train"], "tokens": str(tokens[datasets[0]]), "extra_train_tokens": [str(tokens[d]) for d in datasets[1:]],
        "out": str(out), "init_from": cfg["base_model"], "model_overrides": overrides, "threads": cfg["threads"],
        "keep_every": ft["keep_every"], "save_every": ft["keep_every"], "eval_every": ft["keep_every"],
        "optim": {**ft["train"]["optim"], "max_steps": ft["steps"]}}))
    # The report states the compute each recipe took, also when it is later rebuilt from the cached runs.
    (out / TIMING_FILE).write_text(json.dumps({"train_seconds": time.time() - start, "threads": cfg["threads"]}) + "\n")
    return out


def train_timing(run: Path) -> dict | None:
    path = run / TIMING_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def model_at(cfg: dict, run: Path, step: int, ema: bool = False) -> Path:
    """A model directory: the base model with the transformer of `run` at `step` (`ema`: the run's final
    exponential moving average of the weights instead; `step` must then be the last)."""
    out = run / f"model_{'ema_' if ema else ''}{step:06d}"
    if (out / "config.json").is_file():
        return out
    if ema and step != cfg["finetune"]["steps"]:
        raise ValueError(f"EMA weights exist only for the last step ({cfg['finetune']['steps']}), not {step}")
    weights = run / "last" / "transformer.ema.safetensors" if ema else run / f"step_{step:06d}" / "transformer.safetensors"
    bundle = load_bundle(cfg["base_model"])
    bundle.transformer.load_state_dict(load_file(str(weights)))
    bundle.metadata = {**bundle.metadata, "name": f"{bundle.metadata.get('name', 'base')} + {run.name} "
                       f"fine-tuning step {step}{' (EMA)' if ema else ''}", "finetuned_from": cfg["base_model"],
                       "finetune_step": step}
    save_bundle(bundle, out)
    return out


def eval_pairs(cfg: dict, which: str):
    spec = cfg["evaluate"]["sets"][which]
    return pair_sets.pairs_of(SimpleNamespace(**spec, real=which == "real"))


def evaluate_model(cfg: dict, model_dir: str, cache: Path) -> dict:
    """{set: selection_study scores} of one model on every evaluation set (cached per model)."""
    results = {}
    for which in SETS:
        path = cache / f"{which}.npz"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            pipe = GSTPipeline.from_pretrained(model_dir)
            args = SimpleNamespace(num_samples=cfg["evaluate"]["num_samples"], seed=cfg["evaluate"]["seed"])
            data = selection_study.collect(pipe, eval_pairs(cfg, which), args)
            np.savez_compressed(path, **data)
        with np.load(path) as f:
            results[which] = selection_study.score({k: f[k] for k in selection_study.KEYS})
    return results


def ensure_other_renderer(cfg: dict) -> None:
    spec = cfg["evaluate"]["other_renderer_scenes"]
    if not (Path(spec["out"]) / "manifest.json").is_file():
        holdout_scenes.main(_cli_args(spec))


def _cli_args(spec: dict) -> list[str]:
    return [a for k, v in spec.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def run(config_path: str, out: Path) -> dict:
    cfg = yaml.safe_load(Path(config_path).read_text())
    validate_config(cfg)
    runs = Path(cfg["runs"])
    start = time.time()
    with torch_threads(cfg["threads"]):
        tokens = prepare_data(cfg, runs)
        ensure_other_renderer(cfg)
        rows = [{"recipe": "base", "step": 0, "sequences": 0,
                 **evaluate_model(cfg, cfg["base_model"], runs / "eval" / "base")}]
        ft = cfg["finetune"]
        train_time = {}
        for recipe, datasets in cfg["recipes"].items():
            run_dir = finetune(cfg, recipe, datasets, tokens, runs)
            train_time[recipe] = train_timing(run_dir)
            for step in ft["evaluate_steps"]:
                model = model_at(cfg, run_dir, step)
                rows.append({"recipe": recipe, "step": step, "sequences": step * ft["train"]["batch_size"],
                             **evaluate_model(cfg, str(model), runs / "eval" / recipe / f"step_{step:06d}")})
    result = {"config": cfg, "command": f"python -m training.generalization_study --config {config_path} --out {out}",
              "hours": (time.time() - start) / 3600, "train_timing": train_time, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    write_report(result, out / "report.md")
    plot_accuracy(rows, out / "accuracy.png")
    return result


def _train_times(result: dict) -> str:
    def one(recipe: str, t: dict | None) -> str:
        if t is None:
            return f"{recipe} not recorded"
        note = f"; {t['note']}" if t.get("note") else ""
        return f"{recipe} {t['train_seconds'] / 3600:.2f} h ({t['threads']} torch thread(s){note})"
    return ", ".join(one(r, t) for r, t in result.get("train_timing", {}).items())


def _pct(m: dict, key: str) -> str:
    return f"{100 * m[key]:.0f}%"


def write_report(result: dict, path: Path) -> None:
    cfg, rows = result["config"], result["rows"]
    lines = ["# Generalization: accuracy against training sequences, per data recipe", "",
             f"Written by `{result['command']}` (this run {result['hours']:.2f} h; work whose outputs existed is "
             f"skipped). Fine-tuning time per recipe: {_train_times(result)}. Base model `{cfg['base_model']}`; every recipe fine-tunes its transformer "
             f"(tokenizers frozen) for {cfg['finetune']['steps']} steps of {cfg['finetune']['train']['batch_size']} "
             "sequences with the same optimiser settings.", "",
             "Recipes (datasets in the mix; the first one's validation split validates):", ""]
    for recipe, datasets in cfg["recipes"].items():
        lines.append(f"- `{recipe}`: " + ", ".join(f"`{d}` ({_describe(cfg['data'][d])})" for d in datasets))
    lines += ["", "Pose with the pipeline's defaults (16 samples, likelihood selection): Rot@15 / Rot@30 / median "
              "rotation error. The identity guess is the same for every model. Sampling noise: two standard errors "
              "of a Rot@15 near 50% are " + ", ".join(
                  f"±{200 * (0.25 / rows[0][s]['view_likelihood']['n']) ** 0.5:.0f} points on {s} "
                  f"({rows[0][s]['view_likelihood']['n']} pairs)" for s in SETS) + ".", "",
              "| recipe | step | sequences | " + " | ".join(SETS) + " |", "|---|---|---|" + "---|" * len(SETS)]
    for row in rows:
        cells = [f"{_pct(row[s]['view_likelihood'], 'rot_acc_15')} / {_pct(row[s]['view_likelihood'], 'rot_acc_30')}"
                 f" / {row[s]['view_likelihood']['rot_median_deg']:.1f}°" for s in SETS]
        lines.append(f"| {row['recipe']} | {row['step']} | {row['sequences']} | " + " | ".join(cells) + " |")
    ident = rows[0]
    lines.append("| identity | - | - | " + " | ".join(
        f"{_pct(ident[s]['identity'], 'rot_acc_15')} / {_pct(ident[s]['identity'], 'rot_acc_30')} / "
        f"{ident[s]['identity']['rot_median_deg']:.1f}°" for s in SETS) + " |")
    bins = list(rows[0][SETS[0]]["identity"]["by_rotation"])
    lines += ["", "Rot@15 of the pipeline's estimate by true rotation (on small turns the identity is right by "
              "construction; pairs per bin in brackets):", "",
              "| recipe | step | " + " | ".join(f"{s} {b}°" for s in SETS for b in bins) + " |",
              "|---|---|" + "---|" * (len(SETS) * len(bins))]
    for row in rows + [{**rows[0], "recipe": "identity", "step": "-"}]:
        rule = "identity" if row["recipe"] == "identity" else "view_likelihood"
        lines.append(f"| {row['recipe']} | {row['step']} | " + " | ".join(
            _binned(row[s][rule]["by_rotation"], b) for s in SETS for b in bins) + " |")
    lines += ["", "Rot@15 of every selection rule (training.selection_study) on the same samples:", "",
              "| recipe | step | set | " + " | ".join(selection_study.RULES + selection_study.REFERENCES) + " |",
              "|---|---|---|" + "---|" * (len(selection_study.RULES) + len(selection_study.REFERENCES))]
    for row in rows:
        for s in SETS:
            lines.append(f"| {row['recipe']} | {row['step']} | {s} | " + " | ".join(
                _pct(row[s][r], "rot_acc_15") for r in selection_study.RULES + selection_study.REFERENCES) + " |")
    lines += ["", "![accuracy](accuracy.png)", ""]
    path.write_text("\n".join(lines) + "\n")


def _binned(by_rotation: dict, label: str) -> str:
    m = by_rotation[label]
    return "-" if m is None else f"{100 * m['rot_acc_15']:.0f}% ({m['n']})"


def _describe(entry: dict) -> str:
    syn = entry["synthetic"]
    look = "domain-randomised" if syn.get("randomize") else "plain"
    text = f"{look}, {syn['scenes']} scenes of {syn['views_per_scene']} views at {syn['size']} px, seed {syn['seed']}"
    fovy = entry.get("pairs", {}).get("camera_fovy_deg")
    return text + (f", resampled to the model's {fovy:g}° camera" if fovy else ", centre crops")


def plot_accuracy(rows: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, len(SETS), figsize=(4.5 * len(SETS), 3.6), sharey=True)
    base = rows[0]
    for ax, s in zip(axes, SETS):
        for recipe in dict.fromkeys(r["recipe"] for r in rows[1:]):
            pts = [base] + [r for r in rows if r["recipe"] == recipe]
            ax.plot([r["sequences"] for r in pts], [100 * r[s]["view_likelihood"]["rot_acc_15"] for r in pts],
                    marker="o", label=recipe)
        ax.axhline(100 * base[s]["identity"]["rot_acc_15"], color="gray", ls="--", label="identity")
        ax.set_title(s)
        ax.set_xlabel("fine-tuning sequences")
    axes[0].set_ylabel("Rot@15 (%)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="training/configs/generalization.yaml")
    p.add_argument("--out", default="docs/generalization")
    args = p.parse_args(argv)
    setup_logging(True)
    run(args.config, Path(args.out))
    print((Path(args.out) / "report.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
