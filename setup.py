"""pip install for the Python packages gst_model and gst_ros (nodes), without building ROS interfaces.

The ROS package itself is built with CMake (CMakeLists.txt: colcon, or scripts/setup_ros.sh into a
venv), which also generates gst_ros.msg / gst_ros.srv. This file only makes the Python code
installable/importable with pip, e.g. `pip install --no-deps -e .` for development.

The distribution is deliberately NOT named "gst_ros": the CMake build registers a distribution
"gst_ros" (an egg-info written by rosidl for the generated interfaces), and pip would remove that
package directory when replacing a distribution of the same name. `package_dir={"": "."}` makes an
editable install put the checkout root on sys.path (a plain .pth file), which gst_ros/__init__.py
needs in order to merge the checkout's gst_ros with the installed interfaces.
"""
from setuptools import find_packages, setup

setup(
    name="gst-ros-python",
    version="0.1.0",
    description="GST relative camera pose and view prediction: model (gst_model) and ROS 2 nodes",
    python_requires=">=3.10",
    package_dir={"": "."},
    packages=find_packages(
        where=".", include=["gst_model", "gst_model.*", "gst_ros", "gst_ros.*"]),
    # Runtime dependencies are pinned in requirements.txt / requirements-ros.txt (rclpy comes from
    # ROS or from the ros-* wheels and is not a pip requirement here).
    install_requires=[],
    entry_points={
        "console_scripts": [
            "gst-localize = gst_ros.run:localize_main",
            "gst-view-predictor = gst_ros.run:view_predictor_main",
            "gst-ros-run = gst_ros.run:main",
        ],
    },
)
