#!/usr/bin/env bash
# Frame time while scrolling the gallery of a 100k-image synthetic dataset, and peak memory.
# Writes the dataset (once) to ${1:-/tmp/cellbench-synth100k}, runs the workbench under Xvfb
# with the gallery scrolled by the mouse wheel every frame, and prints percentiles.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cellbench-target}"
profile="${PROFILE:-debug}"
data="${1:-/tmp/cellbench-synth100k}"
bin="$CARGO_TARGET_DIR/$profile/cellbench"
[ "$profile" = release ] && cargo build --release --quiet || cargo build --quiet
[ -d "$data" ] || "$bin" synth "$data" --patients 100 --images 1000 --size 32
work="$(mktemp -d)"
trap 'rm -rf "$work"; [ -n "${xvfb_pid:-}" ] && kill "$xvfb_pid" 2>/dev/null || true' EXIT
printf 'title = "scroll benchmark"\n[[cell]]\nid = 1\nkind = "dataset"\npath = "%s"\n' "$data" >"$work/book.cellbook.toml"
display=":$((100 + RANDOM % 100))"
Xvfb "$display" -screen 0 1280x900x24 >/dev/null 2>&1 &
xvfb_pid=$!
sleep 1
DISPLAY="$display" XDG_RUNTIME_DIR="$work" XDG_DATA_HOME="$work/data" CELLBENCH_WINDOW=1280x900 \
  CELLBENCH_WORKBOOK="$work/book.cellbook.toml" CELLBENCH_RUN_ALL=1 CELLBENCH_BENCH_SCROLL="${FRAMES:-600}" \
  timeout 600 "$bin" 2>/dev/null | grep 'scroll bench'
