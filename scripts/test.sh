#!/usr/bin/env bash
# Install (scripts/setup.sh) and run the whole test suite. This is what CI runs.
#
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k ledger  # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
status=0
.venv/bin/python -m pytest -q "$@" || status=$?
if [[ $status -eq 5 ]]; then
  echo "test: pytest collected no tests; that is a failure here" >&2
  exit 1
fi
exit $status
