#!/usr/bin/env bash
# Set up the benchmark: wrk, h2load, the peer servers' virtual environments, the models.
#
#   bash bench/setup.sh            # idempotent: skips what is already in place
#   FORCE=1 bash bench/setup.sh    # recreate the peer venvs
#
# - wrk (Debian package) drives the load; without it bench/loadgen.py falls back to Python.
# - h2load (Debian package nghttp2-client) drives the gRPC load (bench/grpc_load.py); without
#   it bench/grpc_load.py falls back to grpc.aio (several times more CPU per request).
# - bench/.venvs/mlserver: Seldon MLServer 1.7.1 + mlserver-sklearn + onnxruntime.
# - bench/.venvs/kserve:   KServe 0.21.0 + scikit-learn + onnxruntime.
#   Top-level pins below; every transitive version is held by bench/peers/constraints-*.txt
#   (a pip freeze of a working install), so a rerun resolves to the same set.
#   scikit-learn and onnxruntime match the project's .venv so that the joblib/skops files and
#   the in-process reference come from the same library versions as the peers load them with.
# - bench/out/models, bench/out/bodies: built by bench/models.py with the project's .venv.
# The project's own .venv is only read, never installed into.
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH")"
PY="${PYTHON:-python3}"
MAIN_PY="$ROOT/.venv/bin/python"

# uvloop 0.22+ breaks MLServer 1.7.1's parallel inference workers (asyncio.get_event_loop()
# raises "There is no current event loop" in the worker), so hold it at 0.21.
MLSERVER_PINS=(mlserver==1.7.1 mlserver-sklearn==1.7.1 onnxruntime==1.32.0 scikit-learn==1.9.1
  uvloop==0.21.0)
KSERVE_PINS=(kserve==0.21.0 onnxruntime==1.32.0 scikit-learn==1.9.1 joblib)

log() { printf '[bench/setup] %s\n' "$*"; }

# install_deb CMD PACKAGE: install a Debian package unless CMD is already on PATH.
install_deb() {
  local cmd="$1" pkg="$2"
  if command -v "$cmd" >/dev/null 2>&1; then
    log "$cmd: $(command -v "$cmd")"
    return
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      log "WARNING: $cmd missing and not root: the load generator falls back to Python"
      return
    fi
  fi
  log "installing $pkg (apt-get)"
  if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq "$pkg"; } >/dev/null; then
    log "WARNING: apt-get install $pkg failed: the load generator falls back to Python"
  fi
}

# make_venv NAME PIN...: create bench/.venvs/NAME and install the pins under its constraints.
make_venv() {
  local name="$1"; shift
  local venv="$BENCH/.venvs/$name"
  local constraints="$BENCH/peers/constraints-$name.txt"
  local stamp="$venv/.bench-stamp"
  local want
  want="$(printf '%s\n' "$@"; cat "$constraints")"
  if [ -z "${FORCE:-}" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "$name venv up to date: $venv"
    return
  fi
  [ -n "${FORCE:-}" ] && rm -rf "$venv"
  log "creating $name venv: $venv ($*)"
  [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
  "$venv/bin/python" -m pip install -q -c "$constraints" "$@" 2>&1 \
    | grep -v "^WARNING: Location" || true
  "$venv/bin/python" -m pip check >/dev/null || log "WARNING: pip check reports conflicts in $name"
  printf '%s' "$want" >"$stamp"
}

check_main_venv() {
  if [ ! -x "$MAIN_PY" ]; then
    log "ERROR: $MAIN_PY missing: create the project venv first (pip install -e '.[dev]')"
    exit 1
  fi
  if ! "$MAIN_PY" -c "import onnx, onnxruntime, sklearn, skops, joblib, numpy" 2>/dev/null; then
    log "ERROR: the project .venv lacks onnx/onnxruntime/scikit-learn/skops/joblib"
    log "       (pip install -e '.[onnx,sklearn]' into it), needed to build the models"
    exit 1
  fi
}

mkdir -p "$BENCH/.venvs"
install_deb wrk wrk
install_deb h2load nghttp2-client
make_venv mlserver "${MLSERVER_PINS[@]}"
make_venv kserve "${KSERVE_PINS[@]}"
"$BENCH/.venvs/mlserver/bin/python" -c "import mlserver, mlserver_sklearn, onnxruntime"
"$BENCH/.venvs/kserve/bin/python" -c "import kserve, sklearn, onnxruntime, joblib"
check_main_venv
"$MAIN_PY" "$BENCH/models.py"
log "done. Run: $MAIN_PY bench/run.py   (see bench/README.md)"
