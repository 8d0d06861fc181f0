#!/usr/bin/env bash
# Runs every test of cellbench. Installs what the tests need (fonts for charts, Xvfb and Mesa's
# software Vulkan for the GUI tests) when it is missing, then builds and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cellbench-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# System packages (Debian/Ubuntu). Skipped when everything is present.
missing=()
command -v fc-list >/dev/null 2>&1 || missing+=(fontconfig)
fc-list 2>/dev/null | grep -qi dejavu || missing+=(fonts-dejavu-core)
command -v Xvfb >/dev/null 2>&1 || missing+=(xvfb xauth)
ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || missing+=(mesa-vulkan-drivers libvulkan1)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing test dependencies: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# A Python venv with Ray for the cluster end-to-end tests (a real Ray head on loopback).
CELLBENCH_RAY_VENV="$(./scripts/ray-venv.sh)"
export CELLBENCH_RAY_VENV

cargo test --locked --all-targets "$@"

# The lean command-line build (no window, dialogs or charts) for cluster workers: checked,
# not built.
cargo check --locked --no-default-features --features headless --bin cellbench

# The browser build, driven end to end in headless Chromium (playwright-core from npm).
./scripts/web.sh --build-only
export CELLBENCH_PLAYWRIGHT="$HOME/.cache/cellbench-playwright"
if [ ! -d "$CELLBENCH_PLAYWRIGHT/node_modules/playwright-core" ]; then
  mkdir -p "$CELLBENCH_PLAYWRIGHT"
  npm install --silent --no-audit --no-fund --prefix "$CELLBENCH_PLAYWRIGHT" playwright-core@1.64.1
fi
node tests/web/e2e.mjs --screenshot "$CARGO_TARGET_DIR/web-e2e.png"
# The same notebook with its features on the browser's WebGPU (Chromium's software adapter).
node tests/web/e2e.mjs --webgpu --screenshot "$CARGO_TARGET_DIR/web-e2e-webgpu.png"
