#!/usr/bin/env bash
# Builds the workbench for the browser into wasm/dist/ (a static folder any web server can
# host) and serves it on http://127.0.0.1:8080.
#
#   ./scripts/web.sh               build, then serve (Ctrl+C stops)
#   ./scripts/web.sh --build-only  build only
#   PORT=9000 ./scripts/web.sh     another port
#
# Installs what the build needs when it is missing: the wasm32-unknown-unknown target
# (rustup) and wasm-bindgen-cli at the version Cargo.lock pins (cargo install).
set -euo pipefail
cd "$(dirname "$0")/.."

build_only=0
[ "${1:-}" = "--build-only" ] && build_only=1
port="${PORT:-8080}"
# The browser build keeps its own target folder inside the desktop one (another target triple
# and profile; a desktop build running at the same time does not wait for it).
export CARGO_TARGET_DIR="${CELLBENCH_WEB_TARGET_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/cellbench-target}/wasm}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  echo "installing the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi
bindgen_version="$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')"
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$bindgen_version" ]; then
  echo "installing wasm-bindgen-cli $bindgen_version"
  cargo install wasm-bindgen-cli --version "$bindgen_version" >&2
fi

start=$(date +%s)
cargo build --locked -p cellbench-web --target wasm32-unknown-unknown --profile web
dist=wasm/dist
rm -rf "$dist"
mkdir -p "$dist/assets/weights"
wasm-bindgen --target web --no-typescript --remove-name-section --remove-producers-section --out-dir "$dist" --out-name cellbench_web \
  "$CARGO_TARGET_DIR/wasm32-unknown-unknown/web/cellbench_web.wasm"
cp wasm/index.html "$dist/"
cp assets/weights/efficientnet_lite0.safetensors assets/weights/LICENSE assets/weights/PROVENANCE.md "$dist/assets/weights/"
cp -r assets/demo "$dist/assets/"
# The files the page loads into its memory, the weights last (the biggest, with progress).
( cd "$dist/assets" && { find demo -type f | sort; echo weights/efficientnet_lite0.safetensors; } ) \
  | python3 -c 'import json,sys; print(json.dumps([l.strip() for l in sys.stdin if l.strip()]))' \
  > "$dist/assets/files.json"
wasm_bytes=$(stat -c %s "$dist/cellbench_web_bg.wasm")
total_bytes=$(du -sb "$dist" | cut -f1)
gzip_bytes=$(tar -C "$dist" -cf - . | gzip -9 | wc -c)
echo "built $dist in $(( $(date +%s) - start )) s: wasm $(( wasm_bytes / 1024 )) KiB, whole bundle $(( total_bytes / 1024 )) KiB ($(( gzip_bytes / 1024 )) KiB gzipped)"

if [ "$build_only" = 0 ]; then
  echo "serving http://127.0.0.1:$port (Ctrl+C stops)"
  exec python3 -m http.server "$port" --bind 127.0.0.1 --directory "$dist"
fi
