#!/usr/bin/env bash
# Installs pinned PyPI packages into a venv under the project's cache, idempotently, and prints
# the venv's python. The wrappers coco-venv.sh and peer-venv.sh name the venv and its packages.
#   usage: scripts/venv.sh NAME PACKAGE==VERSION...   ->   ${OHEM_CACHE:-~/.cache/ohem-harness}/NAME
set -euo pipefail
[ $# -ge 2 ] || { echo "venv.sh: usage: venv.sh NAME PACKAGE==VERSION..." >&2; exit 2; }
name=$1; shift
cache=${OHEM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ohem-harness}
venv="$cache/$name"
die() { echo "$name: error: $*" >&2; exit 1; }
if [ ! -f "$venv/.complete" ]; then
  command -v python3 >/dev/null 2>&1 || die "python3 is not installed"
  echo "$name: installing $* into $venv (once)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" || die "python3 -m venv failed (try: apt-get install python3-venv)"
  "$venv/bin/pip" install --quiet "$@" >&2 || die "pip install $* failed"
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
