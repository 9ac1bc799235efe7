"""The nodes' parameters without ROS: one table per node, the checks, the YAML and what they mean.

`ParamSpec` tables (name, default, description, range or choices) are declared by the nodes
(gst_ros.common.declare) and read by the tools that run a node's logic offline (gst_ros.tools.replay),
so both see the same defaults, the same config/gst_ros.yaml and the same checks. Nothing here imports
rclpy. `configure_only` parameters (model, backend, device, QoS) are read in on_configure.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from gst_model.checkpoint import BUNDLE_PRESETS
from gst_model.generate import DRAFT_LEN, SamplingParams
from gst_model.pipeline import POSE_SELECTIONS, SPECULATIVE
from gst_ros.keyframes import RekeyPolicy

INT32_MAX = 2**31 - 1
SAMPLING = SamplingParams()  # the model's sampling defaults (gst_model.generate), the nodes' too
# Default of max_image_pixels, and of the image conversions' own limit (gst_ros.conversions).
MAX_IMAGE_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: object
    description: str
    lo: float | None = None  # inclusive range (numbers)
    hi: float | None = None
    choices: tuple = ()  # allowed values (strings)
    configure_only: bool = False


MODEL_PARAMS = (
    ParamSpec("model_path", "", "GST checkpoint directory ('' = the shipped default model, "
              "gst_model/weights/default); a preset name ('tiny', ...) only with random_weights", configure_only=True),
    ParamSpec("random_weights", False, "allow model_path to be a preset name, which builds a model with random, "
              "untrained weights (tests only; without it a preset name is refused at configure)", configure_only=True),
    ParamSpec("backend", "torch", "inference back-end", choices=("torch", "onnxruntime", "tensorrt"),
              configure_only=True),
    ParamSpec("device", "cpu", "torch device for the model, e.g. cpu, cuda, cuda:1", configure_only=True),
    ParamSpec("compile", False, "torch backend: compile the transformer with torch.compile (about 2x faster "
              "sampling on CPU; configure then takes ~1-2 min, compiling for the node's num_samples; other "
              "sample counts compile on their first request)", configure_only=True),
    ParamSpec("speculative", SPECULATIVE, "decode camera tokens speculatively with geometric drafts, and greedy "
              "views with the previous greedy view as the draft (same samples' distribution, fewer sequential "
              "transformer passes; camera drafts are slower on CPU with the shipped model, see README "
              "'Speculative decoding')", configure_only=True),
    ParamSpec("draft_len", DRAFT_LEN, "speculative block: the row's last token + draft_len - 1 drafted tokens per "
              "transformer pass", 2, 64, configure_only=True),
    ParamSpec("temperature", SAMPLING.temperature, "sampling temperature (> 0)", 0.01, 10.0),
    ParamSpec("top_k", SAMPLING.top_k, "top-k sampling filter (0 = no limit)", 0, 1 << 20),
    ParamSpec("top_p", SAMPLING.top_p, "nucleus sampling filter", 0.01, 1.0),
    ParamSpec("cfg_scale", SAMPLING.cfg_scale, "classifier-free guidance scale (1 = none)", 0.0, 100.0),
    ParamSpec("seed", -1, "sampling seed (-1 = random every call)", -1, INT32_MAX),
    ParamSpec("max_samples", 32, "largest num_samples a request may ask for", 1, 256),
    ParamSpec("max_image_pixels", MAX_IMAGE_PIXELS, "larger input images are rejected (width*height)",
              1, 1 << 30),
    ParamSpec("qos_reliability", "reliable", "reliability of the image subscription(s): reliable (with depth 1: "
              "the newest frame, whole) receives every reliable publisher; best_effort also receives best-effort "
              "(sensor-data) publishers, but frames over ~500 KB are mostly lost unless the publisher has a large "
              "shared-memory segment (config/fastdds_large_images.xml; measured in bench/reliability.md)",
              choices=("best_effort", "reliable"), configure_only=True),
    ParamSpec("qos_depth", 1, "history depth of the image subscription(s)", 1, 1000, configure_only=True),
    ParamSpec("use_camera_info", True, "subscribe to camera_info: images of its size go to the model with the "
              "camera's intrinsics (P, else K; rectified images expected), predicted views come back at its "
              "resolution", configure_only=True),
)

LOCALIZE_PARAMS = MODEL_PARAMS + (
    ParamSpec("num_samples", 16, "pose samples per estimate (the covariance comes from their spread)", 1, 256),
    ParamSpec("pose_selection", POSE_SELECTIONS[0], "how the samples become one pose: 'likelihood' = around the "
              "sample under which the image is most probable (one extra scoring pass), 'consensus' = around their "
              "rotation medoid", choices=POSE_SELECTIONS),
    ParamSpec("hybrid", True, "add the classical estimate (SIFT + essential matrix on the full images) as one more "
              "pose hypothesis when it has enough inliers; the model's likelihood chooses (needs OpenCV)"),
    ParamSpec("min_confidence", 0.4, "estimates whose confidence (probability that the rotation is within 15 deg) "
              "is below this are published with low_confidence and reported as WARN on /diagnostics", 0.0, 1.0),
    ParamSpec("reference_frame", "gst_reference_optical", "TF parent: optical frame of the reference image (the "
              "first frame or the one set by ~/set_reference; re-keying keeps it, chaining the keyframes)"),
    ParamSpec("camera_frame", "gst_camera_optical", "TF child: optical frame of the current camera"),
    ParamSpec("publish_tf", True, "broadcast reference_frame -> camera_frame on /tf"),
    ParamSpec("max_rate_hz", 0.0, "cap on estimates per second (0 = as fast as the model runs)", 0.0, 1000.0),
    ParamSpec("rekey_min_confidence", 0.0, "re-key (current frame becomes the keyframe) when confidence "
              "stays below this for rekey_after_frames frames (0 = never)", 0.0, 1.0),
    ParamSpec("rekey_after_frames", 3, "consecutive low-confidence frames before re-keying", 1, 10000),
    ParamSpec("autostart", True, "configure and activate at start-up (no lifecycle manager needed)",
              configure_only=True),
)

VIEW_PREDICTOR_PARAMS = MODEL_PARAMS + (
    ParamSpec("num_samples", 1, "images sampled per request when the request says 0", 1, 256),
    ParamSpec("prediction", "samples", "samples: one image per sample; mean: one image, the pixel mean of the "
              "samples (least-squares view estimate: higher PSNR, blurred where the model is unsure); greedy: one "
              "image, the most likely token at every step (deterministic; with speculative, each query drafts the "
              "previous greedy view of the same observation: 2-3x fewer passes for a sweeping query pose)",
              choices=("samples", "mean", "greedy")),
    ParamSpec("target_frame", "gst_target_optical", "frame_id of predicted images (the target camera)"),
    ParamSpec("max_rate_hz", 0.0, "cap on ~/query_pose predictions per second (0 = no cap)", 0.0, 1000.0),
    ParamSpec("autostart", True, "configure and activate at start-up (no lifecycle manager needed)",
              configure_only=True),
)

NODE_PARAMS = {"localize": LOCALIZE_PARAMS, "view_predictor": VIEW_PREDICTOR_PARAMS}


def check(spec: ParamSpec, value) -> str:
    """Why `value` is not allowed for `spec` ('' = allowed). Types are ROS's: 1 is not a double."""
    if type(value) is not type(spec.default):
        return f"{spec.name}={value!r}: must be of type {type(spec.default).__name__}"
    if spec.choices and value not in spec.choices:
        return f"{spec.name}={value!r}: must be one of {list(spec.choices)}"
    if spec.lo is not None and not (spec.lo <= value <= spec.hi):  # NaN fails this too
        return f"{spec.name}={value!r}: must be in [{spec.lo}, {spec.hi}]"
    return ""


