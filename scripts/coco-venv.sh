#!/usr/bin/env bash
# Installs pycocotools 2.0.11 (the COCO AP reference; it needs only numpy) from PyPI into a small
# venv under the project's cache, idempotently, and prints the venv's python. Used by the test
# suite (the parity test of `harness eval --metric coco`) and `harness bench eval --coco`.
#   ${OHEM_CACHE:-~/.cache/ohem-harness}/coco-venv   (about 60 MB)
set -euo pipefail
cache=${OHEM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ohem-harness}
venv="$cache/coco-venv"
die() { echo "coco-venv: error: $*" >&2; exit 1; }
if [ ! -f "$venv/.complete" ]; then
  command -v python3 >/dev/null 2>&1 || die "python3 is not installed"
  echo "coco-venv: installing pycocotools==2.0.11 into $venv (once)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" || die "python3 -m venv failed (try: apt-get install python3-venv)"
  "$venv/bin/pip" install --quiet pycocotools==2.0.11 >&2 || die "pip install pycocotools==2.0.11 failed"
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
