#!/usr/bin/env bash
# The main job on the offline default: install, create a pretrain workspace on the local
# corpus (no network), and let the offline `mutate` agent run a few experiments.
#
#   bash scripts/quickstart.sh                       # workspace in ~/autoresearch-runs/quickstart, 5 experiments
#   DIR=~/runs/night1 ITERATIONS=100 bash scripts/quickstart.sh
#   bash scripts/quickstart.sh --hint                # only print the closing hint (what to run next)
#
# On a CPU the pretrain target uses a 60 s budget per experiment; on a GPU, 300 s.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${DIR:-$HOME/autoresearch-runs/quickstart}"  # outside this repo: a workspace is its own git repo
iterations="${ITERATIONS:-5}"

# The closing lines. This script puts .venv/bin on its own PATH; a new shell does not have it, so the
# "next:" command names autoresearch by its full path, and setup.sh says how to put it on PATH.
hint() {
  bash "$repo/scripts/setup.sh" --path-hint
  echo "next: $(printf '%q' "$repo/.venv/bin/autoresearch") -C $(printf '%q' "$dir") run --max-iterations 20"
}
if [[ "${1:-}" == "--hint" ]]; then
  hint
  exit 0
fi
bash "$repo/scripts/setup.sh"
export PATH="$repo/.venv/bin:$PATH"
if [[ -f "$dir/autoresearch.toml" ]]; then
  echo "quickstart: $dir already is a workspace; continuing that session"
else
  autoresearch init "$dir" --target pretrain --dataset local
fi
autoresearch -C "$dir" run --max-iterations "$iterations"
autoresearch -C "$dir" status
hint
