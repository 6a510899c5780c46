#!/usr/bin/env bash
# One entry point for a fresh machine: makes .venv (torch CPU + requirements) on first use, then runs a job.
#   bash scripts/dev.sh generate "a red circle to the left of a blue square" -o out.png
#   bash scripts/dev.sh test [pytest args]
# IMAGEN_VENV overrides where the virtual environment lives (default: .venv in the repository).
# IMAGEN_TORCH_INDEX picks where torch 2.13.0 comes from: unset, pip's own choice (PyPI: on Linux x86_64 the CUDA
# build, several GB; here and in CI the CPU build that lies on disk); e.g. https://download.pytorch.org/whl/cpu for
# the CPU build on any machine, .../whl/cu128 for a CUDA one.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${IMAGEN_VENV:-$root/.venv}
python=${PYTHON:-python3}

ensure_venv() {  # $1: "runtime" or "test"
    local want="$root/requirements.txt"
    [ "$1" = test ] && want="$want $root/requirements-test.txt $root/requirements-oracle.txt"
    # shellcheck disable=SC2086
    local stamp="$venv/.imagen-$1-$(cat $want "$root/constraints.txt" | sha1sum | cut -c1-12)"
    [ -f "$stamp" ] && return 0
    echo "setting up $venv (first run only, about a minute):" >&2
    if [ ! -x "$venv/bin/python" ]; then
        echo "  creating the virtual environment with $python" >&2
        "$python" -m venv "$venv"
    fi
    local index=()
    [ -n "${IMAGEN_TORCH_INDEX:-}" ] && index=(--index-url "$IMAGEN_TORCH_INDEX")
    echo "  installing torch 2.13.0${IMAGEN_TORCH_INDEX:+ from $IMAGEN_TORCH_INDEX}" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${index[@]}" torch==2.13.0
    local args=(-r "$root/requirements.txt")
    [ "$1" = test ] && args+=(-r "$root/requirements-test.txt")
    echo "  installing requirements.txt${args[2]:+ and requirements-test.txt} (torch pinned by constraints.txt)" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$root/constraints.txt" "${args[@]}"
    if [ "$1" = test ]; then
        echo "  installing requirements-oracle.txt without its dependencies (test-only oracles)" >&2
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -c "$root/constraints.txt" \
            -r "$root/requirements-oracle.txt"
    fi
    touch "$stamp"
    echo "  done" >&2
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    test)
        ensure_venv test
        cd "$root" && exec "$venv/bin/python" -m pytest "$@" ;;
    generate)
        ensure_venv runtime
        cd "$root" && exec "$venv/bin/python" -m comfyui_imagen generate "$@" ;;
    *)
        echo "usage: bash scripts/dev.sh test [pytest args] | generate PROMPT [-o out.png] [options]" >&2
        exit 2 ;;
esac
