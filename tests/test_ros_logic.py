"""The nodes' logic without DDS: keyframes and re-keying, parameters and the YAML, the error throttle, the
worker's guard, how every start reads the YAML, how the runner stops its executor."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from transforms3d.axangles import axangle2mat

from gst_ros import params
from gst_ros.keyframes import Localizer, RekeyPolicy, chain
from gst_ros.worker import ErrorThrottle, LatestWorker

REPO_ROOT = Path(__file__).resolve().parents[1]


def _pose(angle_deg: float, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = axangle2mat([0.3, 1.0, 0.2], np.radians(angle_deg))
    T[:3, 3] = t
    return T


class Camera:
    """Frames are images whose first pixel is their index; the 'model' answers the true relative pose."""

    def __init__(self, n: int, low_confidence_from: int):
        self.world = [_pose(4.0 * i, [0.1 * i, -0.05 * i, 0.02 * i * i]) for i in range(n)]
        self.low_from = low_confidence_from
        self.calls = []

    def image(self, i: int) -> np.ndarray:
        im = np.zeros((4, 4, 3), np.uint8)
        im[0, 0, 0] = i
        return im

    def estimate(self, image_a, image_b):
        a, b = int(image_a[0, 0, 0]), int(image_b[0, 0, 0])
        self.calls.append((a, b))
        cov = np.diag([1e-2, 2e-2, 3e-2, 1e-3, 2e-3, 3e-3])
        return SimpleNamespace(c2w=np.linalg.inv(self.world[a]) @ self.world[b], covariance=cov,
                               confidence=0.1 if b >= self.low_from else 0.9, samples=np.zeros((2, 4, 4)))


def test_rekeying_keeps_the_reference_frame():
    """After a re-key the frames are compared with the new keyframe, and their poses stay in the first
    frame's camera: TF sees the true trajectory, no jump (the old node published the pose relative to the
    new keyframe under the same frame name)."""
    cam = Camera(9, low_confidence_from=3)
    loc = Localizer()
    policy = RekeyPolicy(min_confidence=0.5, after_frames=2)
    outs = [loc.localize(cam.image(i), 1000 + i, cam.estimate, policy) for i in range(9)]
    assert outs[0].pose is None and outs[0].keyframe.id == 1
    # frames 3 and 4 are low: frame 4 becomes keyframe 2; 5 and 6 low again: frame 6 keyframe 3; then frame 8
    assert [o.rekeyed_to for o in outs[1:]] == [None, None, None, 2, None, 3, None, 4]
    assert cam.calls == [(0, 1), (0, 2), (0, 3), (0, 4), (4, 5), (4, 6), (6, 7), (6, 8)]
    assert [o.keyframe.id for o in outs[1:]] == [1, 1, 1, 1, 2, 2, 3, 3]
    assert [o.keyframe.stamp_ns for o in outs[1:]] == [1000] * 4 + [1004] * 2 + [1006] * 2
    truth = [np.linalg.inv(cam.world[0]) @ cam.world[i] for i in range(9)]
    for i in range(1, 9):
        np.testing.assert_allclose(outs[i].pose, truth[i], atol=1e-12)
    assert loc.rekeys == 3 and loc.keyframe.id == 4
    # the estimate in each output is still the one against its keyframe
    np.testing.assert_allclose(outs[5].estimate.c2w, np.linalg.inv(cam.world[4]) @ cam.world[5], atol=1e-12)


def test_no_rekeying_when_off_and_reset_by_a_good_frame():
    cam = Camera(6, low_confidence_from=1)
    loc = Localizer()
    outs = [loc.localize(cam.image(i), i, cam.estimate, RekeyPolicy()) for i in range(6)]
    assert all(o.rekeyed_to is None for o in outs) and {o.keyframe.id for o in outs} == {1}
    # low, good, low, good ...: never two low frames in a row
    loc = Localizer()
    cam = Camera(6, low_confidence_from=99)
    for i in range(6):
        cam.low_from = i if i % 2 else 99
        out = loc.localize(cam.image(i), i, cam.estimate, RekeyPolicy(0.5, 2))
        assert out.rekeyed_to is None


def test_set_reference_starts_a_new_reference_frame_and_marks_estimates_in_flight_stale():
    cam = Camera(4, low_confidence_from=99)
    loc = Localizer()
    loc.localize(cam.image(0), 0, cam.estimate)
    assert loc.set_reference(cam.image(2), 2).id == 2

    def estimate_while_reference_changes(a, b):
        loc.set_reference(cam.image(1), 1)
        return cam.estimate(a, b)
    out = loc.localize(cam.image(3), 3, estimate_while_reference_changes)
    assert out.stale and out.keyframe.id == 2
    out = loc.localize(cam.image(3), 3, cam.estimate)
    assert not out.stale and out.keyframe.id == 3
    np.testing.assert_allclose(out.pose, np.linalg.inv(cam.world[1]) @ cam.world[3], atol=1e-12)


def test_chain_rotates_the_translation_covariance_only():
    keyframe = np.eye(4)
    keyframe[:3, :3] = axangle2mat([0, 0, 1], np.pi / 2)  # x of the keyframe is y of the reference
    cov = np.diag([4.0, 1.0, 1.0, 0.5, 0.25, 0.125])
    pose, out = chain(keyframe, np.eye(4), cov)
    np.testing.assert_allclose(np.diag(out), [1.0, 4.0, 1.0, 0.5, 0.25, 0.125], atol=1e-12)
    np.testing.assert_allclose(pose, keyframe)


# ------------------------------------------------------------------------------------ parameters
def test_yaml_values_merge_like_rcl(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("/**:\n  ros__parameters:\n    num_samples: 4\n    seed: 3\n"
                 "/**/localize:\n  ros__parameters:\n    num_samples: 8\n"
                 "/**/view_predictor:\n  ros__parameters:\n    num_samples: 2\n")
    assert params.yaml_values(f, "localize") == {"num_samples": 8, "seed": 3}
    assert params.yaml_values(f, "view_predictor") == {"num_samples": 2, "seed": 3}


def test_resolve_checks_names_types_and_ranges():
    values = params.resolve(params.LOCALIZE_PARAMS, {"num_samples": 4, "top_p": 1})
    assert values["num_samples"] == 4 and values["top_p"] == 1.0 and values["seed"] == -1
    for bad, why in (({"num_sample": 4}, "unknown parameter"), ({"num_samples": 0}, "must be in"),
                     ({"num_samples": 2.5}, "must be of type int"), ({"pose_selection": "best"}, "must be one of"),
                     ({"publish_tf": 1}, "must be of type bool")):
        with pytest.raises(ValueError, match=why):
            params.resolve(params.LOCALIZE_PARAMS, bad)


def test_preset_model_needs_random_weights(tmp_path, monkeypatch):
    assert params.model_source("", False) is None
    with pytest.raises(ValueError, match="random, untrained weights.*random_weights:=true"):
        params.model_source("official", False)
    assert params.model_source("official", True) == "official"
    with pytest.raises(ValueError, match="no such checkpoint directory"):
        params.model_source(str(tmp_path / "missing"), True)
    # a checkpoint folder named like a preset is that folder, not the preset
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    assert params.model_source("tiny", False) == Path("tiny")
    assert "RANDOM" not in params.model_label("tiny")
    monkeypatch.chdir(REPO_ROOT)
    assert "RANDOM" in params.model_label("tiny")

def test_the_temporal_prior_is_the_latest_estimate_against_the_current_keyframe():
    cam = Camera(6, low_confidence_from=3)
    loc = Localizer()
    assert loc.temporal_prior() is None
    loc.localize(cam.image(0), 0, cam.estimate)
    assert loc.temporal_prior() is None  # the reference itself: nothing estimated yet
    loc.localize(cam.image(1), 1, cam.estimate)
    np.testing.assert_allclose(loc.temporal_prior(), np.linalg.inv(cam.world[0]) @ cam.world[1])
    loc.localize(cam.image(2), 2, cam.estimate)
    np.testing.assert_allclose(loc.temporal_prior(), np.linalg.inv(cam.world[0]) @ cam.world[2])
    # a re-key (frames 3 and 4 low) makes frame 4 the keyframe: no estimate against it yet
    for i in (3, 4):
        out = loc.localize(cam.image(i), i, cam.estimate, RekeyPolicy(0.5, 2))
    assert out.rekeyed_to == 2 and loc.temporal_prior() is None
    loc.localize(cam.image(5), 5, cam.estimate)
    np.testing.assert_allclose(loc.temporal_prior(), np.linalg.inv(cam.world[4]) @ cam.world[5])
    loc.set_reference(cam.image(5), 5)
    assert loc.temporal_prior() is None


def test_the_prior_reaches_the_pipeline_only_with_speculation():
    prior = np.eye(4)
    off = params.resolve(params.LOCALIZE_PARAMS, {})
    on = params.resolve(params.LOCALIZE_PARAMS, {"speculative": True})
    assert params.pose_kwargs(off.get, prior_c2w=prior)["prior_c2w"] is None
    assert params.pose_kwargs(on.get, prior_c2w=prior)["prior_c2w"] is prior


def test_pose_kwargs_are_the_pipelines():
    values = params.resolve(params.LOCALIZE_PARAMS, {"seed": 5, "top_k": 0})
    kw = params.pose_kwargs(values.get)
    assert {k: kw[k] for k in ("num_samples", "selection", "temperature", "top_k", "top_p", "cfg_scale", "seed")} == {
        "num_samples": 16, "selection": "likelihood", "temperature": 1.0, "top_k": None, "top_p": 1.0,
        "cfg_scale": 1.0, "seed": 5}
    import inspect

    from gst_model.pipeline import GSTPipeline
    assert set(kw) <= set(inspect.signature(GSTPipeline.estimate_pose).parameters)
    assert params.pose_kwargs(values.get, num_samples=3, seed=-1)["seed"] is None


# ---------------------------------------------------------------------------------------- worker
def test_error_throttle_is_per_kind():
    now = [0.0]
    throttle = ErrorThrottle(period_s=5.0, clock=lambda: now[0])
    assert throttle("dropped image: image too large: 8000x6000") == "dropped image: image too large: 8000x6000"
    assert throttle("dropped image: image too large: 9000x9000") is None  # same kind, within 5 s
    assert throttle("dropped image: empty image: 0x0") is not None  # another kind is logged at once
    assert throttle("dropped image: unsupported image encoding '32FC1'") is not None
    assert throttle("dropped image: unsupported image encoding '16UC1'") is None
    now[0] = 5.5
    assert throttle("dropped image: image too large: 1x99999") == (
        "dropped image: image too large: 1x99999 (1 more like this since the last one logged)")


def test_latest_worker_survives_an_exception():
    errors, seen, done = [], [], threading.Event()

    def handle(item):
        if item == "bad":
            raise RuntimeError("cv_bridge exploded")
        seen.append(item)
        done.set()

    worker = LatestWorker(handle, "guarded", on_error=errors.append)
    try:
        worker.submit("bad")
        time.sleep(0.2)
        worker.submit("good")
        assert done.wait(5)
    finally:
        worker.stop()
    assert seen == ["good"] and [str(e) for e in errors] == ["cv_bridge exploded"]


# --------------------------------------------------------------------------------- how nodes start
@pytest.mark.parametrize("entry, node", [("localize_main", "LocalizeNode"), ("view_predictor_main", "ViewPredictorNode")])
def test_every_start_reads_the_yaml(monkeypatch, entry, node):
    """`ros2 run`, the launch file's nodes and the console scripts start one node with config/gst_ros.yaml
    first (their own --ros-args after it, so they win)."""
    pytest.importorskip("rclpy")
    from gst_ros import run

    seen = {}
    monkeypatch.setattr(run, "run_nodes", lambda classes, argv, overrides=(): seen.update(
        classes=[c.__name__ for c in classes], argv=argv) or 0)
    assert getattr(run, entry)(["prog", "--ros-args", "-p", "num_samples:=3"]) == 0
    assert seen["classes"] == [node]
    argv = seen["argv"]
    yaml_at = argv.index("--params-file")
    assert argv[yaml_at + 1] == str(REPO_ROOT / "config" / "gst_ros.yaml")
    assert argv.index("num_samples:=3") > yaml_at
    for script in ("localize", "view_predictor"):
        assert f"from gst_ros.run import {script}_main" in (REPO_ROOT / "scripts" / script).read_text()


def test_imports_are_one_way():
    """The runner imports the nodes, never the other way round; the logic modules shared with the offline
    tools import no rclpy."""
    import ast

    def imported(module: str) -> set[str]:
        tree = ast.parse((REPO_ROOT / "gst_ros" / f"{module}.py").read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        return names

    for module in ("localize_node", "view_predictor_node", "lifecycle", "common", "conversions", "worker"):
        assert not {n for n in imported(module) if n.startswith("gst_ros.run")}, module
    ros_free = ("params", "keyframes", "worker")
    for module in ros_free:
        banned = {n for n in imported(module) if n.split(".")[0] in ("rclpy", "gst_ros") or ".msg" in n}
        assert not {n for n in banned if n.split(".")[1] not in ros_free}, module


def test_runner_points_fast_dds_at_the_node_profile_unless_configured(monkeypatch):
    pytest.importorskip("rclpy")
    from gst_ros import run

    for name in ("FASTDDS_DEFAULT_PROFILES_FILE", "RMW_FASTRTPS_USE_QOS_FROM_XML", "RMW_IMPLEMENTATION"):
        monkeypatch.delenv(name, raising=False)
    run.use_node_dds_profile()
    profile = Path(os.environ["FASTDDS_DEFAULT_PROFILES_FILE"])
    assert profile == REPO_ROOT / "config" / "fastdds_node.xml" and "DYNAMIC" in profile.read_text()
    assert os.environ["RMW_FASTRTPS_USE_QOS_FROM_XML"] == "1"
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", "/mine.xml")
    monkeypatch.delenv("RMW_FASTRTPS_USE_QOS_FROM_XML")
    run.use_node_dds_profile()
    assert os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] == "/mine.xml"
    assert "RMW_FASTRTPS_USE_QOS_FROM_XML" not in os.environ


def test_stop_executor_lets_queued_callbacks_finish_before_the_shutdown(capsys):
    """Callbacks still queued in the executor's threads when the runner stops run to the end, and no task is
    left with an unread exception (rclpy's own shutdown destroys its guard condition first: the queued
    callbacks then fail with 'cannot use Destroyable because destruction was requested')."""
    import gc

    rclpy = pytest.importorskip("rclpy")
    from rclpy.callback_groups import ReentrantCallbackGroup
    from rclpy.context import Context
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node

    from gst_ros.run import stop_executor

    context = Context()
    rclpy.init(context=context)
    node = Node("stop_executor_test", context=context)
    started = []
    group = ReentrantCallbackGroup()
    for _ in range(4):  # more ready timers than threads, the first ones slow: the others wait in the pool
        node.create_timer(0.005, lambda: (started.append(time.monotonic()), time.sleep(0.2)), callback_group=group)
    executor = MultiThreadedExecutor(num_threads=2, context=context)
    executor.add_node(node)
    try:
        for _ in range(6):
            executor.spin_once(timeout_sec=0.05)
        stop_at = time.monotonic()
        stop_executor(executor, [node])
    finally:
        node.destroy_node()
        context.try_shutdown()
    del executor
    gc.collect()
    assert any(t > stop_at for t in started), "no callback was still queued when the executor was stopped"
    assert "never retrieved" not in capsys.readouterr().err
