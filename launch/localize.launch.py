"""Start localize and view_predictor with config/gst_ros.yaml and remappable image/camera_info.

    ros2 launch gst_ros localize.launch.py image:=/camera/color/image_raw \
        camera_info:=/camera/color/camera_info model_path:=/path/to/checkpoint

Without `ros2 launch` (pip setup) the same node classes start from the same YAML with
`python -m gst_ros.run --remap image:=... --param model_path:=...` (gst_ros/run.py).
All defaults live in the YAML: model_path/backend arguments override it only when non-empty.
Both nodes are lifecycle nodes that configure and activate themselves (`autostart: true` in the YAML);
set it false to drive them with a lifecycle manager instead.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = (
    ("image", "image", "input image topic (sensor_msgs/Image)"),
    ("camera_info", "camera_info", "input camera info topic (sensor_msgs/CameraInfo)"),
    ("params_file", PathJoinSubstitution([FindPackageShare("gst_ros"), "config", "gst_ros.yaml"]),
     "parameter YAML for both nodes"),
    ("model_path", "", "GST checkpoint directory or preset name (empty: the YAML's value)"),
    ("backend", "", "torch | onnxruntime | tensorrt (empty: the YAML's value)"),
    ("namespace", "", "namespace of both nodes"),
)
OVERRIDABLE = ("model_path", "backend")


def _nodes(context):
    # evaluated at launch time: a dict entry cannot be left out conditionally with substitutions
    overrides = {k: LaunchConfiguration(k).perform(context) for k in OVERRIDABLE}
    overrides = {k: v for k, v in overrides.items() if v}
    params = [LaunchConfiguration("params_file")] + ([overrides] if overrides else [])
    remaps = [("image", LaunchConfiguration("image")), ("camera_info", LaunchConfiguration("camera_info"))]
    return [Node(package="gst_ros", executable=name, name=name, namespace=LaunchConfiguration("namespace"),
                 parameters=params, remappings=remaps, output="screen")
            for name in ("localize", "view_predictor")]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, default, description in ARGUMENTS]
        + [OpaqueFunction(function=_nodes)])
