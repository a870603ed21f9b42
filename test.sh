#!/usr/bin/env bash
# Set up (first run only) and run the checks: lint, types, tests. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh dev
.venv/bin/ruff check src tests
.venv/bin/mypy src/framecast
.venv/bin/python -m pytest -q "$@"
