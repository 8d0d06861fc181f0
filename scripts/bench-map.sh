#!/usr/bin/env bash
# Frame time and peak memory of the Embedding cell's map with many points (default 100,000),
# panned and zoomed every frame with the pointer over it (so hover picking runs too). Runs the
# workbench under Xvfb: there the window's wgpu renderer is Mesa's software Vulkan, so the
# frame interval includes drawing the points on the CPU; on a machine with a GPU it is the
# GPU's. Prints one line.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cellbench-target}"
profile="${PROFILE:-debug}"
points="${1:-100000}"
bin="$CARGO_TARGET_DIR/$profile/cellbench"
if [ "$profile" = release ]; then cargo build --release --quiet; else cargo build --quiet; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"; [ -n "${xvfb_pid:-}" ] && kill "$xvfb_pid" 2>/dev/null || true' EXIT
printf 'title = "map benchmark"\n[[cell]]\nid = 1\ncollapsed = true\nkind = "dataset"\npath = "%s"\n[[cell]]\nid = 2\nkind = "embedding"\n' \
  "$PWD/assets/demo/bccd" >"$work/book.cellbook.toml"
display=":$((100 + RANDOM % 100))"
Xvfb "$display" -screen 0 1280x900x24 >/dev/null 2>&1 &
xvfb_pid=$!
sleep 1
DISPLAY="$display" XDG_RUNTIME_DIR="$work" XDG_DATA_HOME="$work/data" CELLBENCH_WINDOW=1280x900 \
  CELLBENCH_WORKBOOK="$work/book.cellbook.toml" CELLBENCH_BENCH_MAP="$points" \
  CELLBENCH_BENCH_FRAMES="${FRAMES:-600}" timeout 600 "$bin" 2>/dev/null | grep 'map bench'
