#!/usr/bin/env bash
# The test command (README, CI): installs libtorch if needed (idempotent), then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-libtorch.sh
cargo test --release --locked "$@"
