#!/usr/bin/env bash
# The README's second command (and what CI runs): install what the tests need, lint, type-check, test.
# The integration tests start their own containerd, runc containers and docker-registry on private
# sockets and loopback ports; nothing needs to be running beforehand.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --test
.venv/bin/ruff check socirun tests bench scripts
.venv/bin/mypy socirun
.venv/bin/lint-imports
exec .venv/bin/python -m pytest -ra "$@"
