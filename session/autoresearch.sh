#!/usr/bin/env bash
# One experiment of this session: runs the target and prints METRIC name=value lines.
# Fixed: the controller hashed this file at init and refuses to run if it changes.
# The controller passes AUTORESEARCH_TIME_BUDGET, AUTORESEARCH_SEED, AUTORESEARCH_RUN and
# AUTORESEARCH_CHECKPOINT in the environment.
set -euo pipefail
cd "$$(dirname "$$0")"
${command}
