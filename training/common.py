"""Shared training plumbing: typed YAML configs, LR schedule, distributed set-up, resumable checkpoints,
CSV logs and loss plots. Scripts keep only their own model-specific loop."""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file, save_file

log = logging.getLogger("gst.train")
C = TypeVar("C")


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decay floor, as a fraction of lr
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    max_steps: int = 1000
    grad_clip: float = 1.0
    grad_accum: int = 1  # micro-batches per optimizer step (per process)


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Linear warm-up then cosine decay to min_lr_ratio * lr; pure function of the step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


def _build(cls, data: dict[str, Any]):
    """Build a (nested) dataclass from a dict, rejecting unknown keys so typos fail loudly."""
    if not dataclasses.is_dataclass(cls):
        return data
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    kwargs = {}
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    for name, value in data.items():
        sub = known[name].default_factory if known[name].default_factory is not dataclasses.MISSING else None
        if isinstance(value, dict) and sub is not None and dataclasses.is_dataclass(sub()):
            kwargs[name] = _build(type(sub()), value)
        elif isinstance(value, list) and "tuple" in str(hints[name]):
            kwargs[name] = tuple(value)
        elif str(hints[name]) in ("float", "int") and isinstance(value, (str, int)) and not isinstance(value, bool):
            kwargs[name] = _number(cls.__name__, name, value, float if str(hints[name]) == "float" else int)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _number(owner: str, name: str, value: str | int, kind: type) -> float | int:
    """YAML 1.1 reads `1e-3` (no dot) as a string; accept it where the field is a number."""
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{owner}.{name} must be {kind.__name__}, got {value!r}") from None


def load_config(cls: type[C], path: str | Path | None, overrides: list[str] | None = None) -> C:
    """YAML file + `key.sub=value` overrides -> dataclass instance."""
    data: dict[str, Any] = {}
    if path is not None:
        data = yaml.safe_load(Path(path).read_text()) or {}
    for item in overrides or []:
        key, _, raw = item.partition("=")
        if not _:
            raise ValueError(f"override {item!r} must look like key=value")
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw)
    return _build(cls, data)


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


# ------------------------------------------------------------------------------------ distributed
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to n (> 0; 0 keeps them) inside the block and restored after, so callers in
    the same process (tests) keep their setting."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def setup_distributed() -> DistInfo:
    """Initialise DDP when launched by torchrun (RANK set); gloo on CPU, nccl on GPUs."""
    if "RANK" not in os.environ:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available() and local_rank >= torch.cuda.device_count():
        raise RuntimeError(f"process with LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) "
                           "visible: nccl needs one GPU per process (torchrun --nproc_per_node <= GPUs), or hide "
                           "the GPUs (CUDA_VISIBLE_DEVICES=) to train on CPU processes with gloo")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
    return info


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        # Tear down together: a rank that destroys its gloo group while its peer still sends (the last
        # checkpoint's collectives) aborted with "terminate called without an active exception" now and then.
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def autocast_context(device: torch.device):
    """bf16 autocast where the hardware has bf16 units (CUDA); plain fp32 on CPU, where bf16 is slower."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


# ------------------------------------------------------------------------------------ checkpoints
def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP / torch.compile wrappers, so saved keys never carry wrapper prefixes."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def is_sharded(model: torch.nn.Module) -> bool:
    """True for a model whose parameters FSDP has sharded (DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The whole (unsharded, CPU) model and optimizer state. Under FSDP this is a collective: every rank
    must call it, then one rank writes."""
    if not is_sharded(model):
        return unwrap(model).state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (get_model_state_dict(model, options=options),
            get_optimizer_state_dict(model, optimizer, options=options))


def save_training_state(directory: str | Path, models: dict[str, torch.nn.Module | dict],
                        optimizer: torch.optim.Optimizer | dict, step: int, config: dict,
                        ema: dict[str, torch.nn.Module] | None = None) -> Path:
    """Weights as safetensors; optimizer, step, RNG and config in a tensors-and-primitives file.

    `models` maps names to modules or to state dicts already gathered (see `full_state`); `optimizer`
    likewise may be its state dict."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        weights = model if isinstance(model, dict) else unwrap(model).state_dict()
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(out / f"{name}.safetensors"))
    for name, model in (ema or {}).items():
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
                  str(out / f"{name}.ema.safetensors"))
    state = {
        "step": step,
        "optimizer": optimizer if isinstance(optimizer, dict) else optimizer.state_dict(),
        "config": config,
        "rng": {"python": random.getstate()[1], "numpy": np.random.get_state()[1].tolist(),
                "numpy_pos": int(np.random.get_state()[2]), "torch": torch.get_rng_state()},
    }
    tmp = out / "trainer_state.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(out / "trainer_state.pt")  # atomic: a crash mid-save never leaves a broken resume point
    return out


