# facegate: `make setup` installs everything (model pack included); `make test` runs the checks.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: setup browser broker postgres run test lint unit bench fuzz clean

setup: $(VENV)/.installed browser broker postgres
	$(VENV)/bin/facegate models fetch

# The panel's end-to-end test drives Debian's Chromium with Playwright (no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

# The MQTT tests start Debian's Mosquitto (never a mock broker) on a free port.
broker:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq mosquitto; }

# The PostgreSQL tests initdb a throw-away cluster of their own (tests/postgres.py) with Debian's
# server binaries, on a free port. Installed without Debian's default `main` cluster (nothing
# left running on 5432): postgresql-common first, told not to create it, then the server.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  APT="$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get"; \
	  $$APT update -qq && $$APT install -y -qq postgresql-common && \
	  $$SUDO sed -i 's/^#* *create_main_cluster *=.*/create_main_cluster = false/' \
	    /etc/postgresql-common/createcluster.conf && \
	  $$APT install -y -qq postgresql; }

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e '.[dev]'
	# insightface depends on opencv-python (the GUI build), which shares the cv2/ folder with
	# opencv-python-headless and breaks `import cv2` on machines without libGL: keep headless only.
	$(PIP) uninstall -y opencv-python
	$(PIP) install --force-reinstall --no-deps "opencv-python-headless$$($(PY) -c 'import importlib.metadata as m; print("==" + m.version("opencv-python-headless"))')"
	$(PY) -c "import cv2, sys; sys.exit(0 if cv2.getBuildInformation() else 1)"
	touch $@

# The gate with the repository's settings: the panel at http://127.0.0.1:8001/, on webcam 0 by
# default. No camera? The panel still comes up (the camera shown unavailable, with how to run on
# something else): make run SOURCE=clip.mp4 | SOURCE=rtsp://user:pass@host/stream | SOURCE=dir/
SOURCE ?= 0
run: $(VENV)/.installed
	$(VENV)/bin/facegate serve --settings settings.toml --source "$(SOURCE)" $(if $(filter-out 0 1 2 3 4 5 6 7 8 9 rtsp% http%,$(SOURCE)),--loop,)

lint:
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

unit:
	$(VENV)/bin/pytest -q

test: lint unit

# The fuzz suite with >= 10,000 examples per target (CI runs the same tests with a few hundred).
fuzz:
	FACEGATE_FUZZ_EXAMPLES=10000 $(VENV)/bin/pytest -q -p no:cacheprovider \
	  tests/test_fuzz_images.py tests/test_fuzz_server.py

bench:
	$(PY) bench/foundation.py
	# Re-derives recognition.threshold / duplicate_threshold (about 2-3 minutes).
	$(PY) bench/calibrate.py
	# How recognition falls with face size and head turn (the tables of docs/accuracy.md).
	$(PY) bench/robustness.py
	$(PY) bench/openset.py
	$(PY) bench/gallery.py
	$(PY) bench/startup.py
	$(PY) bench/engine.py
	$(PY) bench/ws_fanout.py
	$(PY) bench/upload_flood.py
	$(PY) bench/greeting.py
	# MQTT through a real Mosquitto: event -> message latency; engine fps with MQTT off/on/broker down.
	$(PY) bench/mqtt.py
	# Liveness: how far landmarks of real head turns and of photo/screen attacks are from a plane.
	$(PY) bench/liveness.py
	# The challenge through the live path, per person: real turns vs photos, moved photos, screens.
	$(PY) bench/liveness_live.py
	# Gates sharing one PostgreSQL store: change propagation, start-up vs SQLite, 4 gates enrolling.
	$(PY) bench/gates.py
	# A peer side by side: face_recognition 1.3 (dlib) in its own venv under ~/.cache/facegate.
	$(PY) bench/peers.py --python $(PYTHON)
	# The panel: unknown_person_detected on the server -> dialog visible in Chromium.
	$(VENV)/bin/pytest -q -s tests/test_panel_browser.py | grep -E 'dialog open|passed|failed'

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
