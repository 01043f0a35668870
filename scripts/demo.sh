#!/usr/bin/env bash
# The README's first command: install what is needed, then run the demo on the private sandbox.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
exec .venv/bin/socirun demo "$@"
