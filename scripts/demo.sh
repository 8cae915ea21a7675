#!/usr/bin/env bash
# The main job (README): everything from a fresh clone on the bundled default data.
#  1. libtorch (idempotent), 2. build, 3. the default dataset in data/default (deterministic, seed 0),
#  4. the quick grid: fixed-ratio Fast R-CNN, offline HNM and OHEM, one seed (experiments/quick.yaml),
#     with per-epoch logs in runs/quick/cells/*/metrics.csv, then summary.md, summary.csv and charts
#     in runs/quick/. A rerun skips finished cells; `harness report runs/quick` redraws from the logs.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-libtorch.sh
cargo build --release --locked
H=./target/release/harness
[ -f data/default/ohem_dataset.json ] || $H make-dataset --out data/default --size small --seed 0
$H run experiments/quick.yaml "$@"
