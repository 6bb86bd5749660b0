#!/usr/bin/env bash
# Refresh constraints/ci.txt to the newest releases within pyproject's ranges, then run the tests.
# Commit the new file on its own, only when the suite (fast and slow) is green with it.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
torch_version=$(sed -n 's/^torch==//p' constraints/ci.txt)
"$tmp/venv/bin/python" -m pip install --quiet "torch==$torch_version" \
    --extra-index-url "${LARGEKERNEL_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
"$tmp/venv/bin/python" -m pip install --quiet -e ".[all,test]"
{
    sed -n '1,2p' constraints/ci.txt
    "$tmp/venv/bin/pip" freeze --exclude-editable | sed 's/+cpu$//' | grep -v '^largekernel' | sort -f
} > "$tmp/ci.txt"
"$tmp/venv/bin/python" -m pytest -q -m "slow or not slow"
cp "$tmp/ci.txt" constraints/ci.txt
git --no-pager diff --stat constraints/ci.txt