def load_training_state(directory: str | Path, models: dict[str, torch.nn.Module],
                        optimizer: torch.optim.Optimizer | None,
                        ema: dict[str, torch.nn.Module] | None = None) -> tuple[int, dict]:
    """Restore weights, optimizer and RNG exactly; returns (step, saved config). An FSDP-sharded model
    (one per checkpoint) takes its shards of the whole saved state."""
    directory = Path(directory)
    state = torch.load(directory / "trainer_state.pt", map_location="cpu", weights_only=True)
    for name, model in models.items():
        weights = load_file(str(directory / f"{name}.safetensors"))
        if is_sharded(model):
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                                 set_optimizer_state_dict)

            options = StateDictOptions(full_state_dict=True)
            set_model_state_dict(model, weights, options=options)
            if optimizer is not None:
                set_optimizer_state_dict(model, optimizer, state["optimizer"], options=options)
                optimizer = None  # restored with the model's shards
        else:
            unwrap(model).load_state_dict(weights, strict=True)
    for name, model in (ema or {}).items():
        model.load_state_dict(load_file(str(directory / f"{name}.ema.safetensors")), strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    rng = state["rng"]
    random.setstate((3, tuple(rng["python"]), None))
    np.random.set_state(("MT19937", np.array(rng["numpy"], dtype=np.uint32), rng["numpy_pos"], 0, 0.0))
    torch.set_rng_state(rng["torch"])
    return int(state["step"]), state["config"]


class EMA:
    """Exponential moving average of a module's floating-point state (kept in fp32)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in unwrap(model).state_dict().items()
                       if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in unwrap(model).state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.float(), 1.0 - self.decay)

    def copy_to(self, model: torch.nn.Module) -> None:
        state = unwrap(model).state_dict()
        state.update({k: v.to(state[k].dtype) for k, v in self.shadow.items()})
        unwrap(model).load_state_dict(state)


# ------------------------------------------------------------------------------------ logging
class CsvLog:
    """Append-only CSV of scalar metrics per step; survives resume (appends to the same file)."""

    def __init__(self, path: str | Path, fields: list[str]):
        self.path = Path(path)
        self.fields = ["step", *fields]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.fields)

    def write(self, step: int, **values: float) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([step, *(f"{values.get(k, float('nan')):.6g}" for k in self.fields[1:])])

    def read(self) -> dict[str, np.ndarray]:
        with self.path.open() as f:
            rows = list(csv.DictReader(f))
        return {k: np.array([float(r[k]) for r in rows]) for k in self.fields}


def plot_curves(log_file: CsvLog, out_png: str | Path, title: str) -> Path:
    """One panel per logged metric against step, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = log_file.read()
    metrics = [k for k in log_file.fields[1:] if np.isfinite(data[k]).any()]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3), squeeze=False)
    for ax, name in zip(axes[0], metrics):
        ok = np.isfinite(data[name])
        ax.plot(data["step"][ok], data[name][ok])
        ax.set_title(name)
        ax.set_xlabel("step")
        if name.startswith("loss") and (data[name][ok] > 0).all():
            ax.set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)


def setup_logging(is_main: bool) -> None:
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def config_cli(config_cls: type[C], description: str, argv: list[str] | None = None,
               extra_flags: dict[str, dict] | None = None) -> C:
    """The scripts' shared command line: --config YAML, optional extra flags, then key=value overrides.

    An extra flag `--name` given on the command line becomes the override `name=value` (`key=value` when its
    argparse options give dest="key", e.g. a nested key).
    """
    import argparse

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=f"YAML config (fields of {config_cls.__name__})")
    for flag, kwargs in (extra_flags or {}).items():
        parser.add_argument(f"--{flag}", **kwargs)
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.max_steps=100")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    keys = [kwargs.get("dest", flag) for flag, kwargs in (extra_flags or {}).items()]
    overrides += [f"{key}={getattr(args, key)}" for key in keys if getattr(args, key) is not None]
    return load_config(config_cls, args.config, overrides)
