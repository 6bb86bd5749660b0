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
# reachable: whether URL's host accepts a TCP connection within 5 s (behind a proxy: assumed yes)
reachable() {
    [ -n "${https_proxy:-}${HTTPS_PROXY:-}${http_proxy:-}${HTTP_PROXY:-}" ] && return 0
    .venv/bin/python - "$1" <<'PY' >/dev/null 2>&1
import socket, sys, urllib.parse
url = urllib.parse.urlparse(sys.argv[1])
socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
PY
}
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    torch_version=""  # the version the constraints pin, if any
    if [ "$CONSTRAINTS" != none ]; then
        torch_version=$(sed -n 's/^torch==//p' "$CONSTRAINTS")
    fi
    torch_spec="torch${torch_version:+==$torch_version}"
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: a CUDA GPU is present: installing $torch_spec with CUDA from the package index"
        .venv/bin/python -m pip install --quiet "$torch_spec"
    elif reachable "$TORCH_INDEX"; then
        # PyPI's Linux torch is a multi-GB CUDA build; the CPU index's "+cpu" build ranks higher
        # for the same version, and a package index already serving CPU builds keeps working.
        echo "setup: no CUDA GPU: installing the CPU build of $torch_spec (index $TORCH_INDEX)"
        .venv/bin/python -m pip install --quiet "$torch_spec" --extra-index-url "$TORCH_INDEX"
    else
        echo "setup: no CUDA GPU, and $TORCH_INDEX cannot be reached: installing $torch_spec from the" \
             "configured package index (a CPU build only where that index serves one; point" \
             "LARGEKERNEL_TORCH_INDEX at a CPU wheel index you can reach otherwise)"
        .venv/bin/python -m pip install --quiet "$torch_spec"
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
