#!/usr/bin/env bash
# The scheduled upgrade of the test toolchain: install the newest versions the requirements
# allow (no constraints file) into a scratch venv, run the suite there, and report what moved
# against constraints/test.txt and whether the suite passed. A newer release is adopted on
# purpose, by rerunning with --write once the report is read:
#
#   bash scripts/upgrade-test-deps.sh                 # fast lane (-m "not slow"), report only
#   bash scripts/upgrade-test-deps.sh --full          # the whole suite
#   bash scripts/upgrade-test-deps.sh --full --write  # and replace constraints/test.txt on a pass
#
# Extra arguments after -- go to pytest. The venv is $FLOWFIELD_UPGRADE_VENV
# (default /tmp/flowfield-upgrade-venv), made anew each run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FLOWFIELD_UPGRADE_VENV:-/tmp/flowfield-upgrade-venv}
LANE=(-m "not slow") WRITE=0 EXTRA=()
while [ $# -gt 0 ]; do
  case $1 in
    --full) LANE=() ;;
    --write) WRITE=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done

rm -rf "$VENV" && python -m venv "$VENV"
PY=$VENV/bin/python
echo "== installing the newest allowed versions into $VENV"
$PY -m pip install -q -U pip
# the same install as scripts/test.sh, without -c constraints/test.txt (torch stays the CPU
# build: a bare torch would pull the multi-GB CUDA one)
$PY -m pip install -q torch==2.13.0 -e ".[dev,trl]" -e clients/flowfield-client
$PY -m pip install -q --no-deps verl==0.9.1 openrlhf==0.11.2
$PY -m pip install -q -r tests/clients/requirements-trainers.txt
NEW=$(mktemp)
$PY -m pip freeze --exclude-editable | sed 's/+cpu$//' | sort -f > "$NEW"

echo "== versions that differ from constraints/test.txt (pinned -> newest)"
$PY - "$NEW" <<'PY'
import re, sys
def read(path):
    out = {}
    for line in open(path):
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out
old, new = read("constraints/test.txt"), read(sys.argv[1])
moved = [(k, old.get(k, "-"), new.get(k, "-")) for k in sorted(old.keys() | new.keys())
         if old.get(k) != new.get(k)]
for name, a, b in moved:
    print(f"  {name:32s} {a:>14s} -> {b}")
print(f"  ({len(moved)} packages moved)" if moved else "  nothing moved")
PY

echo "== running the suite in the upgraded venv"
set +e
$PY -m ruff check . && PATH=$VENV/bin:$PATH $PY -m pytest -q "${LANE[@]}" "${EXTRA[@]}"
rc=$?
set -e
if [ $rc -ne 0 ]; then
  echo "== FAILED with the newest versions (exit $rc): constraints/test.txt left as it is"
  exit $rc
fi
echo "== PASSED with the newest versions"
if [ $WRITE = 1 ]; then
  { sed -n '/^#/p' constraints/test.txt; grep -v '^flowfield' "$NEW"; } > constraints/test.txt.new
  mv constraints/test.txt.new constraints/test.txt
  echo "constraints/test.txt rewritten: review it with git diff, then commit"
fi
