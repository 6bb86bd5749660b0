#!/usr/bin/env bash
# Set up largekernel in ./.venv: PyTorch first (a CPU build unless a CUDA GPU is present), then the
# project with every extra, at the versions in constraints/ci.txt (the ones CI passed with).
# Idempotent: re-running it only installs what is missing.
#   LARGEKERNEL_CONSTRAINTS=none    newest releases within pyproject's ranges instead of constraints/ci.txt
#   LARGEKERNEL_TORCH_INDEX=URL     where the CPU build of torch comes from (PyTorch's CPU wheel index)
#   PYTHON=python3.12               the interpreter of the venv
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CONSTRAINTS=${LARGEKERNEL_CONSTRAINTS:-constraints/ci.txt}
TORCH_INDEX=${LARGEKERNEL_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
pin=()
if [ "$CONSTRAINTS" != none ]; then
    pin=(-c "$CONSTRAINTS")
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    torch_version=$(sed -n 's/^torch==//p' constraints/ci.txt)
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: a CUDA GPU is present: installing torch==$torch_version with CUDA from the package index"
        .venv/bin/python -m pip install --quiet "torch==$torch_version"
    else
        # PyPI's Linux torch is a multi-GB CUDA build; the CPU index's "+cpu" build ranks higher
        # for the same version, and a package index already serving CPU builds keeps working.
        echo "setup: no CUDA GPU: installing the CPU build of torch==$torch_version (index $TORCH_INDEX)"
        .venv/bin/python -m pip install --quiet "torch==$torch_version" --extra-index-url "$TORCH_INDEX"
    fi
fi
.venv/bin/python -m pip install --quiet "${pin[@]}" -e ".[all,test]"
# espeak-ng synthesises the spoken-word demo/test data (`largekernel make-speech`); a Debian package
if ! command -v espeak-ng >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Debian's espeak-ng with apt-get (synthetic speech for the audio tests and demo)"
        (apt-get update -qq && apt-get install -y -qq espeak-ng) >/dev/null
    else
        echo "setup: espeak-ng is not installed; 'sudo apt-get install espeak-ng' (Debian/Ubuntu) or" \
             "'brew install espeak-ng' (macOS) enables synthetic speech data (largekernel make-speech)" >&2
    fi
fi
echo "setup: done; activate with 'source .venv/bin/activate' or run .venv/bin/largekernel"
