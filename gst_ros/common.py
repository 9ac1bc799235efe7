"""Node plumbing shared by localize and view_predictor: parameters, QoS, model loading, diagnostics.

Parameters are declared from `ParamSpec` tables with descriptors (description, range, allowed values)
and validated in an on-set callback that gives a reason. `configure_only` parameters (model, backend,
device, QoS) are read in on_configure; changing them on a configured node is refused with a reason
(cleanup the node first) rather than silently ignored.
"""
from __future__ import annotations

from dataclasses import dataclass

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

INT32_MAX = 2**31 - 1


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
    ParamSpec("model_path", "", "GST checkpoint directory or preset name ('' = the shipped default "
              "model, gst_model/weights/default; 'tiny' = random-weight test preset)", configure_only=True),
    ParamSpec("backend", "torch", "inference back-end", choices=("torch", "onnxruntime", "tensorrt"),
              configure_only=True),
    ParamSpec("device", "cpu", "torch device for the model, e.g. cpu, cuda, cuda:1", configure_only=True),
    ParamSpec("compile", False, "torch backend: compile the transformer with torch.compile (about 2x faster "
              "sampling on CPU; configure then takes ~1-2 min, compiling for the node's num_samples; other "
              "sample counts compile on their first request)", configure_only=True),
    ParamSpec("temperature", 1.0, "sampling temperature (> 0)", 0.01, 10.0),
    ParamSpec("top_k", 100, "top-k sampling filter (0 = no limit)", 0, 1 << 20),
    ParamSpec("top_p", 1.0, "nucleus sampling filter", 0.01, 1.0),
    ParamSpec("cfg_scale", 1.0, "classifier-free guidance scale (1 = none)", 0.0, 100.0),
    ParamSpec("seed", -1, "sampling seed (-1 = random every call)", -1, INT32_MAX),
    ParamSpec("max_samples", 32, "largest num_samples a request may ask for", 1, 256),
    ParamSpec("max_image_pixels", 4096 * 4096, "larger input images are rejected (width*height)",
              1, 1 << 30),
    ParamSpec("qos_reliability", "best_effort", "reliability of the image subscription(s) "
              "(best_effort = sensor-data QoS)", choices=("best_effort", "reliable"), configure_only=True),
    ParamSpec("qos_depth", 1, "history depth of the image subscription(s)", 1, 1000, configure_only=True),
    ParamSpec("use_camera_info", True, "subscribe to camera_info for the camera's intrinsics",
              configure_only=True),
)


def declare(node, specs) -> None:
    """Declare every spec with its descriptor; on-set validation is registered first so overrides
    from the command line or YAML are validated too (a bad one raises at declaration)."""
    by_name = {s.name: s for s in specs}
    node.add_on_set_parameters_callback(lambda params: _validate(node, by_name, params))
    for s in specs:
        desc = ParameterDescriptor(name=s.name, description=s.description)
        if s.choices:
            desc.additional_constraints = "one of: " + ", ".join(s.choices)
        if s.lo is not None and isinstance(s.default, int) and not isinstance(s.default, bool):
            desc.integer_range = [IntegerRange(from_value=int(s.lo), to_value=int(s.hi), step=1)]
        elif s.lo is not None:
            desc.floating_point_range = [FloatingPointRange(from_value=float(s.lo), to_value=float(s.hi), step=0.0)]
        if s.configure_only:
            desc.additional_constraints += " (read at configure)"
        node.declare_parameter(s.name, s.default, desc)


def _validate(node, by_name, params) -> SetParametersResult:
    for p in params:
        s = by_name.get(p.name)
        if s is None:
            continue
        v = p.value
        if s.configure_only and getattr(node, "configured", False):
            return SetParametersResult(successful=False, reason=(
                f"{p.name} is read at configure; deactivate and clean up the node before changing it"))
        if s.choices and v not in s.choices:
            return SetParametersResult(successful=False, reason=f"{p.name}={v!r}: must be one of {list(s.choices)}")
        if s.lo is not None and not (s.lo <= v <= s.hi):  # NaN fails this too
            return SetParametersResult(successful=False, reason=f"{p.name}={v!r}: must be in [{s.lo}, {s.hi}]")
    return SetParametersResult(successful=True)


# Requests queue in the service reader's history while the model serves another one; the default
# depth (10) would silently drop the oldest of a burst of concurrent calls.
SERVICE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)


def param(node, name: str):
    return node.get_parameter(name).value


def image_qos(node) -> QoSProfile:
    reliability = {"best_effort": ReliabilityPolicy.BEST_EFFORT,
                   "reliable": ReliabilityPolicy.RELIABLE}[param(node, "qos_reliability")]
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=param(node, "qos_depth"), reliability=reliability)


def min_period_s(node) -> float:
    """Seconds between processing starts for the node's max_rate_hz (0 = no cap)."""
    rate = param(node, "max_rate_hz")
    return 1.0 / rate if rate > 0 else 0.0


def load_pipeline(node):
    """GSTPipeline for the node's model parameters; raises with the cause on a missing/corrupt model."""
    from gst_model.pipeline import GSTPipeline  # torch import: only where a model is really loaded

    path = param(node, "model_path") or None
    return GSTPipeline.from_pretrained(path, backend=param(node, "backend"), device=param(node, "device"),
                                       compile=param(node, "compile"))


def sampling_kwargs(node, seed: int | None = None, **overrides) -> dict:
    """Pipeline sampling arguments from the parameters; an override of None keeps the parameter."""
    kw = {"temperature": param(node, "temperature"), "top_k": param(node, "top_k") or None,
          "top_p": param(node, "top_p"), "cfg_scale": param(node, "cfg_scale")}
    kw.update({k: v for k, v in overrides.items() if v is not None})
    s = param(node, "seed") if seed is None else seed
    kw["seed"] = None if s < 0 else int(s)
    return kw


def check_num_samples(node, requested: int, default: int) -> int:
    """0 = the node default; above max_samples is an error (ValueError)."""
    n = default if requested == 0 else int(requested)
    limit = param(node, "max_samples")
    if not 1 <= n <= limit:
        raise ValueError(f"num_samples={n} outside [1, max_samples={limit}]")
    return n


def diagnostics(node, name: str, snapshot: dict, extra: dict, warn: str = "") -> DiagnosticArray:
    """One DiagnosticStatus; level WARN with `warn` as message, or ERROR while errors keep coming."""
    status = DiagnosticStatus(name=f"{node.get_fully_qualified_name()}: {name}",
                              hardware_id=node.get_fully_qualified_name())
    if snapshot.get("new_errors"):
        status.level, status.message = DiagnosticStatus.ERROR, f"errors: {snapshot['last_error']}"
    elif warn:
        status.level, status.message = DiagnosticStatus.WARN, warn
    else:
        status.level, status.message = DiagnosticStatus.OK, "ok"
    values = {**{k: v for k, v in snapshot.items() if k != "new_errors"}, **extra}
    status.values = [KeyValue(key=k, value=f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in values.items()]
    msg = DiagnosticArray(status=[status])
    msg.header.stamp = node.get_clock().now().to_msg()
    return msg
