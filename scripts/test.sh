#!/usr/bin/env bash
# The test command (README, CI): sets up what the build needs, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --locked "$@"
