"""The project's checkpoint format, bundle presets, and the converter from official checkpoints.

A checkpoint is a directory:
    config.json                   format tag, the three model configs, view spec, metadata
    transformer.safetensors       GPT weights (official key names)
    image_tokenizer.safetensors   image VQ weights (official key names)
    camera_tokenizer.safetensors  camera VQ weights (official key names)
    camera_partial_decoder.safetensors  optional: rays of a partial camera grid, for speculative drafts
                                  (gst_model.partial_rays; same architecture as the camera decoder)
Nothing is unpickled when loading; official `.pt` files are read with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gst_model.tokenizer import VQConfig, VQModel
from gst_model.transformer import GSTConfig, Transformer
from gst_model.vocab import Vocabulary

FORMAT = "gst_ros.checkpoint/1"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "weights" / "default"
_PARTS = ("transformer", "image_tokenizer", "camera_tokenizer")


@dataclass(frozen=True)
class ViewSpec:
    """How views and cameras are presented to the model."""

    image_size: int = 256  # square model input/output images
    ray_size: int = 64  # square Plücker map side (official: image_size / 4)
    fovy_deg: float = 49.1  # default intrinsics of target views when none are given


@dataclass
class ModelBundle:
    transformer: Transformer
    image_tokenizer: VQModel
    camera_tokenizer: VQModel
    view: ViewSpec
    metadata: dict = field(default_factory=dict)
    camera_partial_decoder: torch.nn.Module | None = None  # gst_model.partial_rays.PartialRayDecoder

    @property
    def vocab(self) -> Vocabulary:
        return Vocabulary(
            image_codes=self.image_tokenizer.config.codebook_size,
            camera_codes=self.camera_tokenizer.config.codebook_size,
            tokens_per_view=self.transformer.config.grid_size ** 2,
        )

    def config_dict(self) -> dict:
        return {
            "format": FORMAT,
            "transformer": asdict(self.transformer.config),
            "image_tokenizer": asdict(self.image_tokenizer.config),
            "camera_tokenizer": asdict(self.camera_tokenizer.config),
            "view": asdict(self.view),
            "metadata": self.metadata,
        }

    def eval(self) -> "ModelBundle":
        for part in _PARTS:
            getattr(self, part).eval()
        return self


# Named bundles: consistent transformer grid, tokenizer grids and vocabulary.
BUNDLE_PRESETS: dict[str, dict] = {
    "tiny": dict(transformer="tiny", image_tokenizer="image-small", camera_tokenizer="camera-small",
                 view=ViewSpec(image_size=64, ray_size=32)),
    "small": dict(transformer="small", image_tokenizer="image-small", camera_tokenizer="camera-small",
                  view=ViewSpec(image_size=64, ray_size=32)),
    "official": dict(transformer="GPT-XXL", image_tokenizer="VQ-16", camera_tokenizer="VQ-4",
                     view=ViewSpec(image_size=256, ray_size=64)),
}


def check_consistency(transformer_cfg: GSTConfig, image_cfg: VQConfig, camera_cfg: VQConfig,
                      view: ViewSpec) -> None:
    """Raise ValueError when the three configs cannot form one GST model."""
    vocab = Vocabulary(image_cfg.codebook_size, camera_cfg.codebook_size, transformer_cfg.grid_size ** 2)
    problems = []
    if transformer_cfg.vocab_size != vocab.size:
        problems.append(f"transformer vocab {transformer_cfg.vocab_size} != {image_cfg.codebook_size} image"
                        f" + {camera_cfg.codebook_size} camera codes + 2 specials = {vocab.size}")
    image_grid = view.image_size // image_cfg.downsample_factor
    ray_grid = view.ray_size // camera_cfg.downsample_factor
    if not image_grid == ray_grid == transformer_cfg.grid_size:
        problems.append(f"token grids differ: image {image_grid}, camera {ray_grid}, "
                        f"transformer {transformer_cfg.grid_size}")
    if image_cfg.in_channels != 3 or camera_cfg.in_channels != 6:
        problems.append("image tokenizer must take 3 channels and camera tokenizer 6 (Plücker)")
    if problems:
        raise ValueError("inconsistent GST model configuration: " + "; ".join(problems))


def build_bundle(preset: str, seed: int | None = None, **transformer_overrides) -> ModelBundle:
    """A randomly initialised bundle from a named preset (for tests, training from scratch).

    seed: initialise from this seed on a forked CPU generator, so every call gives the same weights and the
    process's global RNG is left as it was; None draws from the global RNG (as any torch module does).
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return build_bundle(preset, **transformer_overrides)
    if preset not in BUNDLE_PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; known: {sorted(BUNDLE_PRESETS)}")
    spec = BUNDLE_PRESETS[preset]
    image_cfg = VQConfig.from_preset(spec["image_tokenizer"])
    camera_cfg = VQConfig.from_preset(spec["camera_tokenizer"])
    vocab_size = Vocabulary(image_cfg.codebook_size, camera_cfg.codebook_size).size
    view = spec["view"]
    grid = view.image_size // image_cfg.downsample_factor
    transformer_cfg = GSTConfig.from_preset(spec["transformer"], vocab_size=vocab_size, grid_size=grid,
                                            **transformer_overrides)
    check_consistency(transformer_cfg, image_cfg, camera_cfg, view)
    return ModelBundle(Transformer(transformer_cfg), VQModel(image_cfg), VQModel(camera_cfg), view,
                       metadata={"preset": preset, "trained": False})


