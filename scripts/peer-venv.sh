#!/usr/bin/env bash
# The benchmark peer, PyTorch 2.13 + torchvision 0.28, in a venv (about 3.3 GB: the PyPI torch wheel
# brings CUDA), for `harness bench samplers|claim-a --peer`. Prints the venv's python.
exec "$(dirname "$0")/venv.sh" peer-venv torch==2.13.0 torchvision==0.28.0
