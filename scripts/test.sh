#!/usr/bin/env bash
# Runs every test of Spindle, installing what it needs first. This is the README's test command
# and what CI runs (.ci/run calls it).
#
#   scripts/test.sh            # everything: lint, Rust tests, end-to-end pytest suites
#   scripts/test.sh -k node    # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

say() { printf '\n==> %s\n' "$*"; }

# --- system packages ----------------------------------------------------------------------------
need=()
command -v tmux >/dev/null 2>&1 || need+=(tmux)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v bash >/dev/null 2>&1 || need+=(bash)
# Debian's chromium, for the JupyterLab widget test (Playwright drives it; it downloads no browser).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if ((${#need[@]})); then
  say "installing ${need[*]} with apt-get"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

# --- Python venv for the real clients (jupyter_client, pyzmq, nbclient, ...) ---------------------
# Resolve the real interpreter once: `python3` on PATH may be a slow shim.
BASE_PY=${SPINDLE_TEST_BASE_PYTHON:-$(python3 -c 'import sys; print(sys.executable)')}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $BASE_PY"
  "$BASE_PY" -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing tests/requirements.txt into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r tests/requirements.txt
  echo "$want" > "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
export SPINDLE_TEST_PYTHON="$ROOT/.venv/bin/python"

# --- a second venv without IPython: Python sessions must not need it (README) --------------------
# Only what the parity notebooks use (tests/requirements-noipy.txt); never IPython or ipykernel.
if [ ! -x .venv-noipy/bin/python ]; then
  say "creating .venv-noipy with $BASE_PY"
  "$BASE_PY" -m venv .venv-noipy
fi
stamp=.venv-noipy/.requirements.sha
want=$(sha256sum tests/requirements-noipy.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing tests/requirements-noipy.txt into .venv-noipy"
  .venv-noipy/bin/python -m pip install -q --disable-pip-version-check -r tests/requirements-noipy.txt
  echo "$want" > "$stamp"
fi
if .venv-noipy/bin/python -c 'import IPython' 2>/dev/null; then
  echo "error: .venv-noipy must not have IPython (tests/requirements-noipy.txt pulled it in)" >&2
  exit 1
fi
export SPINDLE_TEST_NOIPY_PYTHON="$ROOT/.venv-noipy/bin/python"

# --- the Docker sandbox image (for --sandbox docker and its tests) -------------------------------
# SPINDLE_TEST_DOCKER=0 skips everything that needs a Docker engine.
export SPINDLE_TEST_DOCKER=${SPINDLE_TEST_DOCKER:-1}
if [ "$SPINDLE_TEST_DOCKER" != 0 ]; then
  image=${SPINDLE_TEST_IMAGE:-spindle-sandbox:latest}
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    say "building the sandbox image $image (scripts/sandbox-image.sh, about 3 minutes)"
    SPINDLE_SANDBOX_IMAGE=$image scripts/sandbox-image.sh
  fi
fi

# --- Rust: lint, build, tests --------------------------------------------------------------------
say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy"
cargo clippy --workspace --all-targets --release -q -- -D warnings
say "cargo build --release"
cargo build --release --workspace -q
say "cargo test"
cargo test --release --workspace
say "cargo test: the Python language tests again, on an interpreter without IPython"
SPINDLE_PYTHON="$SPINDLE_TEST_NOIPY_PYTHON" cargo test --release -p spindle-languages --test python
if [ "$SPINDLE_TEST_DOCKER" != 0 ]; then
  say "cargo test: the language behaviour tests again, in the Docker sandbox"
  SPINDLE_TEST_LAUNCHER=docker cargo test --release -p spindle-languages \
    --test python --test bash --test node --test sessions
fi

# --- end-to-end tests against the real binary -----------------------------------------------------
say "pytest tests/"
export SPINDLE_BIN="$ROOT/target/release/spindle"
.venv/bin/python -m pytest tests -q -p no:cacheprovider --timeout 600 "$@"