def save_bundle(bundle: ModelBundle, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {f"{part}.safetensors": getattr(bundle, part) for part in _PARTS}
    if bundle.camera_partial_decoder is not None:
        from gst_model import partial_rays

        files[partial_rays.WEIGHTS_FILE] = bundle.camera_partial_decoder
    for name, module in files.items():
        state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()
                 if not k.endswith("codebook_used")}  # usage statistics, not weights
        save_file(state, str(out / name))
    (out / "config.json").write_text(json.dumps(bundle.config_dict(), indent=2) + "\n")
    return out


def read_config(path: str | Path) -> dict:
    path = Path(path)
    cfg_file = path / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"model checkpoint directory not found: {path}")
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path} is not a gst_ros checkpoint: missing config.json")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"corrupt checkpoint config {cfg_file}: {exc}") from exc
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ValueError(f"{cfg_file}: unsupported checkpoint format {cfg.get('format') if isinstance(cfg, dict) else cfg!r}"
                         f" (expected {FORMAT})")
    return cfg


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Load a checkpoint directory strictly; every failure names the file and the problem."""
    path = Path(path)
    cfg = read_config(path)
    try:
        transformer_cfg = GSTConfig(**cfg["transformer"])
        image_cfg = VQConfig(**cfg["image_tokenizer"])
        camera_cfg = VQConfig(**cfg["camera_tokenizer"])
        view = ViewSpec(**cfg["view"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path / 'config.json'}: invalid model configuration: {exc}") from exc
    check_consistency(transformer_cfg, image_cfg, camera_cfg, view)
    with torch.device("meta"):
        modules = {"transformer": Transformer(transformer_cfg), "image_tokenizer": VQModel(image_cfg),
                   "camera_tokenizer": VQModel(camera_cfg)}
    for part, module in modules.items():
        modules[part] = load_weights(module, path / f"{part}.safetensors", device)
    from gst_model import partial_rays

    partial = partial_rays.load(path, modules["camera_tokenizer"])
    return ModelBundle(**modules, view=view, metadata=cfg.get("metadata", {}), camera_partial_decoder=partial).eval()


def load_part(path: str | Path, part: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """One part ("transformer", "image_tokenizer" or "camera_tokenizer") of a checkpoint directory."""
    path = Path(path)
    cfg = read_config(path)
    if part not in _PARTS:
        raise ValueError(f"unknown checkpoint part {part!r}; choose from {_PARTS}")
    try:
        config = (GSTConfig if part == "transformer" else VQConfig)(**cfg[part])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path / 'config.json'}: invalid {part} configuration: {exc}") from exc
    with torch.device("meta"):
        module = Transformer(config) if part == "transformer" else VQModel(config)
    return load_weights(module, path / f"{part}.safetensors", device).eval()


def load_weights(module: torch.nn.Module, file: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Strictly load a safetensors file into `module` (meta or real); returns the module on `device`."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint {file.parent} is missing {file.name}")
    try:
        state = load_file(str(file), device=str(device))
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
        raise ValueError(f"corrupt weights file {file}: {exc}") from exc
    _load_strict(module, state, file)
    return module.to(device)


def hash_weights(h, module: torch.nn.Module, prefix: str = "") -> None:
    """Feed every weight of `module` (names, dtypes, shapes, bytes) to the hash `h`; usage statistics
    (codebook_used) are not weights and are left out."""
    for name, t in sorted(module.state_dict().items()):
        if name.endswith("codebook_used"):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{prefix}{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's weights: equal digests mean, e.g., two token caches share one vocabulary."""
    h = hashlib.sha256()
    hash_weights(h, module)
    return h.hexdigest()


