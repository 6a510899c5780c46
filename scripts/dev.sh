#!/usr/bin/env bash
# One entry point for a fresh machine: makes .venv (torch CPU + requirements) on first use, then runs a job.
#   bash scripts/dev.sh generate "a red circle to the left of a blue square" -o out.png
#   bash scripts/dev.sh test [pytest args]
# IMAGEN_VENV overrides where the virtual environment lives (default: .venv in the repository).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${IMAGEN_VENV:-$root/.venv}
python=${PYTHON:-python3}

ensure_venv() {  # $1: "runtime" or "test"
    local want="$root/requirements.txt"
    [ "$1" = test ] && want="$want $root/requirements-test.txt"
    # shellcheck disable=SC2086
    local stamp="$venv/.imagen-$1-$(cat $want "$root/constraints.txt" | sha1sum | cut -c1-12)"
    [ -f "$stamp" ] && return 0
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check torch==2.13.0
    local args=(-r "$root/requirements.txt")
    [ "$1" = test ] && args+=(-r "$root/requirements-test.txt")
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$root/constraints.txt" "${args[@]}"
    touch "$stamp"
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
