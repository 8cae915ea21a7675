#!/usr/bin/env bash
# The main job (README): the pipeline on the bundled default data.
# Generates the default dataset (deterministic, seed 0) into data/default if absent,
# then computes selective-search proposals for both splits and reports their recall.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
H=./target/release/harness
[ -f data/default/ohem_dataset.json ] || $H make-dataset --out data/default --size small --seed 0
$H proposals data/default --split trainval
$H proposals data/default --split test
