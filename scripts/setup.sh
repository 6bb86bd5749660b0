#!/usr/bin/env bash
# Set up largekernel in ./.venv: torch 2.13.0 (CPU) first when no torch is present, then the project.
# Idempotent: re-running it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
.venv/bin/python -m pip install --quiet -e ".[all,test]"
# espeak-ng synthesises the spoken-word demo/test data (`largekernel make-speech`); Debian package
if ! command -v espeak-ng >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && apt-get install -y -qq espeak-ng) >/dev/null
    else
        echo "note: espeak-ng is not installed; 'sudo apt-get install espeak-ng' enables synthetic speech data" >&2
    fi
fi
