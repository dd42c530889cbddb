#!/usr/bin/env bash
# Set up (CPU build of PyTorch, the project and its dev tools) and run the whole test suite.
# This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0 -e ".[dev,trl]" -e clients/flowfield-client
# verl and OpenRLHF, whose own code tests/clients drives: without their pinned (older)
# transformers, plus what their imports need (tests/clients/requirements-trainers.txt)
python -m pip install -q --no-deps verl==0.9.1 openrlhf==0.11.2
python -m pip install -q -r tests/clients/requirements-trainers.txt
python -m ruff check .
python -m pytest -q "$@"
