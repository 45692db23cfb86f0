#!/usr/bin/env bash
# Create .venv and install autoresearch into it (editable, with the test tools and the post-training extra).
#
#   bash scripts/setup.sh                 # CPU: torch==2.13.0 (a CPU wheel where pip's find-links has one)
#   TORCH_SPEC=torch bash scripts/setup.sh  # GPU machines: the default CUDA build from PyPI
#   PYTHON=python3.12 bash scripts/setup.sh
#   bash scripts/setup.sh --path-hint     # only print how to reach `autoresearch` from a new shell
#
# Idempotent: a second run only installs what is missing. `autoresearch` lands in .venv/bin, which a
# new shell does not have on PATH: the last lines say how to get it there.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"

path_hint() {
  local bin
  bin="$(pwd)/.venv/bin"
  echo "setup: autoresearch is $(printf '%q' "$bin/autoresearch"); to have it on PATH in a new shell:"
  echo "  source $(printf '%q' "$bin/activate")"
  echo "  (or: export PATH=$(printf '%q' "$bin"):\$PATH, e.g. in ~/.bashrc)"
}
if [[ "${1:-}" == "--path-hint" ]]; then
  path_hint
  exit 0
fi

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: autoresearch needs Python 3.11 or newer ($python is $("$python" --version 2>&1))" >&2
  exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $("$python" --version)"
  "$python" -m venv .venv
fi
# torch first and pinned, so the package's `torch>=2.4` is already satisfied and pip never
# pulls several GB of CUDA wheels onto a CPU machine.
echo "setup: installing $torch_spec and autoresearch[dev,posttrain] into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check "$torch_spec"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,posttrain]'
echo "setup: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'))"
path_hint
