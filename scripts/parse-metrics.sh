#!/usr/bin/env bash
# parse-metrics.sh: extract METRIC lines from an experiment's output (seed-compatible).
#
#   bash autoresearch.sh 2>&1 | bash scripts/parse-metrics.sh          # name=value, one per line
#   bash autoresearch.sh 2>&1 | bash scripts/parse-metrics.sh val_bpb  # just that value
#
# Same contract as the harness (harness/metrics.py): names [A-Za-z_][A-Za-z0-9_]*, finite
# numbers only, and on duplicates the last occurrence wins. Exit 1 if a named metric is absent.
set -euo pipefail

target="${1:-}"
declare -A value=()
order=()
number='^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$'
while IFS= read -r line || [[ -n "$line" ]]; do
  line="${line%$'\r'}"
  if [[ "$line" =~ ^[[:space:]]*METRIC[[:space:]]+([A-Za-z_][A-Za-z0-9_]*)=([^[:space:]]+)[[:space:]]*$ ]]; then
    name="${BASH_REMATCH[1]}"
    val="${BASH_REMATCH[2]}"
    [[ "$val" =~ $number ]] || continue   # nan, inf and garbage are not metrics
    [[ -n "${value[$name]+x}" ]] || order+=("$name")
    value[$name]="$val"
  fi
done

if [[ -n "$target" ]]; then
  if [[ -z "${value[$target]+x}" ]]; then
    echo "parse-metrics: no METRIC $target in the input" >&2
    exit 1
  fi
  echo "${value[$target]}"
else
  for name in "${order[@]+"${order[@]}"}"; do
    echo "$name=${value[$name]}"
  done
fi
