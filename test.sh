#!/usr/bin/env bash
# Set up (first run only) and run the checks: lint, types, tests. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh dev,server
# the server tests drive a real browser (Debian's chromium, see .ci/run) and an HTTP client
.venv/bin/python -m pip show playwright httpx >/dev/null 2>&1 || .venv/bin/python -m pip install -q playwright httpx
.venv/bin/ruff check src tests
.venv/bin/mypy src/framecast
.venv/bin/python -m pytest -q "$@"
