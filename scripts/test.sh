#!/usr/bin/env bash
# Install (scripts/setup.sh), lint, type-check, and run the whole test suite. This is what CI runs.
#
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k ledger  # extra arguments go to pytest
#
# ruff (pyproject.toml [tool.ruff]) and mypy (pyproject.toml [tool.mypy]) must be clean: either
# failing fails the script before any test runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "test: ruff check"
.venv/bin/ruff check harness tests scripts assets
echo "test: mypy harness"
.venv/bin/mypy harness
status=0
# Two workers (pytest-xdist): the suite mostly waits on subprocesses, signals and retries (serially 24 min
# of wall time for 12 min of CPU on 2 cores; with two workers 16 min for 11 min of CPU), and each test process
# uses one torch thread (tests/conftest.py). Four workers loaded the 2 cores enough to break timing bounds,
# and three were no faster than two. Whole modules to a worker (--dist loadfile: module fixtures made once),
# handed out heaviest first in the order tests/conftest.py gives them (--no-loadscope-reorder keeps it), so
# both workers finish together; the pretrain data and checkpoint are made once for both (conftest.py).
.venv/bin/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder "$@" || status=$?
if [[ $status -eq 5 ]]; then
  echo "test: pytest collected no tests; that is a failure here" >&2
  exit 1
fi
exit $status