def default_file() -> Path | None:
    """config/gst_ros.yaml of the checkout, else of the installed package share, else None."""
    local = Path(__file__).resolve().parents[1] / "config" / "gst_ros.yaml"
    if local.is_file():
        return local
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
        share = Path(get_package_share_directory("gst_ros")) / "config" / "gst_ros.yaml"
        return share if share.is_file() else None
    except (ImportError, PackageNotFoundError):
        return None


def parse_assignment(text: str) -> tuple[str, object]:
    """NAME:=VALUE with the value read as YAML, as `-p` does (1 -> int, 1.0 -> double, '' -> string)."""
    name, sep, value = text.partition(":=")
    if not sep or not name:
        raise ValueError(f"expected NAME:=VALUE, got {text!r}")
    parsed = yaml.safe_load(value) if value else ""
    return name, parsed if parsed is not None else ""


def yaml_values(path: Path, node_name: str) -> dict:
    """The parameters a ROS 2 parameter file gives node `node_name` (no namespace): its `/**` section, then
    the node's own (`/**/name`, `name` or `/name`) overriding it, as rcl applies them."""
    doc = yaml.safe_load(Path(path).read_text()) or {}
    values = {}
    for key in ("/**", f"/**/{node_name}", node_name, f"/{node_name}"):
        values.update((doc.get(key) or {}).get("ros__parameters", {}))
    return values


