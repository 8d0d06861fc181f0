#!/usr/bin/env bash
# GPU speed check of cellbench against PyTorch, in two halves.
#
#   scripts/gpu-check.sh --prepare [DIR] [--binary PATH]
#       On an ordinary (Debian/Ubuntu, x86-64) machine with the repository: builds the lean
#       headless binary (or packages --binary PATH), and writes DIR (default
#       target-gpu-check/cellbench-gpu-check in the repository, git-ignored) holding everything
#       the check needs offline: the stripped, xz-compressed binary; the weights, the ImageNet
#       class names, the demo images and the weights-check photo; the PyTorch reference tools;
#       the Vulkan loader libraries (Debian packages, unpacked) for a machine without them; and
#       a copy of this script. Also writes DIR.tar.gz beside it. Under 60 MB.
#
#   DIR/gpu-check.sh --run [DIR]
#       On the GPU machine (NVIDIA driver, python3 with PyTorch and CUDA, no network): finds
#       the NVIDIA Vulkan driver, checks the network on wgpu (ImageNet top-5 of a photo against
#       the CPU's), times `bench featurize` and `bench finetune` on wgpu and on the CPU and the
#       embedding map's offscreen draw (`bench map`, 100,000 points) on wgpu, and the
#       PyTorch tools on CUDA and on the CPU, each under its own time limit (about 5 minutes
#       in all), and prints one markdown table. Any step may fail: its row says why and the
#       others still run. The raw JSON lines, the table and a log go to $OUT when set, else to
#       DIR/results.
set -euo pipefail

SELF_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$SELF_DIR/$(basename "${BASH_SOURCE[0]}")"
REPO="$(cd "$SELF_DIR/.." && pwd)"
MAX_BYTES=60000000
LOADER_PACKAGES=(libvulkan1 libglvnd0 libegl1 libgl1 libglx0 libopengl0 libgles2
  libx11-6 libxext6 libxcb1 libxau6 libxdmcp6 libbsd0 libmd0)
MARKER=.cellbench-gpu-check

usage() {
  cat <<'EOF'
Usage:
  scripts/gpu-check.sh --prepare [DIR] [--binary PATH]
  DIR/gpu-check.sh --run [DIR] [--batch-size N] [--batches N] [--unfreeze N] [--budget SECS]

--prepare [DIR]   Write the self-contained check folder DIR (default, inside the repository:
                  target-gpu-check/cellbench-gpu-check, git-ignored) and DIR.tar.gz beside it.
                  Builds `cargo build --release --no-default-features --features headless
                  --bin cellbench` (CARGO_TARGET_DIR, default ~/.cache/cellbench-target) unless
                  --binary is given. Needs apt-get (downloads the Vulkan loader packages).
  --binary PATH   Package this cellbench binary instead of building one. The 60 MB limit on
                  the folder is an error for a release build and a warning otherwise (a path
                  with /release/ in it counts as a release build).
--run [DIR]       Run the check from DIR (default: the folder this script is in, when it is a
                  prepared folder, else the repository's default folder).
  --batch-size N  Images per batch (default 32).
  --batches N     Timed batches or steps after one warm-up (default 5).
  --unfreeze N    Backbone blocks trained by the fine-tune rows (default 2).
  --budget SECS   Time for all steps together (default 280); each step also has its own limit.
  Environment: PYTHON (the interpreter with PyTorch, default python3); OUT (where results go,
  default DIR/results).
-h, --help        This text.

On the GPU machine: copy DIR (or DIR.tar.gz) there and run its copy of this script, e.g.
  bash target-gpu-check/cellbench-gpu-check/gpu-check.sh --run
EOF
}

die() {
  echo "gpu-check: $*" >&2
  exit 1
}

mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }

# ---------------------------------------------------------------------------------------------
# --prepare
# ---------------------------------------------------------------------------------------------

