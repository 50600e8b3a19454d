#!/usr/bin/env bash
# Build the NeMo Gym venv that the compatibility suite (tests/compat/) runs NeMo Gym's own servers, agent,
# collector and row models from. Usage: nemo_gym_venv.sh [DEST]   (default .nemo-gym-venv/<version>)
#
# Idempotent: a finished venv has DEST/.installed (holding the version) and is left alone; an unfinished one
# (interrupted install) is removed and built again. Environment:
#   NEMO_GYM_VERSION  the release to install (default 0.7.0; the suite is written against it)
#   NEMO_GYM_PYTHON   the interpreter to build it with (default: the newest Python 3.13 found on PATH or
#                     under pyenv's versions; NeMo Gym 0.7 declares >=3.13.14, and installs and runs on 3.13.0
#                     with --ignore-requires-python, which is what this machine has)
# Cost, measured on a 2-core machine: see README ("Tests and the tools they use").
set -euo pipefail
cd "$(dirname "$0")/.."

version=${NEMO_GYM_VERSION:-0.7.0}
dest=${1:-.nemo-gym-venv/$version}
case "$dest" in ""|/|.|..) echo "refusing to build a venv in '$dest'" >&2; exit 2 ;; esac

if [ -f "$dest/.installed" ] && [ "$(cat "$dest/.installed")" = "$version" ] && [ -x "$dest/bin/python" ]; then
    echo "NeMo Gym $version venv is ready: $dest"
    exit 0
fi

# A working interpreter that reports 3.13: pyenv's shims exist for every installed version but fail unless
# that version is selected, so each candidate is run, not just found.
is_py313() { [ -n "$1" ] && [ -x "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; }

find_python() {
    if [ -n "${NEMO_GYM_PYTHON:-}" ]; then
        is_py313 "$NEMO_GYM_PYTHON" || { echo "NEMO_GYM_PYTHON=$NEMO_GYM_PYTHON is not a working Python 3.13" >&2; return 1; }
        echo "$NEMO_GYM_PYTHON"
        return 0
    fi
    local roots=()
    if command -v pyenv >/dev/null 2>&1; then roots+=("$(pyenv root)"); fi
    roots+=("${PYENV_ROOT:-$HOME/.pyenv}")
    local candidates=()
    for root in "${roots[@]}"; do
        # Newest patch release first (sort -V), so a later 3.13.x is preferred.
        while IFS= read -r c; do candidates+=("$c"); done < <(ls -d "$root"/versions/3.13*/bin/python3.13 2>/dev/null | sort -rV)
    done
    local on_path
    on_path=$(command -v python3.13 || true)
    [ -n "$on_path" ] && candidates+=("$on_path")
    for c in "${candidates[@]}"; do
        if is_py313 "$c"; then echo "$c"; return 0; fi
    done
    echo "no Python 3.13 found (set NEMO_GYM_PYTHON=/path/to/python3.13, or install one: pyenv install 3.13)" >&2
    return 1
}

python=$(find_python)
echo "building the NeMo Gym $version venv in $dest with $python ($("$python" --version))"
start=$(date +%s)
rm -rf "$dest"
"$python" -m venv "$dest"
# This machine's pip config names index folders that lack most packages: pip warns once per package, not an error.
quiet_pip() { "$dest/bin/python" -m pip "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }
quiet_pip install --quiet --upgrade pip
# NeMo Gym 0.7 asks for >=3.13.14 but needs nothing newer than 3.13.0 for what the suite runs.
quiet_pip install --quiet --ignore-requires-python "nemo-gym==$version"
"$dest/bin/python" -c 'import nemo_gym, responses_api_agents.simple_agent.app, resources_servers.example_single_tool_call.app'
echo "$version" > "$dest/.installed"
echo "NeMo Gym $version venv built in $(( $(date +%s) - start )) s: $dest ($(du -sh "$dest" | cut -f1))"
