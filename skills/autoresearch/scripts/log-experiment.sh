#!/usr/bin/env bash
# log-experiment.sh: append one experiment to the ledger (drop-in for the seed plugin's script).
#
#   bash ${CLAUDE_SKILL_DIR}/scripts/log-experiment.sh --config --name "Optimize tests" \
#     --metric-name total_ms --metric-unit ms --direction lower            # the config header, once
#   bash ${CLAUDE_SKILL_DIR}/scripts/log-experiment.sh --run 2 --commit "$(git rev-parse --short HEAD)" \
#     --metric 0.993 --status keep --description "increase LR to 0.04" \
#     --metrics '{"peak_memory_mb":44200}' --segment 0 --asi '{"hypothesis":"..."}'
#
# Every flag of the seed's script, --file FILE included; an empty optional value (--asi '', --metrics '',
# --confidence '') means omitted, as there. --run, --commit, --segment and --confidence are filled in when
# omitted (the next run number, HEAD, the current segment, the MAD confidence). Unlike the seed's script it
# never writes a line that is not JSON: a bad value is refused with one line and exit 2.
#
# Who writes: `autoresearch log-experiment` when the autoresearch package is here (on PATH, or a checkout
# with its .venv above this script), under the workspace lock; else log_experiment.py beside this script,
# with nothing but python3 (3.8+), which writes the same chained lines. Runs on bash 3.2 (macOS).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ "${AUTORESEARCH_STANDALONE:-}" != 1 ]]; then  # the tests set it to exercise the python3-only writer
  if command -v autoresearch >/dev/null 2>&1; then
    exec autoresearch log-experiment "$@"
  fi
  root="$here"
  while [[ "$root" != / && ! -f "$root/harness/cli.py" ]]; do root="$(dirname "$root")"; done
  if [[ -f "$root/harness/cli.py" && -x "$root/.venv/bin/python" ]]; then
    PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$root/.venv/bin/python" -m harness.cli log-experiment "$@"
  fi
fi
python="${AUTORESEARCH_PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
  echo "log-experiment.sh: needs python3 (3.8 or newer) on PATH, or the autoresearch package" \
       "(pip install -e . in its repository; AUTORESEARCH_PYTHON names another interpreter)" >&2
  exit 127
fi
exec "$python" "$here/log_experiment.py" "$@"
