# Two commands on a fresh machine: `make test` and `make demo`. Both create .venv and install
# the package on first use; later runs reuse it (reinstalling only when setup.py changes).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo clean strip-notebooks

$(STAMP): setup.py
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test,tf]'
	# GR00T N1.5 head reference for the action-head parity tests; its full dependency set (torch<2.11,
	# transformers<5, datasets, ...) conflicts with ours, and the head modules need none of it.
	$(VENV)/bin/python -m pip install -q --no-deps 'lerobot==0.4.4'
	# openpi's policy client, for the serving tests: its metadata pins numpy<2, but the client runs on
	# numpy 2; its runtime imports (websockets, msgpack, dm-tree, pillow, typing_extensions) come from setup.py.
	$(VENV)/bin/python -m pip install -q --no-deps 'openpi-client==0.1.2'
	@touch $(STAMP)

install: $(STAMP)

# Whole suite, slow end-to-end tests included (CPU only; 8 emulated devices for mesh tests).
# Two pytest-xdist processes, each taking whole test files (module fixtures such as a recorded
# simulator dataset are built once): most tests leave a core idle (compiles, subprocesses,
# simulators). TEST_WORKERS=0 runs it in one process.
# pytest exits 5 when it collected nothing: that is a broken suite, not a pass.
TEST_WORKERS ?= 2
test: $(STAMP)
	@$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; the suite must not be empty" >&2; fi; \
	  exit $$rc

# Everything except the end-to-end (subprocess, notebook) tests, for quick iteration.
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The demo's `vla` stage runs Meta-World in its own environment: built once (~25 s from the wheel
# cache, ~1 min downloading, 450 MB), reused afterwards.
demo: $(STAMP) sim-metaworld
	$(VENV)/bin/python launch/demo.py --workdir=runs/demo

clean:
	rm -rf runs .pytest_cache

# Notebooks are stored without outputs (tests/test_notebooks.py checks it).
strip-notebooks: $(STAMP)
	$(VENV)/bin/python tests/notebook_runner.py --strip

# --- LIBERO simulator environment (its own venv: it pins numpy 1.26 / mujoco 2.3.7; no JAX) ----------
# `make sim-libero` creates .venv-libero once (about 740 MB of wheels, ~1.5 min here; 2.1 GB on disk)
# and reinstalls only when roboalign_jax/eval/libero/requirements.txt changes. Nothing asks for input.
LIBERO_VENV := .venv-libero
LIBERO_STAMP := $(LIBERO_VENV)/.installed
LIBERO_REQUIREMENTS := roboalign_jax/eval/libero/requirements.txt

.PHONY: sim-libero
$(LIBERO_STAMP): $(LIBERO_REQUIREMENTS)
	@test -x $(LIBERO_VENV)/bin/python || $(PYTHON) -m venv $(LIBERO_VENV)
	$(LIBERO_VENV)/bin/python -m pip install -q -r $(LIBERO_REQUIREMENTS) < /dev/null
	# openpi's policy client (for evaluating a served policy); --no-deps: its metadata pins more than it uses.
	$(LIBERO_VENV)/bin/python -m pip install -q --no-deps 'openpi-client==0.1.2' < /dev/null
	MUJOCO_GL=egl PYOPENGL_PLATFORM=egl $(LIBERO_VENV)/bin/python -c "import libero.libero.envs, robosuite, mujoco, imageio, openpi_client" < /dev/null
	@touch $(LIBERO_STAMP)

sim-libero: $(LIBERO_STAMP)

# --- Meta-World simulator environment (its own venv: metaworld 3.1.1 pins mujoco 3.3.0; no JAX) -----
# `make sim-metaworld` creates .venv-metaworld once and reinstalls only when
# roboalign_jax/eval/metaworld/requirements.txt changes. Nothing asks for input.
METAWORLD_VENV := .venv-metaworld
METAWORLD_STAMP := $(METAWORLD_VENV)/.installed
METAWORLD_REQUIREMENTS := roboalign_jax/eval/metaworld/requirements.txt

.PHONY: sim-metaworld
$(METAWORLD_STAMP): $(METAWORLD_REQUIREMENTS)
	@test -x $(METAWORLD_VENV)/bin/python || $(PYTHON) -m venv $(METAWORLD_VENV)
	$(METAWORLD_VENV)/bin/python -m pip install -q -r $(METAWORLD_REQUIREMENTS) < /dev/null
	# openpi's policy client (for evaluating a served policy); --no-deps: its metadata pins more than it uses.
	$(METAWORLD_VENV)/bin/python -m pip install -q --no-deps 'openpi-client==0.1.2' < /dev/null
	MUJOCO_GL=egl PYOPENGL_PLATFORM=egl $(METAWORLD_VENV)/bin/python -c "import metaworld, metaworld.policies, mujoco, imageio, openpi_client.websocket_client_policy, openpi_client.image_tools" < /dev/null
	@touch $(METAWORLD_STAMP)

sim-metaworld: $(METAWORLD_STAMP)