def _load_strict(module: torch.nn.Module, state: dict, source) -> None:
    """Strict load into a meta-device module, allowing only the usage buffer to be absent."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("codebook_used")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        raise ValueError(f"{source}: weights do not match the configuration; missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}")
    full = {k: state[k] if k in state else torch.zeros(v.shape, dtype=v.dtype) for k, v in expected.items()}
    module.load_state_dict(full, strict=True, assign=True)


def convert_official(gpt_ckpt: str | Path, image_ckpt: str | Path, camera_ckpt: str | Path,
                     out_dir: str | Path) -> Path:
    """Official GST `.pt` checkpoints (weights under ['model']) -> this project's checkpoint directory."""
    bundle_modules = {}
    spec = BUNDLE_PRESETS["official"]
    image_cfg = VQConfig.from_preset(spec["image_tokenizer"])
    camera_cfg = VQConfig.from_preset(spec["camera_tokenizer"])
    transformer_cfg = GSTConfig.from_preset(spec["transformer"])
    for part, file, module_cls, cfg in (("transformer", gpt_ckpt, Transformer, transformer_cfg),
                                         ("image_tokenizer", image_ckpt, VQModel, image_cfg),
                                         ("camera_tokenizer", camera_ckpt, VQModel, camera_cfg)):
        file = Path(file)
        if not file.is_file():
            raise FileNotFoundError(f"official {part} checkpoint not found: {file}")
        raw = torch.load(file, map_location="cpu", weights_only=True)
        if not isinstance(raw, dict) or "model" not in raw:
            raise ValueError(f"{file}: expected a dict with the weights under 'model'")
        state = {k: v.float() for k, v in raw["model"].items()}
        with torch.device("meta"):
            module = module_cls(cfg)
        _load_strict(module, state, file)
        bundle_modules[part] = module
    bundle = ModelBundle(**bundle_modules, view=spec["view"],
                         metadata={"source": "official GST release", "files": [str(gpt_ckpt), str(image_ckpt),
                                                                               str(camera_ckpt)]})
    return save_bundle(bundle, out_dir)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Convert official GST checkpoints to the gst_ros format.")
    parser.add_argument("--gpt", required=True, help="official GPT checkpoint (.pt)")
    parser.add_argument("--image-tokenizer", required=True, help="official VQ-16 checkpoint (.pt)")
    parser.add_argument("--camera-tokenizer", required=True, help="official VQ-4 checkpoint (.pt)")
    parser.add_argument("--out", required=True, help="output checkpoint directory")
    args = parser.parse_args(argv)
    out = convert_official(args.gpt, args.image_tokenizer, args.camera_tokenizer, args.out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
