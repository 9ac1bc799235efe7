"""Start gst_ros nodes from the YAML: every way of starting a node goes through here.

    python -m gst_ros.run [--params config/gst_ros.yaml] [--remap image:=/cam/image ...]
                          [--param model_path:=DIR ...] [--nodes localize,view_predictor]
                          [--namespace /robot] [--ros-args ...]

`ros2 run gst_ros localize` / `view_predictor` (scripts/), the launch file's nodes (one process each)
and the gst-localize / gst-view-predictor console scripts call `localize_main` / `view_predictor_main`:
this runner with one node and, as always, config/gst_ros.yaml, so the YAML is the one place for
defaults however a node is started. --params and --remap become ordinary ROS arguments
(--params-file, -r), so rcl applies the YAML (including its `/**` section) and the remaps exactly as
`ros2 run` would; parameter files and remaps given after --ros-args come later and win; --param values
are explicit overrides that win over every file. Nodes are configured and activated here when their
`autostart` parameter is true. A MultiThreadedExecutor runs everything; SIGINT/SIGTERM end the spin
loop (our own handlers set a stop flag). Then every node refuses new work, the executor keeps spinning
until each queued service request has its answer ("node is shutting down") and the running ones have
finished (at most DRAIN_TIMEOUT_S), and only then are workers stopped and nodes destroyed.

Exit status: 0 after a clean shutdown, 1 if a node fails to configure (e.g. missing model),
2 on bad command-line arguments or parameter overrides.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

import rclpy
from rclpy.context import Context
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions

from gst_ros import params
from gst_ros.localize_node import LocalizeNode
from gst_ros.view_predictor_node import ViewPredictorNode

EXECUTOR_THREADS = 4  # image callbacks, diagnostics, and one model callback group per node
DRAIN_TIMEOUT_S = 30.0  # at shutdown: the request being served finishes, queued ones are refused
DRAIN_QUIET_S = 0.5  # no request taken for this long while spinning: the queues are empty


def run_nodes(node_classes, argv: list[str], overrides: list[Parameter] = ()) -> int:
    """Create, configure and activate the nodes, spin until shutdown; returns the exit status.

    `overrides` win over the YAML (rcl would let a node-specific YAML entry beat a global `-p`).
    """
    use_node_dds_profile()
    context = Context()
    # Our own SIGINT/SIGTERM handling: with rclpy's handlers a blocking spin() was seen to miss the
    # shutdown now and then (the process had to be killed); a stop flag polled by spin_once cannot.
    rclpy.init(args=argv, context=context, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    logger = rclpy.logging.get_logger("gst_ros.run")
    nodes, executor = [], None
    try:
        try:
            nodes = [cls(context=context, parameter_overrides=list(overrides)) for cls in node_classes]
        except ParameterException as exc:  # an override out of range / of the wrong type
            logger.fatal(f"invalid parameter: {exc}")
            return 2
        for node in nodes:
            if not node.get_parameter("autostart").value:
                continue
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                logger.fatal(f"{node.get_name()} failed to configure (see the error above); exiting")
                return 1
            node.trigger_activate()
        executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS, context=context)
        for node in nodes:
            executor.add_node(node)
        logger.info(f"running {', '.join(n.get_fully_qualified_name() for n in nodes)}")
        while not stop.is_set() and context.ok():
            spin_once(executor, logger, 0.2)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if executor is not None:
            drain(executor, nodes, context)
            stop_executor(executor, nodes)
        for node in nodes:
            node.release()
        for node in nodes:
            node.destroy_node()
        context.try_shutdown()
    return 0


def spin_once(executor, logger, timeout_s: float) -> None:
    """One executor step. A callback's exception surfaces here (rclpy re-raises it from spin_once); the
    nodes answer their own errors, so one that escapes (e.g. a service destroyed by a lifecycle transition
    while its request was being taken) is logged, and the process keeps serving."""
    try:
        executor.spin_once(timeout_sec=timeout_s)
    except (KeyboardInterrupt, ExternalShutdownException):
        raise
    except Exception as exc:
        logger.error(f"a callback failed: {type(exc).__name__}: {exc}")


def use_node_dds_profile() -> None:
    """Point Fast DDS at config/fastdds_node.xml (readers free a sample's memory once it is taken) unless the
    user configured Fast DDS already. Read when this process creates its participant, so before rclpy.init."""
    profile = params.default_file()
    profile = profile.with_name("fastdds_node.xml") if profile is not None else None
    if profile is None or not profile.is_file() or os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") != \
            "rmw_fastrtps_cpp":
        return
    if "FASTDDS_DEFAULT_PROFILES_FILE" in os.environ or "RMW_FASTRTPS_USE_QOS_FROM_XML" in os.environ:
        return
    os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    os.environ["RMW_FASTRTPS_USE_QOS_FROM_XML"] = "1"


def drain(executor, nodes, context, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
    """Spin until every queued request is answered and none runs: the nodes refuse new work from now on,
    so each waiting caller gets success=false and a reason instead of no answer."""
    for node in nodes:
        node.begin_shutdown()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and context.ok():
        spin_once(executor, rclpy.logging.get_logger("gst_ros.run"), 0.05)
        if min((node.idle_s() for node in nodes), default=DRAIN_QUIET_S) >= DRAIN_QUIET_S:
            return


def stop_executor(executor: MultiThreadedExecutor, nodes) -> None:
    """Shut the executor down once every callback it has handed to its threads has ended.

    rclpy's Executor.shutdown (9.x) destroys its guard condition before MultiThreadedExecutor joins its thread
    pool, and its wait for running callbacks never runs; a callback still queued in the pool then triggers the
    destroyed guard condition ("cannot use Destroyable because destruction was requested") inside a task that
    nobody reads, and the log shows "The following exception was never retrieved". So: no new callbacks (the
    nodes leave the executor), join the pool, then shut down."""
    for node in nodes:
        executor.remove_node(node)
    pool = getattr(executor, "_executor", None)  # MultiThreadedExecutor's ThreadPoolExecutor (not public)
    if pool is not None:
        pool.shutdown(wait=True)
    executor.shutdown()


def node_classes(names: list[str]):
    known = {"localize": LocalizeNode, "view_predictor": ViewPredictorNode}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown node(s) {unknown}; known: {sorted(known)}")
    return [known[n] for n in names]


def build_ros_args(opts) -> list[str]:
    ros = ["--ros-args"]
    if opts.params:
        ros += ["--params-file", str(opts.params)]
    for r in opts.remap:
        ros += ["-r", r]
    if opts.namespace:
        ros += ["-r", f"__ns:={opts.namespace}"]
    return ros


def parse_override(text: str) -> Parameter:
    """NAME:=VALUE with the value read as YAML, as `-p` does (gst_ros.params.parse_assignment)."""
    try:
        name, value = params.parse_assignment(text)
    except ValueError as exc:
        raise SystemExit(f"--param: {exc}") from None
    return Parameter(name, value=value)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m gst_ros.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=params.default_file(),
                        help="ROS 2 parameter YAML (default: config/gst_ros.yaml)")
    parser.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                        help="topic remap for every node, e.g. image:=/camera/image_raw")
    parser.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="parameter override for every node, e.g. model_path:=tiny")
    parser.add_argument("--nodes", default="localize,view_predictor", help="comma-separated node names")
    parser.add_argument("--namespace", default="", help="namespace for every node")
    # split at --ros-args ourselves: rclpy's remove_ros_args would also eat `--param a:=b` values
    # (a deprecated bare remap syntax)
    split = argv.index("--ros-args") if "--ros-args" in argv else len(argv)
    opts = parser.parse_args(argv[1:split])
    if opts.params is not None and not opts.params.is_file():
        parser.error(f"parameter file {opts.params} not found")
    classes = node_classes([n.strip() for n in opts.nodes.split(",") if n.strip()])
    # the user's own --ros-args after ours, so they win
    overrides = [parse_override(p) for p in opts.param]
    return run_nodes(classes, argv[:1] + build_ros_args(opts) + argv[split + 1:], overrides)


def localize_main(argv: list[str] | None = None) -> int:
    """`ros2 run gst_ros localize`, the launch file's localize, gst-localize: this runner, one node."""
    argv = list(sys.argv if argv is None else argv)
    return main(argv[:1] + ["--nodes", "localize"] + argv[1:])


def view_predictor_main(argv: list[str] | None = None) -> int:
    """`ros2 run gst_ros view_predictor`, the launch file's view_predictor, gst-view-predictor."""
    argv = list(sys.argv if argv is None else argv)
    return main(argv[:1] + ["--nodes", "view_predictor"] + argv[1:])


if __name__ == "__main__":
    sys.exit(main())