prepare() {
  local dir="$1" binary="$2" release=0 src
  { [ -f "$REPO/Cargo.toml" ] && [ -d "$REPO/assets/weights" ]; } ||
    die "--prepare runs from the repository's scripts/ folder (no Cargo.toml and assets/ at $REPO)"
  if [ -e "$dir" ] && [ -n "$(ls -A "$dir")" ] && [ ! -e "$dir/$MARKER" ]; then
    die "$dir exists and is not a folder this script wrote: choose another DIR"
  fi
  rm -rf "$dir"
  mkdir -p "$dir"/{bin,assets/weights,assets/demo,fixtures,tools,vulkan/debs,vulkan/root}
  dir="$(cd "$dir" && pwd)"
  touch "$dir/$MARKER"
  echo "preparing $dir"

  # The binary: stripped, xz-compressed (gzip where xz is missing); any shared library it links
  # beyond the C runtime travels beside it.
  if [ -n "$binary" ]; then
    [ -x "$binary" ] || die "--binary $binary is not an executable file"
    src="$binary"
    case "$binary" in */release/*) release=1 ;; esac
  else
    local target="${CARGO_TARGET_DIR:-$HOME/.cache/cellbench-target}"
    echo "building the headless release binary (CARGO_TARGET_DIR=$target)"
    (cd "$REPO" && CARGO_TARGET_DIR="$target" cargo build --release --locked \
      --no-default-features --features headless --bin cellbench)
    src="$target/release/cellbench"
    release=1
  fi
  local tmpbin="$dir/bin/cellbench"
  if ! command -v strip >/dev/null || ! strip -o "$tmpbin" "$src" 2>/dev/null; then cp "$src" "$tmpbin"; fi
  sha256sum "$tmpbin" | awk '{print $1 "  cellbench"}' >"$dir/bin/cellbench.sha256"
  echo "binary: $src ($(mb "$(stat -c %s "$src")"), stripped $(mb "$(stat -c %s "$tmpbin")")); compressing"
  if command -v xz >/dev/null; then
    xz -T0 -6 -c "$tmpbin" >"$dir/bin/cellbench.xz"
  else
    gzip -9 -c "$tmpbin" >"$dir/bin/cellbench.gz"
  fi
  rm -f "$tmpbin"
  local lib
  while read -r lib; do
    case "$(basename "$lib")" in
      libc.so.* | libm.so.* | libgcc_s.so.* | ld-linux* | libpthread.so.* | libdl.so.* | librt.so.* | libutil.so.*) ;;
      *) mkdir -p "$dir/binlibs" && cp -L "$lib" "$dir/binlibs/" ;;
    esac
  done < <(ldd "$src" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 }')
  if [ -d "$dir/binlibs" ]; then echo "libraries the binary links: $(cd "$dir/binlibs" && echo *)"; fi

  # What `bench featurize`, `bench finetune` and `weights check` read through CELLBENCH_ASSETS.
  cp "$REPO"/assets/weights/{efficientnet_lite0.safetensors,LICENSE,PROVENANCE.md} "$dir/assets/weights/"
  cp "$REPO/assets/imagenet_classes.txt" "$dir/assets/"
  cp -r "$REPO/assets/demo/bccd" "$REPO/assets/demo/README.md" "$dir/assets/demo/"
  cp "$REPO/tests/fixtures/reference/chelsea.png" "$dir/fixtures/"
  cp "$REPO"/tools/{reference_logits.py,bench_pytorch_featurize.py,bench_pytorch_finetune.py} "$dir/tools/"
  cp "$SELF" "$dir/gpu-check.sh"
  chmod +x "$dir/gpu-check.sh"

  # The Vulkan loader and what NVIDIA's Vulkan driver (libGLX_nvidia.so.0) loads with it:
  # libglvnd's dispatch, libX11 and libXext. --run adds only those the machine lacks.
  echo "downloading the Vulkan loader packages: ${LOADER_PACKAGES[*]}"
  local apt_opts=()
  if [ "$(id -u)" -eq 0 ]; then apt_opts=(-o APT::Sandbox::User=root); fi
  if [ "$(dpkg --print-architecture)" != amd64 ]; then
    mkdir -p /tmp/cellbench-apt-amd64/partial
    apt_opts+=(-o APT::Architecture=amd64 -o APT::Architectures=amd64 -o Dir::State::Lists=/tmp/cellbench-apt-amd64)
    apt-get "${apt_opts[@]}" update -qq
  fi
  if ! (cd "$dir/vulkan/debs" && apt-get "${apt_opts[@]}" -qq download "${LOADER_PACKAGES[@]}"); then
    echo "apt-get download failed; updating the package lists once"
    apt-get "${apt_opts[@]}" update -qq
    (cd "$dir/vulkan/debs" && apt-get "${apt_opts[@]}" -qq download "${LOADER_PACKAGES[@]}") ||
      die "could not download the Vulkan loader packages"
  fi
  local deb
  for deb in "$dir"/vulkan/debs/*.deb; do dpkg -x "$deb" "$dir/vulkan/root"; done
  rm -rf "$dir/vulkan/root/usr/share"

  {
    echo "cellbench GPU check folder"
    echo "prepared: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm)"
    echo "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "binary: $src ($([ "$release" = 1 ] && echo release || echo 'not a release build'))"
    echo "run: bash gpu-check.sh --run"
  } >"$dir/MANIFEST.txt"

  echo "size of $dir:"
  local part total
  for part in bin binlibs assets fixtures tools vulkan; do
    if [ -e "$dir/$part" ]; then printf '  %-9s %s\n' "$part" "$(mb "$(du -sb "$dir/$part" | cut -f1)")"; fi
  done
  total="$(du -sb "$dir" | cut -f1)"
  printf '  %-9s %s\n' total "$(mb "$total")"
  local tarball
  tarball="$(dirname "$dir")/$(basename "$dir").tar.gz"
  tar -C "$(dirname "$dir")" -czf "$tarball" "$(basename "$dir")"
  echo "tarball: $tarball ($(mb "$(stat -c %s "$tarball")"))"
  if [ "$total" -gt "$MAX_BYTES" ]; then
    if [ "$release" = 1 ]; then die "the folder is $(mb "$total"), over the $(mb "$MAX_BYTES") limit"; fi
    echo "warning: the folder is $(mb "$total"), over the $(mb "$MAX_BYTES") limit (allowed: not a release binary)" >&2
  fi
  echo "ready: run '$dir/gpu-check.sh --run' on the GPU machine"
  case "$dir" in
    "$REPO"/*) echo "in a copy of the repository: bash ${dir#"$REPO"/}/gpu-check.sh --run" ;;
  esac
}

# ---------------------------------------------------------------------------------------------
# --run
# ---------------------------------------------------------------------------------------------

ldconfig_p() { { ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null || true; }; }

# True when the dynamic linker finds the soname without this folder's help.
have_lib() {
  local so="$1" d
  grep -q "^[[:space:]]*$so (" <<<"$LDCACHE" && return 0
  local IFS=:
  for d in ${LD_LIBRARY_PATH:-}; do [ -n "$d" ] && [ -e "$d/$so" ] && return 0; done
  return 1
}

setup_libraries() {
  local dir="$1" scratch="$2" f so added=()
  LDCACHE="$(ldconfig_p)"
  local d
  for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
    if [ -e "$d/libGLX_nvidia.so.0" ] && ! have_lib libGLX_nvidia.so.0; then
      export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      echo "NVIDIA driver libraries: $d (added to LD_LIBRARY_PATH)"
    fi
  done
  rm -rf "${scratch:?}/lib"
  mkdir -p "$scratch/lib"
  for f in "$dir"/vulkan/root/usr/lib/x86_64-linux-gnu/* "$dir"/vulkan/root/lib/x86_64-linux-gnu/* "$dir"/binlibs/*; do
    [ -e "$f" ] || continue
    so="$(basename "$f")"
    [[ "$so" =~ ^lib.*\.so\.[0-9]+$ ]] || continue
    if ! have_lib "$so"; then
      ln -sf "$(readlink -f "$f")" "$scratch/lib/$so"
      added+=("$so")
    fi
  done
  if [ ${#added[@]} -gt 0 ]; then
    export LD_LIBRARY_PATH="$scratch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "libraries from the folder (the system lacks them): ${added[*]}"
  else
    echo "libraries: the system has every loader library"
  fi
}

setup_vulkan_driver() {
  local scratch="$1" icd="" f lib=""
  if [ -n "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ]; then
    echo "Vulkan driver: as set (VK_DRIVER_FILES=${VK_DRIVER_FILES:-} VK_ICD_FILENAMES=${VK_ICD_FILENAMES:-})"
    return
  fi
  for f in /usr/share/vulkan/icd.d/nvidia_icd*.json /etc/vulkan/icd.d/nvidia_icd*.json \
    /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd*.json /usr/local/share/vulkan/icd.d/nvidia_icd*.json \
    /usr/local/nvidia/etc/vulkan/icd.d/nvidia_icd*.json; do
    if [ -f "$f" ]; then icd="$f" && break; fi
  done
  if [ -z "$icd" ]; then
    lib="$(awk '$1 == "libGLX_nvidia.so.0" { print $NF; exit }' <<<"$LDCACHE")"
    if [ -z "$lib" ]; then
      for f in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib; do
        if [ -e "$f/libGLX_nvidia.so.0" ]; then lib="$f/libGLX_nvidia.so.0" && break; fi
      done
    fi
    if [ -n "$lib" ]; then
      icd="$scratch/nvidia_icd.json"
      printf '{"file_format_version": "1.0.0", "ICD": {"library_path": "%s", "api_version": "1.3.0"}}\n' "$lib" >"$icd"
      echo "Vulkan driver: no nvidia_icd.json installed; wrote $icd for $lib"
    fi
  fi
  if [ -n "$icd" ]; then
    export VK_DRIVER_FILES="$icd" VK_ICD_FILENAMES="$icd"
    echo "Vulkan driver: $icd (VK_DRIVER_FILES)"
  else
    echo "Vulkan driver: no NVIDIA driver found; wgpu takes whatever Vulkan driver the system has"
  fi
  f=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  if [ -z "${__EGL_VENDOR_LIBRARY_FILENAMES:-}" ] && [ -f "$f" ]; then
    export __EGL_VENDOR_LIBRARY_FILENAMES="$f"
  fi
}

unpack_binary() {
  local dir="$1" dst="$2/cellbench"
  if [ -x "$dst" ] && (cd "$2" && sha256sum -c --status "$dir/bin/cellbench.sha256" 2>/dev/null); then return; fi
  if [ -f "$dir/bin/cellbench.xz" ]; then
    if command -v xz >/dev/null; then
      xz -dc "$dir/bin/cellbench.xz" >"$dst.part"
    else
      python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
        "$dir/bin/cellbench.xz" "$dst.part"
    fi
  elif [ -f "$dir/bin/cellbench.gz" ]; then
    gzip -dc "$dir/bin/cellbench.gz" >"$dst.part"
  else
    die "no bin/cellbench.xz or bin/cellbench.gz in $dir: is it a prepared folder?"
  fi
  chmod +x "$dst.part"
  mv "$dst.part" "$dst"
  if command -v sha256sum >/dev/null; then
    (cd "$2" && sha256sum -c --status "$dir/bin/cellbench.sha256") || die "the unpacked binary does not match its checksum"
  fi
}

# step ID CAP COMMAND...: runs one step under `timeout`, never failing the script; its output,
# exit status and duration land in $STEPS/ID.{out,err,rc,secs} and the log.
step() {
  local id="$1" cap="$2" left t rc=0 t0 t1
  shift 2
  left=$((BUDGET - (SECONDS - START)))
  t=$((cap < left ? cap : left))
  if [ "$t" -lt 5 ]; then
    echo "not run: the time budget ($BUDGET s) was spent" >"$STEPS/$id.err"
    : >"$STEPS/$id.out"
    echo skipped >"$STEPS/$id.rc"
    echo 0 >"$STEPS/$id.secs"
    printf '[%3ds] %-18s skipped (no time left)\n' "$((SECONDS - START))" "$id"
    return 0
  fi
  t0="$(date +%s.%N)"
  timeout -k 5 "$t" "$@" >"$STEPS/$id.out" 2>"$STEPS/$id.err" </dev/null || rc=$?
  t1="$(date +%s.%N)"
  echo "$rc" >"$STEPS/$id.rc"
  echo "$t" >"$STEPS/$id.limit"
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", b - a }' >"$STEPS/$id.secs"
  {
    echo "=== $id (limit $t s, exit $rc, $(cat "$STEPS/$id.secs") s): $*"
    echo "--- stdout"
    cat "$STEPS/$id.out"
    echo "--- stderr"
    tail -c 20000 "$STEPS/$id.err"
  } >>"$LOG"
  printf '[%3ds] %-18s exit %s in %s s\n' "$((SECONDS - START))" "$id" "$rc" "$(cat "$STEPS/$id.secs")"
}

run_check() {
  local dir="$1" results scratch
  [ -f "$dir/bin/cellbench.xz" ] || [ -f "$dir/bin/cellbench.gz" ] ||
    die "$dir is not a prepared folder (run --prepare first)"
  dir="$(cd "$dir" && pwd)"
  results="${OUT:-$dir/results}"
  mkdir -p "$results"
  # The unpacked binary and the library links live outside DIR, so that DIR stays small
  # enough to travel again.
  scratch="${TMPDIR:-/tmp}/cellbench-gpu-check-run"
  if ! mkdir -p "$scratch" 2>/dev/null || [ ! -w "$scratch" ]; then scratch="$(mktemp -d)"; fi
  STEPS="$scratch/steps"
  rm -rf "$STEPS"
  mkdir -p "$STEPS"
  LOG="$results/gpu-check.log"
  : >"$LOG"
  START=$SECONDS
  local py="${PYTHON:-python3}" threads bin
  threads="$(nproc)"
  exec 3>&1 4>&2 > >(tee -a "$LOG") 2>&1
  local tee_pid=$!

  echo "cellbench GPU check: $(head -n 3 "$dir/MANIFEST.txt" 2>/dev/null | tail -n 2 | tr '\n' ';')"
  unpack_binary "$dir" "$scratch"
  bin="$scratch/cellbench"
  setup_libraries "$dir" "$scratch"
  setup_vulkan_driver "$scratch"
  export CELLBENCH_ASSETS="$dir/assets"
  if command -v nvidia-smi >/dev/null; then
    timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$STEPS/gpu.txt" 2>&1 ||
      echo "nvidia-smi failed: $(tail -n 1 "$STEPS/gpu.txt")" >"$STEPS/gpu.txt"
  else
    echo "no nvidia-smi on this machine" >"$STEPS/gpu.txt"
  fi
  echo "GPU: $(cat "$STEPS/gpu.txt")"
  echo "settings: batch $BATCH_SIZE, $BATCHES timed batches, fine-tune $UNFREEZE blocks, $threads CPU threads, budget $BUDGET s"

  local photo="$dir/fixtures/chelsea.png" b=(--batch-size "$BATCH_SIZE" --batches "$BATCHES")
  local p=(--batch "$BATCH_SIZE" --batches "$BATCHES")
  # The GPU rows first, so that a slow CPU step cannot take their time.
  step check-wgpu 60 env VK_LOADER_DEBUG=error,warn "$bin" weights check --backend wgpu "$photo"
  step check-cpu 30 "$bin" weights check --backend cpu "$photo"
  step map-wgpu 30 "$bin" bench map --points 100000 --frames 300 --json
  step featurize-wgpu 60 "$bin" bench featurize --backend wgpu "${b[@]}" --json
  step featurize-wgsl 30 "$bin" bench featurize --wgsl "${b[@]}" --json
  step finetune-wgpu 75 "$bin" bench finetune --backend wgpu "${b[@]}" --unfreeze "$UNFREEZE" --json
  step featurize-cuda 45 "$py" "$dir/tools/bench_pytorch_featurize.py" --device cuda --threads "$threads" "${p[@]}" --json
  step finetune-cuda 45 "$py" "$dir/tools/bench_pytorch_finetune.py" --device cuda --threads "$threads" "${p[@]}" --unfreeze "$UNFREEZE" --json
  step featurize-cpu 40 "$bin" bench featurize --backend cpu "${b[@]}" --json
  step finetune-cpu 60 "$bin" bench finetune --backend cpu "${b[@]}" --unfreeze "$UNFREEZE" --json
  step featurize-torch-cpu 30 "$py" "$dir/tools/bench_pytorch_featurize.py" --device cpu --threads "$threads" "${p[@]}" --json
  step finetune-torch-cpu 40 "$py" "$dir/tools/bench_pytorch_finetune.py" --device cpu --threads "$threads" "${p[@]}" --unfreeze "$UNFREEZE" --json

  echo
  python3 - "$STEPS" "$results" "$BATCH_SIZE" "$BATCHES" "$UNFREEZE" "$((SECONDS - START))" <<'PY'
import json, os, re, sys

steps, results, batch, batches, unfreeze, elapsed = sys.argv[1:]
ROWS = [  # what, step, the PyTorch step it is compared with
    ("featurize wgpu", "featurize-wgpu", "featurize-cuda"),
    ("featurize wgpu, our WGSL (the page's WebGPU path)", "featurize-wgsl", "featurize-cuda"),
    ("featurize PyTorch CUDA", "featurize-cuda", None),
    ("featurize cpu fused", "featurize-cpu", "featurize-torch-cpu"),
    ("featurize PyTorch CPU", "featurize-torch-cpu", None),
    ("finetune wgpu", "finetune-wgpu", "finetune-cuda"),
    ("finetune PyTorch CUDA", "finetune-cuda", None),
    ("finetune cpu", "finetune-cpu", "finetune-torch-cpu"),
    ("finetune PyTorch CPU", "finetune-torch-cpu", None),
]


def read(step, ext):
    try:
        with open(os.path.join(steps, f"{step}.{ext}"), errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def reason(step):
    """Why a step failed, in one short line."""
    rc, err = read(step, "rc").strip(), read(step, "err")
    if rc in ("124", "137"):
        return f"timed out after {read(step, 'limit').strip()} s"
    lines = [l.strip() for l in (err or read(step, "out")).splitlines() if l.strip()]
    pick = None
    for i, l in enumerate(lines):
        if "panicked at" in l:
            pick = lines[i + 1] if i + 1 < len(lines) else l
            break
        if re.match(r"(error|Error|ERROR)\b|\w+Error:", l):
            pick = l
    pick = pick or (lines[-1] if lines else f"exit status {rc}")
    return pick.replace("|", "/")[:140]


def outcome(step):
    """(the step's JSON object or None, failure text or None)."""
    rc = read(step, "rc").strip()
    if rc == "skipped":
        return None, reason(step)
    objs = []
    for l in read(step, "out").splitlines():
        if l.strip().startswith("{"):
            try:
                objs.append(json.loads(l))
            except ValueError:
                pass
    if rc != "0":
        return None, reason(step)
    if not objs:
        return None, "no JSON line in the output"
    if not isinstance(objs[-1].get("images_per_sec"), (int, float)):
        return None, "no images_per_sec in its JSON"
    return objs[-1], None


def top5(step):
    """[(index, percent, name)] from `weights check` lines like '   41.53%   282  tiger cat'."""
    out = []
    for l in read(step, "out").splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\d+)\s+(.*)$", l)
        if m:
            out.append((int(m.group(2)), float(m.group(1)), m.group(3).strip()))
    return out


def map_line():
    """The embedding map's offscreen draw (`bench map`), or why it failed."""
    objs = [l for l in read("map-wgpu", "out").splitlines() if l.strip().startswith("{")]
    if read("map-wgpu", "rc").strip() != "0" or not objs:
        return f"embedding map draw: failed: {reason('map-wgpu')}", None
    m = json.loads(objs[-1])
    return (f"embedding map draw ({m['points']:,} points, {m['width']}×{m['height']}, offscreen on "
            f"{m['adapter']}): frame p50 {m['frame_p50_ms']:.2f} ms, p95 {m['frame_p95_ms']:.2f} ms, "
            f"max {m['frame_max_ms']:.2f} ms over {m['frames']} frames"), m


def check_line():
    gpu, cpu = top5("check-wgpu"), top5("check-cpu")
    if read("check-wgpu", "rc").strip() != "0" or not gpu:
        return f"weights check on wgpu: failed: {reason('check-wgpu')}"
    m = re.search(r"\[(.*)\]", read("check-wgpu", "out"))
    where = m.group(1) if m else "wgpu"
    first = f"top-1 {gpu[0][2].split(',')[0]} {gpu[0][1]:.2f}%"
    if read("check-cpu", "rc").strip() != "0" or not cpu:
        return f"weights check on {where}: {first}; the CPU check failed ({reason('check-cpu')})"
    same = [i for i, _, _ in gpu] == [i for i, _, _ in cpu]
    diff = max(abs(a[1] - b[1]) for a, b in zip(gpu, cpu))
    verdict = "the same top-5 as the CPU" if same else "a DIFFERENT top-5 from the CPU"
    return f"weights check on {where}: {verdict} ({first}; largest difference {diff:.2f} points)"


res = {step: outcome(step) for _, step, _ in ROWS}
lines = ["| what | device | batch | images/s | ratio (cellbench ÷ PyTorch) |",
         "| --- | --- | ---: | ---: | ---: |"]
for what, step, ref in ROWS:
    obj, err = res[step]
    if obj is None:
        lines.append(f"| {what} | failed: {err} | {batch} | — | — |")
        continue
    ratio = "—"
    if ref and res[ref][0] is not None:
        ratio = f"{obj['images_per_sec'] / res[ref][0]['images_per_sec']:.2f}×"
    lines.append(f"| {what} | {obj.get('device', '?')} | {obj.get('batch_size', batch)} | "
                 f"{obj['images_per_sec']:.1f} | {ratio} |")
map_note, map_result = map_line()
notes = [f"GPU: {read('gpu', 'txt').strip() or 'unknown'}", check_line(), map_note,
         f"batch {batch}, {batches} timed batches or steps after one warm-up; fine-tune rows train "
         f"the last {unfreeze} blocks, the head convolution and a 5-class classifier; "
         f"{elapsed} s in all"]
for what, step, _ in ROWS:
    obj = res[step][0]
    if obj and "decode_secs" in obj:
        notes.append(f"{what}: decoding and augmenting its images takes {obj['decode_secs']:.2f} s alone, "
                     f"overlapped with its {obj['timed_secs']:.2f} timed s by the loader thread "
                     "(the PyTorch rows start from tensors)")
text = "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
print(text, end="")
with open(os.path.join(results, "table.md"), "w") as fh:
    fh.write(text)
with open(os.path.join(results, "results.jsonl"), "w") as fh:
    fh.write(json.dumps({"step": "map-wgpu", "exit": read("map-wgpu", "rc").strip(),
                         "secs": read("map-wgpu", "secs").strip(),
                         **({"result": map_result} if map_result else {"error": reason("map-wgpu")})}) + "\n")
    for step in ["check-wgpu", "check-cpu"] + [s for _, s, _ in ROWS]:
        obj, err = res.get(step, (None, None))
        line = {"step": step, "exit": read(step, "rc").strip(), "secs": read(step, "secs").strip()}
        if step.startswith("check"):
            line["top5"] = top5(step)
            if line["exit"] != "0":
                line["error"] = reason(step)
        elif obj is not None:
            line["result"] = obj
        else:
            line["error"] = err
        fh.write(json.dumps(line) + "\n")
PY
  echo
  echo "results: $results/table.md, $results/results.jsonl, $results/gpu-check.log"
  exec 1>&3 2>&4 3>&- 4>&-
  wait "$tee_pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------

mode="" dir="" binary=""
BATCH_SIZE=32 BATCHES=5 UNFREEZE=2 BUDGET=280
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare | --run)
      mode="${1#--}"
      if [ $# -gt 1 ] && [[ "$2" != -* ]]; then dir="$2" && shift; fi
      ;;
    --binary) binary="${2:?--binary needs a path}" && shift ;;
    --batch-size) BATCH_SIZE="${2:?}" && shift ;;
    --batches) BATCHES="${2:?}" && shift ;;
    --unfreeze) UNFREEZE="${2:?}" && shift ;;
    --budget) BUDGET="${2:?}" && shift ;;
    -h | --help) usage && exit 0 ;;
    *) usage >&2 && exit 2 ;;
  esac
  shift
done
for n in "$BATCH_SIZE" "$BATCHES" "$UNFREEZE" "$BUDGET"; do
  [[ "$n" =~ ^[0-9]+$ ]] || die "not a whole number: $n"
done

case "$mode" in
  prepare) prepare "${dir:-$REPO/target-gpu-check/cellbench-gpu-check}" "$binary" ;;
  run)
    if [ -z "$dir" ]; then
      if [ -f "$SELF_DIR/$MARKER" ]; then dir="$SELF_DIR"; else dir="$REPO/target-gpu-check/cellbench-gpu-check"; fi
    fi
    run_check "$dir"
    ;;
  *) usage >&2 && exit 2 ;;
esac
