#!/usr/bin/env bash
# The test command (README, CI): installs libtorch, pycocotools and tensorboard if needed (idempotent), then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-libtorch.sh
# pycocotools 2.0.11 in a small venv: the COCO AP parity test's reference
OHEM_COCO_PYTHON=$(./scripts/coco-venv.sh)
export OHEM_COCO_PYTHON
# TensorBoard 2.20.0 in another: its event reader reads the runs' scalars back
OHEM_TB_PYTHON=$(./scripts/tb-venv.sh)
export OHEM_TB_PYTHON
cargo test --release --locked "$@"
