#!/usr/bin/env bash
# parse-metrics.sh: the metrics in an experiment's output (seed-compatible). The script itself ships with the
# Claude Code skill, where the seed plugin's ${CLAUDE_SKILL_DIR}/scripts/ paths expect it:
# skills/autoresearch/scripts/parse-metrics.sh (its header says what it reads). This path stays for
#   bash autoresearch.sh 2>&1 | bash scripts/parse-metrics.sh [NAME]
exec bash "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../skills/autoresearch/scripts/parse-metrics.sh" "$@"
