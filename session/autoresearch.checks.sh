#!/usr/bin/env bash
# Correctness checks run after every experiment that produced a metric.
# A non-zero exit marks the experiment checks_failed (never kept).
set -euo pipefail
cd "$$(dirname "$$0")"
${checks}
