#!/usr/bin/env bash
# log-experiment.sh: append one experiment to the ledger (seed-compatible). The script itself ships with the
# Claude Code skill, where the seed plugin's ${CLAUDE_SKILL_DIR}/scripts/ paths expect it:
# skills/autoresearch/scripts/log-experiment.sh (its header lists the flags). This path stays for
#   bash scripts/log-experiment.sh --run 2 --commit abc1234 --metric 0.993 --status keep ...
exec bash "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../skills/autoresearch/scripts/log-experiment.sh" "$@"
