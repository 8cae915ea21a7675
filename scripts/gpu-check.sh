#!/usr/bin/env bash
# The GPU check (docs/gpu.md): on a machine with an NVIDIA GPU, end to end, one summary.
#
#   scripts/gpu-check.sh            build here against the CUDA libtorch (setup-libtorch.sh --cuda),
#                                   then run the checks
#   scripts/gpu-check.sh --prebuilt run a `harness` binary built elsewhere (target/release/harness,
#                                   or $HARNESS) against this machine's own PyTorch: its torch/lib
#                                   must have the libtorch version the binary was built against
#                                   (`harness --version` prints it), found from $TORCH_PYTHON
#                                   (default /opt/torch/.venv/bin/python, else python3)
#
# The checks: `harness bench train --vgg16` and `bench samplers` (with the PyTorch + torchvision
# peer on the same GPU), and one short cell of experiments/quick.yaml on cuda:0. Everything goes
# to ${OUT:-gpu-check}/ (summary.txt and one log per step), where it can be collected.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=build
for a in "$@"; do
  case "$a" in
    --prebuilt) mode=prebuilt ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument '$a'" >&2; exit 2 ;;
  esac
done
out=${OUT:-gpu-check}
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }
fail() { say "gpu-check: FAILED: $*"; exit 1; }

command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/gpu: /' | tee -a "$summary"

if [ "$mode" = build ]; then
  ./scripts/setup-libtorch.sh --cuda > "$out/setup.log" 2>&1 || fail "setup-libtorch.sh --cuda (see $out/setup.log)"
  cargo build --release --locked > "$out/build.log" 2>&1 || fail "cargo build (see $out/build.log)"
  H=./target/release/harness
  peer_python=$(./scripts/peer-venv.sh 2>>"$out/setup.log") || fail "installing the peer (see $out/setup.log)"
else
  H=${HARNESS:-./target/release/harness}
  [ -x "$H" ] || fail "no harness binary at $H (set HARNESS)"
  peer_python=${TORCH_PYTHON:-/opt/torch/.venv/bin/python}
  [ -x "$peer_python" ] || peer_python=$(command -v python3)
  torch_lib=$("$peer_python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') || fail "$peer_python cannot import torch"
  have=$("$peer_python" -c 'import torch; print(torch.__version__.split("+")[0])')
  want=$(LD_LIBRARY_PATH="$torch_lib" "$H" --version 2>/dev/null | sed -n 's/.*libtorch \([0-9.]*\).*/\1/p')
  say "libtorch: this machine's PyTorch has $have; the binary was built against ${want:-unknown}"
  [ -n "$want" ] && [ "$have" = "$want" ] || fail "libtorch version mismatch: build the binary against libtorch $have (tch's matching version), or install libtorch $want here"
  export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export OHEM_PEER_PYTHON="$peer_python"

"$H" --version | tee -a "$summary"
device=$("$H" bench train --iters 1 2>&1 | sed -n 's/.*device \(Cuda([0-9]*)\|Cpu\).*/\1/p' | head -1)
say "device used by the harness: ${device:-unknown}"
[ "$device" = "Cpu" ] && say "gpu-check: no CUDA device is visible to the harness: the checks below run on the CPU"

step() { # name, command...
  local name=$1; shift
  local t0=$(date +%s)
  if "$@" > "$out/$name.log" 2>&1; then
    say "== $name ($(( $(date +%s) - t0 )) s)"
    grep -E "ms/iter|s/iter|ratio|mAP|peer:|RoI pooling" "$out/$name.log" | tee -a "$summary"
  else
    say "== $name FAILED (see $out/$name.log)"
    tail -5 "$out/$name.log" | tee -a "$summary"
  fi
}
step bench-train "$H" bench train --vgg16 --iters 5
step bench-samplers "$H" bench samplers --peer --iters 10
step bench-samplers-vgg16 "$H" bench samplers --peer --vgg16 --iters 3
# claim (a) across regimes on the GPU: the sweep of results/claim-a, VGG16 included
step claim-a "$H" bench claim-a --peer --fc 512,4096 --vgg16 --rounds 3 --iters 5 --out "$out/claim-a"
[ -f data/default/ohem_dataset.json ] || "$H" make-dataset --out data/default --size small --seed 0 > "$out/dataset.log" 2>&1
step quick-cell "$H" run experiments/quick.yaml --out "$out/quick" --set device=cuda:0 --set train.epochs=2
say "summary: $summary"
