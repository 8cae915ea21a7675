#!/usr/bin/env bash
# TensorBoard 2.20.0 (its event-file reader) in a small venv, for the test that reads a run's
# event files back the way `tensorboard --logdir` does. Prints the venv's python.
exec "$(dirname "$0")/venv.sh" tb-venv tensorboard==2.20.0
