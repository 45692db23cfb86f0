#!/usr/bin/env bash
# log-experiment.sh: append one experiment to autoresearch.jsonl (seed-compatible).
#
#   bash scripts/log-experiment.sh --run 2 --commit "$(git rev-parse --short HEAD)" \
#     --metric 0.993 --status keep --description "increase LR to 0.04" \
#     --metrics '{"peak_memory_mb":44200}' --segment 0 --asi '{"hypothesis":"..."}'
#
# --run, --commit, --segment and --confidence are filled in when omitted (next run number,
# HEAD, current segment, MAD confidence). The line is appended with a lock and fsync by the
# harness (`autoresearch log-experiment`), in the current directory's workspace.
set -euo pipefail

if command -v autoresearch >/dev/null 2>&1; then
  exec autoresearch log-experiment "$@"
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${AUTORESEARCH_PYTHON:-python3}"
if [[ -x "$here/.venv/bin/python" ]]; then python="$here/.venv/bin/python"; fi
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m harness.cli log-experiment "$@"
