#!/usr/bin/env bash
# Regenerates the README screenshot: the workbench on the bundled real demo dataset (BCCD),
# every cell run (dataset, explore, split, a probe training run, evaluate), captured by the app
# itself under Xvfb. Usage: ./scripts/screenshots.sh [output.png]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cellbench-target}"
out="${1:-assets/screenshots/notebook.png}"
mkdir -p "$(dirname "$out")"
cargo build --quiet
work="$(mktemp -d)"
# The assets beside the workbook, as in a copy of the project: the window names the demo
# relative to the workbook (assets/demo/bccd), so no folder of this machine shows in the picture.
ln -s "$PWD/assets" "$work/assets"
trap 'rm -rf "$work"; [ -n "${xvfb_pid:-}" ] && kill "$xvfb_pid" 2>/dev/null || true' EXIT
display=":$((100 + RANDOM % 100))"
Xvfb "$display" -screen 0 1280x4500x24 >/dev/null 2>&1 &
xvfb_pid=$!
sleep 1
DISPLAY="$display" XDG_RUNTIME_DIR="$work" XDG_DATA_HOME="$work/data" \
  CELLBENCH_CACHE="$work/cache" CELLBENCH_ASSETS="$work/assets" CELLBENCH_WORKBOOK="$work/demo.cellbook.toml" \
  CELLBENCH_WINDOW=1280x4400 CELLBENCH_RUN_ALL=1 CELLBENCH_SCREENSHOT="$(realpath -m "$out")" \
  timeout 300 "$CARGO_TARGET_DIR/debug/cellbench" >/dev/null 2>&1
echo "wrote $out"
