"""Node plumbing shared by localize and view_predictor: declaring parameters, QoS, model loading, diagnostics.

Parameters are declared from the `gst_ros.params` tables with descriptors (description, range, allowed
values) and validated in an on-set callback that gives a reason. `configure_only` parameters (model,
backend, device, QoS) are read in on_configure; changing them on a configured node is refused with a
reason (cleanup the node first) rather than silently ignored.
"""
from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from gst_ros import params


def declare(node, specs) -> None:
    """Declare every spec with its descriptor; on-set validation is registered first so overrides
    from the command line or YAML are validated too (a bad one raises at declaration)."""
    by_name = {s.name: s for s in specs}
    node.add_on_set_parameters_callback(lambda changed: _validate(node, by_name, changed))
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


def _validate(node, by_name, changed) -> SetParametersResult:
    for p in changed:
        s = by_name.get(p.name)
        if s is None:
            continue
        v = p.value
        if s.configure_only and getattr(node, "configured", False):
            return SetParametersResult(successful=False, reason=(
                f"{p.name} is read at configure; deactivate and clean up the node before changing it"))
        reason = params.check(s, v)
        if reason:
            return SetParametersResult(successful=False, reason=reason)
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
    """GSTPipeline for the node's model parameters (gst_ros.params.load_pipeline)."""
    return params.load_pipeline(lambda name: param(node, name))


def sampling_kwargs(node, seed: int | None = None, **overrides) -> dict:
    """Pipeline sampling arguments from the node's parameters (gst_ros.params.sampling_kwargs)."""
    return params.sampling_kwargs(lambda name: param(node, name), seed=seed, **overrides)


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
