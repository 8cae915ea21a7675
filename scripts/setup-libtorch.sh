#!/usr/bin/env bash
# Installs libtorch 2.13.0 (what tch 0.26 expects) from the PyPI torch wheel, idempotently,
# into a cache outside git, and points the repo's `.libtorch` link at it. `.cargo/config.toml`
# sets LIBTORCH to `.libtorch/torch`, and build.rs bakes an rpath, so cargo build / cargo test /
# the harness binary find libtorch with nothing exported.
#
#   scripts/setup-libtorch.sh [--cpu | --cuda]
#
# Default: the CUDA set when an NVIDIA driver answers (nvidia-smi works), else the CPU subset.
#   CPU subset: torch/lib + torch/include from the wheel, without the CUDA-only libraries, plus
#               libcudart/libcupti from two small NVIDIA wheels (libtorch_cpu.so links them).
#               About 490 MB unpacked.
#   CUDA set:   `pip install torch==2.13.0` into a venv (about 2.6 GB of wheels).
# Cache: ${OHEM_CACHE:-~/.cache/ohem-harness}/libtorch/.
set -euo pipefail

TORCH_VERSION=2.13.0
CUDART_WHEEL=nvidia-cuda-runtime==13.0.96
CUPTI_WHEEL=nvidia-cuda-cupti==13.0.85

die() { echo "setup-libtorch: error: $*" >&2; exit 1; }
say() { echo "setup-libtorch: $*" >&2; }

flavour=auto
for a in "$@"; do
  case "$a" in
    --cpu) flavour=cpu ;;
    --cuda) flavour=cuda ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) die "unknown argument '$a' (expected --cpu or --cuda)" ;;
  esac
done
if [ "$flavour" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then flavour=cuda; else flavour=cpu; fi
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${OHEM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ohem-harness}/libtorch
mkdir -p "$cache"

command -v python3 >/dev/null 2>&1 || die "python3 is not installed; it is needed to fetch the torch wheel from PyPI"
python3 -m pip --version >/dev/null 2>&1 || die "pip is not available for python3 (try: apt-get install python3-pip)"

check_version() { # $1 = dir holding torch/
  local v
  [ -f "$1/torch/version.py" ] || die "$1/torch/version.py is missing: not a torch install"
  v=$(sed -n "s/^__version__ = '\([^'+]*\).*/\1/p" "$1/torch/version.py")
  [ "$v" = "$TORCH_VERSION" ] || die "libtorch at $1 has version '$v', but tch 0.26 needs $TORCH_VERSION; remove $1 and rerun"
}

if [ "$flavour" = cpu ]; then
  dest="$cache/$TORCH_VERSION-cpu"
  if [ ! -f "$dest/.complete" ]; then
    wheels="$cache/wheels"
    mkdir -p "$wheels"
    if ! ls "$wheels"/torch-$TORCH_VERSION-*.whl >/dev/null 2>&1 || ! ls "$wheels"/nvidia_cuda_runtime-*.whl >/dev/null 2>&1 || ! ls "$wheels"/nvidia_cuda_cupti-*.whl >/dev/null 2>&1; then
      say "downloading torch==$TORCH_VERSION and two NVIDIA runtime wheels from PyPI (about 540 MB)"
      # Pinned to the cp311 manylinux wheel whatever the local Python: only its C++ libraries are used.
      python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_25_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$wheels" "torch==$TORCH_VERSION" "$CUDART_WHEEL" "$CUPTI_WHEEL" \
        || die "pip could not download torch==$TORCH_VERSION, $CUDART_WHEEL and $CUPTI_WHEEL from the package registry"
    fi
    say "unpacking the CPU subset into $dest"
    rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
    python3 - "$wheels" "$dest.tmp" <<'PY' || die "unpacking the wheels failed"
import glob, os, sys, zipfile
wheels, dest = sys.argv[1], sys.argv[2]
skip = {"libtorch_cuda.so", "libtorch_cuda_linalg.so", "libtorch_nvshmem.so", "libtorch_python.so",
        "libc10_cuda.so", "libcaffe2_nvrtc.so"}
def unpack(pattern, keep):
    (whl,) = glob.glob(os.path.join(wheels, pattern))
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            if keep(info.filename):
                z.extract(info, dest)
                if info.filename.endswith(".so") or ".so." in info.filename:
                    os.chmod(os.path.join(dest, info.filename), 0o755)
unpack("torch-*.whl", lambda n: (n.startswith("torch/lib/") and os.path.basename(n) not in skip)
       or n.startswith("torch/include/") or n == "torch/version.py")
unpack("nvidia_cuda_runtime-*.whl", lambda n: n.endswith("nvidia/cu13/lib/libcudart.so.13"))
unpack("nvidia_cuda_cupti-*.whl", lambda n: n.endswith("nvidia/cu13/lib/libcupti.so.13"))
PY
    check_version "$dest.tmp"
    touch "$dest.tmp/.complete"
    rm -rf "$dest" && mv "$dest.tmp" "$dest"
  fi
  site="$dest"
else
  dest="$cache/$TORCH_VERSION-cuda"
  if [ ! -f "$dest/.complete" ]; then
    say "installing torch==$TORCH_VERSION with CUDA into a venv at $dest (about 2.6 GB)"
    rm -rf "$dest"
    python3 -m venv "$dest" || die "python3 -m venv failed (try: apt-get install python3-venv)"
    "$dest/bin/python" -m pip install --quiet "torch==$TORCH_VERSION" || die "pip install torch==$TORCH_VERSION failed"
    touch "$dest/.complete"
  fi
  site=$("$dest/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
fi

check_version "$site"
ln -sfn "$site" "$repo/.libtorch"
say "libtorch $TORCH_VERSION ($flavour) ready: LIBTORCH=$repo/.libtorch/torch"
