"""Build the default model end to end from one config:

    python -m training.build_default --config training/configs/default_gpu.yaml  # the shipped weights (GPU)
    python -m training.build_default --config training/configs/default.yaml      # 2-core CPU alone, ~80 min

Steps (each skipped when its output exists, so an interrupted build resumes; an output made with other
settings is an error naming what to delete, never silently reused):
  synthetic        render the synthetic dataset (gst_model.data.make_synthetic)
  camera_tokenizer train the camera VQ-VAE on the pairs' relative ray maps
  image_tokenizer  train the small image VQGAN
  tokenize         pre-tokenise every pair (train / val / test)
  extra_data       (only with an `extra_train_data` section) render more training-only scenes and
                   tokenise them with the same tokenizers: the transformer trains on both caches, the
                   tokenizers, validation and test stay those of the main dataset
  gst              train the transformer on both layouts
  bundle           assemble the checkpoint directory (safetensors + config.json) at `out`
  evaluate         evaluate on the held-out test split; report next to the weights
`--steps a,b` runs only the named steps (e.g. to train both tokenizers in parallel processes).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from gst_model.checkpoint import ModelBundle, ViewSpec, save_bundle
from gst_model.data.make_synthetic import SyntheticConfig, make_dataset
from gst_model.transformer import GSTConfig, Transformer
from training import evaluate, tokenize_dataset, train_gst, train_tokenizer
from training.common import _build, config_to_dict, setup_logging

log = logging.getLogger("gst.build_default")
STEPS = ("synthetic", "camera_tokenizer", "image_tokenizer", "tokenize", "extra_data", "gst", "bundle", "evaluate")


def run(config_path: str, steps: list[str]) -> None:
    setup_logging(True)
    cfg = yaml.safe_load(Path(config_path).read_text())
    runs, out = Path(cfg["runs"]), Path(cfg["out"])
    torch.set_num_threads(int(cfg.get("threads", 0)) or torch.get_num_threads())
    paths = {"camera_tokenizer": runs / "camera_tokenizer", "image_tokenizer": runs / "image_tokenizer",
             "tokens": runs / "tokens", "extra_tokens": runs / "extra_tokens", "gst": runs / "gst"}
    extra = cfg.get("extra_train_data")

    if "synthetic" in steps:
        render_unless_present(_build(SyntheticConfig, {**cfg["synthetic"]}))
    for kind in ("camera_tokenizer", "image_tokenizer"):
        if kind in steps:
            wanted = _build(train_tokenizer.TokenizerTrainConfig,
                            {**cfg[kind], "out": str(paths[kind]), "threads": cfg.get("threads", 0)})
            if tokenizer_present(paths[kind], wanted):
                log.info("%s exists: skipped", paths[kind])
                continue
            train_tokenizer.main(wanted)
    if "tokenize" in steps:
        if tokens_present(paths["tokens"], cfg["tokenize"]["data"]["root"], ("train", "val", "test")):
            log.info("tokens exist: skipped")
        else:
            tokenize_dataset.main(_build(tokenize_dataset.TokenizeConfig, {
                **cfg["tokenize"], "camera": str(paths["camera_tokenizer"]), "image": str(paths["image_tokenizer"]),
                "out": str(paths["tokens"])}))
    if "extra_data" in steps and extra:
        make_extra_tokens(cfg, extra, paths)
    if "gst" in steps:
        train_gst.main(_build(train_gst.GSTTrainConfig, {
            **cfg["gst"], "tokens": str(paths["tokens"]), "out": str(paths["gst"]), "threads": cfg.get("threads", 0),
            "extra_train_tokens": [str(paths["extra_tokens"])] if extra else []}))
    if "bundle" in steps:
        assemble(cfg, paths, out)
    if "evaluate" in steps:
        ev = cfg["evaluate"]
        evaluate.main(["--model", str(out), "--data", cfg["pairs"]["root"], "--split", "test",
                       "--pairs", str(ev["pairs"]), "--num-samples", str(ev["num_samples"]),
                       "--seed", str(ev["seed"]), "--image-size", str(cfg["pairs"]["image_size"]),
                       "--max-rot", str(cfg["pairs"]["max_rot_deg"]), "--threads", str(cfg.get("threads", 0)),
                       "--out", str(out / "evaluation")])


# Settings that do not change what a run learns.
_RUN_ONLY_KEYS = {"out", "threads", "device", "resume", "eval_every", "save_every", "workers"}


def _changed_settings(made: dict, wanted: dict) -> dict:
    """{key: (made, wanted)} for the settings that differ (tuples and lists alike; keys the older output
    did not record, and settings in _RUN_ONLY_KEYS, are not compared)."""
    made, wanted = json.loads(json.dumps(made)), json.loads(json.dumps(wanted))
    return {k: (made[k], v) for k, v in wanted.items() if k in made and k not in _RUN_ONLY_KEYS and made[k] != v}


def render_unless_present(syn: SyntheticConfig) -> None:
    """Render the dataset unless `syn.out` already holds it; data made with other settings is an error
    rather than silently reused (the build resumes by skipping finished steps)."""
    manifest = Path(syn.out) / "manifest.json"
    if not manifest.is_file():
        make_dataset(syn)
        return
    changed = _changed_settings(json.loads(manifest.read_text())["config"], asdict(syn))
    if changed:
        raise ValueError(f"{syn.out} holds synthetic data made with other settings (made, wanted: {changed}): "
                         "delete it or set another `out`")
    log.info("synthetic data exists at %s: skipped", syn.out)


def tokenizer_present(directory: Path, wanted) -> bool:
    """Whether `directory` holds a tokenizer trained with these settings (compared with the config in its
    training state); one trained with other settings is an error rather than silently reused."""
    if not (directory / "tokenizer.safetensors").is_file():
        return False
    state_file = directory / "last" / "trainer_state.pt"
    if not state_file.is_file():
        log.warning("%s has no training state to compare settings with: used as it is", directory)
        return True
    made = torch.load(state_file, map_location="cpu", weights_only=True)["config"]
    changed = _changed_settings(made, config_to_dict(wanted))
    if changed:
        raise ValueError(f"{directory} holds a tokenizer trained with other settings (made, wanted: {changed}): "
                         "delete it to train again")
    return True


def tokens_present(tokens_dir: Path, data_root: str, splits: tuple[str, ...]) -> bool:
    """Whether `tokens_dir` holds these splits of the dataset at `data_root`; tokens of other scenes are an
    error rather than silently reused."""
    if not all((tokens_dir / f"{split}.npz").is_file() for split in splits):
        return False
    rendered = json.loads((Path(data_root) / "manifest.json").read_text())["splits"]
    for split in splits:
        with np.load(tokens_dir / f"{split}.npz") as cache:
            if set(cache["scene_names"].tolist()) != set(rendered[split]):
                raise ValueError(f"{tokens_dir / split}.npz holds tokens of other scenes than {data_root} now "
                                 f"has in {split}: delete {tokens_dir} to tokenize again")
    return True


def make_extra_tokens(cfg: dict, extra: dict, paths: dict[str, Path]) -> None:
    """Render `extra["synthetic"]` (overrides of the main synthetic section: another seed and out, more
    scenes; every scene goes to train) and tokenise it like the main data."""
    syn = _build(SyntheticConfig, {**cfg["synthetic"], **extra["synthetic"], "split_fractions": [1.0, 0.0, 0.0]})
    if syn.seed == cfg["synthetic"]["seed"] or Path(syn.out) == Path(cfg["synthetic"]["out"]):
        raise ValueError("extra_train_data.synthetic needs its own seed and out: the same seed would render "
                         "the main dataset's scenes (its test scenes too) again")
    render_unless_present(syn)
    if tokens_present(paths["extra_tokens"], syn.out, ("train",)):
        log.info("extra tokens exist: skipped")
        return
    tokenize_dataset.main(_build(tokenize_dataset.TokenizeConfig, {
        **cfg["tokenize"], "data": {**cfg["tokenize"]["data"], "root": syn.out}, "splits": ["train"],
        "camera": str(paths["camera_tokenizer"]), "image": str(paths["image_tokenizer"]),
        "out": str(paths["extra_tokens"])}))


def assemble(cfg: dict, paths: dict[str, Path], out: Path) -> Path:
    """Trained parts -> one checkpoint directory, with what a user needs to know in its metadata."""
    image_vq = tokenize_dataset.load_trained_tokenizer(paths["image_tokenizer"], "image")
    camera_vq = tokenize_dataset.load_trained_tokenizer(paths["camera_tokenizer"], "camera")
    state = load_file(str(paths["gst"] / "last" / "transformer.safetensors"))
    saved = torch.load(paths["gst"] / "last" / "trainer_state.pt", map_location="cpu", weights_only=True)
    tokens_meta = json.loads((paths["tokens"] / "meta.json").read_text())
    gst_cfg = cfg["gst"]
    transformer = Transformer(GSTConfig.from_preset(
        gst_cfg["preset"], vocab_size=tokens_meta["image_codes"] + tokens_meta["camera_codes"] + 2,
        grid_size=tokens_meta["grid_size"], **gst_cfg.get("model_overrides", {})))
    transformer.load_state_dict(state, strict=True)
    metadata = {
        "name": cfg.get("name", "gst_ros default (synthetic indoor scenes)"),
        "trained": True,
        "training_steps": int(saved["step"]),
        "scale_mode": cfg["pairs"]["scale_mode"],
        "translation_units": "scene-normalised: the RMS spread of a scene's camera centres is 1",
        "pairs": cfg["pairs"],
        "build_config": cfg,
    }
    bundle = ModelBundle(transformer, image_vq, camera_vq, ViewSpec(**cfg["view"]), metadata)
    save_bundle(bundle, out)
    # The training record ships with the weights: loss curves and logs of every part.
    for part in ("camera_tokenizer", "image_tokenizer", "gst"):
        (out / "training").mkdir(exist_ok=True)
        for name in ("train_curves.png", "train_log.csv"):
            shutil.copyfile(paths[part] / name, out / "training" / f"{part}_{name}")
    log.info("wrote %s", out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="training/configs/default.yaml")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    args = parser.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    unknown = set(steps) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}")
    run(args.config, steps)


if __name__ == "__main__":
    main()
