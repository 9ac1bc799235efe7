"""launch/localize.launch.py evaluated as `ros2 launch` would: its arguments, nodes, parameters and remaps.

`launch` and `launch_ros` are not installable from the package registries (ROS_PIP_NOTES.md; the PyPI
package named `launch` is an unrelated program), so this test stands in the few classes the file uses:
each records its arguments, and substitutions resolve as the real ones do (LaunchConfiguration.perform
reads the context's launch configurations, FindPackageShare the package's share directory, which CMake
fills with config/). With the real packages, tests/test_ros_conversions.py checks the description itself.
"""
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ARGUMENTS = {"image", "camera_info", "params_file", "model_path", "backend", "namespace"}


class _Context:
    def __init__(self, launch_configurations: dict[str, str]):
        self.launch_configurations = launch_configurations


def _resolve(value, context):
    return value if isinstance(value, str) else value.perform(context)


# Stand-ins with the real classes' signatures (launch 3.x / launch_ros 0.28), so a call the real API would
# refuse fails here too.
class LaunchConfiguration:
    def __init__(self, variable_name, *, default=None):
        self.name, self.default = variable_name, default

    def perform(self, context):
        if self.name in context.launch_configurations:
            return context.launch_configurations[self.name]
        if self.default is None:
            raise KeyError(f"launch configuration {self.name!r} is not set")
        return _resolve(self.default, context)


class PathJoinSubstitution:
    def __init__(self, substitutions):
        self.parts = substitutions

    def perform(self, context):
        return os.path.join(*(_resolve(p, context) for p in self.parts))


class FindPackageShare:
    def __init__(self, package):
        self.package = package

    def perform(self, context):
        assert self.package == "gst_ros"
        return str(REPO)  # the installed share/gst_ros holds config/ as the repository does


class LaunchDescription:
    def __init__(self, initial_entities=None, *, deprecated_reason=None):
        self.entities = list(initial_entities or [])


class DeclareLaunchArgument:
    def __init__(self, name, *, default_value=None, description=None, choices=None):
        self.name, self.default_value, self.description = name, default_value, description


class OpaqueFunction:
    def __init__(self, *, function, args=None, kwargs=None):
        self.function, self.args, self.kwargs = function, args or [], kwargs or {}


class Node:
    def __init__(self, *, executable, package=None, name=None, namespace=None, exec_name=None, parameters=None,
                 remappings=None, ros_arguments=None, arguments=None, output="log"):
        self.executable, self.package, self.name, self.namespace = executable, package, name, namespace
        self.parameters, self.remappings = parameters or [], remappings or []


@pytest.fixture()
def launch_file(monkeypatch):
    modules = {"launch": {"LaunchDescription": LaunchDescription},
               "launch.actions": {"DeclareLaunchArgument": DeclareLaunchArgument, "OpaqueFunction": OpaqueFunction},
               "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration,
                                        "PathJoinSubstitution": PathJoinSubstitution},
               "launch_ros": {}, "launch_ros.actions": {"Node": Node},
               "launch_ros.substitutions": {"FindPackageShare": FindPackageShare}}
    for name, attributes in modules.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attributes))
    spec = importlib.util.spec_from_file_location("localize_launch", REPO / "launch" / "localize.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _launch(module, **cli) -> list[tuple[Node, _Context]]:
    """`ros2 launch gst_ros localize.launch.py k:=v ...`: defaults, command-line values, then the nodes."""
    description = module.generate_launch_description()
    declared = [e for e in description.entities if isinstance(e, DeclareLaunchArgument)]
    assert {d.name for d in declared} == ARGUMENTS and all(d.description for d in declared)
    assert set(cli) <= ARGUMENTS, "unknown launch argument"
    context = _Context({})
    for d in declared:  # in order, as launch evaluates them (a default may use earlier ones)
        context.launch_configurations[d.name] = _resolve(d.default_value, context)
    context.launch_configurations.update(cli)
    (opaque,) = [e for e in description.entities if isinstance(e, OpaqueFunction)]
    return [(node, context) for node in opaque.function(context, *opaque.args, **opaque.kwargs)]


def _resolved(node: Node, context) -> dict:
    params = [p if isinstance(p, dict) else _resolve(p, context) for p in node.parameters]
    remaps = [(_resolve(a, context), _resolve(b, context)) for a, b in node.remappings]
    return {"package": node.package, "executable": node.executable, "name": node.name,
            "namespace": _resolve(node.namespace, context), "parameters": params, "remappings": remaps}


def test_defaults_start_both_nodes_from_the_yaml(launch_file):
    yaml_path = str(REPO / "config" / "gst_ros.yaml")
    sections = yaml.safe_load(Path(yaml_path).read_text())
    nodes = [_resolved(n, c) for n, c in _launch(launch_file)]
    assert [n["name"] for n in nodes] == ["localize", "view_predictor"]
    for n in nodes:
        assert n["package"] == "gst_ros" and n["namespace"] == ""
        # `ros2 run gst_ros <executable>` is scripts/<executable>, which starts this node through gst_ros.run
        assert f"{n['executable']}_main()" in (REPO / "scripts" / n["executable"]).read_text()
        assert n["executable"] == n["name"] and f"/**/{n['name']}" in sections
        assert n["parameters"] == [yaml_path]  # no overrides: every value comes from the YAML
        assert n["remappings"] == [("image", "image"), ("camera_info", "camera_info")]


def test_arguments_remap_topics_and_override_only_what_is_given(launch_file):
    nodes = _launch(launch_file, image="/camera/color/image_raw", camera_info="/camera/color/camera_info",
                    model_path="/models/gst", namespace="robot1", params_file="/etc/gst.yaml")
    for node, context in nodes:
        n = _resolved(node, context)
        assert n["remappings"] == [("image", "/camera/color/image_raw"), ("camera_info", "/camera/color/camera_info")]
        # an empty backend argument leaves the YAML's backend alone instead of overriding it with ''
        assert n["parameters"] == ["/etc/gst.yaml", {"model_path": "/models/gst"}]
        assert n["namespace"] == "robot1"
    node, context = _launch(launch_file, backend="onnxruntime")[0]
    assert _resolved(node, context)["parameters"][1] == {"backend": "onnxruntime"}
