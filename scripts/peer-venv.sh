#!/usr/bin/env bash
# Installs the benchmark peer (PyTorch 2.13 + torchvision 0.28 from PyPI) into a venv under the
# project's cache, idempotently, and prints the venv's python. Used by `harness bench samplers --peer`.
#   ${OHEM_CACHE:-~/.cache/ohem-harness}/peer-venv   (about 3.3 GB: the PyPI torch wheel brings CUDA)
set -euo pipefail
cache=${OHEM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ohem-harness}
venv="$cache/peer-venv"
die() { echo "peer-venv: error: $*" >&2; exit 1; }
if [ ! -f "$venv/.complete" ]; then
  command -v python3 >/dev/null 2>&1 || die "python3 is not installed"
  echo "peer-venv: installing torch==2.13.0 and torchvision==0.28.0 into $venv (about 3.3 GB, once)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" || die "python3 -m venv failed (try: apt-get install python3-venv)"
  "$venv/bin/pip" install --quiet torch==2.13.0 torchvision==0.28.0 >&2 || die "pip install torch==2.13.0 torchvision==0.28.0 failed"
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