def resolve(specs, values: dict) -> dict:
    """Every parameter of `specs`: the defaults updated with `values`, each checked; ValueError names the
    first unknown or invalid one."""
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}")
    out = {s.name: s.default for s in specs}
    for name, value in values.items():
        if isinstance(by_name[name].default, float) and type(value) is int:
            value = float(value)  # as `-p x:=1` for a double, an integer literal is accepted here
        reason = check(by_name[name], value)
        if reason:
            raise ValueError(reason)
        out[name] = value
    return out


def model_source(model_path: str, random_weights: bool):
    """What GSTPipeline.from_pretrained loads for `model_path`: None (the shipped model), a Path (an existing
    directory, also one named like a preset), or a preset name, only with random_weights."""
    if not model_path:
        return None
    path = Path(model_path).expanduser()
    if path.is_dir():
        return path
    if model_path in BUNDLE_PRESETS:
        if not random_weights:
            raise ValueError(f"model_path {model_path!r} is a preset name, not a checkpoint directory: it would build "
                             "a model with random, untrained weights. Give a checkpoint directory, or set "
                             "random_weights:=true to run the preset anyway (tests)")
        return model_path
    raise ValueError(f"model_path {model_path!r}: no such checkpoint directory")


def model_label(model_path: str) -> str:
    """The model as the configured log line names it; a preset says that its weights are random."""
    if not model_path:
        return "default"
    if model_path in BUNDLE_PRESETS and not Path(model_path).expanduser().is_dir():
        return f"{model_path} (preset: RANDOM, untrained weights)"
    return model_path


def load_pipeline(get: Callable[[str], object]):
    """The GSTPipeline the model parameters (`get(name)`) describe; raises with the cause on a missing or
    corrupt model or a preset name without random_weights."""
    from gst_model.pipeline import GSTPipeline

    source = model_source(get("model_path"), get("random_weights"))
    # A node owns its process, so it may flush subnormal floats process-wide (30% faster CPU estimates).
    options = {"flush_denormal": True} if get("backend") == "torch" else {}
    return GSTPipeline.from_pretrained(source, backend=get("backend"), device=get("device"), compile=get("compile"),
                                       speculative=get("speculative"), draft_len=get("draft_len"), **options)


def sampling_kwargs(get: Callable[[str], object], seed: int | None = None, **overrides) -> dict:
    """Pipeline sampling arguments from the parameters (`get(name)`); an override of None keeps the
    parameter; seed None = the `seed` parameter, where -1 is a fresh random seed per call."""
    kw = {"temperature": get("temperature"), "top_k": get("top_k") or None,
          "top_p": get("top_p"), "cfg_scale": get("cfg_scale")}
    kw.update({k: v for k, v in overrides.items() if v is not None})
    s = get("seed") if seed is None else seed
    kw["seed"] = None if s < 0 else int(s)
    return kw


def pose_kwargs(get: Callable[[str], object], num_samples: int | None = None, seed: int | None = None,
                prior_c2w=None) -> dict:
    """GSTPipeline.estimate_pose arguments of the localize parameters: what the node and replay both call.
    `prior_c2w` (e.g. Localizer.temporal_prior()) is the speculative draft; passed only when speculation is on."""
    return {"num_samples": get("num_samples") if num_samples is None else num_samples,
            "selection": get("pose_selection"), "hybrid": get("hybrid"),
            "prior_c2w": prior_c2w if get("speculative") else None, **sampling_kwargs(get, seed=seed)}


def rekey_policy(get: Callable[[str], object]) -> RekeyPolicy:
    """The re-key parameters as gst_ros.keyframes.Localizer's policy."""
    return RekeyPolicy(min_confidence=get("rekey_min_confidence"), after_frames=get("rekey_after_frames"))
