#!/usr/bin/env bash
# Set up (CPU build of PyTorch, the project and its dev tools, at the pinned versions of
# constraints/test.txt) and run the test suite. This is the README's test command and what CI
# runs; arguments go to pytest:
#
#   bash scripts/test.sh                  # the whole suite (CI)
#   bash scripts/test.sh -m "not slow"    # the fast lane: a few minutes, still real servers
#
# FLOWFIELD_TEST_SKIP_INSTALL=1 skips the install step (an environment already set up).
set -euo pipefail
cd "$(dirname "$0")/.."
PIN=(-c constraints/test.txt)
if [ "${FLOWFIELD_TEST_SKIP_INSTALL:-0}" != 1 ]; then
  python -m pip install -q "${PIN[@]}" torch==2.13.0 -e ".[dev,trl]" -e clients/flowfield-client
  # verl and OpenRLHF, whose own code tests/clients drives: without their pinned (older)
  # transformers, plus what their imports need (tests/clients/requirements-trainers.txt)
  python -m pip install -q "${PIN[@]}" --no-deps verl==0.9.1 openrlhf==0.11.2
  python -m pip install -q "${PIN[@]}" -r tests/clients/requirements-trainers.txt
fi
python -m ruff check .
python -m pytest -q "$@"
