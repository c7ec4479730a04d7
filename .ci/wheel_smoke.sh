#!/usr/bin/env bash
# Wheel smoke test: what a user gets from `pip install lightning-attattr`.
# Builds the wheel, installs it into a fresh virtual environment in an empty temporary folder outside
# the checkout (torch first, then the wheel with that torch pinned), and runs the installed commands
# there: a dry run, a short real fit that writes a checkpoint, an attribution on that checkpoint, and
# `python -m lightning_attattr --help`. Any failure fails the script; every command is printed.
#
#   .ci/wheel_smoke.sh                  (or `make wheel-smoke`; about 2 minutes with a warm pip cache)
#   PYTHON=python3.12 TORCH="torch==2.13.0 --index-url URL" KEEP=1 .ci/wheel_smoke.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH="${TORCH:-torch==2.13.0}"
WORK="$(mktemp -d)"
if [ "${KEEP:-0}" = 1 ]; then echo "wheel smoke: keeping $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi
START=$SECONDS
run() { echo "+ $*" >&2; "$@"; }

cd "$WORK"
# build from a copy of what goes into the wheel, so the checkout gets no build/ folder
mkdir src
cp -r "$ROOT/lightning_attattr" "$ROOT/configs" "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/LICENSE" src/
find src -name __pycache__ -prune -exec rm -rf {} +
run "$PYTHON" -m venv venv
run venv/bin/python -m pip install -q --upgrade pip
run venv/bin/python -m pip wheel -q --no-deps ./src -w dist
WHEEL="$(ls dist/lightning_attattr-*.whl)"
# shellcheck disable=SC2086  # TORCH may carry pip options (--index-url ...)
run venv/bin/python -m pip install -q $TORCH
TORCH_VERSION="$(venv/bin/python -c 'from importlib.metadata import version; print(version("torch").split("+")[0])')"
run venv/bin/python -m pip install -q "$WHEEL" "torch==$TORCH_VERSION"

mkdir project && cd project  # an empty folder: nothing but the installed package
export PATH="$WORK/venv/bin:$PATH" HF_HUB_OFFLINE=1
run attattr-train fit --config quickstart --trainer.fast_dev_run true --trainer.enable_progress_bar false
# fast_dev_run writes no checkpoint: a short real fit does
run attattr-train fit --config quickstart --trainer.max_epochs 1 --trainer.limit_train_batches 4 \
    --trainer.limit_val_batches 2 --trainer.enable_progress_bar false
RUN_DIR="$(ls -d runs/quickstart/version_* | sort -V | tail -1)"
run test -f "$RUN_DIR/checkpoints/last.ckpt"
run attattr-analyze attribute --config "$RUN_DIR/config.yaml" --ckpt_path "$RUN_DIR/checkpoints/last.ckpt" \
    --indices "[0]" --output_dir results/attribute --trainer.enable_progress_bar false
run test -f results/attribute/summary.json
run python -m lightning_attattr --help
run python -m lightning_attattr configs
echo "wheel smoke passed in $((SECONDS - START)) s ($(basename "$WHEEL"), torch $TORCH_VERSION)"
