#!/usr/bin/env bash
# Creates (once) the Python venv with Ray that the Ray end-to-end tests start a head from, and
# prints its path. Quiet on success; on failure prints pip's output and exits non-zero.
#
#   CELLBENCH_RAY_VENV   where the venv lives (default: ~/.cache/cellbench-ray-venv)
#   PYTHON               the interpreter to build it with (default: python3; Ray 2.60 needs >= 3.10)
#
# Usage in a test run:  export CELLBENCH_RAY_VENV="$(scripts/ray-venv.sh)"
set -euo pipefail

RAY_SPEC='ray[default]==2.60.0'
venv="${CELLBENCH_RAY_VENV:-$HOME/.cache/cellbench-ray-venv}"
python="${PYTHON:-python3}"
marker="$venv/.cellbench-ray-ready"

# Fast path: already built for this exact spec.
if [ -x "$venv/bin/ray" ] && [ -f "$marker" ] && [ "$(cat "$marker")" = "$RAY_SPEC" ]; then
  echo "$venv"
  exit 0
fi

mkdir -p "$(dirname "$venv")"
# One builder at a time (parallel test runs).
exec 9>"$venv.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi
if [ -x "$venv/bin/ray" ] && [ -f "$marker" ] && [ "$(cat "$marker")" = "$RAY_SPEC" ]; then
  echo "$venv"
  exit 0
fi

if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
  echo "ray-venv.sh: $python is missing or older than 3.10 (Ray 2.60 needs 3.10+); set PYTHON" >&2
  exit 1
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# A half-built venv (no marker) is rebuilt from scratch.
rm -rf "$venv"
if ! { "$python" -m venv "$venv" &&
       "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "$RAY_SPEC"; } >"$log" 2>&1; then
  echo "ray-venv.sh: creating $venv with $RAY_SPEC failed:" >&2
  cat "$log" >&2
  rm -rf "$venv"
  exit 1
fi
if ! "$venv/bin/ray" --version >"$log" 2>&1; then
  echo "ray-venv.sh: $venv/bin/ray does not run:" >&2
  cat "$log" >&2
  exit 1
fi
printf '%s' "$RAY_SPEC" >"$marker"
echo "$venv"
