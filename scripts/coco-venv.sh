#!/usr/bin/env bash
# pycocotools 2.0.11 (the COCO AP reference; it needs only numpy) in a small venv (about 60 MB),
# for the test suite (the parity test of `harness eval --metric coco`) and `harness bench eval --coco`.
# Prints the venv's python.
exec "$(dirname "$0")/venv.sh" coco-venv pycocotools==2.0.11
