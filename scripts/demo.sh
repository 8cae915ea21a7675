#!/usr/bin/env bash
# The main job (README): everything from a fresh clone on the bundled default data.
#  1. libtorch (idempotent), 2. build, 3. the default dataset in data/default (deterministic, seed 0),
#  4. selective-search proposals and their recall, 5. the fixed-ratio Fast R-CNN baseline
#     (experiments/frcn-quick.yaml) with per-epoch metrics in runs/frcn-quick/metrics.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-libtorch.sh
cargo build --release --locked
H=./target/release/harness
[ -f data/default/ohem_dataset.json ] || $H make-dataset --out data/default --size small --seed 0
$H proposals data/default --split trainval
$H proposals data/default --split test
$H train experiments/frcn-quick.yaml --out runs/frcn-quick
